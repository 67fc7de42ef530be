//! Launcher of `kernels/cov_loss.cu`: bag-VICReg loss terms and dL/dz on the device.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::PinnedScalars;
use crate::ffi::{BagsslVicregParams, BAGSSL_COL_LANES};
use crate::gemm::{gemm_bf16_raw, gemm_raw, Gemm, GemmPrecision};
use crate::launch::{arg_or_null, cfg_blocks, check_len, u32_of, ColGrid, COL_TARGET_BLOCKS};
use crate::{GpuBuf, KernelError};

/// Loss weights and epsilon of bag-VICReg (docs/DEFINITIONS.md §7; lambda = mu = 25, nu = 1,
/// eps = 1e-4): the one type for them, from the config's `[loss]` section through the autograd
/// (which re-exports it) to this kernel. `eps` is fixed by the definition, so serde skips it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VicregWeights {
    #[serde(serialize_with = "shortest_f32")]
    pub invariance: f32,
    #[serde(serialize_with = "shortest_f32")]
    pub variance: f32,
    #[serde(serialize_with = "shortest_f32")]
    pub covariance: f32,
    #[serde(skip)]
    pub eps: f32,
}

/// An f32 written as the f64 of its shortest decimal form (`0.3`, not `0.30000001192092896`).
fn shortest_f32<S: serde::Serializer>(v: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(*v as f64))
}

