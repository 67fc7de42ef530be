//! BatchNorm over the rows of a (rows, cols) matrix, fused with the ReLU that follows it.
//!
//! Forward: one pass for the per-column sums of x and x^2 (f64 accumulators: each f32 square is
//! exact in f64 and 512-row sums lose nothing, so the one-pass `E[x^2] - E[x]^2` is safe unless
//! |mean| / std exceeds ~1e6), one pass writing `relu((x - mean) * gamma * invstd + beta)`.
//! Backward: one pass for `sum g` and `sum g * xhat` (g = dy masked by y > 0), one pass writing
//! dx. Both passes split rows over the rayon pool; the column sums are reduced in f64.
//!
//! The training kernels take the bias of the Linear layer before them (`bias`, none: `None`) and
//! normalise `x + bias` without forming it: the statistics are those of x with the bias added to
//! the mean (the variance does not move), and the passes centre x on its own mean. Same values as
//! `bias_add` then BatchNorm to f32 rounding, and no work per element (the CUDA kernels add the
//! bias as they read x instead, `kernels/batchnorm.cu` v4: bit for bit `bias_add` then BatchNorm).

use super::par::{for_rows_mut, reduce_rows};
use super::simd::multiversion;
use crate::backend::{BnBackwardArgs, BnTrainArgs};

/// Batch statistics of a training-mode forward, one entry per column.
pub struct BnStats {
    pub mean: Vec<f32>,
    /// `1 / sqrt(biased variance + eps)`.
    pub invstd: Vec<f32>,
    /// Unbiased variance (`rows - 1` denominator), for the running statistics.
    pub var_unbiased: Vec<f32>,
}

/// Training-mode forward of `x + bias`: writes `y` (rows, cols) and returns the batch statistics
/// (the mean is that of `x + bias`). Needs at least two rows (like PyTorch) for the unbiased
/// variance to exist.
pub fn train_fwd(a: BnTrainArgs<'_, [f32]>, y: &mut [f32]) -> BnStats {
    let BnTrainArgs { x, bias, gamma, beta, eps, relu } = a;
    let cols = gamma.len();
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let sums = reduce_rows(rows, cols, 2 * cols, |range, acc| {
        let (s, q) = acc.split_at_mut(cols);
        sums_and_squares(&x[range.start * cols..range.end * cols], s, q)
    });
    let n = rows as f64;
    let mut stats = BnStats { mean: vec![0.0; cols], invstd: vec![0.0; cols], var_unbiased: vec![0.0; cols] };
    // The mean of x, which the normalisation subtracts (x + bias - mean(x + bias)).
    let mut center = vec![0f32; cols];
    for j in 0..cols {
        let mean = sums[j] / n;
        let var = sums[cols + j] / n - mean * mean;
        // Clamp rounding below zero, but keep a NaN (a diverged step must show in the loss).
        let var = if var < 0.0 { 0.0 } else { var };
        center[j] = mean as f32;
        stats.mean[j] = (mean + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        stats.invstd[j] = (1.0 / (var + eps as f64).sqrt()) as f32;
        stats.var_unbiased[j] = (var * n / (n - 1.0)) as f32;
    }
    let scale: Vec<f32> = gamma.iter().zip(&stats.invstd).map(|(g, s)| g * s).collect();
    normalize(x, ColumnAffine { mean: &center, scale: &scale, beta }, relu, y);
    stats
}

/// The per-column map `(x - mean) * scale + beta` of a normalisation.
#[derive(Clone, Copy)]
pub struct ColumnAffine<'a> {
    pub mean: &'a [f32],
    pub scale: &'a [f32],
    pub beta: &'a [f32],
}

/// Eval-mode scale per column, `gamma / sqrt(var + eps)` (in f64, rounded once).
pub fn eval_scale(gamma: &[f32], var: &[f32], eps: f32) -> Vec<f32> {
    gamma.iter().zip(var).map(|(&g, &v)| (g as f64 / (v as f64 + eps as f64).sqrt()) as f32).collect()
}

/// `y = act((x - mean) * scale + beta)` row by row: the eval-mode forward, with the running
/// mean and [`eval_scale`].
pub fn normalize(x: &[f32], map: ColumnAffine<'_>, relu: bool, y: &mut [f32]) {
    let cols = map.mean.len();
    for_rows_mut(y, cols, |r0, y| normalize_rows(&x[r0 * cols..r0 * cols + y.len()], map, relu, y));
}

multiversion! {
    /// `s[c] += sum_r x[r, c]`, `q[c] += sum_r x[r, c]^2` over a block of rows.
    fn sums_and_squares(x: &[f32], s: &mut [f64], q: &mut [f64]) {
        for row in x.chunks_exact(s.len()) {
            for ((s, q), &x) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                let x = x as f64;
                *s += x;
                *q += x * x;
            }
        }
    }
}

multiversion! {
    fn normalize_rows(x: &[f32], map: ColumnAffine<'_>, relu: bool, y: &mut [f32]) {
        let ColumnAffine { mean, scale, beta } = map;
        for (y, x) in y.chunks_exact_mut(mean.len()).zip(x.chunks_exact(mean.len())) {
            let it = y.iter_mut().zip(x).zip(mean).zip(scale).zip(beta);
            if relu {
                it.for_each(|((((y, &x), &m), &s), &b)| {
                    let v = (x - m) * s + b;
                    *y = if v < 0.0 { 0.0 } else { v };
                });
            } else {
                it.for_each(|((((y, &x), &m), &s), &b)| *y = (x - m) * s + b);
            }
        }
    }
}

