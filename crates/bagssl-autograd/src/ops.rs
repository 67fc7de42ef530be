//! Device-dispatched primitives. Each one checks shapes, then calls the CPU kernel in
//! [`crate::cpu`] or the CUDA launcher in [`crate::cuda`] — the two modules have the same
//! function signatures, so the tape and the model need no `cfg` and no device branches.
//!
//! All matrices are row-major 2-D tensors; vectors are 1-D. Shapes are validated here, once,
//! so a kernel on either device may assume consistent shapes; a mismatch is an
//! [`Error::Shape`] naming the op, never a panic.

use crate::tensor::{Device, Storage, Tensor};
use crate::{cpu, cuda, Error, Result};

/// Loss weights and epsilon of bag-VICReg (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicregWeights {
    pub invariance: f32,
    pub variance: f32,
    pub covariance: f32,
    pub eps: f32,
}

impl Default for VicregWeights {
    fn default() -> Self {
        VicregWeights { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 }
    }
}

/// The loss and its three unweighted terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VicregParts {
    pub loss: f64,
    pub invariance: f64,
    pub variance: f64,
    pub covariance: f64,
}

/// The loss parts of a bag-VICReg call, possibly still on their way from the GPU (an
/// asynchronous copy of 32 bytes into page-locked memory): a training step can queue its backward
/// pass before it waits for the loss.
#[derive(Debug)]
pub struct PendingParts(Pending);

#[derive(Debug)]
enum Pending {
    Ready(VicregParts),
    Gpu(bagssl_kernels::PendingScalars),
}

impl PendingParts {
    pub fn ready(parts: VicregParts) -> Self {
        PendingParts(Pending::Ready(parts))
    }
    pub(crate) fn gpu(s: bagssl_kernels::PendingScalars) -> Self {
        PendingParts(Pending::Gpu(s))
    }
    /// The parts; on a GPU waits for their copy only, not for the work queued after it.
    pub fn wait(&self) -> Result<VicregParts> {
        match &self.0 {
            Pending::Ready(p) => Ok(*p),
            Pending::Gpu(s) => {
                let v = s.wait()?;
                Ok(VicregParts {
                    loss: v.loss,
                    invariance: v.invariance,
                    variance: v.variance,
                    covariance: v.covariance,
                })
            }
        }
    }
}

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

/// What [`bn_train_bwd`] returns.
pub struct BnBackward {
    /// dL/dx, which is also dL/d(x + bias).
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// The column sums of dx: the gradient of the bias folded into the BatchNorm, when it had one.
    pub dbias: Option<Tensor>,
}

/// AdamW hyper-parameters for one update (PyTorch's `torch.optim.AdamW` semantics).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

