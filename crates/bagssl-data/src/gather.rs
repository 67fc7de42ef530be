//! CPU patch gather + augmentation (docs/DEFINITIONS.md §3 "Patch vector" and §8 "Evaluation grid").
//!
//! This is the CPU reference of the GPU patch-embedding kernel: both follow the same steps in
//! the same order in f32. Output rows are flattened (y, x, channel), HWC.

use std::ops::Range;

use rayon::prelude::*;

use crate::{ImageStore, Jitter, PatchSpec};

/// Luma weights used by jitter (contrast/saturation) and grayscale.
pub const GRAY_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// Patches per rayon task: a patch is only p*p*3 floats, far too little work to schedule alone.
const MIN_PATCHES_PER_TASK: usize = 32;

#[inline]
fn luma(px: &[f32]) -> f32 {
    px[0] * GRAY_WEIGHTS[0] + px[1] * GRAY_WEIGHTS[1] + px[2] * GRAY_WEIGHTS[2]
}

/// The value a plain patch (no jitter, no grayscale) gets for byte `b` of channel `c`:
/// `(b / 255 - mean[c]) / std[c]`, the arithmetic of [`write_patch`] in the same f32 steps,
/// tabulated once per gather so the evaluation grid costs a load per element, not two divisions.
struct PlainValues([[f32; 256]; 3]);

impl PlainValues {
    fn new(mean: &[f32; 3], std: &[f32; 3]) -> Self {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = (f32::from(b as u8) / 255.0 - mean[c]) / std[c];
            }
        }
        PlainValues(t)
    }
}

/// Where a `p x p` patch sits in its image, and whether it is mirrored left-right.
#[derive(Clone, Copy)]
struct Crop {
    oy: usize,
    ox: usize,
    flip: bool,
    p: usize,
}

/// The crop `c` of the HWC image `img` (`width` wide) into `out` (HWC) as `value(channel, byte)`.
#[inline(always)]
fn crop(img: &[u8], width: usize, c: Crop, out: &mut [f32], value: impl Fn(usize, u8) -> f32) {
    let Crop { oy, ox, flip, p } = c;
    for y in 0..p {
        let row = &img[((oy + y) * width + ox) * 3..][..p * 3];
        let dst = &mut out[y * p * 3..][..p * 3];
        for x in 0..p {
            let sx = if flip { p - 1 - x } else { x };
            for c in 0..3 {
                dst[x * 3 + c] = value(c, row[sx * 3 + c]);
            }
        }
    }
}

/// The normalisation of a store: its per-channel mean and std, and their values for every byte.
struct Norm<'n> {
    mean: &'n [f32; 3],
    std: &'n [f32; 3],
    plain: &'n PlainValues,
}

/// Writes one patch vector into `out` (`p*p*3` floats), using `out` itself as scratch so the
/// gathers allocate nothing. `img` is the whole HWC image, `width` its width. Patches without
/// jitter or grayscale take `norm.plain`'s values.
fn write_patch(
    img: &[u8],
    width: usize,
    c: Crop,
    jitter: Option<Jitter>,
    gray: bool,
    norm: &Norm<'_>,
    out: &mut [f32],
) {
    let Norm { mean, std, plain } = *norm;
    let p = c.p;
    if jitter.is_none() && !gray {
        crop(img, width, c, out, |ch, b| plain.0[ch][usize::from(b)]);
        return;
    }
    // 1. crop / 255, mirrored left-right if flip.
    crop(img, width, c, out, |_, b| f32::from(b) / 255.0);
    // 2. jitter: brightness, contrast around the patch's mean luma, saturation, clamp.
    if let Some(j) = jitter {
        let mut sum = 0f32;
        for px in out.chunks_exact_mut(3) {
            for v in px.iter_mut() {
                *v *= j.brightness;
            }
            sum += luma(px);
        }
        let m = sum / (p * p) as f32;
        for px in out.chunks_exact_mut(3) {
            for v in px.iter_mut() {
                *v = (*v - m) * j.contrast + m;
            }
            let g = luma(px);
            for v in px.iter_mut() {
                *v = ((*v - g) * j.saturation + g).clamp(0.0, 1.0);
            }
        }
    }
    // 3. grayscale, 4. normalise.
    for px in out.chunks_exact_mut(3) {
        if gray {
            let g = luma(px);
            px.fill(g);
        }
        for c in 0..3 {
            px[c] = (px[c] - mean[c]) / std[c];
        }
    }
}

