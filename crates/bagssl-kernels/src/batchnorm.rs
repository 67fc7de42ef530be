//! Launchers of `kernels/batchnorm.cu`: BatchNorm1d over the rows, PyTorch semantics.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchArgs, PushKernelArg, SyncOnDrop};

use crate::device::same_gpu;
use crate::ffi::{BagsslBnParams, BagsslEmaMulti, BAGSSL_EMA_MAX_TENSORS};
use crate::launch::{cfg_1d, check_len, u32_of, ColGrid};
use crate::{Gpu, GpuBuf, KernelError};

/// `BAGSSL_BN_BF16=0` stops the training kernels writing the bf16 copies of y and dx (the GEMMs
/// then make them with the cast kernel, as before). Read once.
const BN_BF16_ENV: &str = "BAGSSL_BN_BF16";

fn bn_bf16_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(BN_BF16_ENV).map_or(true, |v| v.trim() != "0"))
}

/// The bf16 copy (`rows * cols` u16, at least 1) for `bn_apply_fwd_f32` / `bn_bwd_apply_f32` to
/// write beside their f32 output, when the GEMMs that read that output run in bf16.
fn bf16_copy(gpu: &Arc<Gpu>, n: usize) -> Result<Option<CudaSlice<u16>>, KernelError> {
    if bn_bf16_enabled() {
        gpu.bf16_operand(n)
    } else {
        Ok(None)
    }
}

/// Pushes the optional `uint16_t*` argument: the copy's device pointer, or a null pointer (a
/// `CUdeviceptr`, i.e. a u64, of 0: the kernel then writes no copy).
fn arg_opt_u16<'a>(b: &mut LaunchArgs<'a>, copy: &'a mut Option<CudaSlice<u16>>, null: &'a u64) {
    match copy {
        Some(c) => b.arg(c),
        None => b.arg(null),
    };
}

/// Pushes an optional `const float*` argument: the buffer, or a null pointer (the kernel then
/// reads none, e.g. no bias).
fn arg_opt_f32<'a>(b: &mut LaunchArgs<'a>, buf: Option<&'a GpuBuf>, null: &'a u64) {
    match buf {
        Some(v) => b.arg(v.slice()),
        None => b.arg(null),
    };
}

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

/// Training-mode forward of `x + bias` (the Linear layer's bias, folded in: `bias_add_fwd_f32` then
/// this without a bias, bit for bit, without the pass over x): batch statistics (per-chunk two-pass,
/// combined in f64), normalise, affine, optional ReLU.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_fwd_f32(
    x: &GpuBuf,
    bias: Option<&GpuBuf>,
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
    if let Some(bias) = bias {
        check_vecs(op, x, cols, &[("bias", bias)])?;
    }
    if rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: batch statistics of 0 rows")));
    }
    let grid = ColGrid::reduction(op, rows, cols)?;
    let gpu = x.gpu();
    let (mean, invstd, var_unbiased) = batch_stats(x, bias, &prm, &grid)?;
    let mut y = gpu.uninit(rows * cols)?;
    if cols > 0 {
        let null = 0u64;
        let mut y16 = bf16_copy(gpu, rows * cols)?;
        let mut b = gpu.stream().launch_builder(gpu.function("bn_apply_fwd_f32")?);
        b.arg(x.slice());
        arg_opt_f32(&mut b, bias, &null);
        b.arg(mean.slice()).arg(invstd.slice()).arg(gamma.slice()).arg(beta.slice()).arg(y.slice_mut());
        arg_opt_u16(&mut b, &mut y16, &null);
        b.arg(&prm).arg(&grid.chunk_rows);
        // SAFETY: as above; y holds rows*cols floats, y16 (when there is one) rows*cols u16 and
        // is 8-byte aligned (a whole allocation), null otherwise.
        unsafe { b.launch(grid.cfg()) }?;
        drop(b);
        if let Some(c) = y16 {
            y.set_bf16(c); // after y's last slice_mut: bf16_bits of every y, as GpuBuf::bf16 makes
        }
    }
    Ok(BnTrainOut { y, mean, invstd, var_unbiased })
}

