//! A synthetic labelled dataset whose class is carried by *which patch patterns co-occur*.
//!
//! A bank of `M` small stroke motifs (glyph-like, 8x8) is drawn from the seed; class `k` is the
//! `k`-th pair of distinct motifs, so every motif belongs to several classes and a single patch
//! is ambiguous about the class: only the combination of patches in an image identifies it,
//! which is exactly the co-occurrence signal BagSSL learns. Each image is a near-neutral grey
//! background plus per-pixel noise, with a few instances of each of its two motifs pasted at random
//! positions in random colours and opacities. Colours are independent of the class, so the mean
//! colour of an image says nothing about it.
//!
//! Every image draws from its own ChaCha8 stream (`seed`, stream `i + 1`; the motif bank uses
//! stream 0), so generation is parallel and yet bit-identical for a seed.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::rng::{below, unit_f32};
use crate::ImageStore;

/// Side of a motif (clipped to the image when the image is smaller).
pub const MOTIF: usize = 8;
/// Motif instances per motif of the pair, per 32x32 = 1024 pixels of image.
const INSTANCES_PER_1024: f32 = 3.0;
/// Amplitude of the uniform per-pixel background noise.
const NOISE: f32 = 0.08;
/// Minimum luma difference between a motif instance and the background.
const MIN_CONTRAST: f32 = 0.3;
/// Range of the grey level of an image's background.
const BACKGROUND: (f32, f32) = (0.4, 0.6);
/// Strokes per motif.
const STROKES: usize = 3;

/// What [`synthetic`] generates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub images: usize,
    pub classes: usize,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    /// 10 000 CIFAR-sized images (32x32) in 10 classes, seed 0.
    fn default() -> Self {
        SyntheticSpec { images: 10_000, classes: 10, height: 32, width: 32, seed: 0 }
    }
}

/// Smallest motif bank with at least `classes` distinct pairs.
fn motif_count(classes: usize) -> usize {
    let mut m = 2;
    while m * (m - 1) / 2 < classes {
        m += 1;
    }
    m
}

/// The first `classes` pairs of `0..m` in lexicographic order.
fn class_pairs(classes: usize, m: usize) -> Vec<(usize, usize)> {
    (0..m).flat_map(|a| (a + 1..m).map(move |b| (a, b))).take(classes).collect()
}

/// A motif: `STROKES` anti-aliased line segments between random points of a `size x size` box,
/// as an opacity mask in `[0, 1]`.
fn motif(rng: &mut ChaCha8Rng, size: usize) -> Vec<f32> {
    let span = (size.max(1) - 1) as f32;
    let segs: Vec<[f32; 4]> = (0..STROKES)
        .map(|_| [unit_f32(rng) * span, unit_f32(rng) * span, unit_f32(rng) * span, unit_f32(rng) * span])
        .collect();
    let mut mask = vec![0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let (py, px) = (y as f32, x as f32);
            let d = segs
                .iter()
                .map(|&[y0, x0, y1, x1]| {
                    let (dy, dx) = (y1 - y0, x1 - x0);
                    let len2 = dy * dy + dx * dx;
                    let t = if len2 > 0.0 { (((py - y0) * dy + (px - x0) * dx) / len2).clamp(0.0, 1.0) } else { 0.0 };
                    let (ey, ex) = (py - (y0 + t * dy), px - (x0 + t * dx));
                    (ey * ey + ex * ex).sqrt()
                })
                .fold(f32::INFINITY, f32::min);
            mask[y * size + x] = (1.5 - d).clamp(0.0, 1.0);
        }
    }
    mask
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn colour(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> [f32; 3] {
    [0; 3].map(|_| lo + (hi - lo) * unit_f32(rng))
}

/// Generates the dataset described by `spec`; mean/std are its [`ImageStore::channel_stats`].
/// Labels are balanced (`label = i % classes`). `classes == 0` is treated as 1.
pub fn synthetic(spec: &SyntheticSpec) -> ImageStore {
    let classes = spec.classes.max(1);
    let (h, w) = (spec.height, spec.width);
    let ms = MOTIF.min(h).min(w);
    let m = motif_count(classes);
    let pairs = class_pairs(classes, m);

    let mut bank_rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let bank: Vec<Vec<f32>> = (0..m).map(|_| motif(&mut bank_rng, ms)).collect();
    let per_motif = ((INSTANCES_PER_1024 * (h * w) as f32 / 1024.0).round() as usize).max(1);

    let n = h * w * 3;
    let mut pixels = vec![0u8; spec.images * n];
    let labels: Vec<u32> = (0..spec.images).map(|i| (i % classes) as u32).collect();
    if n > 0 {
        pixels.par_chunks_mut(n).enumerate().for_each_init(
            || vec![0f32; n],
            |buf, (i, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                rng.set_stream(i as u64 + 1);
                let (a, b) = pairs[labels[i] as usize];
                render(&mut rng, &bank, (a, b), per_motif, h, w, ms, buf);
                for (o, v) in out.iter_mut().zip(buf.iter()) {
                    *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            },
        );
    }
    let names = pairs.iter().map(|(a, b)| format!("m{a}+m{b}")).collect();
    let mut store = ImageStore { height: h, width: w, pixels, labels, classes: names, mean: [0.0; 3], std: [1.0; 3] };
    let (mean, std) = store.channel_stats();
    store.mean = mean;
    store.std = std;
    store
}

/// Paints one image into `buf` (HWC, f32 in about [0, 1]).
#[allow(clippy::too_many_arguments)]
fn render(
    rng: &mut ChaCha8Rng,
    bank: &[Vec<f32>],
    pair: (usize, usize),
    per_motif: usize,
    h: usize,
    w: usize,
    ms: usize,
    buf: &mut [f32],
) {
    // A near-neutral background: a per-image colour would be the strongest signal shared by all
    // patches of an image, and SSL would learn it instead of the (class-carrying) motifs.
    let level = BACKGROUND.0 + (BACKGROUND.1 - BACKGROUND.0) * unit_f32(rng);
    let bg = [level; 3];
    for px in buf.chunks_exact_mut(3) {
        // Three 16-bit fields of one 64-bit word give the pixel's three noise values cheaply.
        let r = rng.next_u64();
        for (c, v) in px.iter_mut().enumerate() {
            let u = ((r >> (16 * c)) & 0xffff) as f32 / 65535.0;
            *v = bg[c] + NOISE * (2.0 * u - 1.0);
        }
    }
    if ms == 0 {
        return;
    }
    for k in 0..2 * per_motif {
        let mask = &bank[if k % 2 == 0 { pair.0 } else { pair.1 }];
        let oy = below(rng, (h - ms + 1) as u64) as usize;
        let ox = below(rng, (w - ms + 1) as u64) as usize;
        let mut fg = colour(rng, 0.0, 1.0);
        let d = luma(fg) - luma(bg);
        if d.abs() < MIN_CONTRAST {
            // Push the colour away from the background's luma, towards the side with room.
            let dir = if luma(bg) < 0.5 { 1.0 } else { -1.0 };
            let shift = dir * MIN_CONTRAST - d;
            fg = fg.map(|v| (v + shift).clamp(0.0, 1.0));
        }
        let opacity = 0.7 + 0.3 * unit_f32(rng);
        for y in 0..ms {
            for x in 0..ms {
                let a = opacity * mask[y * ms + x];
                if a == 0.0 {
                    continue;
                }
                let px = &mut buf[((oy + y) * w + ox + x) * 3..][..3];
                for c in 0..3 {
                    px[c] = px[c] * (1.0 - a) + fg[c] * a;
                }
            }
        }
    }
}
