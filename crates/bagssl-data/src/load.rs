//! Format detection, loading options and the cached load entry points.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cache::{self, KeyHasher};
use crate::decode::{self, fit_rgb, CacheTarget, Fit, SampleList};
use crate::{cifar, folder, webdataset, DataError, ImageStore};

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
    /// `root/<class>/*.{jpg,jpeg,png}`, optionally under `train/` and `test/`; any image sizes
    /// with a fit.
    ImageFolder,
    /// WebDataset tar shards: a folder of `*.tar`, one `.tar`, or a brace pattern
    /// (`train-{000000..000146}.tar`); samples `KEY.jpg|jpeg|png` + `KEY.cls`.
    WebDataset,
}

impl DatasetFormat {
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::CifarBinary => "cifar10",
            DatasetFormat::ImageFolder => "imagefolder",
            DatasetFormat::WebDataset => "webdataset",
        }
    }
}

/// How to load a dataset.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub split: Split,
    /// `(height, width)`: resize every image (bilinear). `None`: all images must share one size
    /// (unless `image_size` is set).
    pub resize: Option<(usize, usize)>,
    /// `S`: resize the shorter side to `S` (antialiased), then centre-crop `S x S`, as
    /// torchvision's `Resize(S)` + `CenterCrop(S)`; for folders and shards of any image sizes.
    /// Exclusive with `resize`.
    pub image_size: Option<usize>,
    /// Folder for decoded-store caches (`None`: decode into memory), created if missing. One file
    /// per (format, canonical path or pattern, split, fit, source files' names/sizes/mtimes):
    /// `bagssl-<format>-<split>-<16 hex key>.bin`, which later loads map instead of reading into
    /// memory; stale entries are never deleted, just no longer matched. See
    /// [`LoadReport::cache_file`].
    pub cache_dir: Option<PathBuf>,
    /// Show a progress bar on stderr while decoding.
    pub progress: bool,
}

impl LoadOptions {
    /// The fit these options ask for.
    pub fn fit(&self) -> Result<Fit, DataError> {
        match (self.resize, self.image_size) {
            (Some(_), Some(_)) => Err(DataError::InvalidFit("resize and image_size are both set; choose one".into())),
            (Some((height, width)), None) if height == 0 || width == 0 => {
                Err(DataError::InvalidResize { height, width })
            }
            (Some((h, w)), None) => Ok(Fit::Resize(h, w)),
            (None, Some(0)) => Err(DataError::InvalidFit("image_size must be at least 1".into())),
            (None, Some(s)) => Ok(Fit::ShortSide(s)),
            (None, None) => Ok(Fit::Exact),
        }
    }
}

/// What [`load_with_report`] did, for logs and tests.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub format: DatasetFormat,
    /// The folder actually read: the batch folder, the ImageFolder class root, or the folder of
    /// the first shard.
    pub root: PathBuf,
    /// Number of source files the store depends on (images, batch files or shards).
    pub source_files: usize,
    /// The store was mapped from an existing cache instead of decoded.
    pub from_cache: bool,
    /// The cache file for this dataset, options and file list (`None` without `cache_dir`).
    pub cache_file: Option<PathBuf>,
    /// Why the cache could not be written, if it could not (the load itself still succeeded,
    /// into memory).
    pub cache_write_error: Option<String>,
}

/// Detects the format of `path`: a brace pattern or a `.tar` file, or a folder of `*.tar` files
/// without sub-folders, is [`DatasetFormat::WebDataset`]; a folder with CIFAR-10 batch files
/// (directly or in `cifar-10-batches-bin/`) is [`DatasetFormat::CifarBinary`]; any other folder
/// is an ImageFolder.
pub fn detect_format(path: &Path) -> Result<DatasetFormat, DataError> {
    if webdataset::is_shard_spec(path) {
        return Ok(DatasetFormat::WebDataset);
    }
    let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_dir() {
        return Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "a file; expected a CIFAR-10 binary folder, an ImageFolder folder or .tar shards".into(),
        });
    }
    if cifar::batch_dir(path).is_some() {
        return Ok(DatasetFormat::CifarBinary);
    }
    Ok(if webdataset::shards_in_dir(path)?.is_some() { DatasetFormat::WebDataset } else { DatasetFormat::ImageFolder })
}

/// Loads the dataset at `path` (format auto-detected) with `opts`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<ImageStore, DataError> {
    load_with_report(path, opts).map(|(store, _)| store)
}

/// What is decoded once the cache missed.
enum Plan {
    Cifar,
    Samples(SampleList),
    Shards(Vec<PathBuf>),
}