/// `bn_stats_fwd_f32`: (mean, invstd, unbiased variance) of `x + bias` per column.
fn batch_stats(
    x: &GpuBuf,
    bias: Option<&GpuBuf>,
    prm: &BagsslBnParams,
    grid: &ColGrid,
) -> Result<(GpuBuf, GpuBuf, GpuBuf), KernelError> {
    let gpu = x.gpu();
    let cols = prm.cols as usize;
    let (mut mean, mut invstd, mut var_unbiased) = (gpu.uninit(cols)?, gpu.uninit(cols)?, gpu.uninit(cols)?);
    if cols > 0 {
        // Per-chunk (sum, shifted mean, M2) of every column, combined by the last block of each tile.
        let mut partial = gpu.alloc_raw::<f32>(3 * grid.chunks * cols)?;
        let null = 0u64;
        let mut b = gpu.stream().launch_builder(gpu.function("bn_stats_fwd_f32")?);
        b.arg(x.slice());
        arg_opt_f32(&mut b, bias, &null);
        b.arg(mean.slice_mut()).arg(invstd.slice_mut()).arg(var_unbiased.slice_mut());
        b.arg(&mut partial).arg(prm).arg(&grid.chunk_rows);
        // SAFETY: x holds rows*cols floats, the bias (or null) and the statistics cols each,
        // partial 3*chunks*cols; the grid is `grid`, whose chunk_rows the kernel gets.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok((mean, invstd, var_unbiased))
}

/// The first of [`bn_train_fwd_f32`]'s two kernels alone, `bn_stats_fwd_f32`: (mean, invstd,
/// unbiased variance) per column of `x + bias`. For `bench_kernels`, which times the two apart.
pub fn bn_batch_stats_f32(
    x: &GpuBuf,
    bias: Option<&GpuBuf>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(GpuBuf, GpuBuf, GpuBuf), KernelError> {
    let op = "bn_batch_stats_f32";
    let prm = params(op, x, rows, cols, eps, false)?;
    if let Some(bias) = bias {
        check_vecs(op, x, cols, &[("bias", bias)])?;
    }
    if rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: batch statistics of 0 rows")));
    }
    batch_stats(x, bias, &prm, &ColGrid::reduction(op, rows, cols)?)
}

/// Gradients of [`bn_train_bwd_f32`].
pub struct BnTrainGrads {
    /// (rows, cols): dL/dx, which is also dL/d(x + bias).
    pub dx: GpuBuf,
    pub dgamma: GpuBuf,
    pub dbeta: GpuBuf,
    /// Column sums of dx (the folded bias's gradient), when the forward had a bias.
    pub dbias: Option<GpuBuf>,
}

/// Backward of [`bn_train_fwd_f32`] (same `x`, `bias`, `gamma`, `beta`). `y` is the forward
/// output; with ReLU the kernels recompute its mask from x (the pre-ReLU value, same bits, without
/// reading y) unless [`Gpu::bn_mask_from_output`]. With a bias, `dbias` = the column sums of dx,
/// made by the kernel that writes dx (no `sum_rows_f32` pass re-reading it).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_bwd_f32(
    dy: &GpuBuf,
    x: &GpuBuf,
    bias: Option<&GpuBuf>,
    y: &GpuBuf,
    gamma: &GpuBuf,
    beta: &GpuBuf,
    mean: &GpuBuf,
    invstd: &GpuBuf,
    rows: usize,
    cols: usize,
    relu: bool,
) -> Result<BnTrainGrads, KernelError> {
    let op = "bn_train_bwd_f32";
    let (bv, prm) = BwdInputs::checked(op, [dy, x, y, gamma, beta, mean, invstd], bias, rows, cols, relu)?;
    let gpu = x.gpu();
    if cols == 0 || rows == 0 {
        // Sums over no rows, or no columns: zeros, and an empty dx.
        let dbias = bias.map(|_| gpu.zeros(cols)).transpose()?;
        return Ok(BnTrainGrads {
            dx: gpu.zeros(rows * cols)?,
            dgamma: gpu.zeros(cols)?,
            dbeta: gpu.zeros(cols)?,
            dbias,
        });
    }
    let grid = ColGrid::reduction(op, rows, cols)?;
    let mut dx = gpu.uninit(rows * cols)?;
    // Per-chunk sums of g and g * xhat, added by the last block of each column tile.
    let mut partial = gpu.alloc_raw::<f32>(2 * grid.chunks * cols)?;
    let (dgamma, dbeta) = bwd_sums(&bv, &prm, &grid, &mut partial)?;
    let null = 0u64;
    let mut dx16 = bf16_copy(gpu, rows * cols)?;
    let mut dbias = bias.map(|_| gpu.uninit(cols)).transpose()?;
    let mut b = gpu.stream().launch_builder(gpu.function("bn_bwd_apply_f32")?);
    b.arg(dy.slice()).arg(x.slice());
    arg_opt_f32(&mut b, bias, &null);
    arg_opt_f32(&mut b, bv.y, &null);
    b.arg(beta.slice()).arg(mean.slice()).arg(invstd.slice()).arg(gamma.slice());
    b.arg(dgamma.slice()).arg(dbeta.slice()).arg(dx.slice_mut());
    arg_opt_u16(&mut b, &mut dx16, &null);
    match &mut dbias {
        // The reduce kernel is done with `partial` (same stream); dbias needs chunks*cols of it.
        Some(d) => b.arg(d.slice_mut()).arg(&mut partial),
        None => b.arg(&null).arg(&null),
    };
    b.arg(&prm).arg(&grid.chunk_rows);
    // SAFETY: lengths checked above; every element of dx, dgamma and dbeta is written, and of
    // dx16 (rows*cols u16, a whole allocation) when there is one, null otherwise; dbias (cols
    // floats) with partial (2*chunks*cols floats) when there is a bias, both null otherwise.
    unsafe { b.launch(grid.cfg()) }?;
    drop(b);
    if let Some(c) = dx16 {
        dx.set_bf16(c); // after dx's last slice_mut
    }
    Ok(BnTrainGrads { dx, dgamma, dbeta, dbias })
}

