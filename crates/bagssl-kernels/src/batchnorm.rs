//! Launchers of `kernels/batchnorm.cu`: BatchNorm1d over the rows, PyTorch semantics.

use cudarc::driver::PushKernelArg;

use crate::device::same_gpu;
use crate::ffi::BagsslBnParams;
use crate::launch::{cfg_1d, check_len, u32_of, ColGrid};
use crate::{GpuBuf, KernelError};

/// Output of [`bn_train_fwd_f32`].
pub struct BnTrainOut {
    /// (rows, cols), after the optional ReLU.
    pub y: GpuBuf,
    /// Batch mean per column.
    pub mean: GpuBuf,
    /// 1 / sqrt(biased batch variance + eps) per column.
    pub invstd: GpuBuf,
    /// Unbiased batch variance per column (0 when rows = 1), for the running statistics.
    pub var_unbiased: GpuBuf,
}

fn params(op: &str, x: &GpuBuf, rows: usize, cols: usize, eps: f32, relu: bool) -> Result<BagsslBnParams, KernelError> {
    check_len(op, "x", x.len(), rows * cols)?;
    u32_of(rows * cols, "rows * cols")?;
    Ok(BagsslBnParams { rows: rows as u32, cols: cols as u32, eps, relu: relu as u32 })
}

fn check_vecs(op: &str, x: &GpuBuf, cols: usize, vecs: &[(&str, &GpuBuf)]) -> Result<(), KernelError> {
    for (name, v) in vecs {
        same_gpu(op, x.gpu(), &[v.gpu()])?;
        check_len(op, name, v.len(), cols)?;
    }
    Ok(())
}

/// Training-mode forward: batch statistics (per-chunk two-pass, combined in f64), normalise, affine,
/// optional ReLU.
pub fn bn_train_fwd_f32(
    x: &GpuBuf,
    gamma: &GpuBuf,
    beta: &GpuBuf,
    rows: usize,
    cols: usize,
    eps: f32,
    relu: bool,
) -> Result<BnTrainOut, KernelError> {
    let op = "bn_train_fwd_f32";
    let prm = params(op, x, rows, cols, eps, relu)?;
    check_vecs(op, x, cols, &[("gamma", gamma), ("beta", beta)])?;
    if rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: batch statistics of 0 rows")));
    }
    let grid = ColGrid::reduction(op, rows, cols)?;
    let gpu = x.gpu();
    let mut mean = gpu.uninit(cols)?;
    let mut invstd = gpu.uninit(cols)?;
    let mut var_unbiased = gpu.uninit(cols)?;
    let mut y = gpu.uninit(rows * cols)?;
    if cols > 0 {
        // Per-chunk (sum, shifted mean, M2) of every column, combined by the last block of each tile.
        let mut partial = gpu.alloc_raw::<f32>(3 * grid.chunks * cols)?;
        let mut b = gpu.stream().launch_builder(gpu.function("bn_stats_fwd_f32")?);
        b.arg(x.slice()).arg(mean.slice_mut()).arg(invstd.slice_mut()).arg(var_unbiased.slice_mut());
        b.arg(&mut partial).arg(&prm).arg(&grid.chunk_rows);
        // SAFETY: x holds rows*cols floats, the statistics cols each, partial 3*chunks*cols; the
        // grid is `grid`, whose chunk_rows the kernel gets.
        unsafe { b.launch(grid.cfg()) }?;
        let mut b = gpu.stream().launch_builder(gpu.function("bn_apply_fwd_f32")?);
        b.arg(x.slice()).arg(mean.slice()).arg(invstd.slice()).arg(gamma.slice()).arg(beta.slice()).arg(y.slice_mut());
        b.arg(&prm).arg(&grid.chunk_rows);
        // SAFETY: as above; y holds rows*cols floats.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok(BnTrainOut { y, mean, invstd, var_unbiased })
}

