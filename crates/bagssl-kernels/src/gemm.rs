//! Row-major GEMMs on cuBLAS (`cublasGemmEx`), f32 output.
//!
//! cuBLAS is column-major, and a row-major (r, c) matrix is the column-major (c, r) matrix of
//! its transpose, so the row-major `C = op(A) op(B)` is issued as the column-major
//! `C^T = op(B)^T op(A)^T`: swap the operands, keep each one's transpose flag.
//!
//! Precision ([`GemmPrecision`], per [`crate::Gpu`]); f32 accumulation and f32 output always:
//! - `Bf16` (the default, like PyTorch's bf16 autocast): the operands are the buffers' bf16
//!   copies ([`GpuBuf::bf16`], round to nearest even, cached until the buffer is written) and
//!   cuBLAS runs the bf16 tensor cores at their full rate; relative error a few 1e-3 of the
//!   operands' scale. (`CUBLAS_COMPUTE_32F_FAST_16BF` on f32 operands rounds the same way but
//!   measured no faster than TF32 on an H200, so the copies are made explicitly.)
//! - `Tf32`: f32 operands on the TF32 tensor cores (10-bit mantissa), relative error ~1e-3.
//! - `F32`: exact f32 FMAs (relative error ~1e-6 * sqrt(k)) at ~8x the TF32 time.

use cudarc::cublas::sys;
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::device::same_gpu;
use crate::{GpuBuf, KernelError};

/// Math of the f32 GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum GemmPrecision {
    /// TF32 tensor cores, f32 accumulation (`CUBLAS_COMPUTE_32F_FAST_TF32`).
    Tf32 = 0,
    /// Plain f32 (`CUBLAS_COMPUTE_32F`).
    F32 = 1,
    /// bf16 copies of the operands, bf16 tensor cores, f32 accumulation and output.
    Bf16 = 2,
}

impl GemmPrecision {
    /// Every precision, the default first.
    pub const ALL: [GemmPrecision; 3] = [GemmPrecision::Bf16, GemmPrecision::Tf32, GemmPrecision::F32];

    pub(crate) fn from_u8(v: u8) -> GemmPrecision {
        match v {
            1 => GemmPrecision::F32,
            2 => GemmPrecision::Bf16,
            _ => GemmPrecision::Tf32,
        }
    }

    /// `bf16`, `tf32` or `f32` (the config key `gpu_precision`'s spelling).
    pub fn parse(s: &str) -> Option<GemmPrecision> {
        match s {
            "bf16" => Some(GemmPrecision::Bf16),
            "tf32" => Some(GemmPrecision::Tf32),
            "f32" => Some(GemmPrecision::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GemmPrecision::Bf16 => "bf16",
            GemmPrecision::Tf32 => "tf32",
            GemmPrecision::F32 => "f32",
        }
    }

    /// A relative error bound for parity tests of a GEMM with inner dimension `k` (scaled by the
    /// magnitude of the inputs, |A||B|). One rounding of each operand costs 2^-11 (TF32) or
    /// 2^-9 (bf16) relative; the bounds leave 4x for the sum of the two and for accumulation.
    pub fn tolerance(self, k: usize) -> f32 {
        match self {
            GemmPrecision::Tf32 => 2e-3,
            GemmPrecision::Bf16 => 8e-3,
            GemmPrecision::F32 => 1e-6 * (k.max(1) as f32).sqrt() * 4.0,
        }
    }
}

/// Shape and scalars of one row-major `C = alpha op(A) op(B) + beta C`; op(A) is (m, k), op(B)
/// is (k, n), C is (m, n), all densely packed.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

/// Checks the operand lengths `[a, b, c]` against `g`'s shape: equal (`exact`), or at least that
/// long (raw allocations may be longer than the matrix, never shorter).
fn check_operands(op: &str, g: &Gemm, lens: [usize; 3], exact: bool) -> Result<(), KernelError> {
    let Gemm { m, n, k, .. } = *g;
    let want = [m * k, k * n, m * n];
    if lens.iter().zip(&want).any(|(&l, &w)| if exact { l != w } else { l < w }) {
        return Err(KernelError::Invalid(format!(
            "{op} (m={m}, n={n}, k={k}): operand lengths {lens:?}, expected {want:?}"
        )));
    }
    Ok(())
}

fn to_i32(v: usize, what: &str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::Invalid(format!("gemm: {what} = {v} exceeds i32")))
}

