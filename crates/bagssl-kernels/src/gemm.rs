//! Row-major f32 GEMMs on cuBLAS (`cublasGemmEx`).
//!
//! cuBLAS is column-major, and a row-major (r, c) matrix is the column-major (c, r) matrix of
//! its transpose, so the row-major `C = op(A) op(B)` is issued as the column-major
//! `C^T = op(B)^T op(A)^T`: swap the operands, keep each one's transpose flag.
//!
//! Precision ([`GemmPrecision`], per [`crate::Gpu`]): f32 in and out, f32 accumulation; with
//! `Tf32` (the default) the products run on TF32 tensor cores (10-bit mantissa inputs), so
//! compare with a relative error of about 1e-3 times the norm of the operands; with `F32` they
//! are exact f32 FMAs (relative error ~1e-6 * sqrt(k)) at ~8x the time.

use cudarc::cublas::sys;
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::device::same_gpu;
use crate::{GpuBuf, KernelError};

/// Math of the f32 GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GemmPrecision {
    /// TF32 tensor cores, f32 accumulation (`CUBLAS_COMPUTE_32F_FAST_TF32`).
    Tf32 = 0,
    /// Plain f32 (`CUBLAS_COMPUTE_32F`).
    F32 = 1,
}

impl GemmPrecision {
    pub(crate) fn from_u8(v: u8) -> GemmPrecision {
        if v == GemmPrecision::F32 as u8 {
            GemmPrecision::F32
        } else {
            GemmPrecision::Tf32
        }
    }
    /// A relative error bound for parity tests of a GEMM with inner dimension `k` (scaled by the
    /// magnitude of the inputs, |A||B|).
    pub fn tolerance(self, k: usize) -> f32 {
        match self {
            GemmPrecision::Tf32 => 2e-3,
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

fn to_i32(v: usize, what: &str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::Invalid(format!("gemm: {what} = {v} exceeds i32")))
}

/// Row-major GEMM on raw device memory. The lengths are checked against the shape.
pub(crate) fn gemm_raw<A, B, C>(gpu: &crate::Gpu, g: Gemm, a: &A, b: &B, c: &mut C) -> Result<(), KernelError>
where
    A: DevicePtr<f32>,
    B: DevicePtr<f32>,
    C: DevicePtrMut<f32>,
{
    let Gemm { m, n, k, trans_a, trans_b, alpha, beta } = g;
    if a.len() != m * k || b.len() != k * n || c.len() != m * n {
        return Err(KernelError::Invalid(format!(
            "gemm (m={m}, n={n}, k={k}): operand lengths {}, {}, {}, expected {}, {}, {}",
            a.len(),
            b.len(),
            c.len(),
            m * k,
            k * n,
            m * n
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
    // Column-major view: C^T (n x m) = op(B)^T (n x k) . op(A)^T (k x m).
    let lda_b = if trans_b { k } else { n }; // B stored (k, n) or, transposed, (n, k)
    let ldb_a = if trans_a { m } else { k }; // A stored (m, k) or, transposed, (k, m)
    let compute = match gpu.gemm_precision() {
        GemmPrecision::Tf32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        GemmPrecision::F32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let blas = gpu.blas()?;
    let stream = gpu.stream();
    let (pa, _ra) = a.device_ptr(stream);
    let (pb, _rb) = b.device_ptr(stream);
    let (pc, _rc) = c.device_ptr_mut(stream);
    // SAFETY: the pointers address buffers of the checked lengths on this GPU; the leading
    // dimensions match the dense row-major layouts; alpha/beta live until the call returns
    // (host pointer mode).
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(trans_b),
            op(trans_a),
            to_i32(n, "n")?,
            to_i32(m, "m")?,
            to_i32(k, "k")?,
            (&alpha) as *const f32 as *const _,
            pb as *const _,
            sys::cudaDataType_t::CUDA_R_32F,
            to_i32(lda_b.max(1), "ld")?,
            pa as *const _,
            sys::cudaDataType_t::CUDA_R_32F,
            to_i32(ldb_a.max(1), "ld")?,
            (&beta) as *const f32 as *const _,
            pc as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            to_i32(n, "ldc")?,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// Row-major `c = alpha op(a) op(b) + beta c` on [`GpuBuf`]s.
pub fn gemm_f32(g: Gemm, a: &GpuBuf, b: &GpuBuf, c: &mut GpuBuf) -> Result<(), KernelError> {
    let gpu = c.gpu().clone();
    same_gpu("gemm_f32", &gpu, &[a.gpu(), b.gpu()])?;
    gemm_raw(&gpu, g, a.slice(), b.slice(), c.slice_mut())
}

/// Row-major `op(a) op(b)` into a new (m, n) buffer.
pub fn matmul_f32(a: &GpuBuf, b: &GpuBuf, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Result<GpuBuf, KernelError> {
    let mut c = a.gpu().uninit(m * n)?;
    if k == 0 {
        // cuBLAS scales C by beta when k = 0, and beta = 0 must not read uninitialised NaNs.
        c = a.gpu().zeros(m * n)?;
        return Ok(c);
    }
    gemm_f32(Gemm { m, n, k, trans_a, trans_b, alpha: 1.0, beta: 0.0 }, a, b, &mut c)?;
    Ok(c)
}
