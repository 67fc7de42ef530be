//! A synthetic labelled dataset whose class is carried by *which patch patterns co-occur*.
//!
//! **Textures, not glyphs.** A bank of `M` periodic textures is fixed: texture `i` is family
//! `i % 5` of horizontal stripes, vertical stripes, a checkerboard, a diagonal (45 degree)
//! checkerboard and a dot lattice, with period `4 + 1.5 * ((i / 5) % 3)` pixels (so `M <= 15`
//! distinct textures, enough for 105 classes; a bigger bank repeats textures). Class `k` is the
//! `k`-th pair of distinct textures (lexicographic), `M` the smallest bank with enough pairs: with
//! 10 classes, 5 textures, each in 4 classes. A textured region looks the same under any crop
//! position (every period is below 8, the default patch side), so an 8x8 patch
//! shows its texture wherever it is cut, yet a patch inside one region names only one texture,
//! shared by several classes: only the *combination* of the patches of an image identifies its
//! class, which is the co-occurrence signal BagSSL learns. (Patches across a region border show
//! both textures, as in real images.) Every family is symmetric under a left-right mirror, so the
//! flip augmentation never turns one texture into another.
//!
//! **Layout and colour.** An image is a Voronoi partition into about 6 cells per 32x32 = 1024
//! pixels (at least 2) around random centres; the cells alternate between the two textures (which
//! comes first is random), so both always appear, in random shares of the image. Each cell has its
//! own phase, a period jittered by up to 10%, and its own pair of random colours whose lumas differ
//! by a random 0.25 to 0.6 (the texture survives the grayscale augmentation), plus light
//! per-pixel noise. Colours are independent of the class, so the mean colour of an image says
//! nothing about it, and they differ between the cells of an image, so colour is *not* a signal
//! shared by co-occurring patches: a per-image colour (one palette for all cells) would be, and
//! SSL then learns that class-independent colour instead of the textures (measured: trained
//! accuracy drops to chance). With per-cell colours the colour is a nuisance that dominates an
//! untrained encoder's bag embedding and that training (invariance across cells, colour jitter)
//! learns to discard, so training beats an untrained encoder by a wide margin.
//!
//! Every image draws from its own ChaCha8 stream (`seed`, stream `i + 1`), so generation is
//! parallel and yet bit-identical for a seed, and image `i` depends only on `(seed, i)` and the
//! image size.

use std::f32::consts::{FRAC_1_SQRT_2, TAU};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::rng::{below, unit_f32};
use crate::ImageStore;

/// Voronoi cells per 32x32 = 1024 pixels of image (at least 2 per image).
const CELLS_PER_1024: f32 = 6.0;
/// Amplitude of the uniform per-pixel noise.
const NOISE: f32 = 0.05;
/// Range of the luma difference between the two colours of a cell.
const CONTRAST: (f32, f32) = (0.25, 0.6);
/// Relative jitter of a cell's texture period.
const PERIOD_JITTER: f32 = 0.1;
/// Gain on the pattern wave before clipping to `[0, 1]`: 2 gives soft-edged square waves.
const SHARPNESS: f32 = 2.0;
/// Period of the first textures of each family, and the step between the generations.
const PERIOD: (f32, f32) = (4.0, 1.5);

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

/// Smallest texture bank with at least `classes` distinct pairs.
fn texture_count(classes: usize) -> usize {
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

/// The texture families; each is symmetric under a left-right mirror (up to phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    HStripes,
    VStripes,
    Checker,
    DiagChecker,
    Dots,
}

const FAMILIES: [Family; 5] = [Family::HStripes, Family::VStripes, Family::Checker, Family::DiagChecker, Family::Dots];

#[derive(Clone, Copy, Debug)]
struct Texture {
    family: Family,
    /// In pixels.
    period: f32,
}

/// Texture `i` of the bank.
fn texture(i: usize) -> Texture {
    let f = FAMILIES.len();
    Texture { family: FAMILIES[i % f], period: PERIOD.0 + PERIOD.1 * ((i / f) % 3) as f32 }
}

impl Family {
    /// The wave of the family at phase angles `(y, x)`, in about `[-1, 1]` (dots reach 3).
    #[inline]
    fn wave(self, y: f32, x: f32) -> f32 {
        match self {
            Family::HStripes => y.cos(),
            Family::VStripes => x.cos(),
            Family::Checker => y.cos() * x.cos(),
            Family::DiagChecker => ((x + y) * FRAC_1_SQRT_2).cos() * ((x - y) * FRAC_1_SQRT_2).cos(),
            // A lattice of raised-cosine bumps: dots on a background (or, with the colours
            // swapped, a grid of lines).
            Family::Dots => (1.0 + y.cos()) * (1.0 + x.cos()) - 1.0,
        }
    }
}

