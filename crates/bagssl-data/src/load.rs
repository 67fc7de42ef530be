//! Format detection, loading options and the cached load entry points.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cache::{self, KeyHasher};
use crate::{cifar, folder, DataError, ImageStore};

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// CIFAR: `data_batch_1..5.bin`; ImageFolder: `train/` (when there is a train/test layout).
    #[default]
    Train,
    /// CIFAR: `test_batch.bin`; ImageFolder: `test/` (when there is a train/test layout).
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// On-disk dataset formats [`load`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFormat {
    /// The CIFAR-10 "binary version" (`cifar-10-batches-bin`).
    CifarBinary,
    /// `root/<class>/*.{jpg,jpeg,png}`, optionally under `train/` and `test/`.
    ImageFolder,
}

impl DatasetFormat {
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::CifarBinary => "cifar10",
            DatasetFormat::ImageFolder => "imagefolder",
        }
    }
}

/// How to load a dataset.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub split: Split,
    /// `(height, width)`: resize every image (bilinear). `None`: all images must share one size.
    pub resize: Option<(usize, usize)>,
    /// Folder for decoded-store caches (`None`: no cache), created if missing. One file per
    /// (format, canonical path, split, resize, source files' names/sizes/mtimes):
    /// `bagssl-<format>-<split>-<16 hex key>.bin`; stale entries are never deleted, just no
    /// longer matched. See [`LoadReport::cache_file`].
    pub cache_dir: Option<PathBuf>,
    /// Show a progress bar on stderr while decoding.
    pub progress: bool,
}

/// What [`load_with_report`] did, for logs and tests.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub format: DatasetFormat,
    /// The folder actually read: the batch folder or the ImageFolder class root.
    pub root: PathBuf,
    /// Number of source files the store depends on.
    pub source_files: usize,
    /// The store was read from the cache instead of decoded.
    pub from_cache: bool,
    /// The cache file for this dataset, options and file list (`None` without `cache_dir`).
    pub cache_file: Option<PathBuf>,
    /// Why the cache could not be written, if it could not (the load itself still succeeded).
    pub cache_write_error: Option<String>,
}

/// Detects the format of `path`: a folder with CIFAR-10 batch files (directly or in
/// `cifar-10-batches-bin/`) is [`DatasetFormat::CifarBinary`]; any other folder is an
/// ImageFolder.
pub fn detect_format(path: &Path) -> Result<DatasetFormat, DataError> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_dir() {
        return Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "a file; expected a CIFAR-10 binary folder or an ImageFolder folder".into(),
        });
    }
    Ok(if cifar::batch_dir(path).is_some() { DatasetFormat::CifarBinary } else { DatasetFormat::ImageFolder })
}

/// Loads the dataset at `path` (format auto-detected) with `opts`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<ImageStore, DataError> {
    load_with_report(path, opts).map(|(store, _)| store)
}

/// [`load`], also saying where the data came from (cache hit or decode).
pub fn load_with_report(path: &Path, opts: &LoadOptions) -> Result<(ImageStore, LoadReport), DataError> {
    if let Some((height, width)) = opts.resize {
        if height == 0 || width == 0 {
            return Err(DataError::InvalidResize { height, width });
        }
    }
    let format = detect_format(path)?;
    let canonical = fs::canonicalize(path).map_err(|e| DataError::io(path, e))?;

    // Resolve the source files first: the cache key depends on them.
    let (root, files, listing) = match format {
        DatasetFormat::CifarBinary => {
            let dir = cifar::batch_dir(&canonical).ok_or_else(|| DataError::NotFound { path: canonical.clone() })?;
            if let Some(missing) = cifar::split_files(&dir, opts.split).into_iter().find(|f| !f.is_file()) {
                return Err(DataError::NotFound { path: missing });
            }
            let files = cifar::source_files(&dir, opts.split);
            (dir, files, None)
        }
        DatasetFormat::ImageFolder => {
            let root = folder::class_root(&canonical, opts.split)?;
            let list = folder::list(&root)?;
            let files = list.files.iter().map(|f| f.0.clone()).collect();
            (root, files, Some(list))
        }
    };

    let mut report = LoadReport {
        format,
        root: root.clone(),
        source_files: files.len(),
        from_cache: false,
        cache_file: None,
        cache_write_error: None,
    };

    let cache = opts.cache_dir.as_ref().map(|dir| {
        let key = cache_key(format, &canonical, opts, &root, &files);
        (cache::cache_file(dir, format.name(), opts.split.name(), key), key)
    });
    if let Some((file, key)) = &cache {
        report.cache_file = Some(file.clone());
        if let Some(store) = cache::read(file, *key) {
            report.from_cache = true;
            return Ok((store, report));
        }
    }

    let store = match (format, listing) {
        (DatasetFormat::ImageFolder, Some(list)) => folder::load(&list, opts.resize, opts.progress)?,
        _ => {
            let store = cifar::load(&root, opts.split, opts.progress)?;
            match opts.resize {
                Some((h, w)) if (h, w) != (store.height, store.width) => resize_store(&store, h, w),
                _ => store,
            }
        }
    };

    if let Some((file, key)) = &cache {
        if let Err(e) = cache::write(file, *key, &store) {
            report.cache_write_error = Some(format!("{}: {e}", file.display()));
        }
    }
    Ok((store, report))
}

fn cache_key(format: DatasetFormat, canonical: &Path, opts: &LoadOptions, root: &Path, files: &[PathBuf]) -> u64 {
    let mut h = KeyHasher::new();
    h.u64(u64::from(cache::VERSION)).bytes(format.name().as_bytes());
    h.bytes(canonical.to_string_lossy().as_bytes()).bytes(opts.split.name().as_bytes());
    match opts.resize {
        Some((rh, rw)) => h.u64(1).u64(rh as u64).u64(rw as u64),
        None => h.u64(0),
    };
    h.u64(files.len() as u64);
    for f in files {
        cache::hash_file(&mut h, root, f);
    }
    h.finish()
}

/// Resizes every image of `store` (keeping labels, classes and normalisation).
pub fn resize_store(store: &ImageStore, height: usize, width: usize) -> ImageStore {
    let (sh, sw) = (store.height as u32, store.width as u32);
    let n = height * width * 3;
    let mut pixels = vec![0u8; store.len() * n];
    if n > 0 && sh > 0 && sw > 0 {
        pixels.par_chunks_mut(n).enumerate().for_each(|(i, dst)| {
            let src = image::RgbImage::from_raw(sw, sh, store.image(i).to_vec()).expect("image buffer size matches");
            dst.copy_from_slice(folder::resize_rgb(&src, height, width).as_raw());
        });
    }
    ImageStore {
        height,
        width,
        pixels,
        labels: store.labels.clone(),
        classes: store.classes.clone(),
        mean: store.mean,
        std: store.std,
    }
}