fn shape_err(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

/// `(m, k, n)` of `op(a) @ op(b)`; an error when the inner dimensions differ.
pub fn matmul_dims(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.dims2();
    let (br, bc) = b.dims2();
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(shape_err(
            "matmul",
            format!(
                "op(a) {m}x{k} (a {:?}, trans {trans_a}) @ op(b) {k2}x{n} (b {:?}, trans {trans_b})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok((m, k, n))
}

/// Every named vector has one element per column of `x`.
fn per_column(op: &'static str, x: &Tensor, vs: &[(&str, &Tensor)]) -> Result<()> {
    let cols = x.dims2().1;
    match vs.iter().find(|(_, v)| v.numel() != cols) {
        Some((name, v)) => Err(shape_err(op, format!("{name} {:?} vs {cols} columns of x {:?}", v.shape(), x.shape()))),
        None => Ok(()),
    }
}

fn same_shape(op: &'static str, ts: &[(&str, &Tensor)]) -> Result<()> {
    match ts.iter().find(|(_, t)| t.shape() != ts[0].1.shape()) {
        Some((name, t)) => Err(shape_err(op, format!("{name} {:?} vs {} {:?}", t.shape(), ts[0].0, ts[0].1.shape()))),
        None => Ok(()),
    }
}

fn same_numel(op: &'static str, ts: &[(&str, &Tensor)]) -> Result<()> {
    match ts.iter().find(|(_, t)| t.numel() != ts[0].1.numel()) {
        Some((name, t)) => Err(shape_err(op, format!("{name} {:?} vs {} {:?}", t.shape(), ts[0].0, ts[0].1.shape()))),
        None => Ok(()),
    }
}

pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<bool> {
    let cuda = ts[0].is_cuda();
    if ts.iter().any(|t| t.is_cuda() != cuda) {
        return Err(Error::DeviceMismatch { op });
    }
    Ok(cuda)
}

macro_rules! dispatch {
    ($op:literal, [$($t:expr),+], $f:ident($($arg:expr),*)) => {{
        if same_device($op, &[$($t),+])? { cuda::$f($($arg),*) } else { cpu::$f($($arg),*) }
    }};
}

/// `op(a) @ op(b)` where `op` transposes when asked. Shapes: op(a) (m, k), op(b) (k, n).
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    const NAMES: [&str; 4] = ["matmul A B", "matmul A B^T", "matmul A^T B", "matmul A^T B^T"];
    let _p = crate::profile::op(NAMES[2 * trans_a as usize + trans_b as usize]);
    matmul_dims(a, b, trans_a, trans_b)?;
    dispatch!("matmul", [a, b], matmul(a, b, trans_a, trans_b))
}

/// `x + b` with `b` (cols) broadcast over the rows of `x` (rows, cols).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("bias_add");
    per_column("bias_add", x, &[("b", b)])?;
    dispatch!("bias_add", [x, b], bias_add(x, b))
}

/// `x W^T + b` with `W` (out, in) as in PyTorch: the eval-mode linear layer, also used by the
/// tape's forward. On the CPU one GEMM accumulates onto the broadcast bias; on the GPU it is
/// `matmul` then `bias_add` (no extra CUDA primitive needed).
pub fn linear_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let _p = crate::profile::op("linear_fwd");
    let (_, _, out) = matmul_dims(x, w, false, true)?;
    if let Some(b) = b {
        if b.numel() != out {
            return Err(shape_err("linear_fwd", format!("bias {:?} vs weight {:?}", b.shape(), w.shape())));
        }
    }
    let mut ts = vec![x, w];
    ts.extend(b);
    if same_device("linear_fwd", &ts)? {
        let y = cuda::matmul(x, w, false, true)?;
        match b {
            Some(b) => cuda::bias_add(&y, b),
            None => Ok(y),
        }
    } else {
        cpu::linear_fwd(x, w, b)
    }
}

/// Column sums of a 2-D tensor: (rows, cols) -> (cols).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("sum_rows");
    dispatch!("sum_rows", [x], sum_rows(x))
}

/// Training-mode BatchNorm over the rows (batch statistics, biased variance) of `x + bias`,
/// optionally fused with ReLU.
///
/// `bias` is the bias of the Linear layer before the BatchNorm, folded in, so no pass writes and
/// re-reads the biased matrix: the CUDA kernels form the f32 sum `x + bias` as they read x (the
/// result is `bn_train_fwd(bias_add(x, bias), None, ..)` bit for bit), the CPU ones take the
/// statistics of x and shift its mean by the bias (the same values to f32 rounding, no work per
/// element). The batch mean (and so the running mean) is that of `x + bias`.
pub fn bn_train_fwd(
    x: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<BnForward> {
    let _p = crate::profile::op("bn_train_fwd");
    per_column("bn_train_fwd", x, &[("gamma", gamma), ("beta", beta)])?;
    if let Some(b) = bias {
        per_column("bn_train_fwd", x, &[("bias", b)])?;
    }
    if x.dims2().0 < 2 {
        return Err(shape_err(
            "bn_train_fwd",
            format!("needs at least 2 rows for batch statistics, got {:?}", x.shape()),
        ));
    }
    if let Some(b) = bias {
        same_device("bn_train_fwd", &[x, b])?;
    }
    dispatch!("bn_train_fwd", [x, gamma, beta], bn_train_fwd(x, bias, gamma, beta, eps, relu))
}

/// Backward of [`bn_train_fwd`] (same `x`, `bias`, `gamma`, `beta`). `y` is the forward output,
/// whose `y > 0` is the ReLU mask (a GPU recomputes it from x, gamma and beta, bit for bit, rather
/// than read y). With a bias, `dbias` is the column sums of dx (on a GPU summed by the kernel that
/// writes dx).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_bwd(
    dy: &Tensor,
    x: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    relu: bool,
) -> Result<BnBackward> {
    let _p = crate::profile::op("bn_train_bwd");
    same_shape("bn_train_bwd", &[("dy", dy), ("x", x), ("y", y)])?;
    per_column("bn_train_bwd", x, &[("gamma", gamma), ("beta", beta), ("mean", mean), ("invstd", invstd)])?;
    if let Some(b) = bias {
        per_column("bn_train_bwd", x, &[("bias", b)])?;
        same_device("bn_train_bwd", &[x, b])?;
    }
    dispatch!(
        "bn_train_bwd",
        [dy, x, y, gamma, beta, mean, invstd],
        bn_train_bwd(dy, x, bias, y, gamma, beta, mean, invstd, relu)
    )
}

