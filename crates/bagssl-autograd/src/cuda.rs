//! CUDA launchers of the primitives in [`crate::ops`], same signatures as [`crate::cpu`].
//! Each one calls into `bagssl_kernels` (cuBLAS or a hand-written kernel) on the tensor's GPU.
//! PLACEHOLDER until the kernels helper wires them: every function returns a clear error.

#![allow(unused_variables)]

use crate::ops::{AdamW, BnForward, VicregParts, VicregWeights};
use crate::tensor::Tensor;
use crate::Result;

fn not_wired(op: &str) -> crate::Error {
    crate::Error::Gpu(bagssl_kernels::KernelError::Cuda(format!("{op}: CUDA launcher not wired yet")))
}

#[allow(clippy::too_many_arguments)]
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    Err(not_wired("matmul"))
}

#[allow(clippy::too_many_arguments)]
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    Err(not_wired("bias_add"))
}

#[allow(clippy::too_many_arguments)]
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    Err(not_wired("sum_rows"))
}

#[allow(clippy::too_many_arguments)]
pub fn bn_train_fwd(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32, relu: bool) -> Result<BnForward> {
    Err(not_wired("bn_train_fwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn bn_train_bwd(
    dy: &Tensor,
    x: &Tensor,
    y: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    Err(not_wired("bn_train_bwd"))
}

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
    Err(not_wired("bn_eval_fwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn ema_(running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
    Err(not_wired("ema_"))
}

#[allow(clippy::too_many_arguments)]
pub fn relu_fwd(x: &Tensor) -> Result<Tensor> {
    Err(not_wired("relu_fwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    Err(not_wired("relu_bwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn vicreg_fwd_bwd(z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)> {
    Err(not_wired("vicreg_fwd_bwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn group_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    Err(not_wired("group_mean"))
}

#[allow(clippy::too_many_arguments)]
pub fn group_mean_bwd(dy: &Tensor, n: usize) -> Result<Tensor> {
    Err(not_wired("group_mean_bwd"))
}

#[allow(clippy::too_many_arguments)]
pub fn dot(x: &Tensor, w: &Tensor) -> Result<f64> {
    Err(not_wired("dot"))
}

#[allow(clippy::too_many_arguments)]
pub fn axpy_(y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    Err(not_wired("axpy_"))
}

#[allow(clippy::too_many_arguments)]
pub fn adamw_(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, h: AdamW) -> Result<()> {
    Err(not_wired("adamw_"))
}

pub fn scale_(x: &mut Tensor, s: f32) -> Result<()> {
    Err(not_wired("scale_"))
}
