//! Decoding a listed dataset (image files or shard members) into a store: streamed in chunks,
//! in parallel, straight into the cache file when there is one, so memory stays bounded by a
//! chunk whatever the dataset's size.

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageReader, RgbImage};
use rayon::prelude::*;

use crate::cache::{CacheWriter, Normalization};
use crate::progress::Progress;
use crate::{DataError, ImageStore};

/// How decoded images of any size are brought to the store's one size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fit {
    /// Every image must already have the same size.
    #[default]
    Exact,
    /// Resize to `(height, width)` (bilinear), aspect ratio not kept (`data.resize`).
    Resize(usize, usize),
    /// Resize the shorter side to `S` (antialiased bilinear), then centre-crop `S x S`, as
    /// torchvision's `Resize(S)` + `CenterCrop(S)` do (`data.image_size`).
    ShortSide(usize),
}

impl Fit {
    /// The size every image has after the fit, when the fit decides it.
    pub fn target(self) -> Option<(usize, usize)> {
        match self {
            Fit::Exact => None,
            Fit::Resize(h, w) => Some((h, w)),
            Fit::ShortSide(s) => Some((s, s)),
        }
    }
}

/// torchvision's `Resize(s)` output size for an `h x w` image: the shorter side becomes `s`, the
/// longer `floor(s * long / short)` (Python's `int(s * long / short)`).
pub fn short_side_size(h: usize, w: usize, s: usize) -> (usize, usize) {
    if w <= h {
        (s * h / w.max(1), s)
    } else {
        (s, s * w / h.max(1))
    }
}

/// torchvision's `CenterCrop` offset of a crop `excess` pixels smaller than the image:
/// `int(round(excess / 2.0))`, Python rounding half to even.
pub fn center_crop_offset(excess: usize) -> usize {
    let half = excess / 2;
    if excess % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Bilinear (triangle filter, antialiased when shrinking: its support grows with the scale) resize,
/// as Pillow's `resize(BILINEAR)` and torchvision's `Resize(antialias=True)` compute it: the one
/// resampling used for every format.
pub(crate) fn resize_rgb(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    use fast_image_resize::{
        images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let (w, h) = (width as u32, height as u32);
    // u8 buffers have no alignment requirement and the sizes match, so these cannot fail.
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3).expect("an RGB8 image");
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &opts).expect("RGB8 to RGB8 resize");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("a w x h x 3 buffer")
}

/// Applies `fit` to one decoded image.
pub(crate) fn fit_rgb(img: RgbImage, fit: Fit) -> RgbImage {
    let (h, w) = (img.height() as usize, img.width() as usize);
    match fit {
        Fit::Exact => img,
        Fit::Resize(rh, rw) if (rh, rw) == (h, w) => img,
        Fit::Resize(rh, rw) => resize_rgb(&img, rh, rw),
        Fit::ShortSide(s) => {
            let (nh, nw) = short_side_size(h, w, s);
            let img = if (nh, nw) == (h, w) { img } else { resize_rgb(&img, nh, nw) };
            if (nh, nw) == (s, s) {
                return img;
            }
            let (top, left) = (center_crop_offset(nh - s), center_crop_offset(nw - s));
            image::imageops::crop_imm(&img, left as u32, top as u32, s as u32, s as u32).to_image()
        }
    }
}

/// Where the encoded bytes of one sample are.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// An image file (ImageFolder).
    File(PathBuf),
    /// A member of a tar shard: `len` bytes at `offset` (WebDataset).
    Member { shard: Arc<PathBuf>, key: String, offset: u64, len: u64 },
}

impl Source {
    fn read(&self) -> Result<Vec<u8>, DataError> {
        match self {
            Source::File(path) => std::fs::read(path).map_err(|e| DataError::io(path, e)),
            Source::Member { shard, offset, len, .. } => {
                let mut buf = vec![0u8; *len as usize];
                let file = File::open(shard.as_path()).map_err(|e| DataError::io(shard.as_path(), e))?;
                read_exact_at(&file, &mut buf, *offset)
                    .map_err(|e| self.error(format!("cannot read its bytes: {e}")))?;
                Ok(buf)
            }
        }
    }

    /// The error for this sample, naming the file, or the shard and the key.
    pub(crate) fn error(&self, message: String) -> DataError {
        match self {
            Source::File(path) => DataError::Decode { path: path.clone(), message },
            Source::Member { shard, key, .. } => {
                DataError::ShardSample { shard: shard.as_path().to_path_buf(), key: key.clone(), message }
            }
        }
    }

    /// The error for bytes that are not an image.
    fn undecodable(&self, message: String) -> DataError {
        match self {
            Source::File(_) => self.error(message),
            Source::Member { .. } => self.error(format!("not a readable JPEG/PNG image: {message}")),
        }
    }

    fn reader(&self) -> Result<ImageReader<Cursor<Vec<u8>>>, DataError> {
        let reader = ImageReader::new(Cursor::new(self.read()?))
            .with_guessed_format()
            .map_err(|e| self.undecodable(e.to_string()))?;
        if reader.format().is_none() {
            return Err(self.undecodable("unknown file format".into()));
        }
        Ok(reader)
    }