/// Eval-mode BatchNorm with running statistics, optionally fused with ReLU.
#[allow(clippy::too_many_arguments)]
pub fn bn_eval_fwd(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<Tensor> {
    let _p = crate::profile::op("bn_eval_fwd");
    per_column(
        "bn_eval_fwd",
        x,
        &[("running_mean", running_mean), ("running_var", running_var), ("gamma", gamma), ("beta", beta)],
    )?;
    dispatch!(
        "bn_eval_fwd",
        [x, running_mean, running_var, gamma, beta],
        bn_eval_fwd(x, running_mean, running_var, gamma, beta, eps, relu)
    )
}

/// Eval-mode `act(BN(x W^T))`: a linear layer without bias (fold it into `running_mean` as
/// `running_mean - b`) followed by [`bn_eval_fwd`]. Equal bit for bit to `matmul(x, w, false,
/// true)` then `bn_eval_fwd`, which is what runs on CUDA and with f32 CPU GEMMs; with bf16 CPU
/// GEMMs on AVX512-BF16 the BatchNorm (and ReLU) run in the GEMM's store, saving a pass over
/// the (rows, out) output.
#[allow(clippy::too_many_arguments)]
pub fn linear_bn_eval(
    x: &Tensor,
    w: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<Tensor> {
    let _p = crate::profile::op("linear_bn_eval");
    let (_, _, out) = matmul_dims(x, w, false, true)?;
    let per_out = [("running_mean", running_mean), ("running_var", running_var), ("gamma", gamma), ("beta", beta)];
    if let Some((name, v)) = per_out.iter().find(|(_, v)| v.numel() != out) {
        return Err(shape_err("linear_bn_eval", format!("{name} {:?} vs weight {:?}", v.shape(), w.shape())));
    }
    if same_device("linear_bn_eval", &[x, w, running_mean, running_var, gamma, beta])? {
        let y = cuda::matmul(x, w, false, true)?;
        cuda::bn_eval_fwd(&y, running_mean, running_var, gamma, beta, eps, relu)
    } else {
        cpu::linear_bn_eval(x, w, running_mean, running_var, gamma, beta, eps, relu)
    }
}

/// In-place running-statistics update: `r = (1 - momentum) r + momentum batch`.
pub fn ema_(running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
    let _p = crate::profile::op("ema_");
    same_numel("ema_", &[("running", running), ("batch", batch)])?;
    if same_device("ema_", &[running, batch])? {
        cuda::ema_(running, batch, momentum)
    } else {
        cpu::ema_(running, batch, momentum)
    }
}

/// [`ema_`] on every `(running, batch)` pair: the same values; on a GPU one launch for up to 16.
pub fn ema_multi_(pairs: &mut [(&mut Tensor, &Tensor)], momentum: f32) -> Result<()> {
    let _p = crate::profile::op("ema_");
    let mut cuda = None;
    for (r, b) in pairs.iter() {
        same_numel("ema_", &[("running", r), ("batch", b)])?;
        let on_gpu = same_device("ema_", &[r, b])?;
        if *cuda.get_or_insert(on_gpu) != on_gpu {
            return Err(Error::DeviceMismatch { op: "ema_" });
        }
    }
    match cuda {
        Some(true) => cuda::ema_multi_(pairs, momentum),
        Some(false) => pairs.iter_mut().try_for_each(|(r, b)| cpu::ema_(r, b, momentum)),
        None => Ok(()),
    }
}

pub fn relu_fwd(x: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("relu_fwd");
    dispatch!("relu_fwd", [x], relu_fwd(x))
}

/// `dy * (y > 0)`.
pub fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("relu_bwd");
    same_shape("relu_bwd", &[("dy", dy), ("y", y)])?;
    dispatch!("relu_bwd", [dy, y], relu_bwd(dy, y))
}

/// bag-VICReg on `z` (B*n, D): the loss parts and dL/dz of the weighted loss (DESIGN §3).
pub fn vicreg_fwd_bwd(z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)> {
    let (parts, _, dz) = vicreg_fwd_bwd_async(z, n_per_image, w)?;
    Ok((parts.wait()?, dz))
}

/// [`vicreg_fwd_bwd`] without waiting for the loss on a GPU: the parts (pending there), the
/// weighted loss as a 1-element tensor on `z`'s device (computed there), and dL/dz.
pub fn vicreg_fwd_bwd_async(
    z: &Tensor,
    n_per_image: usize,
    w: VicregWeights,
) -> Result<(PendingParts, Tensor, Tensor)> {
    let _p = crate::profile::op("vicreg_fwd_bwd");
    let (rows, d) = z.dims2();
    if z.shape().len() != 2 || d == 0 || rows < 2 || n_per_image == 0 || !rows.is_multiple_of(n_per_image) {
        return Err(shape_err(
            "vicreg_fwd_bwd",
            format!("z {:?} must be (B*n, D) with D >= 1, B*n >= 2, n = {n_per_image} >= 1 dividing B*n", z.shape()),
        ));
    }
    if same_device("vicreg_fwd_bwd", &[z])? {
        cuda::vicreg_fwd_bwd_async(z, n_per_image, w)
    } else {
        let (parts, dz) = cpu::vicreg_fwd_bwd(z, n_per_image, w)?;
        let loss = Tensor::full(&[1], parts.loss as f32, &Device::Cpu)?;
        Ok((PendingParts::ready(parts), loss, dz))
    }
}

/// Mean over consecutive groups of `n` rows: (B*n, D) -> (B, D).
pub fn group_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    let _p = crate::profile::op("group_mean");
    if n == 0 || !x.dims2().0.is_multiple_of(n) {
        return Err(shape_err("group_mean", format!("{:?} rows are not groups of n = {n}", x.shape())));
    }
    dispatch!("group_mean", [x], group_mean(x, n))
}

