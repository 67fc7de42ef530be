//! Elementwise maps and simple reductions on slices.
//!
//! Each is one streaming pass: chunks of rows go to the rayon pool ([`super::par`]) and the inner
//! loops run vectorized ([`super::simd`]). Reductions accumulate in f64.

use rayon::prelude::*;

use super::par::{for_chunks_mut, for_rows_mut, reduce_rows, rows_per_task};
use super::simd::vectorized;
use crate::ops::AdamW;

/// `out = max(x, 0)`.
pub fn relu(x: &[f32], out: &mut [f32]) {
    for_chunks_mut(out, |i0, o| {
        let x = &x[i0..i0 + o.len()];
        vectorized(|| relu_chunk(x, o))
    });
}

#[inline(always)]
fn relu_chunk(x: &[f32], o: &mut [f32]) {
    o.iter_mut().zip(x).for_each(|(o, &x)| *o = x.max(0.0));
}

/// `out = dy * (y > 0)`.
pub fn relu_bwd(dy: &[f32], y: &[f32], out: &mut [f32]) {
    for_chunks_mut(out, |i0, o| {
        let (dy, y) = (&dy[i0..i0 + o.len()], &y[i0..i0 + o.len()]);
        vectorized(|| relu_bwd_chunk(dy, y, o))
    });
}

#[inline(always)]
fn relu_bwd_chunk(dy: &[f32], y: &[f32], o: &mut [f32]) {
    for ((o, &d), &y) in o.iter_mut().zip(dy).zip(y) {
        *o = if y > 0.0 { d } else { 0.0 };
    }
}

/// `out[r, c] = x[r, c] + b[c]`.
pub fn bias_add(x: &[f32], b: &[f32], out: &mut [f32]) {
    let cols = b.len();
    for_rows_mut(out, cols, |r0, o| {
        let x = &x[r0 * cols..r0 * cols + o.len()];
        vectorized(|| {
            for (o, x) in o.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
                add_row(x, b, o);
            }
        })
    });
}

/// Fills every row of `out` with `b` (the bias as the accumulator start of a fused linear).
pub fn broadcast_rows(b: &[f32], out: &mut [f32]) {
    let cols = b.len();
    for_rows_mut(out, cols, |_, o| o.chunks_exact_mut(cols).for_each(|row| row.copy_from_slice(b)));
}

#[inline(always)]
fn add_row(x: &[f32], b: &[f32], o: &mut [f32]) {
    for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
        *o = x + b;
    }
}

/// Column sums of a (rows, cols) matrix, accumulated in f64.
pub fn sum_rows(x: &[f32], cols: usize) -> Vec<f64> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    reduce_rows(rows, cols, cols, |range, acc| {
        let x = &x[range.start * cols..range.end * cols];
        vectorized(|| x.chunks_exact(cols).for_each(|row| acc_row(row, acc)))
    })
}

#[inline(always)]
fn acc_row(row: &[f32], acc: &mut [f64]) {
    acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64);
}

/// `y += alpha * x`.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for_chunks_mut(y, |i0, y| {
        let x = &x[i0..i0 + y.len()];
        vectorized(|| y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x))
    });
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for_chunks_mut(x, |_, x| vectorized(|| x.iter_mut().for_each(|x| *x *= s)));
}

/// `r = (1 - momentum) r + momentum b`, as PyTorch updates BatchNorm running statistics.
pub fn ema(r: &mut [f32], b: &[f32], momentum: f32) {
    let keep = 1.0 - momentum;
    for_chunks_mut(r, |i0, r| {
        let b = &b[i0..i0 + r.len()];
        vectorized(|| r.iter_mut().zip(b).for_each(|(r, &b)| *r = keep * *r + momentum * b))
    });
}

/// `sum(x * w)` in f64.
pub fn dot(x: &[f32], w: &[f32]) -> f64 {
    // Blocks of 64 give the reduction a column layout: 64 independent f64 lanes vectorize.
    const W: usize = 64;
    let blocks = x.len() / W;
    let acc = reduce_rows(blocks, W, W, |range, acc| {
        let (x, w) = (&x[range.start * W..range.end * W], &w[range.start * W..range.end * W]);
        vectorized(|| {
            for (x, w) in x.chunks_exact(W).zip(w.chunks_exact(W)) {
                for ((a, &x), &w) in acc.iter_mut().zip(x).zip(w) {
                    *a += x as f64 * w as f64;
                }
            }
        })
    });
    let tail: f64 = x[blocks * W..].iter().zip(&w[blocks * W..]).map(|(&x, &w)| x as f64 * w as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// Mean over consecutive groups of `n` rows: (B*n, cols) -> (B, cols).
pub fn group_mean(x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    let inv_n = 1.0 / n as f64;
    for_rows_mut(out, cols, |b0, o| {
        let mut acc = vec![0f64; cols];
        vectorized(|| {
            for (b, orow) in o.chunks_exact_mut(cols).enumerate() {
                let first = (b0 + b) * n * cols;
                acc.fill(0.0);
                x[first..first + n * cols].chunks_exact(cols).for_each(|row| acc_row(row, &mut acc));
                orow.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * inv_n) as f32);
            }
        })
    });
}

/// Backward of [`group_mean`]: every row of group `b` of `out` is `dy[b] / n`.
pub fn group_mean_bwd(dy: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    let inv_n = 1.0 / n as f32;
    for_rows_mut(out, cols, |r0, o| {
        vectorized(|| {
            for (r, orow) in o.chunks_exact_mut(cols).enumerate() {
                let b = (r0 + r) / n;
                let d = &dy[b * cols..(b + 1) * cols];
                orow.iter_mut().zip(d).for_each(|(o, &d)| *o = d * inv_n);
            }
        })
    });
}

/// One `torch.optim.AdamW` step: decoupled decay `p *= 1 - lr wd`, moment updates, then
/// `p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)` with `bc_i = 1 - beta_i^step`, in the
/// same operation order as PyTorch's single-tensor implementation so the roundings agree.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
    let step = h.step.max(1) as i32;
    let bc1 = 1.0 - (h.beta1 as f64).powi(step);
    let bc2_sqrt = (1.0 - (h.beta2 as f64).powi(step)).sqrt();
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2_sqrt as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    let (b1, b2, eps) = (h.beta1, h.beta2, h.eps);
    let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        vectorized(|| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                // PyTorch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(..).
                *m += (1.0 - b1) * (g - *m);
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step_size * (*m / (v.sqrt() / bc2_sqrt + eps));
            }
        })
    };
    let chunk = rows_per_task(p.len(), 1);
    if chunk >= p.len() {
        update(p, g, m, v);
    } else {
        p.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .for_each(|(((p, g), m), v)| update(p, g, m, v));
    }
}