/// Backward of [`bn_train_fwd_f32`]: (dx, dgamma, dbeta). `y` is the forward output (ReLU mask).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_bwd_f32(
    dy: &GpuBuf,
    x: &GpuBuf,
    y: &GpuBuf,
    gamma: &GpuBuf,
    mean: &GpuBuf,
    invstd: &GpuBuf,
    rows: usize,
    cols: usize,
    relu: bool,
) -> Result<(GpuBuf, GpuBuf, GpuBuf), KernelError> {
    let op = "bn_train_bwd_f32";
    let prm = params(op, x, rows, cols, 0.0, relu)?;
    check_len(op, "dy", dy.len(), rows * cols)?;
    check_len(op, "y", y.len(), rows * cols)?;
    same_gpu(op, x.gpu(), &[dy.gpu(), y.gpu()])?;
    check_vecs(op, x, cols, &[("gamma", gamma), ("mean", mean), ("invstd", invstd)])?;
    let gpu = x.gpu();
    if cols == 0 || rows == 0 {
        // Sums over no rows, or no columns: zeros, and an empty dx.
        return Ok((gpu.zeros(rows * cols)?, gpu.zeros(cols)?, gpu.zeros(cols)?));
    }
    let grid = ColGrid::reduction(op, rows, cols)?;
    let mut dgamma = gpu.uninit(cols)?;
    let mut dbeta = gpu.uninit(cols)?;
    let mut dx = gpu.uninit(rows * cols)?;
    // Per-chunk sums of g and g * xhat, added by the last block of each column tile.
    let mut partial = gpu.alloc_raw::<f32>(2 * grid.chunks * cols)?;
    let mut b = gpu.stream().launch_builder(gpu.function("bn_bwd_reduce_f32")?);
    b.arg(dy.slice()).arg(x.slice()).arg(y.slice()).arg(mean.slice()).arg(invstd.slice());
    b.arg(dgamma.slice_mut()).arg(dbeta.slice_mut()).arg(&mut partial).arg(&prm).arg(&grid.chunk_rows);
    // SAFETY: lengths checked above; partial holds 2*chunks*cols floats for the grid `grid`.
    unsafe { b.launch(grid.cfg()) }?;
    let mut b = gpu.stream().launch_builder(gpu.function("bn_bwd_apply_f32")?);
    b.arg(dy.slice()).arg(x.slice()).arg(y.slice()).arg(mean.slice()).arg(invstd.slice()).arg(gamma.slice());
    b.arg(dgamma.slice()).arg(dbeta.slice()).arg(dx.slice_mut()).arg(&prm).arg(&grid.chunk_rows);
    // SAFETY: lengths checked above; every element of dx, dgamma and dbeta is written.
    unsafe { b.launch(grid.cfg()) }?;
    Ok((dx, dgamma, dbeta))
}

/// Eval-mode forward with running statistics, optional ReLU.
#[allow(clippy::too_many_arguments)]
pub fn bn_eval_fwd_f32(
    x: &GpuBuf,
    running_mean: &GpuBuf,
    running_var: &GpuBuf,
    gamma: &GpuBuf,
    beta: &GpuBuf,
    rows: usize,
    cols: usize,
    eps: f32,
    relu: bool,
) -> Result<GpuBuf, KernelError> {
    let op = "bn_eval_fwd_f32";
    let prm = params(op, x, rows, cols, eps, relu)?;
    check_vecs(
        op,
        x,
        cols,
        &[("running_mean", running_mean), ("running_var", running_var), ("gamma", gamma), ("beta", beta)],
    )?;
    let gpu = x.gpu();
    let mut y = gpu.uninit(rows * cols)?;
    if !y.is_empty() {
        let grid = ColGrid::new(rows, cols);
        let mut b = gpu.stream().launch_builder(gpu.function("bn_eval_fwd_f32")?);
        b.arg(x.slice()).arg(running_mean.slice()).arg(running_var.slice()).arg(gamma.slice()).arg(beta.slice());
        b.arg(y.slice_mut()).arg(&prm).arg(&grid.chunk_rows);
        // SAFETY: lengths checked above.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok(y)
}

/// Running-statistics update in place: `running = (1 - momentum) running + momentum batch`.
pub fn bn_ema_f32(running: &mut GpuBuf, batch: &GpuBuf, momentum: f32) -> Result<(), KernelError> {
    let gpu = running.gpu().clone();
    same_gpu("bn_ema_f32", &gpu, &[batch.gpu()])?;
    check_len("bn_ema_f32", "batch", batch.len(), running.len())?;
    let n = u32_of(running.len(), "bn_ema_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("bn_ema_f32")?);
        b.arg(running.slice_mut()).arg(batch.slice()).arg(&momentum).arg(&n);
        // SAFETY: both hold n floats.
        unsafe { b.launch(cfg_1d(n as usize)) }?;
    }
    Ok(())
}
