//! CIFAR-10 binary format: `data_batch_1..5.bin` (train) and `test_batch.bin` (test), each a
//! sequence of 3073-byte records: label byte, then the 32x32 R, G and B planes (CHW).

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::progress::Progress;
use crate::{DataError, ImageStore, Split, CIFAR10_MEAN, CIFAR10_STD};

pub(crate) const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
pub(crate) const RECORD: usize = 1 + 3 * PLANE;
const DIR_NAME: &str = "cifar-10-batches-bin";
const META: &str = "batches.meta.txt";

fn has_batches(dir: &Path) -> bool {
    dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file()
}

/// The directory holding the batch files: `path` itself or `path/cifar-10-batches-bin`.
pub(crate) fn batch_dir(path: &Path) -> Option<PathBuf> {
    if has_batches(path) {
        Some(path.to_path_buf())
    } else {
        let sub = path.join(DIR_NAME);
        has_batches(&sub).then_some(sub)
    }
}

/// The batch files of a split, in load order.
pub(crate) fn split_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    }
}

/// Every file whose content the loaded store depends on (for the cache key).
pub(crate) fn source_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    let mut files = split_files(dir, split);
    let meta = dir.join(META);
    if meta.is_file() {
        files.push(meta);
    }
    files
}

/// Class names from `batches.meta.txt` (one per line, blank lines ignored), else "0".."9".
fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let meta = dir.join(META);
    if !meta.is_file() {
        return Ok((0..10).map(|i| i.to_string()).collect());
    }
    let text = fs::read_to_string(&meta).map_err(|e| DataError::io(&meta, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Loads one split at 32x32 with the CIFAR-10 normalisation constants.
pub(crate) fn load(dir: &Path, split: Split, progress: bool) -> Result<ImageStore, DataError> {
    let classes = class_names(dir)?;
    let files = split_files(dir, split);
    let bar = Progress::new(progress, files.len() as u64, "reading CIFAR-10 batches");
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        let bytes = fs::read(file).map_err(|e| DataError::io(file, e))?;
        decode_batch(file, &bytes, classes.len(), &mut pixels, &mut labels)?;
        bar.inc(1);
    }
    bar.finish();
    ImageStore::new(SIDE, SIDE, pixels, labels, classes, CIFAR10_MEAN, CIFAR10_STD)
}

/// Appends the records of one batch file, converting CHW planes to HWC.
pub(crate) fn decode_batch(
    path: &Path,
    bytes: &[u8],
    classes: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::Truncated { path: path.to_path_buf(), size: bytes.len() as u64, record: RECORD });
    }
    let n = bytes.len() / RECORD;
    if let Some((record, r)) = bytes.chunks_exact(RECORD).enumerate().find(|(_, r)| usize::from(r[0]) >= classes) {
        return Err(DataError::BadLabel { path: path.to_path_buf(), record, label: u32::from(r[0]), classes });
    }
    labels.extend(bytes.chunks_exact(RECORD).map(|r| u32::from(r[0])));
    let start = pixels.len();
    pixels.resize(start + n * 3 * PLANE, 0);
    pixels[start..].par_chunks_mut(3 * PLANE).zip(bytes.par_chunks_exact(RECORD)).for_each(|(dst, rec)| {
        let planes = &rec[1..];
        for (i, px) in dst.chunks_exact_mut(3).enumerate() {
            px[0] = planes[i];
            px[1] = planes[PLANE + i];
            px[2] = planes[2 * PLANE + i];
        }
    });
    Ok(())
}
