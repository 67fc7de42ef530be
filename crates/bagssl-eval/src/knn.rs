//! Weighted cosine kNN (docs/DEFINITIONS.md §9): each test embedding votes with its `k` most cosine-similar
//! training embeddings, each neighbour weighted by `exp(sim / t)`; the class with the largest
//! vote wins, ties to the lowest class id.
//!
//! Similarities of a block of test rows against all training rows are one GEMM
//! (`ops::matmul` on unit-normalized rows); the top-k scan and the votes are per row, in parallel.
//! The `k` winning similarities are then recomputed in f64 from the raw features so the votes do
//! not inherit the GEMM's f32 rounding (amplified 1/t-fold by the exponential).

use bagssl_autograd::{ops, Tensor};
use rayon::prelude::*;

use crate::{check_labels, rows_of, EvalError, Result, Splits};

/// Test rows per similarity block: 256 x 50 000 training rows is ~51 MB of similarities.
const BLOCK: usize = 256;

/// L2 norms of the rows, in f64, floored like `F.normalize` (eps 1e-12).
fn row_norms(x: &[f32], dim: usize) -> Vec<f64> {
    x.chunks_exact(dim).map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(1e-12)).collect()
}

/// Rows scaled to unit length (f32), for the similarity GEMM.
fn normalized(x: &[f32], norms: &[f64], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim).zip(norms).flat_map(|(r, &n)| r.iter().map(move |&v| (v as f64 / n) as f32)).collect()
}

/// Indices of the `k` largest values of `sims`, largest first; equal values keep the lower index
/// first (a stable, deterministic tie rule).
fn top_k(sims: &[f32], k: usize, out: &mut Vec<usize>) {
    out.clear();
    if k == 0 {
        return;
    }
    for (j, &s) in sims.iter().enumerate() {
        if out.len() == k && s.partial_cmp(&sims[out[k - 1]]) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        // Insert after every kept entry that is >= s, so earlier (lower-index) ties stay ahead.
        let pos = out.partition_point(|&i| sims[i] >= s);
        if out.len() == k {
            out.pop();
        }
        out.insert(pos, j);
    }
}

/// Predicted class and per-class votes of every test row.
///
/// `train` is (N, dim) with `train_labels` in `0..classes`, `test` is (M, dim). Returns the
/// predictions (M) and the votes (M, classes) row-major. `k` is capped at N.
pub fn knn_predict(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    dim: usize,
    k: usize,
    t: f64,
    classes: usize,
) -> Result<(Vec<u32>, Vec<f64>)> {
    let ntr = rows_of("kNN train features", train, dim)?;
    let nte = rows_of("kNN test features", test, dim)?;
    check_labels("kNN train labels", train_labels, ntr, classes)?;
    if classes == 0 || ntr == 0 || t.is_nan() || t <= 0.0 {
        return Err(EvalError::Invalid(format!(
            "kNN needs training rows ({ntr}), classes ({classes}) and a positive temperature ({t})"
        )));
    }
    let k = k.min(ntr);
    let tr_norms = row_norms(train, dim);
    let te_norms = row_norms(test, dim);
    let tr_unit = Tensor::from_vec(&[ntr, dim], normalized(train, &tr_norms, dim));

    let mut predictions = vec![0u32; nte];
    let mut votes = vec![0f64; nte * classes];
    for b0 in (0..nte).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(nte);
        let te_unit = normalized(&test[b0 * dim..b1 * dim], &te_norms[b0..b1], dim);
        let sim = ops::matmul(&Tensor::from_vec(&[b1 - b0, dim], te_unit), &tr_unit, false, true)?;
        let sim = sim.as_slice().ok_or_else(|| EvalError::Invalid("kNN similarities not on the host".into()))?;
        predictions[b0..b1]
            .par_iter_mut()
            .zip(votes[b0 * classes..b1 * classes].par_chunks_mut(classes))
            .enumerate()
            .for_each_init(Vec::new, |nbrs, (r, (pred, v))| {
                let i = b0 + r;
                top_k(&sim[r * ntr..(r + 1) * ntr], k, nbrs);
                let q = &test[i * dim..(i + 1) * dim];
                for &j in nbrs.iter() {
                    let x = &train[j * dim..(j + 1) * dim];
                    let dot: f64 = q.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let cos = dot / (te_norms[i] * tr_norms[j]);
                    v[train_labels[j] as usize] += (cos / t).exp();
                }
                *pred = argmax_lowest(v) as u32;
            });
    }
    Ok((predictions, votes))
}

/// Index of the largest value, the lowest index among equals.
pub(crate) fn argmax_lowest<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Fraction of test rows whose kNN prediction equals their label.
pub fn knn_accuracy(s: &Splits<'_>, k: usize, t: f64) -> Result<f64> {
    let test_labels = s.test.labels;
    let (pred, _) = knn_predict(s.train.features, s.train.labels, s.test.features, s.dim, k, t, s.classes)?;
    if test_labels.len() != pred.len() {
        return Err(EvalError::Invalid(format!("{} test labels for {} test rows", test_labels.len(), pred.len())));
    }
    if pred.is_empty() {
        return Ok(0.0);
    }
    let correct = pred.iter().zip(test_labels).filter(|(p, l)| p == l).count();
    Ok(correct as f64 / pred.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let sims = [0.5, 0.9, 0.5, 0.1, 0.9, 0.7];
        let mut out = Vec::new();
        top_k(&sims, 3, &mut out);
        assert_eq!(out, [1, 4, 5]);
        top_k(&sims, 4, &mut out);
        assert_eq!(out, [1, 4, 5, 0]);
        top_k(&sims, 10, &mut out);
        assert_eq!(out, [1, 4, 5, 0, 2, 3]);
    }

    #[test]
    fn argmax_ties_to_lowest() {
        assert_eq!(argmax_lowest(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax_lowest(&[0.0, 0.0]), 0);
    }
}
