//! The backend trait: every primitive once, implemented by [`crate::cpu::CpuBackend`] and
//! [`crate::cuda::CudaBackend`], so a primitive that one backend lacks does not compile.
//!
//! Each primitive with more than a couple of inputs takes one argument struct with named fields
//! ([`BnTrainArgs`], [`BnBackwardArgs`], [`BnEval`], [`AdamWSlot`]): a swapped argument is a
//! compile error, not a parity-test failure. Fused forms that a backend may specialise (linear
//! with bias, linear + eval-mode BatchNorm, the asynchronous loss, the multi-tensor updates) have
//! a default method that composes the plain primitives; a backend overrides only what it fuses.
//!
//! Shapes were checked by [`crate::ops`] before a backend method runs; the backends may assume
//! them. The types here are shared by both backends and by `ops`, and import neither.

use crate::tensor::Tensor;
use crate::{Error, Result};

/// `op(a) @ op(b)` where op transposes when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Transpose {
    pub a: bool,
    pub b: bool,
}

impl Transpose {
    /// `a @ b`.
    pub const NN: Transpose = Transpose { a: false, b: false };
    /// `a @ b^T`: a PyTorch Linear's `x W^T`.
    pub const NT: Transpose = Transpose { a: false, b: true };
    /// `a^T @ b`: a weight gradient `dy^T x`.
    pub const TN: Transpose = Transpose { a: true, b: false };
}

/// The BatchNorm argument structs over tensors (the same structs the CPU kernels take over
/// slices and the CUDA launchers over GPU buffers: `bagssl_kernels::args`).
pub type BnTrainArgs<'a, T = Tensor> = bagssl_kernels::BnTrainArgs<'a, T>;
pub type BnBackwardArgs<'a, T = Tensor> = bagssl_kernels::BnBackwardArgs<'a, T>;
pub type BnEval<'a, T = Tensor> = bagssl_kernels::BnEval<'a, T>;

/// What a training-mode BatchNorm forward produces and its backward needs.
pub struct BnForward {
    /// Output (after the optional ReLU).
    pub y: Tensor,
    /// Batch mean per column.
    pub mean: Tensor,
    /// 1 / sqrt(biased batch variance + eps) per column.
    pub invstd: Tensor,
    /// Unbiased batch variance per column (for the running statistics).
    pub var_unbiased: Tensor,
}

impl BnForward {
    /// The backward's arguments for this forward of `fwd`, with upstream gradient `dy`.
    pub fn backward_args<'a>(&'a self, fwd: BnTrainArgs<'a>, dy: &'a Tensor) -> BnBackwardArgs<'a> {
        BnBackwardArgs { fwd, dy, y: &self.y, mean: &self.mean, invstd: &self.invstd }
    }
}

/// What a BatchNorm backward returns.
pub struct BnBackward {
    /// dL/dx, which is also dL/d(x + bias).
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// The column sums of dx: the gradient of the folded bias, when the forward had one.
    pub dbias: Option<Tensor>,
}

/// AdamW hyper-parameters for one update (PyTorch's `torch.optim.AdamW` semantics; `step` is
/// 1-based): the kernels' type, so no conversion sits between the backends.
pub use bagssl_kernels::AdamWConfig as AdamW;

/// One tensor of an AdamW update: the parameter, its gradient, its moments and its weight decay
/// (the [`AdamW`]'s `weight_decay` is not used). The kernels' slot type, over tensors.
pub type AdamWSlot<'a> = bagssl_kernels::AdamWTensor<'a, Tensor>;

/// Loss weights and epsilon of bag-VICReg (docs/DEFINITIONS.md §7): one type from the config's
/// `[loss]` section to the kernels.
pub use bagssl_kernels::VicregWeights;

/// The geometry of a convolution or a pooling window over NHWC rows (`bagssl_kernels::args`).
pub use bagssl_kernels::Window2d;

/// The bag-VICReg loss and its three unweighted terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VicregParts {
    pub loss: f64,
    pub invariance: f64,
    pub variance: f64,
    pub covariance: f64,
}

