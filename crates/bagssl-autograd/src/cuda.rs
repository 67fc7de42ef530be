//! CUDA launchers of the primitives in [`crate::ops`], same signatures as [`crate::cpu`].
//! Each one unpacks the tensors' GPU buffers and calls the `bagssl_kernels` launcher (a
//! hand-written kernel, or cuBLAS for the GEMMs). Shapes were checked by [`crate::ops`];
//! the launchers check buffer lengths again before any launch.
//!
//! Precision: elementwise ops and BatchNorm are f32 like the CPU kernels (reductions in f32,
//! tree-ordered, so sums differ from the CPU's in the last bits); `matmul` and the two products
//! inside `vicreg_fwd_bwd` run at the GPU's `GemmPrecision` (bf16 operands with f32
//! accumulation by default, relative error a few 1e-3 of the operands' scale;
//! `Gpu::set_gemm_precision`, i.e. the config key `gpu_precision`, for the others).

use bagssl_kernels as k;
use bagssl_kernels::GpuBuf;

use crate::ops::{self, AdamW, AdamWSlot, BnBackward, BnForward, PendingParts, VicregWeights};
use crate::tensor::{Storage, Tensor};
use crate::{Error, Result};

/// The GPU buffer of a CUDA tensor; a CPU tensor here is a dispatch bug, reported as an error.
fn buf<'t>(t: &'t Tensor, op: &'static str) -> Result<&'t GpuBuf> {
    match t.storage() {
        Storage::Cuda(b) => Ok(b),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op }),
    }
}

fn buf_mut<'t>(t: &'t mut Tensor, op: &'static str) -> Result<&'t mut GpuBuf> {
    match t.storage_mut() {
        Storage::Cuda(b) => Ok(b),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op }),
    }
}

pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (m, kk, n) = ops::matmul_dims(a, b, trans_a, trans_b)?;
    let c = k::matmul_f32(buf(a, "matmul")?, buf(b, "matmul")?, m, n, kk, trans_a, trans_b)?;
    Ok(Tensor::from_gpu(&[m, n], c))
}

pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (rows, cols) = x.dims2();
    let y = k::bias_add_fwd_f32(buf(x, "bias_add")?, buf(b, "bias_add")?, rows, cols)?;
    Ok(Tensor::from_gpu(x.shape(), y))
}

pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = x.dims2();
    Ok(Tensor::from_gpu(&[cols], k::sum_rows_f32(buf(x, "sum_rows")?, rows, cols)?))
}

pub fn bn_train_fwd(
    x: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<BnForward> {
    let op = "bn_train_fwd";
    let (rows, cols) = x.dims2();
    let bias = bias.map(|b| buf(b, op)).transpose()?;
    let o = k::bn_train_fwd_f32(&k::BnTrainFwdArgs {
        x: buf(x, op)?,
        bias,
        gamma: buf(gamma, op)?,
        beta: buf(beta, op)?,
        rows,
        cols,
        eps,
        relu,
    })?;
    Ok(BnForward {
        y: Tensor::from_gpu(x.shape(), o.y),
        mean: Tensor::from_gpu(&[cols], o.mean),
        invstd: Tensor::from_gpu(&[cols], o.invstd),
        var_unbiased: Tensor::from_gpu(&[cols], o.var_unbiased),
    })
}

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
    let op = "bn_train_bwd";
    let (rows, cols) = x.dims2();
    let g = k::bn_train_bwd_f32(&k::BnTrainBwdArgs {
        dy: buf(dy, op)?,
        x: buf(x, op)?,
        bias: bias.map(|b| buf(b, op)).transpose()?,
        y: buf(y, op)?,
        gamma: buf(gamma, op)?,
        beta: buf(beta, op)?,
        mean: buf(mean, op)?,
        invstd: buf(invstd, op)?,
        rows,
        cols,
        relu,
    })?;
    Ok(BnBackward {
        dx: Tensor::from_gpu(x.shape(), g.dx),
        dgamma: Tensor::from_gpu(&[cols], g.dgamma),
        dbeta: Tensor::from_gpu(&[cols], g.dbeta),
        dbias: g.dbias.map(|d| Tensor::from_gpu(&[cols], d)),
    })
}

