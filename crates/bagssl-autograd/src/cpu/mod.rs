//! The CPU backend: [`CpuBackend`] implements [`Backend`] with the slice kernels of the
//! submodules. This file only unpacks tensors into slices, takes outputs from [`pool`] and calls:
//! - [`matmul`]: GEMM through the `gemm` crate (strided, so transposes cost nothing);
//! - [`matmul_bf16`]: the opt-in bf16 GEMM (AVX512-BF16) behind [`set_cpu_matmul_precision`];
//! - [`bn`]: BatchNorm forward/backward fused with ReLU;
//! - [`conv`]: im2col / col2im, the conv weight re-layout and max-pooling over NHWC rows;
//! - [`vicreg`]: bag-VICReg loss and gradient in one function;
//! - [`elementwise`]: the streaming maps and reductions (ReLU, bias, AdamW, ...);
//! - [`par`] and [`simd`]: how passes are split over threads and vectorized;
//! - [`pool`]: recycled output buffers (every output below is written in full, so it takes one);
//! - [`scratch`]: per-thread working buffers grown to a shared high-water mark.
//!
//! Shapes are checked by [`crate::ops`] before dispatch; the kernels here check them again only
//! where a mismatch could otherwise reach unsafe code (the GEMM asserts its slice lengths).
//! Fused forms it specialises: `linear_fwd` (bias in the GEMM) and `linear_bn_eval` (BatchNorm
//! in the bf16 GEMM's store).

pub mod bn;
pub mod conv;
pub mod conv_gemm;
pub mod elementwise;
pub mod matmul;
pub mod matmul_bf16;
pub mod par;
pub mod pool;
pub mod scratch;
pub mod simd;
pub mod vicreg;

use std::sync::atomic::{AtomicU8, Ordering};

use crate::backend::{
    AdamW, AdamWSlot, Backend, BnBackward, BnBackwardArgs, BnEval, BnForward, BnTrainArgs, Transpose, VicregParts,
    VicregWeights, Window2d,
};
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use matmul::{sgemm, GemmShape, View};
use matmul_bf16::{gemm_views_bf16_mapped, ColumnMap};

/// Precision of the CPU GEMMs (every CPU matmul, linear layer and the bag-VICReg products go
/// through [`matmul::sgemm`]). Process-wide; the CUDA backend ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMatmulPrecision {
    /// f32 operands and accumulation (the `gemm` crate): the default, bit-for-bit as before.
    #[default]
    F32,
    /// Operands rounded to bf16 (nearest even), products summed in f32 ([`matmul_bf16`]): about
    /// twice the f32 rate with AVX512-BF16, relative operand error up to 2^-9.
    Bf16,
}

static CPU_MATMUL_PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later CPU GEMM, on all threads.
pub fn set_cpu_matmul_precision(p: CpuMatmulPrecision) {
    CPU_MATMUL_PRECISION.store(p as u8, Ordering::Relaxed);
}

/// The precision the CPU GEMMs use now ([`CpuMatmulPrecision::F32`] unless set).
pub fn cpu_matmul_precision() -> CpuMatmulPrecision {
    match CPU_MATMUL_PRECISION.load(Ordering::Relaxed) {
        0 => CpuMatmulPrecision::F32,
        _ => CpuMatmulPrecision::Bf16,
    }
}

/// The elements of a CPU tensor; a GPU tensor here is a dispatch bug, reported as an error.
fn host<'t>(t: &'t Tensor, op: &'static str) -> Result<&'t [f32]> {
    t.as_slice().ok_or(Error::DeviceMismatch { op })
}

fn host_mut<'t>(t: &'t mut Tensor, op: &'static str) -> Result<&'t mut [f32]> {
    t.as_mut_slice().ok_or(Error::DeviceMismatch { op })
}