/// The column-major cuBLAS call computing a row-major [`Gemm`]: `C^T (n x m) = op(B)^T op(A)^T`,
/// so B is the first operand and A the second, each keeping its transpose flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColMajor {
    pub trans_first: bool,
    pub trans_second: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ld_first: usize,
    pub ld_second: usize,
    pub ldc: usize,
}

impl ColMajor {
    pub(crate) fn of(g: &Gemm) -> ColMajor {
        ColMajor {
            trans_first: g.trans_b,
            trans_second: g.trans_a,
            m: g.n,
            n: g.m,
            k: g.k,
            // B is stored (k, n) row-major, or (n, k) when transposed; A (m, k) or (k, m).
            ld_first: (if g.trans_b { g.k } else { g.n }).max(1),
            ld_second: (if g.trans_a { g.m } else { g.k }).max(1),
            ldc: g.n.max(1),
        }
    }
}

/// The element type of GEMM operands: f32, or bf16 bit patterns (u16).
pub(crate) trait GemmOperand: cudarc::driver::DeviceRepr {
    const CUDA_TYPE: sys::cudaDataType_t;
}
impl GemmOperand for f32 {
    const CUDA_TYPE: sys::cudaDataType_t = sys::cudaDataType_t::CUDA_R_32F;
}
impl GemmOperand for u16 {
    const CUDA_TYPE: sys::cudaDataType_t = sys::cudaDataType_t::CUDA_R_16BF;
}

/// Row-major GEMM on raw device memory, f32 operands, at the GPU's precision. The lengths are
/// checked against the shape.
pub(crate) fn gemm_raw<A, B, C>(gpu: &crate::Gpu, g: Gemm, a: &A, b: &B, c: &mut C) -> Result<(), KernelError>
where
    A: DevicePtr<f32>,
    B: DevicePtr<f32>,
    C: DevicePtrMut<f32>,
{
    let compute = match gpu.gemm_precision() {
        GemmPrecision::Tf32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        GemmPrecision::F32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        // f32 operands that the caller did not give as bf16 copies: cuBLAS rounds them itself.
        GemmPrecision::Bf16 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
    };
    gemm_ex::<f32, A, B, C>(gpu, g, a, b, c, compute)
}

/// Row-major GEMM of bf16 operands (bit patterns, e.g. [`GpuBuf::bf16`]) into f32 `c`, f32
/// accumulation on the bf16 tensor cores. The lengths are checked against the shape.
pub(crate) fn gemm_bf16_raw<A, B, C>(gpu: &crate::Gpu, g: Gemm, a: &A, b: &B, c: &mut C) -> Result<(), KernelError>
where
    A: DevicePtr<u16>,
    B: DevicePtr<u16>,
    C: DevicePtrMut<f32>,
{
    gemm_ex::<u16, A, B, C>(gpu, g, a, b, c, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F)
}

