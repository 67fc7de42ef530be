//! WebDataset-style tar shards: a sample is the members sharing a key (`KEY.jpg|jpeg|png`, the
//! image, and `KEY.cls`, its integer label); other members are ignored.
//!
//! A dataset is a folder of `*.tar` files (sorted by name), one `.tar` file, or a brace pattern
//! as webdataset writes them (`train-{000000..000146}.tar`, `{a,b}.tar`). Listing reads each
//! shard's headers and labels once (in parallel) and records where every image's bytes are; the
//! decode then reads those byte ranges directly.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::decode::{SampleList, Source};
use crate::DataError;

/// Image extensions, in the order one is preferred when a key has several.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Whether `path` names shards: a brace pattern, or one `.tar` file.
pub(crate) fn is_shard_spec(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.contains('{') || (path.is_file() && has_tar_extension(path))
}

fn has_tar_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar"))
}

/// The `*.tar` files directly in `dir`, sorted, when it holds some and no sub-folder (a folder
/// with sub-folders is an ImageFolder).
pub(crate) fn shards_in_dir(dir: &Path) -> Result<Option<Vec<PathBuf>>, DataError> {
    let entries = crate::folder::entries(dir)?;
    if entries.iter().any(|e| e.2) {
        return Ok(None);
    }
    let tars: Vec<PathBuf> = entries.into_iter().filter(|e| has_tar_extension(&e.1)).map(|e| e.1).collect();
    Ok((!tars.is_empty()).then_some(tars))
}

/// Expands every `{a..b}` (numeric, zero-padded to the wider bound when a bound has a leading
/// zero) and `{x,y,z}` of `pattern`, left to right, as Python's braceexpand does.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("'{pattern}': '}}' without '{{'"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..].find('}').map(|c| open + c).ok_or_else(|| format!("'{pattern}': '{{' without '}}'"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    if body.contains('{') {
        return Err(format!("'{pattern}': nested braces are not supported"));
    }
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi) = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(lo), Ok(hi)) => (lo, hi),
            _ => return Err(format!("'{pattern}': {{{body}}} is not a range of two integers")),
        };
        if lo > hi {
            return Err(format!("'{pattern}': range {{{body}}} runs backwards"));
        }
        let padded = |s: &str| s.len() > 1 && s.starts_with('0');
        let width = if padded(a) || padded(b) { a.len().max(b.len()) } else { 0 };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(String::from).collect()
    };
    let rest = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}"))).collect())
}

/// The shard files `path` names (a pattern, one `.tar`, or a folder of them), each checked to
/// exist: a pattern matching nothing names the pattern, a missing shard names the shard.
pub(crate) fn resolve_shards(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let spec = path.to_string_lossy().into_owned();
    if !spec.contains('{') {
        if path.is_dir() {
            return shards_in_dir(path)?.ok_or(DataError::NoShards { pattern: spec });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let names = expand_braces(&spec).map_err(|message| DataError::BadPattern { message })?;
    let shards: Vec<PathBuf> = names.into_iter().map(PathBuf::from).collect();
    let missing: Vec<&PathBuf> = shards.iter().filter(|s| !s.is_file()).collect();
    if missing.len() == shards.len() {
        return Err(DataError::NoShards { pattern: spec });
    }
    if let Some(first) = missing.first() {
        return Err(DataError::MissingShard {
            pattern: spec.clone(),
            shard: (*first).clone(),
            missing: missing.len(),
            total: shards.len(),
        });
    }
    Ok(shards)
}

/// The members of one sample seen so far.
#[derive(Default)]
struct Partial {
    /// (extension index in IMAGE_EXTENSIONS, offset, len) of the preferred image member.
    image: Option<(usize, u64, u64)>,
    label: Option<Result<u32, String>>,
}

/// Splits a member name into (key, extension) as webdataset does: the key is the path up to the
/// first '.' of the file name.
fn split_key(name: &str) -> Option<(&str, &str)> {
    let base_at = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_at..].find('.')? + base_at;
    Some((&name[..dot], &name[dot + 1..]))
}

/// The samples of one shard, in the order their keys first appear.
fn list_shard(shard: &Arc<PathBuf>) -> Result<Vec<(Source, u32)>, DataError> {
    let tar_err = |message: String| DataError::Tar { shard: shard.as_path().to_path_buf(), message };
    let file = File::open(shard.as_path()).map_err(|e| DataError::io(shard.as_path(), e))?;
    let mut archive = tar::Archive::new(file);
    let mut order: Vec<String> = Vec::new();
    let mut samples: HashMap<String, Partial> = HashMap::new();
    for entry in archive.entries_with_seek().map_err(|e| tar_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| tar_err(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| tar_err(e.to_string()))?.to_string_lossy().into_owned();
        let Some((key, ext)) = split_key(&name) else { continue };
        let ext = ext.to_ascii_lowercase();
        let image_ext = IMAGE_EXTENSIONS.iter().position(|e| *e == ext);
        if image_ext.is_none() && ext != "cls" {
            continue;
        }
        let key = key.to_string();
        let sample = samples.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Partial::default()
        });
        if let Some(rank) = image_ext {
            if sample.image.is_none_or(|(r, ..)| rank < r) {
                sample.image = Some((rank, entry.raw_file_position(), entry.size()));
            }
        } else {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).map_err(|e| tar_err(format!("{name}: {e}")))?;
            let t = text.trim();
            sample.label = Some(t.parse::<u32>().map_err(|_| format!("{name} holds {t:?}, not a class index")));
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let p = samples.remove(&key).expect("listed key");
        let err = |message: String| DataError::ShardSample {
            shard: shard.as_path().to_path_buf(),
            key: key.clone(),
            message,
        };
        let Some((_, offset, len)) = p.image else {
            return Err(err("has no .jpg, .jpeg or .png member".into()));
        };
        let label = match p.label {
            None => return Err(DataError::MissingLabel { shard: shard.as_path().to_path_buf(), key }),
            Some(Err(message)) => return Err(err(message)),
            Some(Ok(l)) => l,
        };
        out.push((Source::Member { shard: Arc::clone(shard), key, offset, len }, label));
    }
    Ok(out)
}

/// Lists every sample of `shards` (in parallel, results in shard order). Classes are the label
/// values `0..=max` as names.
pub(crate) fn list(shards: &[PathBuf]) -> Result<SampleList, DataError> {
    let per_shard: Vec<Result<Vec<(Source, u32)>, DataError>> =
        shards.par_iter().map(|s| list_shard(&Arc::new(s.clone()))).collect();
    let mut samples = Vec::new();
    for r in per_shard {
        samples.extend(r?);
    }
    if samples.is_empty() {
        return Err(DataError::EmptyShards { first: shards[0].clone(), shards: shards.len() });
    }
    let classes = samples.iter().map(|s| s.1).max().map_or(0, |m| m as usize + 1);
    Ok(SampleList { classes: (0..classes).map(|c| c.to_string()).collect(), samples })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_like_braceexpand() {
        assert_eq!(expand_braces("a-{000..002}.tar").unwrap(), ["a-000.tar", "a-001.tar", "a-002.tar"]);
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{x,y}-{1..2}").unwrap(), ["x-1", "x-2", "y-1", "y-2"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["a{1..2", "a}", "{3..1}", "{a..b}", "{{1,2}}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/b.c/sample01.seg.png"), Some(("a/b.c/sample01", "seg.png")));
        assert_eq!(split_key("x.jpg"), Some(("x", "jpg")));
        assert_eq!(split_key("dir/noext"), None);
    }
}