pub fn bn_eval_fwd(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<Tensor> {
    let op = "bn_eval_fwd";
    let (rows, cols) = x.dims2();
    let y = k::bn_eval_fwd_f32(&k::BnEvalArgs {
        x: buf(x, op)?,
        running_mean: buf(running_mean, op)?,
        running_var: buf(running_var, op)?,
        gamma: buf(gamma, op)?,
        beta: buf(beta, op)?,
        rows,
        cols,
        eps,
        relu,
    })?;
    Ok(Tensor::from_gpu(x.shape(), y))
}

pub fn ema_(running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
    let b = buf(batch, "ema_")?;
    k::bn_ema_f32(buf_mut(running, "ema_")?, b, momentum)?;
    Ok(())
}

pub fn ema_multi_(pairs: &mut [(&mut Tensor, &Tensor)], momentum: f32) -> Result<()> {
    let mut bufs = Vec::with_capacity(pairs.len());
    for (r, b) in pairs.iter_mut() {
        let b = buf(b, "ema_")?;
        bufs.push((buf_mut(r, "ema_")?, b));
    }
    k::bn_ema_multi_f32(&mut bufs, momentum)?;
    Ok(())
}

pub fn relu_fwd(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_gpu(x.shape(), k::relu_fwd_f32(buf(x, "relu_fwd")?)?))
}

pub fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_gpu(dy.shape(), k::relu_bwd_f32(buf(dy, "relu_bwd")?, buf(y, "relu_bwd")?)?))
}

/// dL/dz and the weighted loss (1 f32) stay on the GPU; the four f64 loss terms (32 bytes, the
/// only device-to-host copy) are queued into page-locked memory, not waited for.
pub fn vicreg_fwd_bwd_async(
    z: &Tensor,
    n_per_image: usize,
    w: VicregWeights,
) -> Result<(PendingParts, Tensor, Tensor)> {
    let (rows, d) = z.dims2();
    let cfg = k::VicregConfig { invariance: w.invariance, variance: w.variance, covariance: w.covariance, eps: w.eps };
    let out = k::vicreg_fwd_bwd_f32(buf(z, "vicreg_fwd_bwd")?, rows, d, n_per_image, cfg)?;
    let parts = PendingParts::gpu(out.scalars_async()?);
    Ok((parts, Tensor::from_gpu(&[1], out.loss), Tensor::from_gpu(z.shape(), out.dz)))
}

pub fn group_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    let (rows, cols) = x.dims2();
    Ok(Tensor::from_gpu(&[rows / n, cols], k::group_mean_fwd_f32(buf(x, "group_mean")?, rows, cols, n)?))
}

pub fn group_mean_bwd(dy: &Tensor, n: usize) -> Result<Tensor> {
    let (groups, cols) = dy.dims2();
    Ok(Tensor::from_gpu(&[groups * n, cols], k::group_mean_bwd_f32(buf(dy, "group_mean_bwd")?, groups, cols, n)?))
}

pub fn dot(x: &Tensor, w: &Tensor) -> Result<f64> {
    Ok(k::dot_f32(buf(x, "dot")?, buf(w, "dot")?)?)
}

pub fn axpy_(y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    let x = buf(x, "axpy_")?;
    k::axpy_f32(buf_mut(y, "axpy_")?, alpha, x)?;
    Ok(())
}

fn adamw_config(h: AdamW) -> k::AdamWConfig {
    k::AdamWConfig { lr: h.lr, beta1: h.beta1, beta2: h.beta2, eps: h.eps, weight_decay: h.weight_decay, step: h.step }
}

pub fn adamw_multi_(slots: &mut [AdamWSlot<'_>], h: AdamW) -> Result<()> {
    let op = "adamw_";
    let mut tensors = Vec::with_capacity(slots.len());
    for s in slots.iter_mut() {
        let weight_decay = s.weight_decay;
        let grad = buf(s.grad, op)?;
        let param = buf_mut(s.param, op)?;
        let m = buf_mut(s.m, op)?;
        let v = buf_mut(s.v, op)?;
        tensors.push(k::AdamWTensor { param, grad, m, v, weight_decay });
    }
    k::adamw_multi_f32(&mut tensors, adamw_config(h))?;
    Ok(())
}

pub fn adamw_(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, h: AdamW) -> Result<()> {
    let op = "adamw_";
    let g = buf(grad, op)?;
    let t = k::AdamWTensor {
        param: buf_mut(param, op)?,
        grad: g,
        m: buf_mut(m, op)?,
        v: buf_mut(v, op)?,
        weight_decay: h.weight_decay,
    };
    k::adamw_f32(t, adamw_config(h))?;
    Ok(())
}

pub fn scale_(x: &mut Tensor, s: f32) -> Result<()> {
    k::scale_f32(buf_mut(x, "scale_")?, s)?;
    Ok(())
}