/// `cublasGemmEx` for a row-major [`Gemm`] (see [`ColMajor`]): operands of type `T`, f32 output.
fn gemm_ex<T, A, B, C>(
    gpu: &crate::Gpu,
    g: Gemm,
    a: &A,
    b: &B,
    c: &mut C,
    compute: sys::cublasComputeType_t,
) -> Result<(), KernelError>
where
    T: GemmOperand,
    A: DevicePtr<T>,
    B: DevicePtr<T>,
    C: DevicePtrMut<f32>,
{
    let Gemm { m, n, alpha, beta, .. } = g;
    // Allocations may be longer than the matrix (see `GpuBuf`), never shorter.
    check_operands("gemm", &g, [a.len(), b.len(), c.len()], false)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let cm = ColMajor::of(&g);
    let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
    let blas = gpu.blas()?;
    let stream = gpu.stream();
    let (pa, _ra) = a.device_ptr(stream);
    let (pb, _rb) = b.device_ptr(stream);
    let (pc, _rc) = c.device_ptr_mut(stream);
    // SAFETY: the pointers address buffers of the checked lengths (elements of type T, f32 for C)
    // on this GPU; the leading dimensions match the dense row-major layouts; alpha/beta live
    // until the call returns (host pointer mode).
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(cm.trans_first),
            op(cm.trans_second),
            to_i32(cm.m, "n")?,
            to_i32(cm.n, "m")?,
            to_i32(cm.k, "k")?,
            (&alpha) as *const f32 as *const _,
            pb as *const _,
            T::CUDA_TYPE,
            to_i32(cm.ld_first, "ld")?,
            pa as *const _,
            T::CUDA_TYPE,
            to_i32(cm.ld_second, "ld")?,
            (&beta) as *const f32 as *const _,
            pc as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            to_i32(cm.ldc, "ldc")?,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// Row-major `c = alpha op(a) op(b) + beta c` on [`GpuBuf`]s, at the GPU's precision (with
/// `Bf16`, on the buffers' cached bf16 copies).
pub fn gemm_f32(g: Gemm, a: &GpuBuf, b: &GpuBuf, c: &mut GpuBuf) -> Result<(), KernelError> {
    let gpu = c.gpu().clone();
    same_gpu("gemm_f32", &gpu, &[a.gpu(), b.gpu()])?;
    check_operands("gemm_f32", &g, [a.len(), b.len(), c.len()], true)?;
    match gpu.gemm_precision() {
        GemmPrecision::Bf16 => gemm_bf16_raw(&gpu, g, a.bf16()?, b.bf16()?, c.slice_mut()),
        _ => gemm_raw(&gpu, g, a.slice(), b.slice(), c.slice_mut()),
    }
}

/// Row-major `op(a) op(b)` into a new (m, n) buffer.
pub fn matmul_f32(
    a: &GpuBuf,
    b: &GpuBuf,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
) -> Result<GpuBuf, KernelError> {
    if k == 0 {
        return a.gpu().zeros(m * n);
    }
    let mut c = a.gpu().uninit(m * n)?;
    gemm_f32(Gemm { m, n, k, trans_a, trans_b, alpha: 1.0, beta: 0.0 }, a, b, &mut c)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference column-major GEMM with cuBLAS's argument conventions.
    fn sgemm_colmajor(cm: &ColMajor, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
        for j in 0..cm.n {
            for i in 0..cm.m {
                let mut s = 0f64;
                for p in 0..cm.k {
                    let av = if cm.trans_first { a[p + i * cm.ld_first] } else { a[i + p * cm.ld_first] };
                    let bv = if cm.trans_second { b[j + p * cm.ld_second] } else { b[p + j * cm.ld_second] };
                    s += f64::from(av) * f64::from(bv);
                }
                let o = &mut c[i + j * cm.ldc];
                *o = alpha * s as f32 + beta * *o;
            }
        }
    }

    /// The row-major to column-major mapping, checked on the CPU with a reference cuBLAS.
    #[test]
    fn column_major_mapping_computes_the_row_major_product() {
        let (m, n, k) = (5, 3, 4);
        let val = |i: usize, s: f32| ((i * 7 + 3) % 11) as f32 * s - 2.0;
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a: Vec<f32> = (0..m * k).map(|i| val(i, 0.5)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i, 0.25)).collect();
            // Row-major element (r, c) of op(A), op(B).
            let opa = |r: usize, c: usize| if ta { a[c * m + r] } else { a[r * k + c] };
            let opb = |r: usize, c: usize| if tb { b[c * k + r] } else { b[r * n + c] };
            let c0: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
            let want: Vec<f32> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    2.0 * (0..k).map(|p| opa(r, p) * opb(p, c)).sum::<f32>() + 0.5 * c0[i]
                })
                .collect();
            let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha: 2.0, beta: 0.5 };
            let mut got = c0.clone();
            sgemm_colmajor(&ColMajor::of(&g), 2.0, &b, &a, 0.5, &mut got);
            assert_eq!(got, want, "trans_a {ta} trans_b {tb}");
        }
    }
}
