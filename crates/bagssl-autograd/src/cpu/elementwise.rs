//! Elementwise maps and simple reductions on slices.
//!
//! Each is one streaming pass: chunks of rows go to the rayon pool ([`super::par`]) and each
//! chunk runs a vectorized loop ([`super::simd`]). Reductions accumulate in f64.

use rayon::prelude::*;

use super::par::{for_chunks_mut, for_rows_mut, reduce_rows, rows_per_task};
use super::simd::multiversion;
use crate::backend::AdamW;

/// `out = max(x, 0)`; NaN propagates (as in PyTorch) so a diverged step shows in the loss.
pub fn relu(x: &[f32], out: &mut [f32]) {
    for_chunks_mut(out, |i0, o| relu_chunk(&x[i0..i0 + o.len()], o));
}

multiversion! {
    fn relu_chunk(x: &[f32], o: &mut [f32]) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = if x < 0.0 { 0.0 } else { x });
    }
}

/// `out = dy * (y > 0)`.
pub fn relu_bwd(dy: &[f32], y: &[f32], out: &mut [f32]) {
    for_chunks_mut(out, |i0, o| relu_bwd_chunk(&dy[i0..i0 + o.len()], &y[i0..i0 + o.len()], o));
}

multiversion! {
    fn relu_bwd_chunk(dy: &[f32], y: &[f32], o: &mut [f32]) {
        for ((o, &d), &y) in o.iter_mut().zip(dy).zip(y) {
            *o = if y > 0.0 { d } else { 0.0 };
        }
    }
}

/// `out[r, c] = x[r, c] + b[c]`.
pub fn bias_add(x: &[f32], b: &[f32], out: &mut [f32]) {
    let cols = b.len();
    for_rows_mut(out, cols, |r0, o| bias_add_chunk(&x[r0 * cols..r0 * cols + o.len()], b, o));
}

multiversion! {
    fn bias_add_chunk(x: &[f32], b: &[f32], o: &mut [f32]) {
        for (o, x) in o.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                *o = x + b;
            }
        }
    }
}

/// Fills every row of `out` with `b` (the bias as the accumulator start of a fused linear).
pub fn broadcast_rows(b: &[f32], out: &mut [f32]) {
    let cols = b.len();
    for_rows_mut(out, cols, |_, o| o.chunks_exact_mut(cols).for_each(|row| row.copy_from_slice(b)));
}

/// Column sums of a (rows, cols) matrix, accumulated in f64.
pub fn sum_rows(x: &[f32], cols: usize) -> Vec<f64> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    reduce_rows(rows, cols, cols, |range, acc| add_rows(&x[range.start * cols..range.end * cols], acc))
}

multiversion! {
    /// `acc[c] += sum_r x[r, c]` for a (rows, acc.len()) block of rows.
    pub fn add_rows(x: &[f32], acc: &mut [f64]) {
        for row in x.chunks_exact(acc.len()) {
            acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64);
        }
    }
}

/// `y += alpha * x`.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for_chunks_mut(y, |i0, y| axpy_chunk(y, alpha, &x[i0..i0 + y.len()]));
}