fn vec_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `out = map(x W^T)` as one bf16 GEMM with the map in its store; `false` (nothing written)
/// without AVX512-BF16.
fn linear_mapped(op: &'static str, x: &Tensor, w: &Tensor, map: ColumnMap<'_>, out: &mut [f32]) -> Result<bool> {
    let (m, k, n) = ops::matmul_dims(x, w, Transpose::NT)?;
    let (xv, wv) = (View::row_major(host(x, op)?, m, k), View::row_major(host(w, op)?, n, k).t());
    Ok(gemm_views_bf16_mapped(xv, wv, out, map, m * n * k >= matmul::PAR_MIN_MACS).is_some())
}

/// The CPU backend (rayon threads, the `gemm` crate or the bf16 kernels, recycled buffers).
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn matmul(&self, a: &Tensor, b: &Tensor, t: Transpose) -> Result<Tensor> {
        let (m, k, n) = ops::matmul_dims(a, b, t)?;
        let mut out = pool::take(m * n);
        let shape = GemmShape { m, k, n, trans_a: t.a, trans_b: t.b };
        sgemm(shape, host(a, "matmul")?, host(b, "matmul")?, &mut out, false, 1.0);
        Ok(Tensor::from_vec(&[m, n], out))
    }

    /// `x W^T + b` as one GEMM that accumulates onto rows pre-filled with the bias, or with bf16
    /// GEMMs adds the bias in the GEMM's store (either way no separate pass of `matmul` +
    /// `bias_add`).
    fn linear_fwd(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (m, k, n) = ops::matmul_dims(x, w, Transpose::NT)?;
        let mut out = pool::take(m * n);
        if let (Some(b), CpuMatmulPrecision::Bf16) = (b, cpu_matmul_precision()) {
            // The bias in the bf16 GEMM's store, `(c - 0) * 1 + b` = `c + b` exactly: no pass to
            // broadcast it and no read of C (as `matmul` then `bias_add`, which the GPU runs).
            let (zeros, ones) = (vec![0f32; n], vec![1f32; n]);
            let map = ColumnMap { sub: &zeros, mul: &ones, add: host(b, "linear_fwd")?, relu: false };
            if linear_mapped("linear_fwd", x, w, map, &mut out)? {
                return Ok(Tensor::from_vec(&[m, n], out));
            }
        }
        if let Some(b) = b {
            elementwise::broadcast_rows(host(b, "linear_fwd")?, &mut out);
        }
        let shape = GemmShape { m, k, n, trans_a: false, trans_b: true };
        sgemm(shape, host(x, "linear_fwd")?, host(w, "linear_fwd")?, &mut out, b.is_some(), 1.0);
        Ok(Tensor::from_vec(&[m, n], out))
    }

    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mut out = pool::take(x.numel());
        elementwise::bias_add(host(x, "bias_add")?, host(b, "bias_add")?, &mut out);
        Ok(Tensor::from_vec(x.shape(), out))
    }

    fn sum_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (_, cols) = x.dims2();
        let sums = elementwise::sum_rows(host(x, "sum_rows")?, cols);
        Ok(Tensor::from_vec(&[cols], vec_f32(&sums)))
    }

    fn bn_train_fwd(&self, a: BnTrainArgs<'_>) -> Result<BnForward> {
        let op = "bn_train_fwd";
        let cols = a.gamma.numel();
        let mut y = pool::take(a.x.numel());
        let args = a.try_map(|t| host(t, op))?;
        let s = bn::train_fwd(args, &mut y);
        Ok(BnForward {
            y: Tensor::from_vec(a.x.shape(), y),
            mean: Tensor::from_vec(&[cols], s.mean),
            invstd: Tensor::from_vec(&[cols], s.invstd),
            var_unbiased: Tensor::from_vec(&[cols], s.var_unbiased),
        })
    }

    fn bn_train_bwd(&self, a: BnBackwardArgs<'_>) -> Result<BnBackward> {
        let op = "bn_train_bwd";
        let f = a.fwd;
        let cols = f.gamma.numel();
        let mut dx = pool::take(f.x.numel());
        let args = a.try_map(|t| host(t, op))?;
        let (dgamma, dbeta) = bn::train_bwd(args, &mut dx);
        let dx = Tensor::from_vec(f.x.shape(), dx);
        // The bias gradient: sum_rows of dx, the same pass the Linear backward would make.
        let dbias = f.bias.map(|_| self.sum_rows(&dx)).transpose()?;
        Ok(BnBackward { dx, dgamma: Tensor::from_vec(&[cols], dgamma), dbeta: Tensor::from_vec(&[cols], dbeta), dbias })
    }

    fn bn_eval_fwd(&self, x: &Tensor, bn: BnEval<'_>) -> Result<Tensor> {
        let op = "bn_eval_fwd";
        let mut y = pool::take(x.numel());
        let scale = bn::eval_scale(host(bn.gamma, op)?, host(bn.running_var, op)?, bn.eps);
        let map = bn::ColumnAffine { mean: host(bn.running_mean, op)?, scale: &scale, beta: host(bn.beta, op)? };
        bn::normalize(host(x, op)?, map, bn.relu, &mut y);
        Ok(Tensor::from_vec(x.shape(), y))
    }

    /// With bf16 GEMMs and AVX512-BF16 one GEMM that applies the BatchNorm in its store
    /// ([`matmul_bf16::ColumnMap`], the arithmetic of [`bn::normalize`]); otherwise the GEMM,
    /// then the BatchNorm pass.
    fn linear_bn_eval(&self, x: &Tensor, w: &Tensor, bn: BnEval<'_>) -> Result<Tensor> {
        let op = "linear_bn_eval";
        if cpu_matmul_precision() == CpuMatmulPrecision::Bf16 {
            let (m, _, n) = ops::matmul_dims(x, w, Transpose::NT)?;
            let mul = bn::eval_scale(host(bn.gamma, op)?, host(bn.running_var, op)?, bn.eps);
            let map = ColumnMap { sub: host(bn.running_mean, op)?, mul: &mul, add: host(bn.beta, op)?, relu: bn.relu };
            let mut out = pool::take(m * n);
            if linear_mapped(op, x, w, map, &mut out)? {
                return Ok(Tensor::from_vec(&[m, n], out));
            }
            pool::give(out);
        }
        let y = self.matmul(x, w, Transpose::NT)?;
        self.bn_eval_fwd(&y, bn)
    }

    fn ema_(&self, running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
        let b = host(batch, "ema_")?;
        elementwise::ema(host_mut(running, "ema_")?, b, momentum);
        Ok(())
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = pool::take(x.numel());
        elementwise::relu(host(x, "relu_fwd")?, &mut out);
        Ok(Tensor::from_vec(x.shape(), out))
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        let mut out = pool::take(dy.numel());
        elementwise::relu_bwd(host(dy, "relu_bwd")?, host(y, "relu_bwd")?, &mut out);
        Ok(Tensor::from_vec(dy.shape(), out))
    }

    fn vicreg_fwd_bwd(&self, z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)> {
        let (_, d) = z.dims2();
        let (parts, dz) = vicreg::fwd_bwd(host(z, "vicreg_fwd_bwd")?, d, n_per_image, w);
        Ok((parts, Tensor::from_vec(z.shape(), dz)))
    }

    fn group_mean(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (rows, cols) = x.dims2();
        let mut out = pool::take(rows / n * cols);
        elementwise::group_mean(host(x, "group_mean")?, cols, n, &mut out);
        Ok(Tensor::from_vec(&[rows / n, cols], out))
    }

    fn group_mean_bwd(&self, dy: &Tensor, n: usize) -> Result<Tensor> {
        let (groups, cols) = dy.dims2();
        let mut out = pool::take(groups * n * cols);
        elementwise::group_mean_bwd(host(dy, "group_mean_bwd")?, cols, n, &mut out);
        Ok(Tensor::from_vec(&[groups * n, cols], out))
    }

    fn dot(&self, x: &Tensor, w: &Tensor) -> Result<f64> {
        Ok(elementwise::dot(host(x, "dot")?, host(w, "dot")?))
    }

    fn axpy_(&self, y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
        let x = host(x, "axpy_")?;
        elementwise::axpy(host_mut(y, "axpy_")?, alpha, x);
        Ok(())
    }

    fn scale_(&self, x: &mut Tensor, s: f32) -> Result<()> {
        elementwise::scale(host_mut(x, "scale_")?, s);
        Ok(())
    }

    fn adamw_(&self, s: AdamWSlot<'_>, h: AdamW) -> Result<()> {
        let op = "adamw_";
        let h = AdamW { weight_decay: s.weight_decay, ..h };
        elementwise::adamw(host_mut(s.param, op)?, host(s.grad, op)?, host_mut(s.m, op)?, host_mut(s.v, op)?, h);
        Ok(())
    }

    fn im2col(&self, x: &Tensor, g: Window2d) -> Result<Tensor> {
        let mut cols = pool::take(g.out_rows() * g.patch_len());
        conv::im2col(host(x, "im2col")?, &g, &mut cols);
        Ok(Tensor::from_vec(&[g.out_rows(), g.patch_len()], cols))
    }

    fn conv2d_fwd(&self, x: &Tensor, wm: &Tensor, g: Window2d) -> Result<Tensor> {
        let out = wm.dims2().0;
        let mut y = pool::take(g.out_rows() * out);
        conv_gemm::conv2d_fwd(host(x, "conv2d_fwd")?, host(wm, "conv2d_fwd")?, &g, out, &mut y);
        Ok(Tensor::from_vec(&[g.out_rows(), out], y))
    }

    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        let op = "conv2d_bwd_weight";
        let out = dy.dims2().1;
        let mut dwm = pool::take(out * g.patch_len());
        conv_gemm::conv2d_bwd_weight(host(x, op)?, host(dy, op)?, &g, out, &mut dwm);
        Ok(Tensor::from_vec(&[out, g.patch_len()], dwm))
    }

    fn conv2d_bwd_input(&self, wm: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        let op = "conv2d_bwd_input";
        let out = wm.dims2().0;
        let mut dx = pool::take(g.in_rows() * g.c);
        conv_gemm::conv2d_bwd_input(host(wm, op)?, host(dy, op)?, &g, out, &mut dx);
        Ok(Tensor::from_vec(&[g.in_rows(), g.c], dx))
    }

    fn col2im(&self, cols: &Tensor, g: Window2d) -> Result<Tensor> {
        let mut dx = pool::take(g.in_rows() * g.c);
        conv::col2im(host(cols, "col2im")?, &g, &mut dx);
        Ok(Tensor::from_vec(&[g.in_rows(), g.c], dx))
    }

    fn transpose_last2(&self, x: &Tensor, outer: usize, a: usize, b: usize) -> Result<Tensor> {
        let mut out = pool::take(x.numel());
        conv::transpose_last2(host(x, "transpose_last2")?, outer, a, b, &mut out);
        Ok(Tensor::from_vec(&[outer, b * a], out))
    }

    fn max_pool_fwd(&self, x: &Tensor, g: Window2d) -> Result<Tensor> {
        let mut y = pool::take(g.out_rows() * g.c);
        conv::max_pool_fwd(host(x, "max_pool_fwd")?, &g, &mut y);
        Ok(Tensor::from_vec(&[g.out_rows(), g.c], y))
    }

    fn max_pool_bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
        let op = "max_pool_bwd";
        let (mut dx, mut arg) = (pool::take(g.in_rows() * g.c), pool::take(g.out_rows() * g.c));
        conv::max_pool_bwd(host(x, op)?, host(y, op)?, host(dy, op)?, &g, &mut arg, &mut dx);
        pool::give(arg);
        Ok(Tensor::from_vec(&[g.in_rows(), g.c], dx))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mut out = pool::take(a.numel());
        conv::add(host(a, "add")?, host(b, "add")?, &mut out);
        Ok(Tensor::from_vec(a.shape(), out))
    }
}
