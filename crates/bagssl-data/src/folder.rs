//! ImageFolder of JPEG/PNG files: `root/<class>/<image>`, classes sorted by folder name.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ImageReader, RgbImage};
use rayon::prelude::*;

use crate::progress::Progress;
use crate::{DataError, ImageStore, Split};

/// The listed content of a class root.
pub(crate) struct FileList {
    pub(crate) classes: Vec<String>,
    /// (file, label), classes in order, files sorted by name within a class.
    pub(crate) files: Vec<(PathBuf, u32)>,
}

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
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
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

/// Lists classes (sub-folders of `root`, sorted) and their files. Every non-hidden file in a
/// class folder is taken to be an image (a stray file is reported when decoding, not skipped);
/// files directly in `root` and folders nested inside class folders are ignored.
pub(crate) fn list(root: &Path) -> Result<FileList, DataError> {
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for (name, class_dir, is_dir) in entries(root)? {
        if !is_dir {
            continue;
        }
        let label = classes.len() as u32;
        let before = files.len();
        files.extend(entries(&class_dir)?.into_iter().filter(|e| !e.2).map(|(_, p, _)| (p, label)));
        if files.len() == before {
            return Err(DataError::EmptyClass { path: class_dir });
        }
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses { path: root.to_path_buf() });
    }
    Ok(FileList { classes, files })
}

/// Decodes one file to RGB (grayscale replicated, alpha dropped), resized if asked.
pub(crate) fn decode_file(path: &Path, resize: Option<(usize, usize)>) -> Result<RgbImage, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let decode_err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err("unknown file format".into()));
    }
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?.into_rgb8();
    Ok(match resize {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => resize_rgb(&img, h, w),
        _ => img,
    })
}

/// Bilinear (triangle filter) resize, the one resampling used for every format.
pub(crate) fn resize_rgb(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    image::imageops::resize(img, width as u32, height as u32, FilterType::Triangle)
}

/// Decodes every listed file in parallel into one store; mean/std from the images.
pub(crate) fn load(list: &FileList, resize: Option<(usize, usize)>, progress: bool) -> Result<ImageStore, DataError> {
    let bar = Progress::new(progress, list.files.len() as u64, "decoding images");
    // Collect every result, then report the first failure in file order, so the error does
    // not depend on thread scheduling.
    let decoded: Vec<Result<RgbImage, DataError>> = list
        .files
        .par_iter()
        .map(|(path, _)| {
            let r = decode_file(path, resize);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish();
    let images = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;

    let mut sizes: Vec<(usize, usize, PathBuf)> = Vec::new();
    for (img, (path, _)) in images.iter().zip(&list.files) {
        let hw = (img.height() as usize, img.width() as usize);
        if !sizes.iter().any(|s| (s.0, s.1) == hw) {
            sizes.push((hw.0, hw.1, path.clone()));
        }
    }
    if sizes.len() > 1 {
        return Err(DataError::MixedSizes { sizes });
    }
    let (height, width) = sizes.first().map_or((0, 0), |s| (s.0, s.1));
    let mut pixels = Vec::with_capacity(images.len() * height * width * 3);
    for img in &images {
        pixels.extend_from_slice(img.as_raw());
    }
    drop(images);
    let labels = list.files.iter().map(|f| f.1).collect();
    let mut store = ImageStore::new(height, width, pixels, labels, list.classes.clone(), [0.0; 3], [1.0; 3])?;
    let (mean, std) = store.channel_stats();
    store.mean = mean;
    store.std = std;
    Ok(store)
}
