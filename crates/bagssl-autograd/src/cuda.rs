//! The CUDA backend: [`CudaBackend`] implements [`Backend`] by unpacking the tensors' GPU buffers
//! and calling the `bagssl_kernels` launchers (a hand-written kernel, or cuBLAS for the GEMMs).
//! Shapes were checked by [`crate::ops`]; the launchers check buffer lengths again before any
//! launch. Fused forms it specialises: the asynchronous loss (its scalars come back through
//! page-locked memory, not waited for) and the multi-tensor AdamW and running-statistics updates
//! (one launch each). The conv data movement (im2col, col2im, the weight transpose, max-pooling)
//! gathers in the CPU kernels' order, so it gives their bits.
//!
//! Precision: elementwise ops and BatchNorm are f32 like the CPU kernels (reductions in f32,
//! tree-ordered, so sums differ from the CPU's in the last bits); `matmul` and the two products
//! inside bag-VICReg run at the GPU's `GemmPrecision` (bf16 operands with f32 accumulation by
//! default, relative error a few 1e-3 of the operands' scale; the config key `gpu_precision`
//! picks tf32 or f32).

use bagssl_kernels as k;
use bagssl_kernels::GpuBuf;

use crate::backend::{
    AdamW, AdamWSlot, Backend, BnBackward, BnBackwardArgs, BnEval, BnForward, BnTrainArgs, LossGrad, PendingScalars,
    Transpose, VicregParts, VicregWeights, Window2d,
};
use crate::ops;
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

/// The CUDA backend (the tensors' own [`bagssl_kernels::Gpu`] and its stream).
pub struct CudaBackend;