multiversion! {
    fn axpy_chunk(y: &mut [f32], alpha: f32, x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for_chunks_mut(x, |_, x| scale_chunk(x, s));
}

multiversion! {
    fn scale_chunk(x: &mut [f32], s: f32) {
        x.iter_mut().for_each(|x| *x *= s);
    }
}

/// `r = (1 - momentum) r + momentum b`, as PyTorch updates BatchNorm running statistics.
pub fn ema(r: &mut [f32], b: &[f32], momentum: f32) {
    for_chunks_mut(r, |i0, r| ema_chunk(r, &b[i0..i0 + r.len()], momentum));
}

multiversion! {
    fn ema_chunk(r: &mut [f32], b: &[f32], momentum: f32) {
        let keep = 1.0 - momentum;
        r.iter_mut().zip(b).for_each(|(r, &b)| *r = keep * *r + momentum * b);
    }
}

/// Lanes of the [`dot`] reduction: blocks of this many elements are summed column-wise, which
/// vectorizes (a single running sum would be one serial dependency chain).
const DOT_LANES: usize = 64;

/// `sum(x * w)` in f64.
pub fn dot(x: &[f32], w: &[f32]) -> f64 {
    let blocks = x.len() / DOT_LANES;
    let acc = reduce_rows(blocks, DOT_LANES, DOT_LANES, |range, acc| {
        let span = range.start * DOT_LANES..range.end * DOT_LANES;
        dot_chunk(&x[span.clone()], &w[span], acc)
    });
    let tail: f64 =
        x[blocks * DOT_LANES..].iter().zip(&w[blocks * DOT_LANES..]).map(|(&x, &w)| x as f64 * w as f64).sum();
    acc.iter().sum::<f64>() + tail
}

multiversion! {
    fn dot_chunk(x: &[f32], w: &[f32], acc: &mut [f64]) {
        for (x, w) in x.chunks_exact(DOT_LANES).zip(w.chunks_exact(DOT_LANES)) {
            for ((a, &x), &w) in acc.iter_mut().zip(x).zip(w) {
                *a += x as f64 * w as f64;
            }
        }
    }
}

/// Mean over consecutive groups of `n` rows: (B*n, cols) -> (B, cols).
pub fn group_mean(x: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    for_rows_mut(out, cols, |b0, o| group_mean_chunk(&x[b0 * n * cols..b0 * n * cols + o.len() * n], cols, n, o));
}

multiversion! {
    /// `o` holds whole output rows, `x` the matching groups of `n` input rows.
    fn group_mean_chunk(x: &[f32], cols: usize, n: usize, o: &mut [f32]) {
        let inv_n = 1.0 / n as f64;
        let mut acc = vec![0f64; cols];
        for (orow, group) in o.chunks_exact_mut(cols).zip(x.chunks_exact(n * cols)) {
            acc.fill(0.0);
            for row in group.chunks_exact(cols) {
                acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64);
            }
            orow.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * inv_n) as f32);
        }
    }
}

/// Backward of [`group_mean`]: every row of group `b` of `out` is `dy[b] / n`.
pub fn group_mean_bwd(dy: &[f32], cols: usize, n: usize, out: &mut [f32]) {
    for_rows_mut(out, cols, |r0, o| group_mean_bwd_chunk(dy, cols, n, r0, o));
}

multiversion! {
    /// Rows `r0..` of the output.
    fn group_mean_bwd_chunk(dy: &[f32], cols: usize, n: usize, r0: usize, o: &mut [f32]) {
        let inv_n = 1.0 / n as f32;
        for (r, orow) in o.chunks_exact_mut(cols).enumerate() {
            let b = (r0 + r) / n;
            orow.iter_mut().zip(&dy[b * cols..(b + 1) * cols]).for_each(|(o, &d)| *o = d * inv_n);
        }
    }
}

/// One `torch.optim.AdamW` step: decoupled decay `p *= 1 - lr wd`, moment updates, then
/// `p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)` with `bc_i = 1 - beta_i^step`, in the
/// same operation order as PyTorch's single-tensor implementation so the roundings agree.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW) {
    let step = h.step.max(1) as i32;
    let c = AdamCoefs {
        decay: 1.0 - h.lr * h.weight_decay,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        step_size: (h.lr as f64 / (1.0 - (h.beta1 as f64).powi(step))) as f32,
        bc2_sqrt: (1.0 - (h.beta2 as f64).powi(step)).sqrt() as f32,
    };
    let chunk = rows_per_task(p.len(), 1);
    if chunk >= p.len() {
        adamw_chunk(p, g, m, v, c);
    } else {
        p.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, c));
    }
}

/// The per-step constants of [`adamw`].
#[derive(Clone, Copy)]
struct AdamCoefs {
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

multiversion! {
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamCoefs) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= c.decay;
            // PyTorch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
            // param.addcdiv_(exp_avg, exp_avg_sq.sqrt() / bc2_sqrt + eps, -step_size).
            *m += (1.0 - c.beta1) * (g - *m);
            *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
            *p -= c.step_size * (*m / (v.sqrt() / c.bc2_sqrt + c.eps));
        }
    }
}
