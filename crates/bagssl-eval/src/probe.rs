//! Linear probe: multinomial logistic regression on frozen, standardized embeddings, trained like
//! the reference's `linear_probe` — features standardized with the training mean and std (+1e-6),
//! `nn.Linear` init, AdamW (lr 1e-3, weight decay 1e-6 on weight and bias), mini-batches of 512 in
//! a seeded random order, cosine learning rate stepped per epoch (`CosineAnnealingLR(epochs)`).
//!
//! Speed: the features are never copied as a whole; each mini-batch's rows are gathered and
//! standardized into one reused buffer and both products (logits, weight gradient) are single
//! GEMMs. Everything is single-threaded or order-independent, so a seed gives one exact result.

use bagssl_autograd::{ops, AdamW, Device, Tensor};
use bagssl_data::SeededRng;
use rayon::prelude::*;

use crate::knn::argmax_lowest;
use crate::{check_labels, rows_of, EvalError, Result, Splits};
use bagssl_autograd::cpu::matmul::{gemm_views, View};

/// Hyper-parameters of the probe; the defaults are the reference's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeOptions {
    pub epochs: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub batch: usize,
    pub seed: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions { epochs: 50, lr: 1e-3, weight_decay: 1e-6, batch: 512, seed: 0 }
    }
}

/// A trained probe: the standardization it was trained with and the linear classifier.
#[derive(Debug)]
pub struct LinearProbe {
    pub dim: usize,
    pub classes: usize,
    pub mean: Vec<f32>,
    /// 1 / (std + 1e-6) per feature.
    pub inv_std: Vec<f32>,
    /// (classes, dim), PyTorch layout.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Per-feature mean and 1 / (unbiased std + 1e-6), accumulated in f64.
fn standardization(x: &[f32], rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f64; dim];
    for r in x.chunks_exact(dim) {
        mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
    let mut var = vec![0f64; dim];
    for r in x.chunks_exact(dim) {
        var.iter_mut().zip(r).zip(&mean).for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2));
    }
    let denom = rows.saturating_sub(1).max(1) as f64;
    let inv_std = var.iter().map(|s| (1.0 / ((s / denom).sqrt() + 1e-6)) as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), inv_std)
}

/// Feature standardization: `(x - mean) * inv_std`.
struct Standardize<'a> {
    mean: &'a [f32],
    inv_std: &'a [f32],
}

impl Standardize<'_> {
    /// Copies rows `idx` of `x`, standardized, into `out` (len(idx) x dim).
    fn rows(&self, x: &[f32], idx: impl IndexedParallelIterator<Item = usize>, out: &mut [f32]) {
        let d = self.mean.len();
        out.par_chunks_mut(d).zip(idx).with_min_len(64).for_each(|(dst, i)| {
            let src = &x[i * d..(i + 1) * d];
            for (((o, &v), &m), &s) in dst.iter_mut().zip(src).zip(self.mean).zip(self.inv_std) {
                *o = (v - m) * s;
            }
        });
    }
}

/// `out (rows x classes) = xs (rows x dim) . weight^T + bias`.
fn logits(xs: &[f32], rows: usize, weight: &[f32], bias: &[f32], out: &mut [f32]) {
    let (c, d) = (bias.len(), weight.len() / bias.len());
    let out = &mut out[..rows * c];
    // Single-threaded: the probe must be reproducible from its seed on any thread count.
    gemm_views(View::row_major(&xs[..rows * d], rows, d), View::row_major(weight, c, d).t(), out, false, 1.0, false);
    out.chunks_exact_mut(c).for_each(|l| l.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
}

impl LinearProbe {
    fn standardize(&self) -> Standardize<'_> {
        Standardize { mean: &self.mean, inv_std: &self.inv_std }
    }

    /// Predicted class of every row of `x` (rows, dim); ties to the lowest class id.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<u32>> {
        let n = rows_of("probe features", x, self.dim)?;
        const BLOCK: usize = 1024;
        let mut xs = vec![0f32; BLOCK.min(n) * self.dim];
        let mut logits_buf = vec![0f32; BLOCK.min(n) * self.classes];
        let mut out = Vec::with_capacity(n);
        for b0 in (0..n).step_by(BLOCK) {
            let rows = (n - b0).min(BLOCK);
            self.standardize().rows(x, (b0..b0 + rows).into_par_iter(), &mut xs[..rows * self.dim]);
            logits(&xs, rows, &self.weight, &self.bias, &mut logits_buf);
            out.extend(logits_buf[..rows * self.classes].chunks_exact(self.classes).map(|l| argmax_lowest(l) as u32));
        }
        Ok(out)
    }

    /// Fraction of rows of `x` predicted as their label.
    pub fn accuracy(&self, x: &[f32], labels: &[u32]) -> Result<f64> {
        let pred = self.predict(x)?;
        check_labels("probe test labels", labels, pred.len(), self.classes)?;
        if pred.is_empty() {
            return Ok(0.0);
        }
        Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / pred.len() as f64)
    }
}