/// [`load`], also saying where the data came from (cache hit or decode).
pub fn load_with_report(path: &Path, opts: &LoadOptions) -> Result<(ImageStore, LoadReport), DataError> {
    let fit = opts.fit()?;
    let format = detect_format(path)?;
    let canonical = if format == DatasetFormat::WebDataset && !path.exists() {
        path.to_path_buf() // a pattern: its shards are canonicalised one by one
    } else {
        fs::canonicalize(path).map_err(|e| DataError::io(path, e))?
    };

    // Resolve the source files first: the cache key depends on them.
    let (root, files, plan) = match format {
        DatasetFormat::CifarBinary => {
            let dir = cifar::batch_dir(&canonical).ok_or_else(|| DataError::NotFound { path: canonical.clone() })?;
            if let Some(missing) = cifar::split_files(&dir, opts.split).into_iter().find(|f| !f.is_file()) {
                return Err(DataError::NotFound { path: missing });
            }
            let files = cifar::source_files(&dir, opts.split);
            (dir, files, Plan::Cifar)
        }
        DatasetFormat::ImageFolder => {
            let root = folder::class_root(&canonical, opts.split)?;
            let list = folder::list(&root)?;
            let files = list.samples.iter().filter_map(|s| s.0.file().map(Path::to_path_buf)).collect();
            (root, files, Plan::Samples(list))
        }
        DatasetFormat::WebDataset => {
            let shards = webdataset::resolve_shards(&canonical)?
                .into_iter()
                .map(|s| fs::canonicalize(&s).map_err(|e| DataError::io(&s, e)))
                .collect::<Result<Vec<_>, _>>()?;
            let root = shards[0].parent().map_or_else(PathBuf::new, Path::to_path_buf);
            (root, shards.clone(), Plan::Shards(shards))
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

    // A cache hit maps the file; a miss takes the decode lock (another process may be decoding
    // the same dataset: after it, its file is there) and streams into the cache.
    let mut target = None;
    if let Some(dir) = &opts.cache_dir {
        let key = cache_key(format, &canonical, opts.split, fit, &root, &files);
        let file = cache::cache_file(dir, format.name(), opts.split.name(), key);
        report.cache_file = Some(file.clone());
        if let Some(store) = cache::open_mapped(&file, key) {
            report.from_cache = true;
            return Ok((store, report));
        }
        match cache::lock(&file) {
            Ok(lock) => {
                if let Some(store) = cache::open_mapped(&file, key) {
                    report.from_cache = true;
                    return Ok((store, report));
                }
                target = Some(CacheTarget { path: file, lock, key });
            }
            Err(e) => report.cache_write_error = Some(format!("{}: {e}", file.display())),
        }
    }

    let store = match plan {
        Plan::Cifar => {
            let mut store = cifar::load(&root, opts.split, opts.progress)?;
            if fit.target().is_some_and(|t| t != (store.height, store.width)) {
                store = fit_store(&store, fit);
            }
            match target {
                Some(t) => match cache::write_store(&t.path, t.lock, t.key, &store) {
                    Ok(mapped) => mapped,
                    Err(e) => {
                        report.cache_write_error = Some(format!("{}: {e}", t.path.display()));
                        store
                    }
                },
                None => store,
            }
        }
        Plan::Samples(list) => stream_into(&list, fit, opts.progress, target, &mut report)?,
        Plan::Shards(shards) => stream_into(&webdataset::list(&shards)?, fit, opts.progress, target, &mut report)?,
    };
    Ok((store, report))
}

fn stream_into(
    list: &SampleList,
    fit: Fit,
    progress: bool,
    target: Option<CacheTarget>,
    report: &mut LoadReport,
) -> Result<ImageStore, DataError> {
    let (store, cache_error) = decode::stream(list, fit, progress, target)?;
    if cache_error.is_some() {
        report.cache_write_error = cache_error;
    }
    Ok(store)
}

fn cache_key(format: DatasetFormat, canonical: &Path, split: Split, fit: Fit, root: &Path, files: &[PathBuf]) -> u64 {
    let mut h = KeyHasher::new();
    h.u64(u64::from(cache::VERSION)).bytes(format.name().as_bytes());
    h.bytes(canonical.to_string_lossy().as_bytes()).bytes(split.name().as_bytes());
    match fit {
        Fit::Exact => h.u64(0),
        Fit::Resize(rh, rw) => h.u64(1).u64(rh as u64).u64(rw as u64),
        Fit::ShortSide(s) => h.u64(2).u64(s as u64),
    };
    h.u64(files.len() as u64);
    for f in files {
        cache::hash_file(&mut h, root, f);
    }
    h.finish()
}

/// Resizes every image of `store` (keeping labels, classes and normalisation).
pub fn resize_store(store: &ImageStore, height: usize, width: usize) -> ImageStore {
    fit_store(store, Fit::Resize(height, width))
}

/// Applies a fit that decides the size (not [`Fit::Exact`]) to every image of `store`.
fn fit_store(store: &ImageStore, fit: Fit) -> ImageStore {
    let (height, width) = fit.target().expect("a fit with a target size");
    let (sh, sw) = (store.height as u32, store.width as u32);
    let n = height * width * 3;
    let mut pixels = vec![0u8; store.len() * n];
    if n > 0 && sh > 0 && sw > 0 {
        pixels.par_chunks_mut(n).enumerate().for_each(|(i, dst)| {
            let src = image::RgbImage::from_raw(sw, sh, store.image(i).to_vec()).expect("image buffer size matches");
            dst.copy_from_slice(fit_rgb(src, fit).as_raw());
        });
    }
    ImageStore::new(height, width, pixels, store.labels.clone(), store.classes.clone(), store.mean, store.std)
        .expect("a resized store keeps its labels")
}