/// Training-mode backward (same `x` and `bias` as the forward): writes `dx` and returns
/// `(dgamma, dbeta)`. The bias gradient is the column sums of dx.
///
/// With `g = dy * (y > 0)` (or `dy` without ReLU), `xhat = (x + bias - mean) * invstd`:
/// `dbeta = sum g`, `dgamma = sum g xhat`,
/// `dx = gamma invstd (g - dbeta / N - xhat dgamma / N)`, evaluated per column as
/// `p g + q (x - mean) + r` (subtracting the mean first keeps the f32 rounding relative to the
/// spread of x, not to its magnitude).
/// Reads the ReLU mask from `a.y` (the forward's beta is not needed).
pub fn train_bwd(a: BnBackwardArgs<'_, [f32]>, dx: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let BnBackwardArgs { fwd: BnTrainArgs { x, bias, gamma, relu, .. }, dy, y, mean, invstd } = a;
    let cols = gamma.len();
    let rows = x.len().checked_div(cols).unwrap_or(0);
    // x + bias - mean = x - (mean - bias): centre x on the mean of x.
    let shifted: Vec<f32>;
    let mean = match bias {
        Some(b) => {
            shifted = mean.iter().zip(b).map(|(&m, &b)| (m as f64 - b as f64) as f32).collect();
            &shifted[..]
        }
        None => mean,
    };
    let sums = reduce_rows(rows, cols, 2 * cols, |range, acc| {
        let span = range.start * cols..range.end * cols;
        let rows = BwdRows { dy: &dy[span.clone()], x: &x[span.clone()], y: &y[span] };
        let (sb, sg) = acc.split_at_mut(cols);
        bwd_sums(rows, mean, invstd, relu, sb, sg)
    });
    let n = rows as f64;
    let dbeta: Vec<f32> = sums[..cols].iter().map(|&s| s as f32).collect();
    let dgamma: Vec<f32> = sums[cols..].iter().map(|&s| s as f32).collect();
    let mut p = vec![0f32; cols];
    let mut q = vec![0f32; cols];
    let mut r = vec![0f32; cols];
    for j in 0..cols {
        let k = gamma[j] as f64 * invstd[j] as f64;
        p[j] = k as f32;
        q[j] = (-k * invstd[j] as f64 * sums[cols + j] / n) as f32;
        r[j] = (-k * sums[j] / n) as f32;
    }
    let coefs = Coefs { mean, p: &p, q: &q, r: &r };
    for_rows_mut(dx, cols, |r0, dx| {
        let span = r0 * cols..r0 * cols + dx.len();
        bwd_dx(BwdRows { dy: &dy[span.clone()], x: &x[span.clone()], y: &y[span] }, coefs, relu, dx)
    });
    (dgamma, dbeta)
}

/// The same block of rows of dy, x and y.
#[derive(Clone, Copy)]
struct BwdRows<'r> {
    dy: &'r [f32],
    x: &'r [f32],
    y: &'r [f32],
}

/// Per-column coefficients of `dx = p g + q (x - mean) + r`.
#[derive(Clone, Copy)]
struct Coefs<'c> {
    mean: &'c [f32],
    p: &'c [f32],
    q: &'c [f32],
    r: &'c [f32],
}

multiversion! {
    /// `sb[c] += sum_r g`, `sg[c] += sum_r g xhat` over a block of rows.
    fn bwd_sums(rows: BwdRows<'_>, mean: &[f32], invstd: &[f32], relu: bool, sb: &mut [f64], sg: &mut [f64]) {
        let BwdRows { dy, x, y } = rows;
        let cols = mean.len();
        for ((dy, x), y) in dy.chunks_exact(cols).zip(x.chunks_exact(cols)).zip(y.chunks_exact(cols)) {
            let it = dy.iter().zip(x).zip(y).zip(mean).zip(invstd).zip(sb.iter_mut().zip(sg.iter_mut()));
            for (((((&d, &x), &y), &m), &s), (sb, sg)) in it {
                let g = if !relu || y > 0.0 { d } else { 0.0 };
                *sb += g as f64;
                *sg += (g * ((x - m) * s)) as f64;
            }
        }
    }
}

multiversion! {
    fn bwd_dx(rows: BwdRows<'_>, c: Coefs<'_>, relu: bool, dx: &mut [f32]) {
        let BwdRows { dy, x, y } = rows;
        let cols = c.mean.len();
        let rows = dx.chunks_exact_mut(cols).zip(dy.chunks_exact(cols)).zip(x.chunks_exact(cols));
        for (((dx, dy), x), y) in rows.zip(y.chunks_exact(cols)) {
            let it = dx.iter_mut().zip(dy).zip(x).zip(y).zip(c.mean).zip(c.p.iter().zip(c.q).zip(c.r));
            for (((((dx, &d), &x), &y), &m), ((&p, &q), &r)) in it {
                let g = if !relu || y > 0.0 { d } else { 0.0 };
                *dx = p * g + q * (x - m) + r;
            }
        }
    }
}