impl Default for VicregWeights {
    fn default() -> Self {
        VicregWeights { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 }
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
    w: VicregWeights,
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
    // bf16 GEMMs read only the bf16 copies of Zc and Coff, which the kernels write directly; the
    // f32 Zc is then never materialised (vicreg_grad_init_f32 recomputes z - mu).
    let bf16 = gpu.gemm_precision() == GemmPrecision::Bf16;

    // Grids (kernels/cov_loss.cu): the group statistics over the n_groups rows of gm, the
    // elementwise kernels over z's rows, the covariance terms over C's.
    let gg = group_grid(op, n_groups, dim)?;
    let rg = ColGrid::new(n_rows, dim);
    let cg = ColGrid::new(dim, dim);
    let inv_blocks = gg.tiles * gg.chunks;
    let cov_blocks = cg.tiles * cg.chunks;

    let mut gm = gpu.alloc_raw::<f32>(n_groups * dim)?;
    let mut mu = gpu.alloc_raw::<f32>(dim)?;
    let mut col_partial = gpu.alloc_raw::<f32>(gg.chunks * dim)?;
    let mut zc = if bf16 { None } else { Some(gpu.alloc_raw::<f32>(n_rows * dim)?) };
    let mut zc16 = if bf16 { Some(gpu.alloc_raw::<u16>(n_rows * dim)?) } else { None };
    let mut c = gpu.alloc_raw::<f32>(dim * dim)?;
    let mut c16 = if bf16 { Some(gpu.alloc_raw::<u16>(dim * dim)?) } else { None };
    let mut vcoef = gpu.alloc_raw::<f32>(dim)?;
    let mut inv_partial = gpu.alloc_raw::<f64>(inv_blocks)?;
    let mut cov_partial = gpu.alloc_raw::<f64>(cov_blocks)?;
    let mut var_partial = gpu.alloc_raw::<f64>(cov_blocks)?;
    let mut scalars = gpu.alloc_raw::<f64>(4)?;
    let mut loss = gpu.uninit(1)?;
    let mut dz = gpu.uninit(n_rows * dim)?;
    // The kernels skip the outputs they get as a null pointer.
    let null = 0u64;

    // SAFETY (all launches): every buffer was allocated above with the length its kernel
    // indexes (see the comments in kernels/cov_loss.cu), on the grid the kernel expects; z holds
    // n_rows*dim floats; the matrices start allocations (16-byte aligned for the float4 columns).
    let mut b = s.launch_builder(gpu.function("vicreg_group_stats_f32")?);
    b.arg(z.slice()).arg(&mut gm).arg(&mut mu).arg(&mut col_partial).arg(&mut inv_partial).arg(&prm);
    b.arg(&gg.chunk_rows);
    unsafe { b.launch(gg.cfg()) }?;

    let mut b = s.launch_builder(gpu.function("vicreg_center_f32")?);
    b.arg(z.slice()).arg(&mu);
    arg_or_null(&mut b, zc.as_mut(), &null);
    arg_or_null(&mut b, zc16.as_mut(), &null);
    b.arg(&prm).arg(&rg.chunk_rows);
    unsafe { b.launch(rg.cfg()) }?;

    // C = Zc^T Zc / (N - 1); with bf16 GEMMs Zc's bf16 copy serves both products.
    let g =
        Gemm { m: dim, n: dim, k: n_rows, trans_a: true, trans_b: false, alpha: 1.0 / (n_rows - 1) as f32, beta: 0.0 };
    match (&zc, &zc16) {
        (_, Some(z16)) => gemm_bf16_raw(gpu, g, z16, z16, &mut c)?,
        (Some(zc), None) => gemm_raw(gpu, g, zc, zc, &mut c)?,
        (None, None) => unreachable!("Zc is allocated in f32 or bf16"),
    }

    let mut b = s.launch_builder(gpu.function("vicreg_cov_terms_f32")?);
    b.arg(&mut c);
    arg_or_null(&mut b, c16.as_mut(), &null);
    b.arg(&mut vcoef).arg(&mut cov_partial).arg(&mut var_partial).arg(&prm).arg(&cg.chunk_rows);
    unsafe { b.launch(cg.cfg()) }?;

    let mut b = s.launch_builder(gpu.function("vicreg_grad_init_f32")?);
    b.arg(z.slice()).arg(&gm).arg(&mu).arg(&vcoef).arg(dz.slice_mut()).arg(&prm).arg(&rg.chunk_rows);
    unsafe { b.launch(rg.cfg()) }?;

    // dz += 4 nu / (D (N - 1)) Zc Coff
    let alpha = (4.0 * f64::from(w.covariance) / (dim as f64 * (n_rows - 1) as f64)) as f32;
    let g = Gemm { m: n_rows, n: dim, k: dim, trans_a: false, trans_b: false, alpha, beta: 1.0 };
    match (&zc, &zc16, &c16) {
        (_, Some(z16), Some(c16)) => gemm_bf16_raw(gpu, g, z16, c16, dz.slice_mut())?,
        (Some(zc), _, _) => gemm_raw(gpu, g, zc, &c, dz.slice_mut())?,
        _ => unreachable!("Zc and Coff are allocated in f32 or bf16"),
    }

    let (ni, nc) = (inv_blocks as u32, cov_blocks as u32);
    let mut b = s.launch_builder(gpu.function("vicreg_finalize_f32")?);
    b.arg(&inv_partial).arg(&ni).arg(&cov_partial).arg(&var_partial).arg(&nc).arg(&mut scalars);
    b.arg(loss.slice_mut()).arg(&prm);
    unsafe { b.launch(cfg_blocks(1)) }?;

    Ok(VicregOut { dz, loss, scalars })
}

/// The grid of vicreg_group_stats_f32: the column tiles of [`ColGrid`] over the `n_groups` rows of
/// gm, in chunks of a multiple of `BAGSSL_COL_LANES` groups (one per row lane and round), as few
/// groups per chunk as give about [`ColGrid`]'s block count (4 per SM): at 512 groups x 2048
/// columns, 16 tiles x 64 chunks of 8 groups (one group of 16 rows per thread).
fn group_grid(op: &str, n_groups: usize, dim: usize) -> Result<ColGrid, KernelError> {
    let tiles = ColGrid::reduction(op, n_groups, dim)?.tiles;
    let lanes = BAGSSL_COL_LANES as usize;
    let rounds = n_groups.div_ceil(lanes).max(1);
    let chunk = (rounds * tiles / COL_TARGET_BLOCKS).clamp(1, rounds) * lanes;
    // chunk <= n_groups + lanes < 2^32 (n_rows * dim < 2^32 is checked above).
    Ok(ColGrid { tiles, chunks: n_groups.div_ceil(chunk).max(1), chunk_rows: chunk as u32 })
}