impl VicregParts {
    /// In the order of [`crate::loss::BagVicreg`]'s terms: loss, invariance, variance, covariance.
    pub fn to_array(self) -> [f64; 4] {
        [self.loss, self.invariance, self.variance, self.covariance]
    }
    pub fn from_slice(v: &[f64]) -> VicregParts {
        VicregParts { loss: v[0], invariance: v[1], variance: v[2], covariance: v[3] }
    }
}

/// Scalars of a loss, possibly still on their way from the GPU (an asynchronous copy into
/// page-locked memory): a training step queues its backward pass before it waits for them.
#[derive(Debug)]
pub struct PendingScalars(Pending);

#[derive(Debug)]
enum Pending {
    Ready(Vec<f64>),
    Gpu(bagssl_kernels::PendingScalars),
}

impl PendingScalars {
    pub fn ready(values: Vec<f64>) -> Self {
        PendingScalars(Pending::Ready(values))
    }
    pub(crate) fn gpu(s: bagssl_kernels::PendingScalars) -> Self {
        PendingScalars(Pending::Gpu(s))
    }
    /// The scalars; on a GPU waits for their copy only, not for the work queued after it.
    pub fn wait(&self) -> Result<Vec<f64>> {
        match &self.0 {
            Pending::Ready(v) => Ok(v.clone()),
            Pending::Gpu(s) => {
                let v = s.wait()?;
                Ok(vec![v.loss, v.invariance, v.variance, v.covariance])
            }
        }
    }
}

/// A scalar loss and its gradient from one op: the scalars (first the weighted loss), the
/// weighted loss as a 1-element tensor on the input's device, and dL/dz.
pub struct LossGrad {
    pub scalars: PendingScalars,
    pub loss: Tensor,
    pub grad: Tensor,
}

