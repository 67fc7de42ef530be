//! The decoded dataset: every image once, as u8 HWC, all of one size.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;

use crate::{DataError, Pixels, SeededRng};

/// CIFAR-10 training-set channel mean of `x / 255` (docs/DEFINITIONS.md §1).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 training-set channel std of `x / 255` (docs/DEFINITIONS.md §1).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// All images of a dataset, decoded once to u8 HWC row-major, with their labels.
///
/// The pixels are in memory or a map of a cache file ([`Pixels`]). A subset of a mapped store
/// is a view (an index into the same map), so a hold-out split copies no pixels; use
/// [`ImageStore::image`] (or [`ImageStore::contiguous_pixels`]) rather than slicing `pixels`.
///
/// Invariant: without a view, `pixels.len() == labels.len() * height * width * 3`; with one,
/// `pixels` holds whole images and every view entry indexes one. Every label indexes `classes`
/// ([`ImageStore::new`] checks it).
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub height: usize,
    pub width: usize,
    /// Whole images, each HWC row-major: `len()` of them without a view.
    pub pixels: Pixels,
    /// Image `i` of this store is image `view[i]` of `pixels` (`None`: image `i`).
    view: Option<Arc<[u32]>>,
    pub labels: Vec<u32>,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Per-channel normalisation of `x / 255` used by the patch gathers.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageStore {
    /// Builds a store, checking the invariant.
    pub fn new(
        height: usize,
        width: usize,
        pixels: impl Into<Pixels>,
        labels: Vec<u32>,
        classes: Vec<String>,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self, DataError> {
        let store = ImageStore { height, width, pixels: pixels.into(), view: None, labels, classes, mean, std };
        store.validate()?;
        Ok(store)
    }

    /// Checks the field invariants (useful after building or editing a store by hand).
    pub fn validate(&self) -> Result<(), DataError> {
        let images = self.view.as_ref().map_or(self.labels.len(), |_| self.stored_images());
        let expect = images.checked_mul(self.image_bytes());
        if expect != Some(self.pixels.len()) {
            return Err(DataError::InvalidStore(format!(
                "{} pixel bytes for {} images of {}x{}x3",
                self.pixels.len(),
                self.labels.len(),
                self.height,
                self.width
            )));
        }
        if let Some(view) = &self.view {
            let stored = self.stored_images();
            if view.len() != self.labels.len() || view.iter().any(|&v| v as usize >= stored) {
                return Err(DataError::InvalidStore(format!(
                    "a view of {} images with {} labels over {stored} stored images",
                    view.len(),
                    self.labels.len()
                )));
            }
        }
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|(_, &l)| l as usize >= self.classes.len()) {
            return Err(DataError::InvalidStore(format!(
                "image {i} has label {l}, but there are {} classes",
                self.classes.len()
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DataError::InvalidStore(format!("std {:?} must be finite and positive", self.std)));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image, `height * width * 3`.
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Whole images held in `pixels` (more than `len()` for a view).
    fn stored_images(&self) -> usize {
        self.pixels.len().checked_div(self.image_bytes()).unwrap_or(0)
    }

    /// Where image `i` of this store sits in `pixels`.
    fn stored_index(&self, i: usize) -> usize {
        self.view.as_ref().map_or(i, |v| v[i] as usize)
    }

    /// The view index (`None`: the store's images are `pixels` in order), for identity checks.
    pub fn view(&self) -> Option<&[u32]> {
        self.view.as_deref()
    }

    /// Image `i`, HWC.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "image {i} of a store of {}", self.len());
        let n = self.image_bytes();
        let s = self.stored_index(i);
        &self.pixels[s * n..(s + 1) * n]
    }

    /// Every image back to back, `len() * image_bytes()` bytes: borrowed unless this is a view.
    pub fn contiguous_pixels(&self) -> Cow<'_, [u8]> {
        if self.view.is_none() {
            return Cow::Borrowed(&self.pixels);
        }
        let mut out = Vec::with_capacity(self.len() * self.image_bytes());
        for i in 0..self.len() {
            out.extend_from_slice(self.image(i));
        }
        Cow::Owned(out)
    }

    /// The images at `idx`, in that order, with the same classes and normalisation. In-memory
    /// pixels are copied; a mapped store gives a view of the same map (no pixel is copied).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, idx: &[usize]) -> ImageStore {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            panic!("subset index {bad} of a store of {}", self.len());
        }
        let (pixels, view) = if self.pixels.is_mapped() {
            let view: Arc<[u32]> = idx.iter().map(|&i| self.stored_index(i) as u32).collect();
            (self.pixels.clone(), Some(view))
        } else {
            let n = self.image_bytes();
            let mut pixels = Vec::with_capacity(idx.len() * n);
            for &i in idx {
                pixels.extend_from_slice(self.image(i));
            }
            (Pixels::Owned(pixels), None)
        };
        ImageStore {
            height: self.height,
            width: self.width,
            pixels,
            view,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            mean: self.mean,
            std: self.std,
        }
    }

    /// Seeded hold-out split: `(train, held_out)` with `round(len * fraction)` images held out,
    /// chosen by a [`SeededRng`] permutation; both parts keep the original image order.
    ///
    /// Both parts keep this store's `mean`/`std`, so they are normalised identically (for
    /// CIFAR-10 those are the published constants; to use train-only statistics elsewhere, set
    /// them from `train.channel_stats()`). `fraction` is clamped to `[0, 1]`; NaN means 0.
    pub fn split_holdout(&self, fraction: f64, seed: u64) -> (ImageStore, ImageStore) {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        let n = self.len();
        let held = ((n as f64) * fraction).round() as usize;
        let perm = SeededRng::new(seed).permutation(n);
        let mut held_idx = perm[..held].to_vec();
        let mut train_idx = perm[held..].to_vec();
        held_idx.sort_unstable();
        train_idx.sort_unstable();
        (self.subset(&train_idx), self.subset(&held_idx))
    }

    /// Per-channel mean and (population) std of `pixels / 255` over all images.
    ///
    /// Sums are exact integers (u64), then f64. An empty store gives mean 0, std 1; a std is
    /// floored at 1e-3 so a constant channel cannot divide the normalisation by zero.
    pub fn channel_stats(&self) -> ([f32; 3], [f32; 3]) {
        if self.is_empty() || self.image_bytes() == 0 {
            return ([0.0; 3], [1.0; 3]);
        }
        let mut sums = ChannelSums::default();
        if self.view.is_none() {
            sums.add_par(&self.pixels);
        } else {
            sums = (0..self.len())
                .into_par_iter()
                .map(|i| {
                    let mut s = ChannelSums::default();
                    s.add(self.image(i));
                    s
                })
                .reduce(ChannelSums::default, ChannelSums::merge);
        }
        sums.stats()
    }

    /// This store with another normalisation (e.g. train-split statistics).
    pub fn with_stats(mut self, mean: [f32; 3], std: [f32; 3]) -> ImageStore {
        self.mean = mean;
        self.std = std;
        self
    }

    /// Number of images per class, index = label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Exact per-channel sums of u8 HWC pixels and of their squares: mean/std of `x / 255` without
/// rounding error, equal however the pixels are chunked (a streamed decode gets the statistics of
/// the store it writes).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChannelSums {
    sum: [u64; 3],
    sq: [u64; 3],
    count: u64,
}