/// One Voronoi cell of an image.
#[derive(Clone, Copy, Debug)]
struct Cell {
    cy: f32,
    cx: f32,
    family: Family,
    /// Angular frequency, radians per pixel.
    freq: f32,
    phase: (f32, f32),
    c0: [f32; 3],
    c1: [f32; 3],
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [0; 3].map(|_| unit_f32(rng))
}

/// Two random colours, moved apart along the grey axis so that their lumas differ by a random
/// amount in [`CONTRAST`] (up to clipping), in random order.
fn colour_pair(rng: &mut ChaCha8Rng) -> ([f32; 3], [f32; 3]) {
    let target = CONTRAST.0 + (CONTRAST.1 - CONTRAST.0) * unit_f32(rng);
    let (a, b) = (colour(rng), colour(rng));
    let (la, lb) = (luma(a), luma(b));
    let mid = (0.5 * (la + lb)).clamp(target / 2.0, 1.0 - target / 2.0);
    let sign = if lb >= la { 1.0 } else { -1.0 };
    let a = a.map(|v| (v - la + mid - sign * target / 2.0).clamp(0.0, 1.0));
    let b = b.map(|v| (v - lb + mid + sign * target / 2.0).clamp(0.0, 1.0));
    if unit_f32(rng) < 0.5 {
        (b, a)
    } else {
        (a, b)
    }
}

/// Generates the dataset described by `spec`; mean/std are its [`ImageStore::channel_stats`].
/// Labels are balanced (`label = i % classes`). `classes == 0` is treated as 1.
pub fn synthetic(spec: &SyntheticSpec) -> ImageStore {
    let classes = spec.classes.max(1);
    let (h, w) = (spec.height, spec.width);
    let m = texture_count(classes);
    let pairs = class_pairs(classes, m);
    let bank: Vec<Texture> = (0..m).map(texture).collect();
    let ncells = ((CELLS_PER_1024 * (h * w) as f32 / 1024.0).round() as usize).max(2);

    let n = h * w * 3;
    let mut pixels = vec![0u8; spec.images * n];
    let labels: Vec<u32> = (0..spec.images).map(|i| (i % classes) as u32).collect();
    if n > 0 {
        pixels.par_chunks_mut(n).enumerate().for_each_init(
            || (vec![0f32; n], Vec::with_capacity(ncells)),
            |(buf, cells), (i, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                rng.set_stream(i as u64 + 1);
                let (a, b) = pairs[labels[i] as usize];
                render(&mut rng, (bank[a], bank[b]), ncells, h, w, cells, buf);
                for (o, v) in out.iter_mut().zip(buf.iter()) {
                    *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            },
        );
    }
    let names = pairs.iter().map(|(a, b)| format!("m{a}+m{b}")).collect();
    let store =
        ImageStore::new(h, w, pixels, labels, names, [0.0; 3], [1.0; 3]).expect("synthetic store is consistent");
    let (mean, std) = store.channel_stats();
    store.with_stats(mean, std)
}

/// Paints one image into `buf` (HWC, f32 in about [0, 1]); `cells` is scratch space.
fn render(
    rng: &mut ChaCha8Rng,
    pair: (Texture, Texture),
    ncells: usize,
    h: usize,
    w: usize,
    cells: &mut Vec<Cell>,
    buf: &mut [f32],
) {
    cells.clear();
    let first = below(rng, 2) as usize;
    for j in 0..ncells {
        let tex = if (j + first).is_multiple_of(2) { pair.0 } else { pair.1 };
        let (cy, cx) = (unit_f32(rng) * h as f32, unit_f32(rng) * w as f32);
        let period = tex.period * (1.0 + PERIOD_JITTER * (2.0 * unit_f32(rng) - 1.0));
        let phase = (unit_f32(rng) * TAU, unit_f32(rng) * TAU);
        let (c0, c1) = colour_pair(rng);
        cells.push(Cell { cy, cx, family: tex.family, freq: TAU / period, phase, c0, c1 });
    }
    for y in 0..h {
        let py = y as f32 + 0.5;
        for x in 0..w {
            let px = x as f32 + 0.5;
            let dist = |c: &Cell| (c.cy - py).powi(2) + (c.cx - px).powi(2);
            let c = cells.iter().min_by(|a, b| dist(a).total_cmp(&dist(b))).expect("at least 2 cells");
            let wave = c.family.wave(py * c.freq + c.phase.0, px * c.freq + c.phase.1);
            let t = (0.5 + 0.5 * SHARPNESS * wave).clamp(0.0, 1.0);
            // Three 16-bit fields of one 64-bit word give the pixel's three noise values cheaply.
            let r = rng.next_u64();
            let o = &mut buf[(y * w + x) * 3..][..3];
            for (ch, v) in o.iter_mut().enumerate() {
                let u = ((r >> (16 * ch)) & 0xffff) as f32 / 65535.0;
                *v = c.c0[ch] * (1.0 - t) + c.c1[ch] * t + NOISE * (2.0 * u - 1.0);
            }
        }
    }
}