    /// Decodes to RGB (grayscale replicated, alpha dropped) and applies `fit`.
    pub(crate) fn decode(&self, fit: Fit) -> Result<RgbImage, DataError> {
        let img = self.reader()?.decode().map_err(|e| self.undecodable(e.to_string()))?.into_rgb8();
        Ok(fit_rgb(img, fit))
    }

    /// `(height, width)` from the image header alone.
    fn dimensions(&self) -> Result<(usize, usize), DataError> {
        let (w, h) = self.reader()?.into_dimensions().map_err(|e| self.undecodable(e.to_string()))?;
        Ok((h as usize, w as usize))
    }

    /// The image file, for an ImageFolder sample.
    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            Source::File(p) => Some(p),
            Source::Member { .. } => None,
        }
    }

    /// A path for the mixed-sizes report: the file, or `shard:key`.
    fn display_path(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Member { shard, key, .. } => PathBuf::from(format!("{}:{key}", shard.display())),
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// A listed dataset: its classes and its samples with their labels, in load order.
pub(crate) struct SampleList {
    pub(crate) classes: Vec<String>,
    pub(crate) samples: Vec<(Source, u32)>,
}

/// Images decoded per chunk: bounds memory (a chunk of decoded images) and keeps every core busy.
const CHUNK: usize = 512;

/// Where a stream writes: the cache file, or memory.
enum Sink {
    Cache(CacheWriter),
    Memory(Vec<u8>),
}

/// The cache a decode streams into: the final file name, its held lock and its key.
pub(crate) struct CacheTarget {
    pub(crate) path: PathBuf,
    pub(crate) lock: File,
    pub(crate) key: u64,
}

/// Decodes every sample of `list` in order, `CHUNK` at a time in parallel, into the cache (mapped
/// store) or into memory; mean/std are the images'. The second value says why the cache could
/// not be started, when it could not (the load itself then succeeds from memory).
pub(crate) fn stream(
    list: &SampleList,
    fit: Fit,
    progress: bool,
    cache: Option<CacheTarget>,
) -> Result<(ImageStore, Option<String>), DataError> {
    let bar = Progress::new(progress, list.samples.len() as u64, "decoding images");
    let mut cache = cache;
    let mut sink: Option<Sink> = None;
    let mut size = fit.target();
    let mut cache_error = None;
    for chunk in list.samples.chunks(CHUNK) {
        // Every result of the chunk, then the first failure in order: the error does not depend
        // on thread scheduling.
        let decoded: Vec<Result<RgbImage, DataError>> = chunk
            .par_iter()
            .map(|(src, _)| {
                let r = src.decode(fit);
                bar.inc(1);
                r
            })
            .collect();
        let images = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (h, w) = *size.get_or_insert_with(|| (images[0].height() as usize, images[0].width() as usize));
        if images.iter().any(|im| (im.height() as usize, im.width() as usize) != (h, w)) {
            return Err(mixed_sizes(list)?);
        }
        let sink = sink.get_or_insert_with(|| match cache.take() {
            Some(t) => match CacheWriter::create(&t.path, t.lock, t.key, h, w) {
                Ok(wr) => Sink::Cache(wr),
                Err(e) => {
                    cache_error = Some(format!("{}: {e}", t.path.display()));
                    Sink::Memory(Vec::new())
                }
            },
            None => Sink::Memory(Vec::with_capacity(list.samples.len() * h * w * 3)),
        });
        match sink {
            Sink::Memory(px) => images.iter().for_each(|im| px.extend_from_slice(im.as_raw())),
            Sink::Cache(wr) => {
                let mut buf = Vec::with_capacity(images.len() * h * w * 3);
                images.iter().for_each(|im| buf.extend_from_slice(im.as_raw()));
                if h * w > 0 {
                    wr.push(&buf).map_err(|e| DataError::io(wr.partial(), e))?;
                }
            }
        }
    }
    bar.finish();
    let labels: Vec<u32> = list.samples.iter().map(|s| s.1).collect();
    let (h, w) = size.unwrap_or((0, 0));
    let store = match sink {
        Some(Sink::Cache(wr)) => {
            let partial = wr.partial().to_path_buf();
            let (wh, ww) = wr.image_size();
            debug_assert_eq!((wh, ww), (h, w));
            wr.finish(labels, list.classes.clone(), Normalization::FromPixels).map_err(|e| DataError::io(partial, e))?
        }
        Some(Sink::Memory(px)) => {
            let store = ImageStore::new(h, w, px, labels, list.classes.clone(), [0.0; 3], [1.0; 3])?;
            let (mean, std) = store.channel_stats();
            store.with_stats(mean, std)
        }
        None => ImageStore::new(h, w, Vec::new(), labels, list.classes.clone(), [0.0; 3], [1.0; 3])?,
    };
    Ok((store, cache_error))
}

/// The [`DataError::MixedSizes`] report: each distinct size with the first sample of that size,
/// from the image headers alone.
fn mixed_sizes(list: &SampleList) -> Result<DataError, DataError> {
    let dims: Vec<Result<(usize, usize), DataError>> = list.samples.par_iter().map(|(s, _)| s.dimensions()).collect();
    let mut sizes: Vec<(usize, usize, PathBuf)> = Vec::new();
    for (d, (src, _)) in dims.into_iter().zip(&list.samples) {
        let (h, w) = d?;
        if !sizes.iter().any(|s| (s.0, s.1) == (h, w)) {
            sizes.push((h, w, src.display_path()));
        }
    }
    Ok(DataError::MixedSizes { sizes })
}

/// Decodes one image file with `fit` (tools and tests).
pub fn decode_image_file(path: &Path, fit: Fit) -> Result<RgbImage, DataError> {
    Source::File(path.to_path_buf()).decode(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_sizes_match_torchvision() {
        // torchvision.transforms.Resize(256) on PIL images of these (h, w).
        assert_eq!(short_side_size(375, 500, 256), (256, 341));
        assert_eq!(short_side_size(500, 375, 256), (341, 256));
        assert_eq!(short_side_size(32, 32, 24), (24, 24));
        assert_eq!(short_side_size(333, 334, 64), (64, 64));
        assert_eq!(short_side_size(100, 299, 64), (64, 191));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // int(round(e / 2.0)) in Python for e = 0..8.
        let want = [0, 0, 1, 2, 2, 2, 3, 4, 4];
        for (e, &o) in want.iter().enumerate() {
            assert_eq!(center_crop_offset(e), o, "excess {e}");
        }
    }

    #[test]
    fn short_side_fit_keeps_the_centre() {
        // A 20x40 image: red columns 0..10, green 10..30, blue 30..40. Resize(10) -> 10x20 (red
        // 0..5, green 5..15, blue 15..20), then CenterCrop(10) keeps columns 5..15: green.
        let img = RgbImage::from_fn(40, 20, |x, _| match x {
            0..10 => image::Rgb([255, 0, 0]),
            10..30 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let out = fit_rgb(img, Fit::ShortSide(10));
        assert_eq!((out.width(), out.height()), (10, 10));
        assert_eq!(out.get_pixel(5, 5).0, [0, 255, 0]);
        assert!(out.pixels().all(|p| p.0[1] > 128), "a red or blue column survived the crop");
        let tall = fit_rgb(RgbImage::new(7, 30), Fit::ShortSide(5));
        assert_eq!((tall.width(), tall.height()), (5, 5));
    }

    /// One axis of Pillow's antialiased bilinear resample in f64: output `i` has its centre at
    /// `(i + 0.5) * scale` in the input, a triangle of half-width `max(scale, 1)` around it, the
    /// weights normalised over the input pixels they cover.
    fn reference_axis(src: &[f64], n_out: usize) -> Vec<f64> {
        let scale = src.len() as f64 / n_out as f64;
        let support = scale.max(1.0);
        (0..n_out)
            .map(|i| {
                let centre = (i as f64 + 0.5) * scale;
                let lo = (centre - support).floor().max(0.0) as usize;
                let hi = ((centre + support).ceil() as usize).min(src.len());
                let w: Vec<f64> =
                    (lo..hi).map(|j| (1.0 - ((j as f64 + 0.5 - centre) / support).abs()).max(0.0)).collect();
                let total: f64 = w.iter().sum();
                (lo..hi).zip(&w).map(|(j, w)| src[j] * w).sum::<f64>() / total
            })
            .collect()
    }

    /// The resize against the f64 reference (rows, then columns; the rounding of the
    /// intermediate pass and the fixed-point weights allow 1-2 levels) on noise of awkward
    /// sizes, shrinking by non-integer factors and enlarging.
    #[test]
    fn resize_matches_the_f64_antialiased_bilinear() {
        let mut rng = crate::SeededRng::new(3);
        for (h, w, nh, nw) in [(37, 53, 10, 17), (101, 67, 64, 23), (9, 13, 20, 31), (48, 48, 48, 17)] {
            let px: Vec<u8> = (0..h * w * 3).map(|_| (rng.below(256)) as u8).collect();
            let img = RgbImage::from_raw(w as u32, h as u32, px.clone()).unwrap();
            let got = resize_rgb(&img, nh, nw);
            let (mut worst, mut sum) = (0f64, 0f64);
            for c in 0..3 {
                // Horizontal pass per row, then vertical per column.
                let rows: Vec<Vec<f64>> = (0..h)
                    .map(|y| {
                        reference_axis(&(0..w).map(|x| f64::from(px[(y * w + x) * 3 + c])).collect::<Vec<_>>(), nw)
                    })
                    .collect();
                for x in 0..nw {
                    let col = reference_axis(&rows.iter().map(|r| r[x]).collect::<Vec<_>>(), nh);
                    for (y, want) in col.iter().enumerate() {
                        let d = (f64::from(got.get_pixel(x as u32, y as u32).0[c]) - want).abs();
                        worst = worst.max(d);
                        sum += d;
                    }
                }
            }
            let mean = sum / (nh * nw * 3) as f64;
            assert!(worst <= 2.0 && mean <= 0.6, "{h}x{w} -> {nh}x{nw}: worst {worst:.2}, mean {mean:.3} levels");
        }
    }
}