/// The inputs of the backward kernels; `y` is None when they recompute the ReLU mask from x.
struct BwdInputs<'a> {
    dy: &'a GpuBuf,
    x: &'a GpuBuf,
    bias: Option<&'a GpuBuf>,
    y: Option<&'a GpuBuf>,
    gamma: &'a GpuBuf,
    beta: &'a GpuBuf,
    mean: &'a GpuBuf,
    invstd: &'a GpuBuf,
}

impl<'a> BwdInputs<'a> {
    /// Checks the lengths and devices of `[dy, x, y, gamma, beta, mean, invstd]` and `bias`, picks
    /// the mask's source (y, or with ReLU and unless `Gpu::bn_mask_from_output`, x, gamma and beta)
    /// and returns the kernels' parameters.
    fn checked(
        op: &str,
        [dy, x, y, gamma, beta, mean, invstd]: [&'a GpuBuf; 7],
        bias: Option<&'a GpuBuf>,
        rows: usize,
        cols: usize,
        relu: bool,
    ) -> Result<(Self, BagsslBnParams), KernelError> {
        let prm = params(op, x, rows, cols, 0.0, relu)?;
        check_len(op, "dy", dy.len(), rows * cols)?;
        check_len(op, "y", y.len(), rows * cols)?;
        same_gpu(op, x.gpu(), &[dy.gpu(), y.gpu()])?;
        check_vecs(op, x, cols, &[("gamma", gamma), ("beta", beta), ("mean", mean), ("invstd", invstd)])?;
        if let Some(bias) = bias {
            check_vecs(op, x, cols, &[("bias", bias)])?;
        }
        let y = if relu && !x.gpu().bn_mask_from_output() { None } else { Some(y) };
        Ok((BwdInputs { dy, x, bias, y, gamma, beta, mean, invstd }, prm))
    }
}

/// `bn_bwd_reduce_f32`: (dgamma, dbeta), through `partial` (2 * chunks * cols floats).
fn bwd_sums(
    v: &BwdInputs<'_>,
    prm: &BagsslBnParams,
    grid: &ColGrid,
    partial: &mut CudaSlice<f32>,
) -> Result<(GpuBuf, GpuBuf), KernelError> {
    let gpu = v.x.gpu();
    let cols = prm.cols as usize;
    let (mut dgamma, mut dbeta) = (gpu.uninit(cols)?, gpu.uninit(cols)?);
    let null = 0u64;
    let mut b = gpu.stream().launch_builder(gpu.function("bn_bwd_reduce_f32")?);
    b.arg(v.dy.slice()).arg(v.x.slice());
    arg_opt_f32(&mut b, v.bias, &null);
    arg_opt_f32(&mut b, v.y, &null);
    b.arg(v.gamma.slice()).arg(v.beta.slice()).arg(v.mean.slice()).arg(v.invstd.slice());
    b.arg(dgamma.slice_mut()).arg(dbeta.slice_mut()).arg(partial).arg(prm).arg(&grid.chunk_rows);
    // SAFETY: the caller checked the lengths (rows*cols for the matrices, cols for the vectors);
    // partial holds 2*chunks*cols floats for the grid `grid`.
    unsafe { b.launch(grid.cfg()) }?;
    Ok((dgamma, dbeta))
}

/// The first of [`bn_train_bwd_f32`]'s two kernels alone, `bn_bwd_reduce_f32`: (dgamma, dbeta),
/// with the ReLU mask as there. For `bench_kernels`, which times the two apart.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd_sums_f32(
    dy: &GpuBuf,
    x: &GpuBuf,
    bias: Option<&GpuBuf>,
    y: &GpuBuf,
    gamma: &GpuBuf,
    beta: &GpuBuf,
    mean: &GpuBuf,
    invstd: &GpuBuf,
    rows: usize,
    cols: usize,
    relu: bool,
) -> Result<(GpuBuf, GpuBuf), KernelError> {
    let op = "bn_bwd_sums_f32";
    let (bv, prm) = BwdInputs::checked(op, [dy, x, y, gamma, beta, mean, invstd], bias, rows, cols, relu)?;
    if cols == 0 || rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: sums over an empty {rows} x {cols} matrix")));
    }
    let grid = ColGrid::reduction(op, rows, cols)?;
    let mut partial = x.gpu().alloc_raw::<f32>(2 * grid.chunks * cols)?;
    bwd_sums(&bv, &prm, &grid, &mut partial)
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