/// Gathers and augments `specs` from `store`, normalised with `store.mean`/`store.std`.
///
/// `out.len()` must be `specs.len() * patch * patch * 3`; row `i` is patch `i`, HWC. Runs in
/// parallel over patches and allocates nothing.
///
/// # Panics
/// On a wrong `out` length or a spec that does not fit the store (specs come from
/// [`crate::PatchSampler`], so either is a programming error).
pub fn gather_patches(store: &ImageStore, specs: &[PatchSpec], patch: usize, out: &mut [f32]) {
    let d = patch * patch * 3;
    assert_eq!(
        out.len(),
        specs.len() * d,
        "gather_patches: out has {} floats, need {} specs x {d}",
        out.len(),
        specs.len()
    );
    if d == 0 {
        return;
    }
    let (h, w) = (store.height, store.width);
    let plain = PlainValues::new(&store.mean, &store.std);
    let norm = Norm { mean: &store.mean, std: &store.std, plain: &plain };
    out.par_chunks_mut(d).zip(specs.par_iter()).with_min_len(MIN_PATCHES_PER_TASK).for_each(|(dst, s)| {
        let (oy, ox) = (s.oy as usize, s.ox as usize);
        assert!(
            (s.image as usize) < store.len() && oy + patch <= h && ox + patch <= w,
            "gather_patches: spec {s:?} does not fit {} images of {h}x{w} with patch {patch}",
            store.len()
        );
        let img = store.image(s.image as usize);
        let c = Crop { oy, ox, flip: s.flip, p: patch };
        write_patch(img, w, c, s.jitter, s.gray, &norm, dst);
    });
}

/// Number of grid positions along one side: `oy = 0, s, 2s, ... <= len - p`.
fn grid_steps(len: usize, patch: usize, stride: usize) -> usize {
    if patch == 0 || patch > len {
        0
    } else {
        (len - patch) / stride + 1
    }
}

/// Number of grid patches per image, `grid_positions(..).len()` without allocating.
///
/// # Panics
/// If `stride == 0`.
pub fn grid_len(height: usize, width: usize, patch: usize, stride: usize) -> usize {
    assert!(stride > 0, "grid stride must be at least 1");
    grid_steps(height, patch, stride) * grid_steps(width, patch, stride)
}

/// Evaluation grid (docs/DEFINITIONS.md §8): `oy = 0, s, 2s, ... <= H - p`, same for `ox`, row-major over
/// `(oy, ox)` like `unfold`. Empty when the patch does not fit.
///
/// # Panics
/// If `stride == 0`.
pub fn grid_positions(height: usize, width: usize, patch: usize, stride: usize) -> Vec<(usize, usize)> {
    let nx = grid_steps(width, patch, stride);
    let ny = grid_len(height, width, patch, stride).checked_div(nx).unwrap_or(0);
    (0..ny).flat_map(|iy| (0..nx).map(move |ix| (iy * stride, ix * stride))).collect()
}

/// All grid patches (normalised, no augmentation) of the images in `images`, image-major then
/// grid position. `out.len()` must be `images.len() * grid_len(..) * patch * patch * 3`.
/// Parallel over patches; allocates nothing.
///
/// # Panics
/// On a wrong `out` length, an image range past the store, or `stride == 0`.
pub fn gather_grid(store: &ImageStore, images: Range<usize>, patch: usize, stride: usize, out: &mut [f32]) {
    let (h, w) = (store.height, store.width);
    let per_image = grid_len(h, w, patch, stride);
    let nx = grid_steps(w, patch, stride);
    let d = patch * patch * 3;
    assert!(images.end <= store.len(), "gather_grid: images {images:?} past the {} stored", store.len());
    let n_patches = images.len() * per_image;
    assert_eq!(out.len(), n_patches * d, "gather_grid: out has {} floats, need {n_patches} patches x {d}", out.len());
    if n_patches == 0 || d == 0 {
        return;
    }
    let first = images.start;
    let plain = PlainValues::new(&store.mean, &store.std);
    let norm = Norm { mean: &store.mean, std: &store.std, plain: &plain };
    out.par_chunks_mut(d).enumerate().with_min_len(MIN_PATCHES_PER_TASK).for_each(|(k, dst)| {
        let (img, t) = (first + k / per_image, k % per_image);
        let (oy, ox) = ((t / nx) * stride, (t % nx) * stride);
        write_patch(store.image(img), w, Crop { oy, ox, flip: false, p: patch }, None, false, &norm, dst);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tabulated plain path gives, bit for bit, the step-by-step arithmetic of the general
    /// path (crop / 255, then normalise), flipped or not, for every byte value.
    #[test]
    fn plain_table_matches_the_arithmetic() {
        let (p, width) = (4usize, 9usize);
        let img: Vec<u8> = (0..width * 7 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let (mean, std) = ([0.4914f32, 0.4822, 0.4465], [0.247f32, 0.2435, 0.2616]);
        let plain = PlainValues::new(&mean, &std);
        for b in 0..=255u8 {
            for c in 0..3 {
                let want = (f32::from(b) / 255.0 - mean[c]) / std[c];
                assert_eq!(plain.0[c][usize::from(b)].to_bits(), want.to_bits());
            }
        }
        for flip in [false, true] {
            let mut got = vec![f32::NAN; p * p * 3];
            let norm = Norm { mean: &mean, std: &std, plain: &plain };
            write_patch(&img, width, Crop { oy: 2, ox: 3, flip, p }, None, false, &norm, &mut got);
            for y in 0..p {
                for x in 0..p {
                    let sx = if flip { p - 1 - x } else { x };
                    for c in 0..3 {
                        let b = img[((2 + y) * width + 3 + sx) * 3 + c];
                        let want = (f32::from(b) / 255.0 - mean[c]) / std[c];
                        assert_eq!(got[(y * p + x) * 3 + c].to_bits(), want.to_bits(), "flip {flip} ({y}, {x}, {c})");
                    }
                }
            }
        }
    }
}