impl Backend for CudaBackend {
    fn matmul(&self, a: &Tensor, b: &Tensor, t: Transpose) -> Result<Tensor> {
        let (m, kk, n) = ops::matmul_dims(a, b, t)?;
        let c = k::matmul_f32(buf(a, "matmul")?, buf(b, "matmul")?, m, n, kk, t.a, t.b)?;
        Ok(Tensor::from_gpu(&[m, n], c))
    }

    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2();
        let y = k::bias_add_fwd_f32(buf(x, "bias_add")?, buf(b, "bias_add")?, rows, cols)?;
        Ok(Tensor::from_gpu(x.shape(), y))
    }

    fn sum_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2();
        Ok(Tensor::from_gpu(&[cols], k::sum_rows_f32(buf(x, "sum_rows")?, rows, cols)?))
    }

    fn bn_train_fwd(&self, a: BnTrainArgs<'_>) -> Result<BnForward> {
        let op = "bn_train_fwd";
        let (rows, cols) = a.x.dims2();
        let o = k::bn_train_fwd_f32(&a.try_map(|t| buf(t, op))?, rows)?;
        Ok(BnForward {
            y: Tensor::from_gpu(a.x.shape(), o.y),
            mean: Tensor::from_gpu(&[cols], o.mean),
            invstd: Tensor::from_gpu(&[cols], o.invstd),
            var_unbiased: Tensor::from_gpu(&[cols], o.var_unbiased),
        })
    }

    fn bn_train_bwd(&self, a: BnBackwardArgs<'_>) -> Result<BnBackward> {
        let (rows, cols) = a.fwd.x.dims2();
        let g = k::bn_train_bwd_f32(&a.try_map(|t| buf(t, "bn_train_bwd"))?, rows)?;
        let vector = |v: GpuBuf| Tensor::from_gpu(&[cols], v);
        let (dgamma, dbeta, dbias) = (vector(g.dgamma), vector(g.dbeta), g.dbias.map(vector));
        Ok(BnBackward { dx: Tensor::from_gpu(a.fwd.x.shape(), g.dx), dgamma, dbeta, dbias })
    }

    fn bn_eval_fwd(&self, x: &Tensor, bn: BnEval<'_>) -> Result<Tensor> {
        let op = "bn_eval_fwd";
        let y = k::bn_eval_fwd_f32(buf(x, op)?, &bn.try_map(|t| buf(t, op))?, x.dims2().0)?;
        Ok(Tensor::from_gpu(x.shape(), y))
    }

    fn ema_(&self, running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
        let b = buf(batch, "ema_")?;
        k::bn_ema_f32(buf_mut(running, "ema_")?, b, momentum)?;
        Ok(())
    }

    fn ema_multi_(&self, pairs: &mut [(&mut Tensor, &Tensor)], momentum: f32) -> Result<()> {
        let mut bufs = Vec::with_capacity(pairs.len());
        for (r, b) in pairs.iter_mut() {
            let b = buf(b, "ema_")?;
            bufs.push((buf_mut(r, "ema_")?, b));
        }
        k::bn_ema_multi_f32(&mut bufs, momentum)?;
        Ok(())
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from_gpu(x.shape(), k::relu_fwd_f32(buf(x, "relu_fwd")?)?))
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from_gpu(dy.shape(), k::relu_bwd_f32(buf(dy, "relu_bwd")?, buf(y, "relu_bwd")?)?))
    }

    fn vicreg_fwd_bwd(&self, z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)> {
        let out = self.vicreg_fwd_bwd_async(z, n_per_image, w)?;
        Ok((VicregParts::from_slice(&out.scalars.wait()?), out.grad))
    }

    /// dL/dz and the weighted loss (1 f32) stay on the GPU; the four f64 scalars (32 bytes, the
    /// only device-to-host copy) are queued into page-locked memory, not waited for.
    fn vicreg_fwd_bwd_async(&self, z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<LossGrad> {
        let (rows, d) = z.dims2();
        let out = k::vicreg_fwd_bwd_f32(buf(z, "vicreg_fwd_bwd")?, rows, d, n_per_image, w)?;
        let scalars = PendingScalars::gpu(out.scalars_async()?);
        Ok(LossGrad { scalars, loss: Tensor::from_gpu(&[1], out.loss), grad: Tensor::from_gpu(z.shape(), out.dz) })
    }

    fn group_mean(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (rows, cols) = x.dims2();
        Ok(Tensor::from_gpu(&[rows / n, cols], k::group_mean_fwd_f32(buf(x, "group_mean")?, rows, cols, n)?))
    }

    fn group_mean_bwd(&self, dy: &Tensor, n: usize) -> Result<Tensor> {
        let (groups, cols) = dy.dims2();
        let dx = k::group_mean_bwd_f32(buf(dy, "group_mean_bwd")?, groups, cols, n)?;
        Ok(Tensor::from_gpu(&[groups * n, cols], dx))
    }

    fn dot(&self, x: &Tensor, w: &Tensor) -> Result<f64> {
        Ok(k::dot_f32(buf(x, "dot")?, buf(w, "dot")?)?)
    }

    fn axpy_(&self, y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
        let x = buf(x, "axpy_")?;
        k::axpy_f32(buf_mut(y, "axpy_")?, alpha, x)?;
        Ok(())
    }

    fn scale_(&self, x: &mut Tensor, s: f32) -> Result<()> {
        k::scale_f32(buf_mut(x, "scale_")?, s)?;
        Ok(())
    }

    fn adamw_(&self, s: AdamWSlot<'_>, h: AdamW) -> Result<()> {
        let op = "adamw_";
        let (weight_decay, grad) = (s.weight_decay, buf(s.grad, op)?);
        let t = k::AdamWTensor {
            param: buf_mut(s.param, op)?,
            grad,
            m: buf_mut(s.m, op)?,
            v: buf_mut(s.v, op)?,
            weight_decay,
        };
        k::adamw_f32(t, h)?;
        Ok(())
    }

    /// Up to 16 tensors per launch, which also rewrites the weights' bf16 GEMM copies.
    fn adamw_multi_(&self, slots: &mut [AdamWSlot<'_>], h: AdamW) -> Result<()> {
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
        k::adamw_multi_f32(&mut tensors, h)?;
        Ok(())
    }

    fn im2col(&self, x: &Tensor, g: Window2d) -> Result<Tensor> {
        Ok(Tensor::from_gpu(&[g.out_rows(), g.patch_len()], k::im2col_f32(buf(x, "im2col")?, g)?))
    }

    fn col2im(&self, cols: &Tensor, g: Window2d) -> Result<Tensor> {
        Ok(Tensor::from_gpu(&[g.in_rows(), g.c], k::col2im_f32(buf(cols, "col2im")?, g)?))
    }

    fn transpose_last2(&self, x: &Tensor, outer: usize, a: usize, b: usize) -> Result<Tensor> {
        let y = k::transpose_last2_f32(buf(x, "transpose_last2")?, outer, a, b)?;
        Ok(Tensor::from_gpu(&[outer, b * a], y))
    }

    fn max_pool_fwd(&self, x: &Tensor, g: Window2d) -> Result<Tensor> {
        Ok(Tensor::from_gpu(&[g.out_rows(), g.c], k::max_pool_fwd_f32(buf(x, "max_pool_fwd")?, g)?))
    }

    fn max_pool_bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        let op = "max_pool_bwd";
        let dx = k::max_pool_bwd_f32(buf(x, op)?, buf(y, op)?, buf(dy, op)?, g)?;
        Ok(Tensor::from_gpu(&[g.in_rows(), g.c], dx))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from_gpu(a.shape(), k::add_f32(buf(a, "add")?, buf(b, "add")?)?))
    }
}