/// [`bn_ema_f32`] on every `(running, batch)` pair, [`BAGSSL_EMA_MAX_TENSORS`] per launch: the
/// same values (the same expression per element).
pub fn bn_ema_multi_f32(pairs: &mut [(&mut GpuBuf, &GpuBuf)], momentum: f32) -> Result<(), KernelError> {
    let op = "bn_ema_multi_f32";
    let Some((first, _)) = pairs.first() else { return Ok(()) };
    let gpu = first.gpu().clone();
    for (r, b) in pairs.iter() {
        same_gpu(op, &gpu, &[r.gpu(), b.gpu()])?;
        check_len(op, "batch", b.len(), r.len())?;
        u32_of(r.len(), "bn_ema_multi_f32 n")?;
    }
    let stream = gpu.stream().clone();
    let mut live: Vec<&mut (&mut GpuBuf, &GpuBuf)> = pairs.iter_mut().filter(|(r, _)| !r.is_empty()).collect();
    for group in live.chunks_mut(BAGSSL_EMA_MAX_TENSORS as usize) {
        let mut prm = BagsslEmaMulti { n_tensors: group.len() as u32, momentum, ..Default::default() };
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(2 * group.len());
        let mut longest = 0;
        for (i, (r, b)) in group.iter_mut().map(|p| &mut **p).enumerate() {
            prm.n[i] = r.len() as u32;
            longest = longest.max(r.len());
            let (rp, gr) = r.slice_mut().device_ptr_mut(&stream);
            let (bp, gb) = b.slice().device_ptr(&stream);
            (prm.running[i], prm.batch[i]) = (rp, bp);
            guards.extend([gr, gb]);
        }
        let mut cfg = cfg_1d(longest);
        cfg.grid_dim.1 = prm.n_tensors;
        let mut b = stream.launch_builder(gpu.function("bn_ema_multi_f32")?);
        b.arg(&prm);
        // SAFETY: every pointer addresses a live buffer of n[i] floats on this GPU, the running
        // ones distinct; grid.y covers the tensors, the x grid-stride loop their elements; the
        // guards keep the borrows until the launch is queued.
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::GemmPrecision;
    use crate::gpu_or_skip;

    fn agrees(got: u16, x: f32) -> bool {
        if x.is_nan() {
            half::bf16::from_bits(got).is_nan()
        } else {
            got == half::bf16::from_f32(x).to_bits()
        }
    }

    /// Elements of `b`'s bf16 copy (installed by the launcher, or made by the cast kernel) that
    /// are not the round-to-nearest-even of its f32 values.
    fn bad_bf16(b: &GpuBuf) -> usize {
        let f = b.to_host().unwrap();
        let h = b.gpu().stream().clone_dtoh(b.bf16().unwrap()).unwrap();
        assert_eq!(h.len(), f.len());
        f.iter().zip(&h).filter(|(x, g)| !agrees(**g, **x)).count()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// v4: BatchNorm of x with the Linear bias folded in has the bits of `bias_add_fwd_f32` then
    /// BatchNorm without a bias (statistics, y, dgamma, dbeta, dx), and its dbias is the column sums
    /// of dx within f32 rounding, on the float4 and the scalar path and with several row chunks.
    #[test]
    fn bn_folded_bias_matches_bias_add() {
        let Some(gpu) = gpu_or_skip("bn_folded_bias_matches_bias_add") else {
            return;
        };
        for (rows, cols) in [(37, 45), (300, 516), (4099, 8), (2, 3), (4096, 2048)] {
            let n = rows * cols;
            let wave = |i: usize, f: f32| ((i as f32) * f).sin() * (1.0 + (i % cols) as f32 * 0.1);
            let x0s: Vec<f32> = (0..n).map(|i| wave(i, 0.37) + 0.3).collect();
            let dys: Vec<f32> = (0..n).map(|i| wave(i, 0.91)).collect();
            let bias_s: Vec<f32> = (0..cols).map(|c| (c % 9) as f32 * 0.3 - 1.1).collect();
            let gs: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32 * 0.15).collect();
            let bs: Vec<f32> = (0..cols).map(|c| (c % 5) as f32 * 0.2 - 0.4).collect();
            let (x0, dy, bias) = (gpu.upload(&x0s).unwrap(), gpu.upload(&dys).unwrap(), gpu.upload(&bias_s).unwrap());
            let (gamma, beta) = (gpu.upload(&gs).unwrap(), gpu.upload(&bs).unwrap());
            let x = crate::bias_add_fwd_f32(&x0, &bias, rows, cols).unwrap();
            for relu in [false, true] {
                let tag = format!("{rows}x{cols} relu={relu}");
                let want = bn_train_fwd_f32(&x, None, &gamma, &beta, rows, cols, 1e-5, relu).unwrap();
                let got = bn_train_fwd_f32(&x0, Some(&bias), &gamma, &beta, rows, cols, 1e-5, relu).unwrap();
                for (name, g, w) in [
                    ("mean", &got.mean, &want.mean),
                    ("invstd", &got.invstd, &want.invstd),
                    ("var_unbiased", &got.var_unbiased, &want.var_unbiased),
                    ("y", &got.y, &want.y),
                ] {
                    assert_eq!(bits(&g.to_host().unwrap()), bits(&w.to_host().unwrap()), "{tag}: {name}");
                }
                let w =
                    bn_train_bwd_f32(&dy, &x, None, &want.y, &gamma, &beta, &want.mean, &want.invstd, rows, cols, relu)
                        .unwrap();
                let (y, m, is) = (&got.y, &got.mean, &got.invstd);
                let g = bn_train_bwd_f32(&dy, &x0, Some(&bias), y, &gamma, &beta, m, is, rows, cols, relu).unwrap();
                assert!(w.dbias.is_none());
                for (name, a, b) in
                    [("dx", &g.dx, &w.dx), ("dgamma", &g.dgamma, &w.dgamma), ("dbeta", &g.dbeta, &w.dbeta)]
                {
                    assert_eq!(bits(&a.to_host().unwrap()), bits(&b.to_host().unwrap()), "{tag}: {name}");
                }
                let dx = g.dx.to_host().unwrap();
                let dbias = g.dbias.expect("a bias gives dbias").to_host().unwrap();
                for c in 0..cols {
                    let (sum, mag) = (0..rows).fold((0f64, 0f64), |(s, m), r| {
                        let v = dx[r * cols + c] as f64;
                        (s + v, m + v.abs())
                    });
                    let err = (dbias[c] as f64 - sum).abs();
                    assert!(err <= 1e-6 * mag + 1e-30, "{tag}: dbias[{c}] = {} vs {sum} (sum |dx| {mag})", dbias[c]);
                }
            }
        }
        println!("OK     bn with the bias folded in = bias_add + bn, bit for bit; dbias = column sums of dx");
    }

    /// One multi-tensor launch gives each vector bn_ema_f32's bits (more vectors than one launch takes).
    #[test]
    fn bn_ema_multi_matches_bn_ema() {
        let Some(gpu) = gpu_or_skip("bn_ema_multi_matches_bn_ema") else {
            return;
        };
        let sizes: Vec<usize> = (0..19).map(|i| [1, 2048, 7, 8192, 33][i % 5]).collect();
        let vals = |n: usize, f: f32| (0..n).map(|i| ((i as f32 + 1.0) * f).sin()).collect::<Vec<f32>>();
        let mut one: Vec<GpuBuf> = sizes.iter().map(|&n| gpu.upload(&vals(n, 0.3)).unwrap()).collect();
        let mut many: Vec<GpuBuf> = sizes.iter().map(|&n| gpu.upload(&vals(n, 0.3)).unwrap()).collect();
        let batch: Vec<GpuBuf> = sizes.iter().map(|&n| gpu.upload(&vals(n, 0.7)).unwrap()).collect();
        for (r, b) in one.iter_mut().zip(&batch) {
            bn_ema_f32(r, b, 0.1).unwrap();
        }
        let mut pairs: Vec<(&mut GpuBuf, &GpuBuf)> = many.iter_mut().zip(&batch).collect();
        bn_ema_multi_f32(&mut pairs, 0.1).unwrap();
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert_eq!(bits(&a.to_host().unwrap()), bits(&b.to_host().unwrap()), "vector {i} (n = {})", sizes[i]);
        }
        println!("OK     bn_ema_multi_f32 = bn_ema_f32 per vector ({} vectors)", sizes.len());
    }

    /// v5: the backward's ReLU mask recomputed from x, gamma and beta gives the bits of the mask read
    /// from y (dx, dgamma, dbeta, dbias), with and without a bias, on the float4 and the scalar
    /// path: the recomputed pre-ReLU value is bn_apply's, bit for bit, so `> 0` agrees everywhere.
    #[test]
    fn bn_backward_mask_from_x_matches_mask_from_y() {
        if gpu_or_skip("bn_backward_mask_from_x_matches_mask_from_y").is_none() {
            return;
        }
        // A private instance: its mask source is switched below.
        let gpu = Gpu::new(0).unwrap();
        let mut masked = 0;
        for (rows, cols) in [(37, 45), (300, 516), (4099, 8), (4096, 2048)] {
            let n = rows * cols;
            let wave = |i: usize, f: f32| ((i as f32) * f).sin() * (1.0 + (i % cols) as f32 * 0.1);
            let xs: Vec<f32> = (0..n).map(|i| wave(i, 0.37) + 0.3).collect();
            let dys: Vec<f32> = (0..n).map(|i| wave(i, 0.91)).collect();
            let bias_s: Vec<f32> = (0..cols).map(|c| (c % 9) as f32 * 0.3 - 1.1).collect();
            let gs: Vec<f32> = (0..cols).map(|c| (c % 7) as f32 * 0.3 - 0.8).collect(); // some gamma < 0
            let bs: Vec<f32> = (0..cols).map(|c| (c % 5) as f32 * 0.2 - 0.4).collect();
            let up = |v: &[f32]| gpu.upload(v).unwrap();
            let (x, dy, bias, gamma, beta) = (up(&xs), up(&dys), up(&bias_s), up(&gs), up(&bs));
            for b in [None, Some(&bias)] {
                let f = bn_train_fwd_f32(&x, b, &gamma, &beta, rows, cols, 1e-5, true).unwrap();
                masked += f.y.to_host().unwrap().iter().filter(|v| **v <= 0.0 || v.is_nan()).count();
                let mut outs = Vec::new();
                for from_y in [true, false] {
                    gpu.set_bn_mask_from_output(from_y);
                    let g = bn_train_bwd_f32(&dy, &x, b, &f.y, &gamma, &beta, &f.mean, &f.invstd, rows, cols, true)
                        .unwrap();
                    let mut all = bits(&g.dx.to_host().unwrap());
                    all.extend(bits(&g.dgamma.to_host().unwrap()));
                    all.extend(bits(&g.dbeta.to_host().unwrap()));
                    if let Some(d) = g.dbias {
                        all.extend(bits(&d.to_host().unwrap()));
                    }
                    outs.push(all);
                }
                assert!(outs[0] == outs[1], "{rows}x{cols} bias={}: the two masks differ", b.is_some());
            }
        }
        assert!(masked > 0, "the inputs must have ReLU-masked elements");
        println!("OK     bn backward: ReLU mask from x = mask from y, bit for bit ({masked} masked elements)");
    }

    /// With the GEMMs in bf16 the training forward and backward write the bf16 copies of y and dx
    /// (bf16_bits, exactly what `GpuBuf::bf16`'s cast makes, NaN included), and y and dx have
    /// the same bits as without the copies (GEMMs in f32), on the float4 and the scalar path.
    #[test]
    fn bn_train_bf16_copies_match_f32_outputs() {
        if gpu_or_skip("bn_train_bf16_copies_match_f32_outputs").is_none() {
            return;
        }
        // A private instance: its GEMM precision is switched below.
        let gpu = Gpu::new(0).unwrap();
        let mut checked = 0;
        for (rows, cols, nan) in [(37, 45, true), (300, 516, false), (4099, 8, true), (1, 3, false), (64, 2048, false)]
        {
            let n = rows * cols;
            let wave = |i: usize, f: f32| ((i as f32) * f).sin() * (1.0 + (i % cols) as f32 * 0.1);
            let mut xs: Vec<f32> = (0..n).map(|i| wave(i, 0.37) + 0.3).collect();
            if nan && rows > 5 {
                xs[5 * cols + 2] = f32::NAN;
            }
            let dys: Vec<f32> = (0..n).map(|i| wave(i, 0.91)).collect();
            let gs: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32 * 0.15).collect();
            let bs: Vec<f32> = (0..cols).map(|c| (c % 5) as f32 * 0.2 - 0.4).collect();
            let (x, dy) = (gpu.upload(&xs).unwrap(), gpu.upload(&dys).unwrap());
            let (gamma, beta) = (gpu.upload(&gs).unwrap(), gpu.upload(&bs).unwrap());
            for relu in [false, true] {
                let mut outs = Vec::new();
                for p in [GemmPrecision::Bf16, GemmPrecision::F32] {
                    gpu.set_gemm_precision(p);
                    let f = bn_train_fwd_f32(&x, None, &gamma, &beta, rows, cols, 1e-5, relu).unwrap();
                    let dx = bn_train_bwd_f32(&dy, &x, None, &f.y, &gamma, &beta, &f.mean, &f.invstd, rows, cols, relu)
                        .unwrap()
                        .dx;
                    let tag = format!("{rows}x{cols} relu={relu} {}", p.name());
                    assert_eq!(bad_bf16(&f.y), 0, "{tag}: y's bf16 copy");
                    assert_eq!(bad_bf16(&dx), 0, "{tag}: dx's bf16 copy");
                    outs.push((bits(&f.y.to_host().unwrap()), bits(&dx.to_host().unwrap())));
                    checked += 1;
                }
                assert!(outs[0] == outs[1], "{rows}x{cols} relu={relu}: f32 y or dx differ with the bf16 copies");
            }
        }
        println!("OK     bn bf16 copies of y and dx ({checked} runs, copies in the kernels: {})", bn_bf16_enabled());
    }
}
