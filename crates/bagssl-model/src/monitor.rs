//! The collapse monitor (docs/DEFINITIONS.md §12): RankMe, the effective rank of a batch of
//! embeddings, and the smallest per-dimension standard deviation, of the encoder output `h` and of
//! the projector output `z`, on a sample of a training step's rows.
//!
//! The spectrum comes from a symmetric eigen-solver in f64 on the host (Householder
//! tridiagonalisation, then implicit QL: `4/3 m^3` flops for an `m x m` matrix, eigenvalues only),
//! applied to the smaller of the sample's two Gram matrices: `X Xᵀ` (rows x rows) or `Xᵀ X`
//! (dims x dims) have the same non-zero eigenvalues. The sample is capped at [`MONITOR_ROWS`] rows,
//! which bounds the cost whatever the width (a 8192-wide projector costs what a 256-wide one does).

use bagssl_autograd::{ops, Tensor};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Most rows of a step that the monitor looks at: the first `k` patches of every image of the
/// batch, `k = max(1, MONITOR_ROWS / B)` (at most `n`), then the first `MONITOR_ROWS` of those.
/// 128 rows keep a monitored step's host work near 2 ms on the 2-core machine at any width (two
/// 128 x 128 eigenproblems, h and z in parallel; 256 rows cost 8x more), and are enough to tell a
/// spread spectrum (an effective rank in the tens) from a collapsed one (a few).
pub const MONITOR_ROWS: usize = 128;

/// A warning (and, with `train.stop_on_collapse`, a stop) when the effective rank of `h` or `z`
/// falls below this fraction of the most it can be, `min(rows - 1, width)`, or below
/// [`COLLAPSE_RANK_MIN`], whichever is larger ([`rank_floor`]; why in docs/DEFINITIONS.md §12).
pub const COLLAPSE_RANK_FRACTION: f64 = 0.1;
/// The floor of [`rank_floor`]: fewer than 2 effective directions is one direction of variation.
pub const COLLAPSE_RANK_MIN: f64 = 2.0;

/// The rank under which a sample of `rows` rows of a `width`-wide embedding counts as collapsed.
pub fn rank_floor(rows: usize, width: usize) -> f64 {
    (COLLAPSE_RANK_FRACTION * rows.saturating_sub(1).min(width) as f64).max(COLLAPSE_RANK_MIN)
}

/// ... or when the smallest per-dimension standard deviation of `z` falls below this: bag-VICReg
/// holds every dimension of `z` at a standard deviation of 1 (its variance hinge), so a dimension
/// at 1/100 of it has stopped carrying information, whatever the rank says (RankMe is blind to a
/// uniform shrinking of the whole batch).
pub const COLLAPSE_STD: f64 = 1e-2;

/// The monitor's reading of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapseStats {
    /// RankMe of the encoder output `h` (the representation).
    pub embedding_rank: f64,
    /// RankMe of the projector output `z` (what the loss sees).
    pub projection_rank: f64,
    /// Smallest per-dimension (unbiased) standard deviation of `h`.
    pub embedding_std_min: f64,
    /// Smallest per-dimension (unbiased) standard deviation of `z`.
    pub projection_std_min: f64,
    /// Rows of the sample the statistics were computed on.
    pub rows: usize,
    /// Widths of `h` and `z`.
    pub embedding_dim: usize,
    pub projection_dim: usize,
}

impl CollapseStats {
    /// The reason this reading counts as a collapse ([`COLLAPSE_RANK`], [`COLLAPSE_STD`]), if it does.
    pub fn collapse(&self) -> Option<String> {
        let (h_floor, z_floor) =
            (rank_floor(self.rows, self.embedding_dim), rank_floor(self.rows, self.projection_dim));
        if below(self.embedding_rank, h_floor) {
            return Some(format!("embedding_rank {:.2} < {h_floor:.1}", self.embedding_rank));
        }
        if below(self.projection_rank, z_floor) {
            return Some(format!("projection_rank {:.2} < {z_floor:.1}", self.projection_rank));
        }
        if below(self.projection_std_min, COLLAPSE_STD) {
            return Some(format!("projection_std_min {:.3e} < {COLLAPSE_STD}", self.projection_std_min));
        }
        None
    }
}

/// `v < floor`, and true for NaN: a NaN reading is a collapse, not a pass.
fn below(v: f64, floor: f64) -> bool {
    v.is_nan() || v < floor
}