/// The primitives of one device. Tensors passed in live on that device (checked by `ops`).
pub trait Backend: Sync {
    fn matmul(&self, a: &Tensor, b: &Tensor, t: Transpose) -> Result<Tensor>;
    /// `x + b`, `b` broadcast over the rows.
    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Column sums: (rows, cols) -> (cols).
    fn sum_rows(&self, x: &Tensor) -> Result<Tensor>;
    fn bn_train_fwd(&self, a: BnTrainArgs<'_>) -> Result<BnForward>;
    fn bn_train_bwd(&self, a: BnBackwardArgs<'_>) -> Result<BnBackward>;
    fn bn_eval_fwd(&self, x: &Tensor, bn: BnEval<'_>) -> Result<Tensor>;
    /// `r = (1 - momentum) r + momentum batch`, in place.
    fn ema_(&self, running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()>;
    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor>;
    /// `dy * (y > 0)`.
    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// bag-VICReg on z (B*n, D): the parts and dL/dz of the weighted loss.
    fn vicreg_fwd_bwd(&self, z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)>;
    /// Mean over consecutive groups of `n` rows: (B*n, D) -> (B, D).
    fn group_mean(&self, x: &Tensor, n: usize) -> Result<Tensor>;
    /// (B, D) -> (B*n, D), each row `dy[b] / n`.
    fn group_mean_bwd(&self, dy: &Tensor, n: usize) -> Result<Tensor>;
    /// `sum(x * w)` in f64.
    fn dot(&self, x: &Tensor, w: &Tensor) -> Result<f64>;
    /// `y += alpha x`, in place.
    fn axpy_(&self, y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()>;
    /// `x *= s`, in place.
    fn scale_(&self, x: &mut Tensor, s: f32) -> Result<()>;
    /// One AdamW update of `s.param` in place, with weight decay `s.weight_decay`.
    fn adamw_(&self, s: AdamWSlot<'_>, h: AdamW) -> Result<()>;
    /// The windows of `x` (n·h·w, c) as rows: (n·out_h·out_w, kh·kw·c), columns ordered
    /// (ki, kj, channel), zero over the padding.
    fn im2col(&self, x: &Tensor, g: Window2d) -> Result<Tensor>;
    /// The adjoint of [`Backend::im2col`]: (n·out_h·out_w, kh·kw·c) -> (n·h·w, c), each pixel
    /// the sum of its copies in window-offset order.
    fn col2im(&self, cols: &Tensor, g: Window2d) -> Result<Tensor>;
    /// (outer, a, b) -> (outer, b, a), returned as a (outer, b·a) matrix.
    fn transpose_last2(&self, x: &Tensor, outer: usize, a: usize, b: usize) -> Result<Tensor>;
    /// Max over each window of `x` (n·h·w, c), padding excluded: (n·out_h·out_w, c).
    fn max_pool_fwd(&self, x: &Tensor, g: Window2d) -> Result<Tensor>;
    /// dL/dx of [`Backend::max_pool_fwd`]: each window's gradient to its first element (window
    /// offsets ascending) equal to its max `y`.
    fn max_pool_bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor>;
    /// `a + b` (same shape).
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// `x W^T + b`, W (out, in) as in PyTorch.
    fn linear_fwd(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = self.matmul(x, w, Transpose::NT)?;
        match b {
            Some(b) => self.bias_add(&y, b),
            None => Ok(y),
        }
    }

    /// A convolution of `x` (n·h·w, c) by the weight matrix `wm` (out, kh·kw·c), columns ordered
    /// (ki, kj, channel) as [`Backend::im2col`]'s: (n·out_h·out_w, out). Callers handle the
    /// pointwise 1×1 stride-1 window (a plain GEMM) themselves.
    fn conv2d_fwd(&self, x: &Tensor, wm: &Tensor, g: Window2d) -> Result<Tensor> {
        self.matmul(&self.im2col(x, g)?, wm, Transpose::NT)
    }

    /// dL/d`wm` of [`Backend::conv2d_fwd`] for upstream `dy` (n·out_h·out_w, out):
    /// `dy^T im2col(x)`, (out, kh·kw·c).
    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        self.matmul(dy, &self.im2col(x, g)?, Transpose::TN)
    }

    /// dL/dx of [`Backend::conv2d_fwd`]: `col2im(dy wm)`, (n·h·w, c).
    fn conv2d_bwd_input(&self, wm: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        self.col2im(&self.matmul(dy, wm, Transpose::NN)?, g)
    }

    /// Eval-mode `act(BN(x W^T))`: a Linear without bias, then [`Backend::bn_eval_fwd`].
    fn linear_bn_eval(&self, x: &Tensor, w: &Tensor, bn: BnEval<'_>) -> Result<Tensor> {
        let y = self.matmul(x, w, Transpose::NT)?;
        self.bn_eval_fwd(&y, bn)
    }

    /// [`Backend::vicreg_fwd_bwd`] without waiting for the scalars (loss, invariance, variance,
    /// covariance) where the device can queue their copy.
    fn vicreg_fwd_bwd_async(&self, z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<LossGrad> {
        let (parts, grad) = self.vicreg_fwd_bwd(z, n_per_image, w)?;
        let loss = Tensor::full(&[1], parts.loss as f32, &z.device())?;
        Ok(LossGrad { scalars: PendingScalars::ready(parts.to_array().to_vec()), loss, grad })
    }

    /// [`Backend::ema_`] on every `(running, batch)` pair.
    fn ema_multi_(&self, pairs: &mut [(&mut Tensor, &Tensor)], momentum: f32) -> Result<()> {
        pairs.iter_mut().try_for_each(|(r, b)| self.ema_(r, b, momentum))
    }

    /// [`Backend::adamw_`] on every slot.
    fn adamw_multi_(&self, slots: &mut [AdamWSlot<'_>], h: AdamW) -> Result<()> {
        for s in slots.iter_mut() {
            let slot = AdamWSlot {
                param: &mut *s.param,
                grad: s.grad,
                m: &mut *s.m,
                v: &mut *s.v,
                weight_decay: s.weight_decay,
            };
            self.adamw_(slot, h)?;
        }
        Ok(())
    }
}

/// The backend of tensors that must share one device; an error naming `op` when they do not.
pub fn of_tensors(op: &'static str, ts: &[&Tensor]) -> Result<&'static dyn Backend> {
    let cuda = ts.first().is_some_and(|t| t.is_cuda());
    if ts.iter().any(|t| t.is_cuda() != cuda) {
        return Err(Error::DeviceMismatch { op });
    }
    Ok(if cuda { &crate::cuda::CudaBackend } else { &crate::cpu::CpuBackend })
}
