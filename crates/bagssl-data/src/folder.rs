//! ImageFolder of JPEG/PNG files: `root/<class>/<image>`, classes sorted by folder name.

use std::fs;
use std::path::{Path, PathBuf};

use crate::decode::{SampleList, Source};
use crate::{DataError, Split};

fn split_dir(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// The class root: `path/train` or `path/test` when `path` has a train/test layout, else `path`
/// itself (the split is then ignored: such a folder *is* the dataset asked for).
pub(crate) fn class_root(path: &Path, split: Split) -> Result<PathBuf, DataError> {
    if path.join("train").is_dir() || path.join("test").is_dir() {
        let root = path.join(split_dir(split));
        if !root.is_dir() {
            return Err(DataError::MissingSplit { path: root });
        }
        Ok(root)
    } else {
        Ok(path.to_path_buf())
    }
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Sorted (name, path, is_dir) of the non-hidden entries of `dir` (symlinks followed).
pub(crate) fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let rd = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        out.push((name, path, meta.is_dir()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Lists classes (sub-folders of `root`, sorted) and their files, sorted by name within a class.
/// Every non-hidden file in a class folder is taken to be an image (a stray file is reported
/// when decoding, not skipped); files directly in `root` and folders nested inside class folders
/// are ignored.
pub(crate) fn list(root: &Path) -> Result<SampleList, DataError> {
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for (name, class_dir, is_dir) in entries(root)? {
        if !is_dir {
            continue;
        }
        let label = classes.len() as u32;
        let before = files.len();
        files.extend(entries(&class_dir)?.into_iter().filter(|e| !e.2).map(|(_, p, _)| (Source::File(p), label)));
        if files.len() == before {
            return Err(DataError::EmptyClass { path: class_dir });
        }
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses { path: root.to_path_buf() });
    }
    Ok(SampleList { classes, samples: files })
}