/// What a step keeps of `h` and `z` for the monitor: on the CPU the sampled rows themselves, on a
/// GPU the queued transposes whose prefixes hold them (downloaded only in [`MonitorSample::finish`],
/// so the copy waits for work the step had queued anyway, not the reverse).
pub(crate) struct MonitorSample {
    h: Sampled,
    z: Sampled,
    images: usize,
    take: usize,
}

/// The sample and its width `d`.
enum Sampled {
    Host(Vec<f32>, usize),
    /// (n·d, B): row `i·d + j`, column `b` is element `j` of patch `i` of image `b`.
    Device(Tensor, usize),
}

impl MonitorSample {
    /// Samples `h` and `z` (both (B·n, width), image-major rows) of a step of `images` images.
    pub fn take(h: &Tensor, z: &Tensor, images: usize) -> Result<MonitorSample> {
        let (rows, _) = h.dims2();
        if images == 0 || rows % images != 0 || z.dims2().0 != rows {
            return Err(ModelError::Internal(format!(
                "monitor: {rows} rows of h, {} of z, for {images} images",
                z.dims2().0
            )));
        }
        let per_image = rows / images;
        let take = (MONITOR_ROWS / images).clamp(1, per_image);
        let one = |t: &Tensor| -> Result<Sampled> {
            let (_, d) = t.dims2();
            Ok(match t.as_slice() {
                Some(v) => {
                    let mut out = Vec::with_capacity(images * take * d);
                    for b in 0..images {
                        out.extend_from_slice(&v[b * per_image * d..(b * per_image + take) * d]);
                    }
                    Sampled::Host(out, d)
                }
                None => Sampled::Device(ops::transpose_last2(t, 1, images, per_image * d)?, d),
            })
        };
        Ok(MonitorSample { h: one(h)?, z: one(z)?, images, take })
    }

    /// Downloads what is still on the device and measures both.
    pub fn finish(self) -> Result<CollapseStats> {
        let (images, take) = (self.images, self.take);
        let host = |s: Sampled| -> Result<(Vec<f32>, usize)> {
            Ok(match s {
                Sampled::Host(v, d) => (v, d),
                Sampled::Device(t, d) => {
                    // Image-major again: row b·take + i is patch i of image b.
                    let col = t.to_vec_prefix(take * d * images)?;
                    let mut out = vec![0f32; images * take * d];
                    for i in 0..take {
                        for j in 0..d {
                            let src = &col[(i * d + j) * images..(i * d + j + 1) * images];
                            for (b, &v) in src.iter().enumerate() {
                                out[(b * take + i) * d + j] = v;
                            }
                        }
                    }
                    (out, d)
                }
            })
        };
        let rows = (images * take).min(MONITOR_ROWS);
        let (h, dh) = host(self.h)?;
        let (z, dz) = host(self.z)?;
        let ((embedding_rank, embedding_std_min), (projection_rank, projection_std_min)) =
            rayon::join(|| rank_and_std_min(&h[..rows * dh], rows, dh), || rank_and_std_min(&z[..rows * dz], rows, dz));
        Ok(CollapseStats {
            embedding_rank,
            projection_rank,
            embedding_std_min,
            projection_std_min,
            rows,
            embedding_dim: dh,
            projection_dim: dz,
        })
    }
}

/// RankMe and the smallest per-column standard deviation of the (rows, cols) row-major matrix `x`,
/// centred per column (§12). A batch with no variation at all has rank 0.
pub fn rank_and_std_min(x: &[f32], rows: usize, cols: usize) -> (f64, f64) {
    assert_eq!(x.len(), rows * cols, "rank_and_std_min: {} values for ({rows}, {cols})", x.len());
    if rows < 2 || cols == 0 {
        return (0.0, 0.0);
    }
    let mut mean = vec![0f64; cols];
    for r in x.chunks_exact(cols) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let xc: Vec<f64> = x.chunks_exact(cols).flat_map(|r| r.iter().zip(&mean).map(|(&v, m)| v as f64 - m)).collect();
    let mut var = vec![0f64; cols];
    for r in xc.chunks_exact(cols) {
        for (s, v) in var.iter_mut().zip(r) {
            *s += v * v;
        }
    }
    let std_min = var.iter().map(|s| (s / (rows - 1) as f64).sqrt()).fold(f64::INFINITY, f64::min);
    let gram = if rows <= cols { gram_rows(&xc, rows, cols) } else { gram_cols(&xc, rows, cols) };
    let n = rows.min(cols);
    let sv: Vec<f64> = symmetric_eigenvalues(gram, n).into_iter().map(|l| l.max(0.0).sqrt()).collect();
    (rankme(&sv), std_min)
}