impl ChannelSums {
    /// Adds whole pixels (a multiple of 3 bytes).
    pub(crate) fn add(&mut self, px: &[u8]) {
        for p in px.chunks_exact(3) {
            for (ch, &b) in p.iter().enumerate() {
                let v = u64::from(b);
                self.sum[ch] += v;
                self.sq[ch] += v * v;
            }
        }
        self.count += (px.len() / 3) as u64;
    }

    /// [`ChannelSums::add`] in parallel.
    pub(crate) fn add_par(&mut self, px: &[u8]) {
        const CHUNK: usize = 3 * 4096;
        let part = px
            .par_chunks(CHUNK)
            .map(|c| {
                let mut s = ChannelSums::default();
                s.add(c);
                s
            })
            .reduce(ChannelSums::default, ChannelSums::merge);
        *self = self.merge(part);
    }

    pub(crate) fn merge(self, o: ChannelSums) -> ChannelSums {
        let add = |a: [u64; 3], b: [u64; 3]| [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
        ChannelSums { sum: add(self.sum, o.sum), sq: add(self.sq, o.sq), count: self.count + o.count }
    }

    /// (mean, std) of `x / 255`: mean 0, std 1 without pixels; std floored at 1e-3.
    pub(crate) fn stats(&self) -> ([f32; 3], [f32; 3]) {
        let (sum, sq) = (self.sum, self.sq);
        if self.count == 0 {
            return ([0.0; 3], [1.0; 3]);
        }
        let count = self.count as f64;
        let mut mean = [0f32; 3];
        let mut std = [0f32; 3];
        for ch in 0..3 {
            let m = sum[ch] as f64 / count / 255.0;
            let var = (sq[ch] as f64 / count / (255.0 * 255.0) - m * m).max(0.0);
            mean[ch] = m as f32;
            std[ch] = (var.sqrt() as f32).max(1e-3);
        }
        (mean, std)
    }
}
