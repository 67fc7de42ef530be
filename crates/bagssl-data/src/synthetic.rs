//! A synthetic labelled dataset whose class is carried by *which patch patterns co-occur*.
//!
//! (draft: tuning knobs read from env)

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::rng::{below, unit_f32};
use crate::ImageStore;

/// The patch side the textures are designed for: every texture period is below it.
pub const MOTIF: usize = 8;

fn knob(name: &str, default: f32) -> f32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
struct Knobs {
    cells: f32,
    noise: f32,
    min_contrast: f32,
    max_contrast: f32,
    period_jitter: f32,
    sharp: f32,
    colour_mode: f32,
    base_period: f32,
    period_step: f32,
    families: f32,
}

fn knobs() -> Knobs {
    Knobs {
        cells: knob("SYN_CELLS", 6.0),
        noise: knob("SYN_NOISE", 0.05),
        min_contrast: knob("SYN_MINC", 0.25),
        max_contrast: knob("SYN_MAXC", 0.6),
        period_jitter: knob("SYN_PJIT", 0.1),
        sharp: knob("SYN_SHARP", 2.0),
        colour_mode: knob("SYN_CMODE", 0.0),
        base_period: knob("SYN_PERIOD", 4.0),
        period_step: knob("SYN_PSTEP", 1.5),
        families: knob("SYN_FAM", 5.0),
    }
}

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

#[derive(Clone, Copy, Debug)]
struct Texture {
    family: usize,
    period: f32,
}

fn texture(i: usize, k: &Knobs) -> Texture {
    let fam = (k.families as usize).max(1);
    Texture { family: i % fam, period: k.base_period + k.period_step * ((i / fam) % 3) as f32 }
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    cy: f32,
    cx: f32,
    tex: Texture,
    freq: f32,
    phase: (f32, f32),
    c0: [f32; 3],
    c1: [f32; 3],
}

/// Pattern value in about [-1, 1] of family at (y, x) with angular frequency `f`.
#[inline]
fn pattern(family: usize, y: f32, x: f32) -> f32 {
    match family {
        0 => y.cos(),
        1 => x.cos(),
        2 => y.cos() * x.cos(),
        3 => {
            let s = std::f32::consts::FRAC_1_SQRT_2;
            ((x + y) * s).cos() * ((x - y) * s).cos()
        }
        _ => {
            let v = (1.0 + y.cos()) * (1.0 + x.cos()) * 0.25; // in [0, 1]
            4.0 * v - 1.0
        }
    }
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [0; 3].map(|_| unit_f32(rng))
}

/// Two random colours whose lumas differ by a random amount in [min, max].
fn colour_pair(rng: &mut ChaCha8Rng, k: &Knobs) -> ([f32; 3], [f32; 3]) {
    let target = k.min_contrast + (k.max_contrast - k.min_contrast) * unit_f32(rng);
    let a = colour(rng);
    let b = colour(rng);
    let (la, lb) = (luma(a), luma(b));
    // Move both colours apart along the grey axis so that |luma(b) - luma(a)| = target.
    let mid = 0.5 * (la + lb);
    let mid = mid.clamp(target / 2.0, 1.0 - target / 2.0);
    let sign = if lb >= la { 1.0 } else { -1.0 };
    let a2 = a.map(|v| (v - la + mid - sign * target / 2.0).clamp(0.0, 1.0));
    let b2 = b.map(|v| (v - lb + mid + sign * target / 2.0).clamp(0.0, 1.0));
    (a2, b2)
}

/// Generates the dataset described by `spec`; mean/std are its [`ImageStore::channel_stats`].
/// Labels are balanced (`label = i % classes`). `classes == 0` is treated as 1.
pub fn synthetic(spec: &SyntheticSpec) -> ImageStore {
    let k = knobs();
    let classes = spec.classes.max(1);
    let (h, w) = (spec.height, spec.width);
    let m = texture_count(classes);
    let pairs = class_pairs(classes, m);
    let bank: Vec<Texture> = (0..m).map(|i| texture(i, &k)).collect();

    let n = h * w * 3;
    let mut pixels = vec![0u8; spec.images * n];
    let labels: Vec<u32> = (0..spec.images).map(|i| (i % classes) as u32).collect();
    if n > 0 {
        pixels.par_chunks_mut(n).enumerate().for_each_init(
            || (vec![0f32; n], Vec::new()),
            |(buf, cells), (i, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                rng.set_stream(i as u64 + 1);
                let (a, b) = pairs[labels[i] as usize];
                render(&mut rng, (bank[a], bank[b]), h, w, &k, cells, buf);
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

fn render(
    rng: &mut ChaCha8Rng,
    pair: (Texture, Texture),
    h: usize,
    w: usize,
    k: &Knobs,
    cells: &mut Vec<Cell>,
    buf: &mut [f32],
) {
    let ncells = ((k.cells * (h * w) as f32 / 1024.0).round() as usize).max(2);
    cells.clear();
    let (img_c0, img_c1) = colour_pair(rng, k);
    let first = below(rng, 2) as usize;
    for j in 0..ncells {
        let tex = if (j + first) % 2 == 0 { pair.0 } else { pair.1 };
        let cy = unit_f32(rng) * h as f32;
        let cx = unit_f32(rng) * w as f32;
        let period = tex.period * (1.0 + k.period_jitter * (2.0 * unit_f32(rng) - 1.0));
        let freq = std::f32::consts::TAU / period;
        let phase = (unit_f32(rng) * std::f32::consts::TAU, unit_f32(rng) * std::f32::consts::TAU);
        let (mut c0, mut c1) = colour_pair(rng, k);
        if k.colour_mode == 1.0 {
            c0 = img_c0;
            c1 = img_c1;
        }
        if unit_f32(rng) < 0.5 {
            std::mem::swap(&mut c0, &mut c1);
        }
        cells.push(Cell { cy, cx, tex, freq, phase, c0, c1 });
    }
    for y in 0..h {
        for x in 0..w {
            let (py, px) = (y as f32 + 0.5, x as f32 + 0.5);
            let mut best = 0;
            let mut bd = f32::INFINITY;
            for (j, c) in cells.iter().enumerate() {
                let d = (c.cy - py).powi(2) + (c.cx - px).powi(2);
                if d < bd {
                    bd = d;
                    best = j;
                }
            }
            let c = &cells[best];
            let v = pattern(c.tex.family, py * c.freq + c.phase.0, px * c.freq + c.phase.1);
            let t = (0.5 + 0.5 * k.sharp * v).clamp(0.0, 1.0);
            let r = rng.next_u64();
            let o = &mut buf[(y * w + x) * 3..][..3];
            for ch in 0..3 {
                let u = ((r >> (16 * ch)) & 0xffff) as f32 / 65535.0;
                o[ch] = c.c0[ch] * (1.0 - t) + c.c1[ch] * t + k.noise * (2.0 * u - 1.0);
            }
        }
    }
}
