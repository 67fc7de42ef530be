//! Launcher of `kernels/cov_loss.cu`: bag-VICReg loss terms and dL/dz on the device.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::PinnedScalars;
use crate::elementwise::cast_bf16_raw;
use crate::ffi::BagsslVicregParams;
use crate::gemm::{gemm_bf16_raw, gemm_raw, Gemm, GemmPrecision};
use crate::launch::{cfg_1d, cfg_blocks, check_len, partial_blocks, u32_of};
use crate::{GpuBuf, KernelError};

/// Loss weights and epsilon (DESIGN §3; defaults lambda = mu = 25, nu = 1, eps = 1e-4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicregConfig {
    pub invariance: f32,
    pub variance: f32,
    pub covariance: f32,
    pub eps: f32,
}

impl Default for VicregConfig {
    fn default() -> Self {
        VicregConfig { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 }
    }
}

/// The weighted loss and its three unweighted terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VicregScalars {
    pub loss: f64,
    pub invariance: f64,
    pub variance: f64,
    pub covariance: f64,
}

/// Result of [`vicreg_fwd_bwd_f32`]: dL/dz, the weighted loss as one f32 on the device, and the
/// scalars still on the device.
pub struct VicregOut {
    pub dz: GpuBuf,
    /// The weighted loss, 1 f32 (a tape's scalar loss tensor without a host round trip).
    pub loss: GpuBuf,
    /// [loss, invariance, variance, covariance] in f64, on the device.
    pub scalars: CudaSlice<f64>,
}

impl VicregOut {
    /// Copies the four scalars (32 bytes) to the host; waits for the stream.
    pub fn scalars(&self) -> Result<VicregScalars, KernelError> {
        self.scalars_async()?.wait()
    }

    /// Queues the copy of the four scalars to the host and returns at once: launch more work,
    /// then [`PendingScalars::wait`] blocks only until the copy has landed.
    pub fn scalars_async(&self) -> Result<PendingScalars, KernelError> {
        Ok(PendingScalars(self.dz.gpu().read_scalars_async(&self.scalars)?))
    }
}

/// The loss scalars on their way to the host (page-locked memory, an event).
#[derive(Debug)]
pub struct PendingScalars(PinnedScalars);

impl PendingScalars {
    /// Waits for the copy (not for the work queued after it) and returns the scalars.
    pub fn wait(&self) -> Result<VicregScalars, KernelError> {
        let v = self.0.wait()?;
        Ok(VicregScalars { loss: v[0], invariance: v[1], variance: v[2], covariance: v[3] })
    }
}

