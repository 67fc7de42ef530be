//! The decoded dataset: every image once, as u8 HWC, all of one size.

use rayon::prelude::*;

use crate::{DataError, SeededRng};

/// CIFAR-10 training-set channel mean of `x / 255` (docs/DEFINITIONS.md §1).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 training-set channel std of `x / 255` (docs/DEFINITIONS.md §1).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// All images of a dataset, decoded once to u8 HWC row-major, with their labels.
///
/// Invariant: `pixels.len() == labels.len() * height * width * 3` and every label indexes
/// `classes` ([`ImageStore::new`] checks it).
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub height: usize,
    pub width: usize,
    /// `len() * height * width * 3` bytes, each image HWC row-major.
    pub pixels: Vec<u8>,
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
        pixels: Vec<u8>,
        labels: Vec<u32>,
        classes: Vec<String>,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self, DataError> {
        let store = ImageStore { height, width, pixels, labels, classes, mean, std };
        store.validate()?;
        Ok(store)
    }

    /// Checks the field invariants (useful after building or editing a store by hand).
    pub fn validate(&self) -> Result<(), DataError> {
        let expect = self.labels.len().checked_mul(self.image_bytes());
        if expect != Some(self.pixels.len()) {
            return Err(DataError::InvalidStore(format!(
                "{} pixel bytes for {} images of {}x{}x3",
                self.pixels.len(),
                self.labels.len(),
                self.height,
                self.width
            )));
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

    /// Image `i`, HWC.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `idx`, in that order, with the same classes and normalisation.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, idx: &[usize]) -> ImageStore {
        let n = self.image_bytes();
        let mut pixels = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageStore {
            height: self.height,
            width: self.width,
            pixels,
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
        if self.pixels.is_empty() {
            return ([0.0; 3], [1.0; 3]);
        }
        const CHUNK: usize = 3 * 4096;
        let (sum, sq) = self
            .pixels
            .par_chunks(CHUNK)
            .map(|c| {
                let mut s = [0u64; 3];
                let mut q = [0u64; 3];
                for px in c.chunks_exact(3) {
                    for ch in 0..3 {
                        let v = u64::from(px[ch]);
                        s[ch] += v;
                        q[ch] += v * v;
                    }
                }
                (s, q)
            })
            .reduce(
                || ([0u64; 3], [0u64; 3]),
                |(a, b), (c, d)| ([a[0] + c[0], a[1] + c[1], a[2] + c[2]], [b[0] + d[0], b[1] + d[1], b[2] + d[2]]),
            );
        let count = (self.pixels.len() / 3) as f64;
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