/// Backward of [`group_mean`]: (B, D) -> (B*n, D), each row `dy[b] / n`.
pub fn group_mean_bwd(dy: &Tensor, n: usize) -> Result<Tensor> {
    let _p = crate::profile::op("group_mean_bwd");
    if n == 0 {
        return Err(shape_err("group_mean_bwd", "n = 0".to_string()));
    }
    dispatch!("group_mean_bwd", [dy], group_mean_bwd(dy, n))
}

/// Sum of the elementwise product, as f64 (`sum(x * w)`).
pub fn dot(x: &Tensor, w: &Tensor) -> Result<f64> {
    let _p = crate::profile::op("dot");
    same_numel("dot", &[("x", x), ("w", w)])?;
    dispatch!("dot", [x, w], dot(x, w))
}

/// `y += alpha * x`, in place.
pub fn axpy_(y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    let _p = crate::profile::op("axpy_");
    same_numel("axpy_", &[("y", y), ("x", x)])?;
    if same_device("axpy_", &[y, x])? {
        cuda::axpy_(y, alpha, x)
    } else {
        cpu::axpy_(y, alpha, x)
    }
}

/// One AdamW update of `param` in place, with moment buffers `m`, `v`.
pub fn adamw_(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, h: AdamW) -> Result<()> {
    let _p = crate::profile::op("adamw_");
    same_numel("adamw_", &[("param", param), ("grad", grad), ("m", m), ("v", v)])?;
    if same_device("adamw_", &[param, grad, m, v])? {
        cuda::adamw_(param, grad, m, v, h)
    } else {
        cpu::adamw_(param, grad, m, v, h)
    }
}

/// One tensor of [`adamw_multi_`].
pub struct AdamWSlot<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    /// This tensor's weight decay (`h.weight_decay` is not used).
    pub weight_decay: f32,
}

/// [`adamw_`] on many tensors at once, each with its own weight decay: the same values as one
/// call per tensor. On a GPU one launch updates up to 16 tensors (a training step's parameters
/// in one) and rewrites the bf16 GEMM copies of the weights beside them.
pub fn adamw_multi_(slots: &mut [AdamWSlot<'_>], h: AdamW) -> Result<()> {
    let _p = crate::profile::op("adamw_");
    let mut cuda = None;
    for s in slots.iter() {
        same_numel("adamw_", &[("param", s.param), ("grad", s.grad), ("m", s.m), ("v", s.v)])?;
        let on_gpu = same_device("adamw_", &[s.param, s.grad, s.m, s.v])?;
        if *cuda.get_or_insert(on_gpu) != on_gpu {
            return Err(Error::DeviceMismatch { op: "adamw_" });
        }
    }
    match cuda {
        Some(true) => cuda::adamw_multi_(slots, h),
        Some(false) => {
            for s in slots.iter_mut() {
                cpu::adamw_(s.param, s.grad, s.m, s.v, AdamW { weight_decay: s.weight_decay, ..h })?;
            }
            Ok(())
        }
        None => Ok(()),
    }
}

/// Returns true for CPU storage; convenience for kernels that need a slice.
pub fn is_cpu(t: &Tensor) -> bool {
    matches!(t.storage(), Storage::Cpu(_))
}

/// `x *= s`, in place.
pub fn scale_(x: &mut Tensor, s: f32) -> Result<()> {
    let _p = crate::profile::op("scale_");
    if same_device("scale_", &[x])? {
        cuda::scale_(x, s)
    } else {
        cpu::scale_(x, s)
    }
}