/// `p = softmax(logits)` in place, then `p = (p - onehot(label)) / batch`: dLoss/dlogits of the
/// batch-mean cross-entropy.
fn softmax_xent_grad(logits: &mut [f32], labels: impl Iterator<Item = u32>, classes: usize, batch: usize) {
    for (row, y) in logits.chunks_exact_mut(classes).zip(labels) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        row.iter_mut().for_each(|v| {
            *v = (*v - max).exp();
            sum += *v;
        });
        row.iter_mut().for_each(|v| *v /= sum);
        row[y as usize] -= 1.0;
        row.iter_mut().for_each(|v| *v /= batch as f32);
    }
}

/// Trains a probe on `train` (rows, dim) with labels in `0..classes`.
pub fn train_probe(
    train: &[f32],
    labels: &[u32],
    dim: usize,
    classes: usize,
    opts: &ProbeOptions,
) -> Result<LinearProbe> {
    let n = rows_of("probe train features", train, dim)?;
    check_labels("probe train labels", labels, n, classes)?;
    if classes == 0 || opts.batch == 0 {
        return Err(EvalError::Invalid(format!("probe needs classes ({classes}) and a batch size ({})", opts.batch)));
    }
    let (mean, inv_std) = standardization(train, n, dim);
    let std = Standardize { mean: &mean, inv_std: &inv_std };
    // nn.Linear(dim, classes) init: weight and bias ~ U(-1/sqrt(dim), 1/sqrt(dim)).
    let mut rng = SeededRng::new(opts.seed);
    let bound = 1.0 / (dim as f32).sqrt();
    let mut draw = |shape: &[usize]| {
        let v = (0..shape.iter().product()).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect();
        Tensor::from_vec(shape, v)
    };
    let (mut w, mut b) = (draw(&[classes, dim]), draw(&[classes]));
    // Gradients and AdamW moments as CPU tensors so the update is the project's one AdamW kernel.
    let zeros = |shape: &[usize]| Tensor::zeros(shape, &Device::Cpu);
    let (mut dw, mut mw, mut vw) = (zeros(&[classes, dim])?, zeros(&[classes, dim])?, zeros(&[classes, dim])?);
    let (mut db, mut mb, mut vb) = (zeros(&[classes])?, zeros(&[classes])?, zeros(&[classes])?);

    let bs = opts.batch.min(n.max(1));
    let mut xs = vec![0f32; bs * dim];
    let mut g = vec![0f32; bs * classes];
    let mut step = 0u64;
    for epoch in 0..opts.epochs {
        let lr = opts.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / opts.epochs as f64).cos());
        let perm = rng.permutation(n);
        for idx in perm.chunks(bs) {
            let rows = idx.len();
            std.rows(train, idx.par_iter().copied(), &mut xs[..rows * dim]);
            logits(&xs, rows, host(&w), host(&b), &mut g);
            softmax_xent_grad(&mut g[..rows * classes], idx.iter().map(|&i| labels[i]), classes, rows);
            let grad = &g[..rows * classes];
            gemm_views(
                View::row_major(grad, rows, classes).t(),
                View::row_major(&xs[..rows * dim], rows, dim),
                host_mut(&mut dw),
                false,
                1.0,
                false,
            );
            let dbs = host_mut(&mut db);
            dbs.fill(0.0);
            grad.chunks_exact(classes).for_each(|r| dbs.iter_mut().zip(r).for_each(|(d, v)| *d += v));
            step += 1;
            let h = AdamW { lr: lr as f32, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: opts.weight_decay, step };
            ops::adamw_(&mut w, &dw, &mut mw, &mut vw, h)?;
            ops::adamw_(&mut b, &db, &mut mb, &mut vb, h)?;
        }
    }
    Ok(LinearProbe { dim, classes, mean, inv_std, weight: w.to_vec()?, bias: b.to_vec()? })
}

fn host(t: &Tensor) -> &[f32] {
    t.as_slice().expect("the probe's tensors are CPU tensors")
}

fn host_mut(t: &mut Tensor) -> &mut [f32] {
    t.as_mut_slice().expect("the probe's tensors are CPU tensors")
}

/// Test accuracy of a linear probe trained on (`train`, `train_labels`) for `epochs` epochs with
/// the reference's hyper-parameters ([`ProbeOptions::default`]) and `seed`.
pub fn linear_probe(s: &Splits<'_>, epochs: usize, seed: u64) -> Result<f64> {
    let opts = ProbeOptions { epochs, seed, ..ProbeOptions::default() };
    train_probe(s.train.features, s.train.labels, s.dim, s.classes, &opts)?.accuracy(s.test.features, s.test.labels)
}
