//! bag-VICReg forward and backward in one function (docs/DEFINITIONS.md §7).
//!
//! `z` is (N, D), rows `b*n .. b*n + n` are image b's patches. With `mb` the per-image mean,
//! `mu` the mean over all rows, `Zc = z - mu`, `C = Zc^T Zc / (N - 1)`, `s_d = sqrt(C_dd + eps)`:
//!
//! - invariance `I = sum (z - mb)^2 / (N D)`, `dI/dz = 2 (z - mb) / (N D)`. The per-image mean
//!   depends on z too, but its contribution `sum_i (z_i - mb)` is zero within each image.
//! - variance `V = mean_d relu(1 - s_d)`, `dV/dZc[:, d] = -[s_d < 1] Zc[:, d] / (D (N - 1) s_d)`.
//! - covariance `Cv = sum_{d != e} C_de^2 / D`, `dCv/dZc = 4 / (D (N - 1)) Zc Coff` where `Coff` is
//!   C with a zeroed diagonal.
//! - Centering: `dL/dz = dL/dZc - colmean(dL/dZc)`. Both Zc terms are `Zc M` for a D x D matrix M,
//!   and `colmean(Zc M) = colmean(Zc) M = 0`, so the correction vanishes (up to f32 rounding of
//!   `mu`, far below the tolerance) and is not computed.
//!
//! So the whole gradient is `dz = lambda dI/dz + Zc M` with
//! `M = nu 4 / (D (N - 1)) Coff + diag(mu dV/dC_dd-scale)`: the variance term rides along as the
//! diagonal of the second GEMM. Cost: the symmetric N x D x D product for C (about 5/8 of a
//! GEMM, [`gram`]), one N x D x D GEMM for Zc M, and two streaming passes.

use rayon::prelude::*;

use super::elementwise::add_rows;
use super::matmul::{gram, sgemm, GemmShape};
use super::par::{reduce_rows, rows_per_task};
use super::pool;
use super::simd::multiversion;
use crate::backend::{VicregParts, VicregWeights};

/// Rows of C per task when it becomes M (a row is D multiply-adds in f64 and D scalings).
const ROWS_PER_TASK: usize = 64;

/// Loss parts and dL/dz (N x D, row-major) of the weighted loss. Needs N >= 2 and n | N.
pub fn fwd_bwd(z: &[f32], d: usize, n: usize, w: VicregWeights) -> (VicregParts, Vec<f32>) {
    let rows = z.len() / d;
    let (nf, df) = (rows as f64, d as f64);

    // Column means over all rows.
    let sums = reduce_rows(rows, d, d, |range, acc| add_rows(&z[range.start * d..range.end * d], acc));
    let mu: Vec<f32> = sums.iter().map(|&s| (s / nf) as f32).collect();

    // Per image: invariance sum, dz = lambda dI/dz, and Zc.
    // Both written in full by `invariance_chunk`.
    let mut dz = pool::take(rows * d);
    let mut zc = pool::take(rows * d);
    let inv_coef = (2.0 * w.invariance as f64 / (nf * df)) as f32;
    let image_len = n * d;
    let chunk = rows_per_task(rows / n, image_len) * image_len;
    let inv_parts: Vec<f64> = dz
        .par_chunks_mut(chunk)
        .zip(zc.par_chunks_mut(chunk))
        .enumerate()
        .map(|(c, (dz, zc))| invariance_chunk(&z[c * chunk..c * chunk + dz.len()], &mu, n, inv_coef, dz, zc))
        .collect();
    let invariance = inv_parts.iter().sum::<f64>() / (nf * df);

    // C = Zc^T Zc / (N - 1).
    let mut c = gram(&zc, rows, d, (1.0 / (nf - 1.0)) as f32);

    // Variance and covariance terms; C becomes M in place, rows in parallel. Each row's sums
    // come back in order and are added in order, so the result does not depend on the threads.
    let off_coef = (4.0 * w.covariance as f64 / (df * (nf - 1.0))) as f32;
    let per_row: Vec<(f64, f64)> = c
        .par_chunks_mut(d)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .map(|(i, row)| {
            let var = row[i] as f64;
            let off = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() - var * var;
            let std = (var + w.eps as f64).sqrt();
            let var_grad = if std < 1.0 { -(w.variance as f64) / (df * (nf - 1.0) * std) } else { 0.0 };
            row.iter_mut().for_each(|v| *v *= off_coef);
            row[i] = var_grad as f32;
            (off, (1.0 - std).max(0.0))
        })
        .collect();
    let (mut off_sq, mut hinge) = (0f64, 0f64);
    for &(off, h) in &per_row {
        off_sq += off;
        hinge += h;
    }
    let variance = hinge / df;
    let covariance = off_sq / df;

    // dz += Zc M.
    let apply = GemmShape { m: rows, k: d, n: d, trans_a: false, trans_b: false };
    sgemm(apply, &zc, &c, &mut dz, true, 1.0);
    pool::give(zc);
    pool::give(c);

    let loss = w.invariance as f64 * invariance + w.variance as f64 * variance + w.covariance as f64 * covariance;
    (VicregParts { loss, invariance, variance, covariance }, dz)
}

multiversion! {
    /// For whole images of `z` (rows of `mu.len()`, `n` per image): writes `dz = coef (z - mb)`
    /// and `zc = z - mu`, returns `sum (z - mb)^2`.
    fn invariance_chunk(z: &[f32], mu: &[f32], n: usize, coef: f32, dz: &mut [f32], zc: &mut [f32]) -> f64 {
        let d = mu.len();
        let inv_n = 1.0 / n as f64;
        let mut mean = vec![0f64; d];
        let mut mb = vec![0f32; d];
        let mut sq = vec![0f64; d];
        let images = z.chunks_exact(n * d).zip(dz.chunks_exact_mut(n * d)).zip(zc.chunks_exact_mut(n * d));
        for ((z, dz), zc) in images {
            mean.fill(0.0);
            for row in z.chunks_exact(d) {
                mean.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64);
            }
            mb.iter_mut().zip(&mean).for_each(|(m, &s)| *m = (s * inv_n) as f32);
            for ((zr, dzr), zcr) in z.chunks_exact(d).zip(dz.chunks_exact_mut(d)).zip(zc.chunks_exact_mut(d)) {
                let it = zr.iter().zip(&mb).zip(mu).zip(dzr.iter_mut().zip(zcr.iter_mut())).zip(sq.iter_mut());
                for ((((&z, &m), &mu), (dz, zc)), sq) in it {
                    let diff = z - m;
                    *sq += (diff * diff) as f64;
                    *dz = coef * diff;
                    *zc = z - mu;
                }
            }
        }
        sq.iter().sum()
    }
}