/// `X Xᵀ` (rows x rows).
fn gram_rows(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut g = vec![0f64; rows * rows];
    for i in 0..rows {
        let a = &x[i * cols..(i + 1) * cols];
        for j in 0..=i {
            let v = dot(a, &x[j * cols..(j + 1) * cols]);
            g[i * rows + j] = v;
            g[j * rows + i] = v;
        }
    }
    g
}

/// `Xᵀ X` (cols x cols), from the transpose (contiguous dot products).
fn gram_cols(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; rows * cols];
    for (r, row) in x.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    gram_rows(&t, cols, rows)
}

/// Four accumulators, so the compiler can keep them in vector lanes.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    s[0] + s[1] + s[2] + s[3] + tail
}

/// RankMe (Garrido et al. 2023): `exp(-sum p_k ln p_k)` with `p_k = s_k / sum s`, over the
/// singular values `s` (the `+ 1e-7` of the paper is left out: it only matters for the zeros,
/// which contribute nothing here). All zeros: 0.
pub fn rankme(singular_values: &[f64]) -> f64 {
    let total: f64 = singular_values.iter().filter(|s| **s > 0.0).sum();
    if !total.is_finite() || total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = singular_values
        .iter()
        .filter(|s| **s > 0.0)
        .map(|s| {
            let p = s / total;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// Eigenvalues (ascending) of the symmetric `n x n` row-major matrix `a` (both triangles).
/// Householder reduction to a tridiagonal matrix, then the implicit QL method with Wilkinson
/// shifts (Numerical Recipes' `tred2` without eigenvectors and `tqli`). The reduction works on
/// the full matrix, so its products are unit-stride row operations that vectorise: `n^3`
/// multiply-adds, twice the triangle's count but faster.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "symmetric_eigenvalues: {} values for {n} x {n}", a.len());
    if n == 0 {
        return Vec::new();
    }
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    let (mut u, mut q) = (vec![0f64; n], vec![0f64; n]);
    // Row i (from the last) is reflected onto its sub-diagonal element by H = I - u uᵀ / h,
    // applied to the leading (i x i) block: A <- A - u qᵀ - q uᵀ with q = p - (uᵀp / 2h) u, p = A u / h.
    for i in (1..n).rev() {
        let l = i - 1;
        let row = &a[i * n..i * n + i];
        let scale: f64 = row.iter().map(|v| v.abs()).sum();
        if l == 0 || scale == 0.0 {
            e[i] = a[i * n + l];
            continue;
        }
        let u = &mut u[..i];
        u.iter_mut().zip(row).for_each(|(x, v)| *x = v / scale);
        let mut h = dot(u, u);
        let f = u[l];
        let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
        e[i] = scale * g;
        h -= f * g;
        u[l] = f - g;
        let q = &mut q[..i];
        for j in 0..i {
            q[j] = dot(&a[j * n..j * n + i], u) / h;
        }
        let k = dot(u, q) / (h + h);
        q.iter_mut().zip(u.iter()).for_each(|(p, x)| *p -= k * x);
        for j in 0..i {
            let (uj, qj) = (u[j], q[j]);
            for (x, (uk, qk)) in a[j * n..j * n + i].iter_mut().zip(u.iter().zip(q.iter())) {
                *x -= uj * qk + qj * uk;
            }
        }
    }
    for i in 0..n {
        d[i] = a[i * n + i];
    }
    // Implicit QL on the tridiagonal (d, e): e[i] couples d[i] and d[i + 1].
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        for _iteration in 0..64 {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    d.sort_by(f64::total_cmp);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random orthogonal matrix: a product of Householder reflections of seeded vectors.
    fn orthogonal(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let mut q: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
        for _ in 0..n.min(6) {
            let v: Vec<f64> = (0..n).map(|_| next()).collect();
            let vv: f64 = v.iter().map(|x| x * x).sum();
            // q <- q (I - 2 v vᵀ / vᵀv)
            for r in 0..n {
                let qv: f64 = (0..n).map(|k| q[r * n + k] * v[k]).sum();
                for k in 0..n {
                    q[r * n + k] -= 2.0 * qv * v[k] / vv;
                }
            }
        }
        q
    }

    /// Q diag(l) Qᵀ.
    fn with_spectrum(l: &[f64], seed: u64) -> Vec<f64> {
        let n = l.len();
        let q = orthogonal(n, seed);
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| q[i * n + k] * l[k] * q[j * n + k]).sum();
            }
        }
        a
    }

    fn assert_spectrum(found: &[f64], expected: &[f64], tol: f64) {
        let mut e = expected.to_vec();
        e.sort_by(f64::total_cmp);
        assert_eq!(found.len(), e.len());
        for (f, x) in found.iter().zip(&e) {
            assert!((f - x).abs() <= tol * (1.0 + x.abs()), "found {found:?}\nexpected {e:?}");
        }
    }

    #[test]
    fn eigenvalues_of_known_spectra() {
        assert!(symmetric_eigenvalues(Vec::new(), 0).is_empty());
        assert_spectrum(&symmetric_eigenvalues(vec![3.0], 1), &[3.0], 0.0);
        // [[2, 1], [1, 2]]: 1 and 3.
        assert_spectrum(&symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2), &[1.0, 3.0], 1e-14);
        let diag = [5.0, -1.0, 0.0, 2.5, 7.0];
        let mut a = vec![0f64; 25];
        (0..5).for_each(|i| a[i * 6] = diag[i]);
        assert_spectrum(&symmetric_eigenvalues(a, 5), &diag, 1e-14);
        for (n, seed) in [(3, 1), (17, 2), (64, 3), (200, 4)] {
            // Spread, repeated and zero eigenvalues, as a covariance of a collapsing batch has.
            let l: Vec<f64> =
                (0..n).map(|k| if k % 5 == 0 { 0.0 } else { (k % 7) as f64 * 1.5 + 1e-3 * k as f64 }).collect();
            assert_spectrum(&symmetric_eigenvalues(with_spectrum(&l, seed), n), &l, 1e-10);
        }
    }

    #[test]
    fn rankme_of_known_spectra() {
        assert_eq!(rankme(&[]), 0.0);
        assert_eq!(rankme(&[0.0, 0.0]), 0.0);
        assert!((rankme(&[4.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((rankme(&[2.0; 10]) - 10.0).abs() < 1e-12, "k equal singular values: rank k");
        // Two values 3:1: p = (3/4, 1/4), exp of the entropy.
        let h = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!((rankme(&[3.0, 1.0]) - h.exp()).abs() < 1e-12);
    }

    /// Rows in a k-dimensional subspace (plus a shared offset) have effective rank about k; the
    /// two Gram matrices (rows < cols, rows > cols) agree.
    #[test]
    fn rank_of_low_dimensional_batches() {
        let basis = orthogonal(12, 9);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        for rows in [8, 40, 400] {
            // Coefficients +-1 on 3 orthonormal directions: equal singular values when balanced.
            let x: Vec<f32> = (0..rows)
                .flat_map(|_| {
                    let c = [next(), next(), next()];
                    (0..12)
                        .map(|j| (5.0 + (0..3).map(|k| c[k] * basis[j * 12 + k]).sum::<f64>()) as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            let (rank, std_min) = rank_and_std_min(&x, rows, 12);
            assert!(rank > 2.5 && rank <= 3.0 + 1e-6, "rows {rows}: rank {rank}");
            assert!((0.0..0.6).contains(&std_min), "rows {rows}: std_min {std_min}");
        }
        let constant = vec![1.5f32; 10 * 4];
        assert_eq!(rank_and_std_min(&constant, 10, 4), (0.0, 0.0), "no variation: rank 0");
    }

    #[test]
    fn collapse_names_its_reason() {
        let ok = CollapseStats {
            embedding_rank: 30.0,
            projection_rank: 20.0,
            embedding_std_min: 0.3,
            projection_std_min: 0.5,
            rows: 256,
            embedding_dim: 512,
            projection_dim: 64,
        };
        assert_eq!(ok.collapse(), None);
        assert_eq!(rank_floor(256, 512), 25.5);
        assert_eq!(rank_floor(256, 64), 6.4);
        assert_eq!(rank_floor(8, 4), 2.0);
        let r = CollapseStats { projection_rank: 5.0, ..ok }.collapse().unwrap();
        assert!(r.contains("projection_rank 5.00 < 6.4"), "{r}");
        let r = CollapseStats { embedding_rank: 20.0, ..ok }.collapse().unwrap();
        assert!(r.contains("embedding_rank 20.00 < 25.5"), "{r}");
        let r = CollapseStats { projection_std_min: 1e-4, ..ok }.collapse().unwrap();
        assert!(r.contains("projection_std_min"), "{r}");
        assert!(CollapseStats { embedding_rank: f64::NAN, ..ok }.collapse().is_some(), "NaN counts as collapsed");
    }
}
