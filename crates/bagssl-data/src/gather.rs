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

/// Where a patch's crop box sits in its image, its output side, and whether it is mirrored.
#[derive(Clone, Copy)]
struct Crop {
    oy: usize,
    ox: usize,
    /// The box, `h x w` pixels; resized to `p x p` when it differs.
    h: usize,
    w: usize,
    flip: bool,
    p: usize,
}

impl Crop {
    fn square(oy: usize, ox: usize, flip: bool, p: usize) -> Crop {
        Crop { oy, ox, h: p, w: p, flip, p }
    }
    fn resized(&self) -> bool {
        self.h != self.p || self.w != self.p
    }
}

/// The crop `c` (unresized) of the HWC image `img` (`width` wide) into `out` (HWC) as
/// `value(channel, byte)`.
#[inline(always)]
fn crop(img: &[u8], width: usize, c: Crop, out: &mut [f32], value: impl Fn(usize, u8) -> f32) {
    let Crop { oy, ox, flip, p, .. } = c;
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

/// One axis of a bilinear resize from `len` source pixels to `out` (docs/DEFINITIONS.md §3 step
/// 1, PyTorch's `align_corners=False`): output `i` reads source pixels `i0` and `i1` with weights
/// `l0`, `l1`. The GPU kernel computes the same f32 expressions.
#[inline(always)]
pub(crate) fn linear_tap(i: usize, len: usize, out: usize) -> (usize, usize, f32, f32) {
    let scale = len as f32 / out as f32;
    let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(len - 1);
    let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    (i0, i1, 1.0 - l1, l1)
}

/// The box of `c` divided by 255 and resized bilinearly to `p x p` (then mirrored if `flip`),
/// into `out` (HWC).
fn crop_resized(img: &[u8], width: usize, c: Crop, out: &mut [f32]) {
    let Crop { oy, ox, h, w, flip, p } = c;
    let px = |y: usize, x: usize, ch: usize| f32::from(img[((oy + y) * width + ox + x) * 3 + ch]) / 255.0;
    for y in 0..p {
        let (y0, y1, h0, h1) = linear_tap(y, h, p);
        for x in 0..p {
            let (x0, x1, w0, w1) = linear_tap(if flip { p - 1 - x } else { x }, w, p);
            for ch in 0..3 {
                let top = w0 * px(y0, x0, ch) + w1 * px(y0, x1, ch);
                let bottom = w0 * px(y1, x0, ch) + w1 * px(y1, x1, ch);
                out[(y * p + x) * 3 + ch] = h0 * top + h1 * bottom;
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

/// What happens to a patch after the crop (docs/DEFINITIONS.md §3 steps 3-6).
#[derive(Clone, Copy, Default)]
struct Aug {
    jitter: Option<Jitter>,
    gray: bool,
    blur: Option<f32>,
    solarize: bool,
}

impl Aug {
    fn of(s: &PatchSpec) -> Aug {
        Aug { jitter: s.jitter, gray: s.gray, blur: s.blur, solarize: s.solarize }
    }
    fn none(&self) -> bool {
        self.jitter.is_none() && !self.gray && self.blur.is_none() && !self.solarize
    }
}

/// Half-width `K` of the blur kernel of `sigma` on a `p`-pixel side: `ceil(3 sigma)`, at most
/// `p - 1` so one reflection reaches every tap (docs/DEFINITIONS.md §3 step 5).
pub fn blur_radius(sigma: f32, p: usize) -> usize {
    ((3.0 * sigma).ceil() as usize).min(p.saturating_sub(1))
}

/// Weight of tap `t` of the normalised Gaussian of `sigma` and half-width `k` (f32, the
/// expression the GPU kernel uses).
#[inline(always)]
fn blur_weight(t: isize, sigma: f32, k: usize) -> f32 {
    let g = |t: f32| (-0.5 * (t / sigma) * (t / sigma)).exp();
    let mut sum = 0f32;
    for u in -(k as isize)..=(k as isize) {
        sum += g(u as f32);
    }
    g(t as f32) / sum
}

/// Reflect-padding index (PyTorch's `reflect`: -1 -> 1, p -> p - 2), for `|t| <= p - 1`.
#[inline(always)]
pub(crate) fn reflect(i: isize, p: usize) -> usize {
    let p = p as isize;
    let j = if i < 0 {
        -i
    } else if i >= p {
        2 * (p - 1) - i
    } else {
        i
    };
    j as usize
}

/// Separable Gaussian blur of the `p x p` HWC patch `x` in place: rows, then columns, with
/// reflect padding; `tmp` is `p * p * 3` floats of scratch.
fn blur(x: &mut [f32], tmp: &mut [f32], p: usize, sigma: f32) {
    let k = blur_radius(sigma, p);
    if k == 0 {
        return;
    }
    let mut w = [0f32; 64];
    let taps = 2 * k + 1;
    let heap: Vec<f32>;
    // The weights of one patch, on the stack unless the kernel is very wide.
    let weights: &[f32] = if taps <= w.len() {
        for (i, v) in w[..taps].iter_mut().enumerate() {
            *v = blur_weight(i as isize - k as isize, sigma, k);
        }
        &w[..taps]
    } else {
        heap = (0..taps).map(|i| blur_weight(i as isize - k as isize, sigma, k)).collect();
        &heap
    };
    // Rows, then columns: (y, x) of the p x p patch is element (y * p + x) * 3 + c.
    blur_pass(x, tmp, weights, p, k, |y, sx| y * p + sx);
    blur_pass(tmp, x, weights, p, k, |y, sy| sy * p + y);
}

/// One 1-D pass of the separable blur: `dst[at(a, b)] = Σ_i w_i · src[at(a, reflect(b + i - k))]`
/// for every line `a` and position `b` (`at` maps them to a pixel index).
#[inline(always)]
fn blur_pass(src: &[f32], dst: &mut [f32], weights: &[f32], p: usize, k: usize, at: impl Fn(usize, usize) -> usize) {
    for a in 0..p {
        for b in 0..p {
            for c in 0..3 {
                let mut acc = 0f32;
                for (i, &wt) in weights.iter().enumerate() {
                    let sb = reflect(b as isize + i as isize - k as isize, p);
                    acc += wt * src[at(a, sb) * 3 + c];
                }
                dst[at(a, b) * 3 + c] = acc;
            }
        }
    }
}

thread_local! {
    /// The blur's scratch patch, one per worker thread, grown once: no allocation per step.
    static BLUR_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes one patch vector into `out` (`p*p*3` floats), using `out` itself as scratch so the
/// gathers allocate nothing (the blur borrows a per-thread buffer). `img` is the whole HWC
/// image, `width` its width. Unresized patches without augmentation take `norm.plain`'s values.
fn write_patch(img: &[u8], width: usize, c: Crop, aug: Aug, norm: &Norm<'_>, out: &mut [f32]) {
    let Norm { mean, std, plain } = *norm;
    let p = c.p;
    if aug.none() && !c.resized() {
        crop(img, width, c, out, |ch, b| plain.0[ch][usize::from(b)]);
        return;
    }
    // 1. crop / 255 (resized bilinearly when the box is not p x p), 2. mirrored if flip.
    if c.resized() {
        crop_resized(img, width, c, out);
    } else {
        crop(img, width, c, out, |_, b| f32::from(b) / 255.0);
    }
    // 3. jitter: brightness, contrast around the patch's mean luma, saturation, clamp.
    if let Some(j) = aug.jitter {
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
    // 4. grayscale.
    if aug.gray {
        for px in out.chunks_exact_mut(3) {
            let g = luma(px);
            px.fill(g);
        }
    }
    // 5. blur.
    if let Some(sigma) = aug.blur {
        BLUR_SCRATCH.with(|t| {
            let mut t = t.borrow_mut();
            if t.len() < out.len() {
                t.resize(out.len(), 0.0);
            }
            blur(out, &mut t[..out.len()], p, sigma);
        });
    }
    // 6. solarize, 7. normalise.
    for px in out.chunks_exact_mut(3) {
        for c in 0..3 {
            let v = if aug.solarize && px[c] >= 0.5 { 1.0 - px[c] } else { px[c] };
            px[c] = (v - mean[c]) / std[c];
        }
    }
}

/// Gathers and augments `specs` from `store` into `patch x patch` vectors, normalised with
/// `store.mean`/`store.std`; a spec whose box is not `patch x patch` is resized bilinearly.
///
/// `out.len()` must be `specs.len() * patch * patch * 3`; row `i` is patch `i`, HWC. Runs in
/// parallel over patches and allocates nothing (after a worker's first blur).
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
        let (oy, ox, bh, bw) = (s.oy as usize, s.ox as usize, s.h as usize, s.w as usize);
        assert!(
            (s.image as usize) < store.len() && bh > 0 && bw > 0 && oy + bh <= h && ox + bw <= w,
            "gather_patches: spec {s:?} does not fit {} images of {h}x{w}",
            store.len()
        );
        let img = store.image(s.image as usize);
        let c = Crop { oy, ox, h: bh, w: bw, flip: s.flip, p: patch };
        write_patch(img, w, c, Aug::of(s), &norm, dst);
    });
}

/// A step's images as a batch of their own, for a device that is sent the images each step
/// needs rather than the whole store: `images` gets the distinct images of `specs` in order of
/// first use, `local` the same specs pointing into that list. Gathering `local` from those images
/// ([`copy_images`]) gives bit for bit what gathering `specs` from the store gives.
pub fn compact_specs(specs: &[PatchSpec], images: &mut Vec<u32>, local: &mut Vec<PatchSpec>) {
    images.clear();
    local.clear();
    let mut slot = std::collections::HashMap::with_capacity(specs.len());
    for s in specs {
        let next = images.len() as u32;
        let i = *slot.entry(s.image).or_insert_with(|| {
            images.push(s.image);
            next
        });
        local.push(PatchSpec { image: i, ..*s });
    }
}

/// The pixels of `images` (indices into `store`), one after another, into `out`, which must
/// hold exactly `images.len() * store.image_bytes()` bytes.
///
/// # Panics
/// On a wrong `out` length or an index past the store.
pub fn copy_images(store: &ImageStore, images: &[u32], out: &mut [u8]) {
    let per = store.image_bytes();
    assert_eq!(
        out.len(),
        images.len() * per,
        "copy_images: out has {} bytes, need {} images x {per}",
        out.len(),
        images.len()
    );
    if per == 0 {
        return;
    }
    out.par_chunks_mut(per).zip(images.par_iter()).for_each(|(dst, &i)| dst.copy_from_slice(store.image(i as usize)));
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
        write_patch(store.image(img), w, Crop::square(oy, ox, false, patch), Aug::default(), &norm, dst);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compacted batch gathers exactly what the store gives, augmentations and repeats included.
    #[test]
    fn compacted_batch_gathers_like_the_store() {
        let store = crate::synthetic(&crate::SyntheticSpec { images: 23, classes: 3, height: 13, width: 11, seed: 4 });
        let mut sampler = crate::PatchSampler::new(9, true);
        // Out of order, with a repeat: first use decides the slot.
        let specs = sampler.sample(&[17, 3, 17, 0, 22, 5], 5, 7, 13, 11);
        let (mut images, mut local) = (Vec::new(), vec![specs[0]; 2]);
        compact_specs(&specs, &mut images, &mut local);
        assert_eq!(images, [17, 3, 0, 22, 5]);
        assert_eq!(local.len(), specs.len());
        let mut pixels = vec![0u8; images.len() * store.image_bytes()];
        copy_images(&store, &images, &mut pixels);
        let labels = images.iter().map(|&i| store.labels[i as usize]).collect();
        let batch = ImageStore::new(13, 11, pixels, labels, store.classes.clone(), store.mean, store.std).unwrap();
        let d = 7 * 7 * 3;
        let (mut want, mut got) = (vec![0f32; specs.len() * d], vec![1f32; specs.len() * d]);
        gather_patches(&store, &specs, 7, &mut want);
        gather_patches(&batch, &local, 7, &mut got);
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
        // A view of the store (e.g. a held-out split of a mapped cache) compacts the same way.
        let view = store.subset(&[4, 17, 9]);
        let specs = sampler.sample(&[2, 1, 2], 3, 5, 13, 11);
        compact_specs(&specs, &mut images, &mut local);
        let mut pixels = vec![0u8; images.len() * view.image_bytes()];
        copy_images(&view, &images, &mut pixels);
        for (k, &i) in images.iter().enumerate() {
            assert_eq!(&pixels[k * view.image_bytes()..][..view.image_bytes()], view.image(i as usize));
        }
    }

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
            write_patch(&img, width, Crop::square(2, 3, flip, p), Aug::default(), &norm, &mut got);
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