/// bag-VICReg on `z` (n_rows, dim), rows `b*n .. b*n+n-1` being image b's patches: the loss
/// terms and the gradient of the weighted loss. The two (dim x dim x n_rows) products run on
/// cuBLAS at the GPU's [`crate::GemmPrecision`].
pub fn vicreg_fwd_bwd_f32(
    z: &GpuBuf,
    n_rows: usize,
    dim: usize,
    n_per_image: usize,
    w: VicregConfig,
) -> Result<VicregOut, KernelError> {
    let op = "vicreg_fwd_bwd_f32";
    check_len(op, "z", z.len(), n_rows * dim)?;
    if n_per_image == 0 || !n_rows.is_multiple_of(n_per_image) {
        return Err(KernelError::Invalid(format!("{op}: {n_rows} rows are not groups of {n_per_image}")));
    }
    if n_rows < 2 || dim == 0 {
        return Err(KernelError::Invalid(format!("{op}: need at least 2 rows and 1 column, got ({n_rows}, {dim})")));
    }
    u32_of(n_rows * dim, "n_rows * dim")?;
    u32_of(dim * dim, "dim * dim")?;
    let n_groups = n_rows / n_per_image;
    let prm = BagsslVicregParams {
        n_rows: n_rows as u32,
        dim: dim as u32,
        n_per_image: n_per_image as u32,
        n_groups: n_groups as u32,
        invariance: w.invariance,
        variance: w.variance,
        covariance: w.covariance,
        eps: w.eps,
    };
    let gpu = z.gpu();
    let s = gpu.stream();

    let mut gm = gpu.alloc_raw::<f32>(n_groups * dim)?;
    let mut mu = gpu.alloc_raw::<f32>(dim)?;
    let mut zc = gpu.alloc_raw::<f32>(n_rows * dim)?;
    let mut c = gpu.alloc_raw::<f32>(dim * dim)?;
    let mut vcoef = gpu.alloc_raw::<f32>(dim)?;
    let inv_blocks = partial_blocks(n_groups * dim);
    let cov_blocks = partial_blocks(dim * dim);
    let mut inv_partial = gpu.alloc_raw::<f64>(inv_blocks)?;
    let mut cov_partial = gpu.alloc_raw::<f64>(cov_blocks)?;
    let mut var_partial = gpu.alloc_raw::<f64>(cov_blocks)?;
    let mut scalars = gpu.alloc_raw::<f64>(4)?;
    let mut loss = gpu.uninit(1)?;
    let mut dz = gpu.uninit(n_rows * dim)?;

    // SAFETY (all launches): every buffer was allocated above with the length its kernel
    // indexes (see the comments in kernels/cov_loss.cu); z holds n_rows*dim floats.
    let mut b = s.launch_builder(gpu.function("vicreg_group_stats_f32")?);
    b.arg(z.slice()).arg(&mut gm).arg(&mut inv_partial).arg(&prm);
    unsafe { b.launch(cfg_blocks(inv_blocks)) }?;

    let mut b = s.launch_builder(gpu.function("vicreg_colmean_f32")?);
    b.arg(&gm).arg(&mut mu).arg(&prm);
    unsafe { b.launch(cfg_1d(dim)) }?;

    let mut b = s.launch_builder(gpu.function("vicreg_center_f32")?);
    b.arg(z.slice()).arg(&mu).arg(&mut zc).arg(&prm);
    unsafe { b.launch(cfg_1d(n_rows * dim)) }?;

    // C = Zc^T Zc / (N - 1); with bf16 GEMMs Zc's bf16 copy serves both products.
    let zc16 = match gpu.gemm_precision() {
        GemmPrecision::Bf16 => Some(cast_bf16_raw(gpu, &zc, n_rows * dim)?),
        _ => None,
    };
    let g =
        Gemm { m: dim, n: dim, k: n_rows, trans_a: true, trans_b: false, alpha: 1.0 / (n_rows - 1) as f32, beta: 0.0 };
    match &zc16 {
        Some(z16) => gemm_bf16_raw(gpu, g, z16, z16, &mut c)?,
        None => gemm_raw(gpu, g, &zc, &zc, &mut c)?,
    }

    let mut b = s.launch_builder(gpu.function("vicreg_cov_terms_f32")?);
    b.arg(&mut c).arg(&mut vcoef).arg(&mut cov_partial).arg(&mut var_partial).arg(&prm);
    unsafe { b.launch(cfg_blocks(cov_blocks)) }?;

    let mut b = s.launch_builder(gpu.function("vicreg_grad_init_f32")?);
    b.arg(z.slice()).arg(&gm).arg(&zc).arg(&vcoef).arg(dz.slice_mut()).arg(&prm);
    unsafe { b.launch(cfg_1d(n_rows * dim)) }?;

    // dz += 4 nu / (D (N - 1)) Zc Coff
    let alpha = (4.0 * f64::from(w.covariance) / (dim as f64 * (n_rows - 1) as f64)) as f32;
    let g = Gemm { m: n_rows, n: dim, k: dim, trans_a: false, trans_b: false, alpha, beta: 1.0 };
    match &zc16 {
        Some(z16) => gemm_bf16_raw(gpu, g, z16, &cast_bf16_raw(gpu, &c, dim * dim)?, dz.slice_mut())?,
        None => gemm_raw(gpu, g, &zc, &c, dz.slice_mut())?,
    }

    let (ni, nc) = (inv_blocks as u32, cov_blocks as u32);
    let mut b = s.launch_builder(gpu.function("vicreg_finalize_f32")?);
    b.arg(&inv_partial).arg(&ni).arg(&cov_partial).arg(&var_partial).arg(&nc).arg(&mut scalars);
    b.arg(loss.slice_mut()).arg(&prm);
    unsafe { b.launch(cfg_blocks(1)) }?;

    Ok(VicregOut { dz, loss, scalars })
}
