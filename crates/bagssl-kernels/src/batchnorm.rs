//! Launchers of `kernels/batchnorm.cu`: BatchNorm1d over the rows, PyTorch semantics.
//!
//! Each launcher takes one argument struct with named fields ([`BnTrainArgs`],
//! [`BnBackwardArgs`], [`BnEval`] over GPU buffers, and the row count) and fills the kernels' own
//! (`BagsslBn*Args` of `kernels/include/bagssl_kernels.h`) by name, so no two buffers can trade
//! places on the way. The column count is gamma's length.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::args::{BnBackwardArgs, BnEval, BnTrainArgs};
use crate::device::same_gpu;
use crate::ffi::{
    BagsslBnBwdArgs, BagsslBnEvalArgs, BagsslBnFwdArgs, BagsslBnParams, BagsslEmaMulti, BAGSSL_EMA_MAX_TENSORS,
};
use crate::launch::{cfg_1d, check_len, launch_struct, u32_of, ColGrid, DevPtrs, COL_TARGET_BLOCKS};
use crate::{GpuBuf, KernelError};

/// Where the backward's ReLU mask comes from. The same mask either way (the recomputed pre-ReLU
/// value has the forward's bits); the library reads x, which it reads anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskSource {
    /// Recomputed from x (+ bias), mean, invstd, gamma and beta: no read of y.
    #[default]
    Input,
    /// `y > 0`, from the forward output y (one more matrix read per backward kernel).
    Output,
}

/// How the training launchers run. [`BnVariant::LIBRARY`] is what [`bn_train_fwd_f32`] and
/// [`bn_train_bwd_f32`] use; the other settings exist for `bench_kernels`' A/B lines and the tests
/// (`*_variant` launchers), and change the time or the bf16 copies, never the f32 results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnVariant {
    /// The backward's ReLU mask.
    pub mask: MaskSource,
    /// With bf16 GEMMs, the apply kernels write the bf16 copies of y and dx beside them (false:
    /// none, the GEMMs then make them with the cast kernel).
    pub bf16_copies: bool,
    /// Blocks the column grid aims for when the matrix is big enough (`ColGrid`).
    pub col_target_blocks: usize,
}

impl BnVariant {
    pub const LIBRARY: BnVariant =
        BnVariant { mask: MaskSource::Input, bf16_copies: true, col_target_blocks: COL_TARGET_BLOCKS };

    fn grid(&self, op: &str, rows: usize, cols: usize) -> Result<ColGrid, KernelError> {
        ColGrid::with_target(rows, cols, self.col_target_blocks).checked_reduction(op, cols)
    }

    /// Room for a bf16 copy of an n-element output, when this variant writes one and the GEMMs
    /// that read the output run in bf16.
    fn bf16_copy(&self, x: &GpuBuf, n: usize) -> Result<Option<CudaSlice<u16>>, KernelError> {
        if self.bf16_copies {
            x.gpu().bf16_operand(n)
        } else {
            Ok(None)
        }
    }
}

impl Default for BnVariant {
    fn default() -> Self {
        BnVariant::LIBRARY
    }
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

/// The kernels' shape parameters, after checking x (rows * cols, indexable in u32).
fn params(op: &str, x: &GpuBuf, rows: usize, cols: usize, eps: f32, relu: bool) -> Result<BagsslBnParams, KernelError> {
    check_len(op, "x", x.len(), rows * cols)?;
    u32_of(rows * cols, "rows * cols")?;
    Ok(BagsslBnParams { rows: rows as u32, cols: cols as u32, eps, relu: relu as u32 })
}

/// Checks that every named vector (or `None`, skipped) has `cols` elements on x's GPU.
fn check_vecs(op: &str, x: &GpuBuf, cols: usize, vecs: &[(&str, Option<&GpuBuf>)]) -> Result<(), KernelError> {
    for (name, v) in vecs {
        if let Some(v) = v {
            same_gpu(op, x.gpu(), &[v.gpu()])?;
            check_len(op, name, v.len(), cols)?;
        }
    }
    Ok(())
}

/// The forward's kernel parameters, after checking its buffers: x (rows, gamma's length), the
/// vectors (cols), at least one row.
fn fwd_checked(op: &str, a: &BnTrainArgs<'_, GpuBuf>, rows: usize) -> Result<BagsslBnParams, KernelError> {
    let cols = a.gamma.len();
    let prm = params(op, a.x, rows, cols, a.eps, a.relu)?;
    check_vecs(op, a.x, cols, &[("gamma", Some(a.gamma)), ("beta", Some(a.beta)), ("bias", a.bias)])?;
    if rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: batch statistics of 0 rows")));
    }
    Ok(prm)
}

/// Training-mode forward of `x + bias` (the Linear layer's bias, folded in: `bias_add_fwd_f32` then
/// this without a bias, bit for bit, without the pass over x): batch statistics (per-chunk two-pass,
/// combined in f64), normalise, affine, optional ReLU.
pub fn bn_train_fwd_f32(a: &BnTrainArgs<'_, GpuBuf>, rows: usize) -> Result<BnTrainOut, KernelError> {
    bn_train_fwd_f32_variant(a, rows, BnVariant::LIBRARY)
}

/// [`bn_train_fwd_f32`] as `v` says (same f32 results).
pub fn bn_train_fwd_f32_variant(
    a: &BnTrainArgs<'_, GpuBuf>,
    rows: usize,
    v: BnVariant,
) -> Result<BnTrainOut, KernelError> {
    bn_forward("bn_train_fwd_f32", a, rows, v, true)
}

/// The first of [`bn_train_fwd_f32`]'s two kernels alone, `bn_stats_fwd_f32`: (mean, invstd,
/// unbiased variance) per column of `x + bias` (gamma, beta and relu unused). For `bench_kernels`,
/// which times the two apart.
pub fn bn_batch_stats_f32(
    a: &BnTrainArgs<'_, GpuBuf>,
    rows: usize,
    v: BnVariant,
) -> Result<(GpuBuf, GpuBuf, GpuBuf), KernelError> {
    let o = bn_forward("bn_batch_stats_f32", a, rows, v, false)?;
    Ok((o.mean, o.invstd, o.var_unbiased))
}

/// `bn_stats_fwd_f32`, then (with `apply`) `bn_apply_fwd_f32`, on one argument struct.
fn bn_forward(
    op: &str,
    a: &BnTrainArgs<'_, GpuBuf>,
    rows: usize,
    v: BnVariant,
    apply: bool,
) -> Result<BnTrainOut, KernelError> {
    let prm = fwd_checked(op, a, rows)?;
    let cols = a.gamma.len();
    let grid = v.grid(op, rows, cols)?;
    let (gpu, n) = (a.x.gpu(), rows * cols);
    let (mut mean, mut invstd, mut var_unbiased) = (gpu.uninit(cols)?, gpu.uninit(cols)?, gpu.uninit(cols)?);
    let mut y = gpu.uninit(if apply { n } else { 0 })?;
    if cols == 0 {
        return Ok(BnTrainOut { y, mean, invstd, var_unbiased });
    }
    // Per-chunk (sum, shifted mean, M2) of every column, combined by the last block of each tile.
    let mut partial = gpu.alloc_raw::<f32>(3 * grid.chunks * cols)?;
    let mut y16 = if apply { v.bf16_copy(a.x, n)? } else { None };
    {
        let mut p = DevPtrs::new(gpu.stream());
        let args = BagsslBnFwdArgs {
            x: p.read(a.x.slice()),
            bias: p.read_opt(a.bias.map(GpuBuf::slice)),
            gamma: p.read(a.gamma.slice()),
            beta: p.read(a.beta.slice()),
            mean: p.write(mean.slice_mut()),
            invstd: p.write(invstd.slice_mut()),
            var_unbiased: p.write(var_unbiased.slice_mut()),
            partial: p.write(&mut partial),
            y: if apply { p.write(y.slice_mut()) } else { 0 },
            y16: p.write_opt(y16.as_mut()),
            prm,
            chunk_rows: grid.chunk_rows,
            pad: 0,
        };
        // SAFETY: x holds rows*cols floats, the bias (or 0), gamma, beta and the statistics cols
        // each, partial 3*chunks*cols for `grid`, whose chunk_rows the kernels get; y rows*cols
        // floats and y16 (when there is one) rows*cols u16, a whole allocation; stats runs first.
        unsafe { launch_struct(gpu, gpu.function("bn_stats_fwd_f32")?, &args, grid.cfg()) }?;
        if apply {
            // SAFETY: as above.
            unsafe { launch_struct(gpu, gpu.function("bn_apply_fwd_f32")?, &args, grid.cfg()) }?;
        }
    }
    if let Some(c) = y16 {
        y.set_bf16(c); // after y's last slice_mut: bf16_bits of every y, as GpuBuf::bf16 makes
    }
    Ok(BnTrainOut { y, mean, invstd, var_unbiased })
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

/// The backward's kernel parameters, after checking its buffers (as [`fwd_checked`], and dy and y
/// shaped like x, mean and invstd like gamma).
fn bwd_checked(op: &str, a: &BnBackwardArgs<'_, GpuBuf>, rows: usize) -> Result<BagsslBnParams, KernelError> {
    let f = &a.fwd;
    let (x, cols) = (f.x, f.gamma.len());
    let n = rows * cols;
    let prm = params(op, x, rows, cols, 0.0, f.relu)?;
    check_len(op, "dy", a.dy.len(), n)?;
    check_len(op, "y", a.y.len(), n)?;
    same_gpu(op, x.gpu(), &[a.dy.gpu(), a.y.gpu()])?;
    let vecs = [
        ("gamma", Some(f.gamma)),
        ("beta", Some(f.beta)),
        ("mean", Some(a.mean)),
        ("invstd", Some(a.invstd)),
        ("bias", f.bias),
    ];
    check_vecs(op, x, cols, &vecs)?;
    Ok(prm)
}

impl<'a> BnBackwardArgs<'a, GpuBuf> {
    /// The kernels' struct with the inputs, dgamma, dbeta and partial filled in (dx, dx16, dbias:
    /// 0, for the caller to set); y is 0, the mask recomputed from x, with ReLU and
    /// [`MaskSource::Input`].
    fn kernel_args<'p>(
        &self,
        p: &mut DevPtrs<'p>,
        mask: MaskSource,
        prm: BagsslBnParams,
        grid: &ColGrid,
        [dgamma, dbeta]: [&'p mut GpuBuf; 2],
        partial: &'p mut CudaSlice<f32>,
    ) -> BagsslBnBwdArgs
    where
        'a: 'p,
    {
        let f = &self.fwd;
        let y = if f.relu && mask == MaskSource::Input { 0 } else { p.read(self.y.slice()) };
        BagsslBnBwdArgs {
            dy: p.read(self.dy.slice()),
            x: p.read(f.x.slice()),
            bias: p.read_opt(f.bias.map(GpuBuf::slice)),
            y,
            gamma: p.read(f.gamma.slice()),
            beta: p.read(f.beta.slice()),
            mean: p.read(self.mean.slice()),
            invstd: p.read(self.invstd.slice()),
            dgamma: p.write(dgamma.slice_mut()),
            dbeta: p.write(dbeta.slice_mut()),
            dx: 0,
            dx16: 0,
            dbias: 0,
            partial: p.write(partial),
            prm,
            chunk_rows: grid.chunk_rows,
            pad: 0,
        }
    }
}

/// Backward of [`bn_train_fwd_f32`] (same `x`, `bias`, `gamma`, `beta`). With ReLU the kernels
/// recompute its mask from x (the pre-ReLU value, same bits, without reading y). With a bias,
/// `dbias` = the column sums of dx, made by the kernel that writes dx (no `sum_rows_f32` pass
/// re-reading it).
pub fn bn_train_bwd_f32(a: &BnBackwardArgs<'_, GpuBuf>, rows: usize) -> Result<BnTrainGrads, KernelError> {
    bn_train_bwd_f32_variant(a, rows, BnVariant::LIBRARY)
}

/// [`bn_train_bwd_f32`] as `v` says (the same results; `v.mask` = [`MaskSource::Output`] reads
/// the ReLU mask from y).
pub fn bn_train_bwd_f32_variant(
    a: &BnBackwardArgs<'_, GpuBuf>,
    rows: usize,
    v: BnVariant,
) -> Result<BnTrainGrads, KernelError> {
    let op = "bn_train_bwd_f32";
    let prm = bwd_checked(op, a, rows)?;
    let (gpu, cols) = (a.fwd.x.gpu(), a.fwd.gamma.len());
    if cols == 0 || rows == 0 {
        // Sums over no rows, or no columns: zeros, and an empty dx.
        let dbias = a.fwd.bias.map(|_| gpu.zeros(cols)).transpose()?;
        return Ok(BnTrainGrads {
            dx: gpu.zeros(rows * cols)?,
            dgamma: gpu.zeros(cols)?,
            dbeta: gpu.zeros(cols)?,
            dbias,
        });
    }
    let grid = v.grid(op, rows, cols)?;
    let (mut dgamma, mut dbeta, mut dx) = (gpu.uninit(cols)?, gpu.uninit(cols)?, gpu.uninit(rows * cols)?);
    // Per-chunk sums of g and g * xhat, added by the last block of each column tile; then, with a
    // bias, the per-chunk sums of dx (chunks*cols of it: the reduce kernel is done with it).
    let mut partial = gpu.alloc_raw::<f32>(2 * grid.chunks * cols)?;
    let mut dx16 = v.bf16_copy(a.fwd.x, rows * cols)?;
    let mut dbias = a.fwd.bias.map(|_| gpu.uninit(cols)).transpose()?;
    {
        let mut p = DevPtrs::new(gpu.stream());
        let mut args = a.kernel_args(&mut p, v.mask, prm, &grid, [&mut dgamma, &mut dbeta], &mut partial);
        args.dx = p.write(dx.slice_mut());
        args.dx16 = p.write_opt(dx16.as_mut());
        args.dbias = p.write_opt(dbias.as_mut().map(GpuBuf::slice_mut));
        // SAFETY: lengths checked above (rows*cols for the matrices, cols for the vectors);
        // partial holds 2*chunks*cols floats for `grid`; dx16 (rows*cols u16, a whole allocation)
        // and dbias (cols) when given, 0 otherwise; the reduce kernel runs first.
        unsafe { launch_struct(gpu, gpu.function("bn_bwd_reduce_f32")?, &args, grid.cfg()) }?;
        // SAFETY: as above; every element of dx (and dx16, dbias when given) is written.
        unsafe { launch_struct(gpu, gpu.function("bn_bwd_apply_f32")?, &args, grid.cfg()) }?;
    }
    if let Some(c) = dx16 {
        dx.set_bf16(c); // after dx's last slice_mut
    }
    Ok(BnTrainGrads { dx, dgamma, dbeta, dbias })
}

/// The first of [`bn_train_bwd_f32`]'s two kernels alone, `bn_bwd_reduce_f32`: (dgamma, dbeta),
/// with the ReLU mask as `v` says. For `bench_kernels`, which times the two apart.
pub fn bn_bwd_sums_f32(
    a: &BnBackwardArgs<'_, GpuBuf>,
    rows: usize,
    v: BnVariant,
) -> Result<(GpuBuf, GpuBuf), KernelError> {
    let op = "bn_bwd_sums_f32";
    let prm = bwd_checked(op, a, rows)?;
    let (gpu, cols) = (a.fwd.x.gpu(), a.fwd.gamma.len());
    if cols == 0 || rows == 0 {
        return Err(KernelError::Invalid(format!("{op}: sums over an empty {rows} x {cols} matrix")));
    }
    let grid = v.grid(op, rows, cols)?;
    let (mut dgamma, mut dbeta) = (gpu.uninit(cols)?, gpu.uninit(cols)?);
    let mut partial = gpu.alloc_raw::<f32>(2 * grid.chunks * cols)?;
    {
        let mut p = DevPtrs::new(gpu.stream());
        let args = a.kernel_args(&mut p, v.mask, prm, &grid, [&mut dgamma, &mut dbeta], &mut partial);
        // SAFETY: as in bn_train_bwd_f32_variant (the reduce kernel reads no dx, dx16 or dbias).
        unsafe { launch_struct(gpu, gpu.function("bn_bwd_reduce_f32")?, &args, grid.cfg()) }?;
    }
    Ok((dgamma, dbeta))
}

/// Eval-mode forward with running statistics, optional ReLU.
/// `x` is (rows, cols), every vector of `a` (cols).
pub fn bn_eval_fwd_f32(x: &GpuBuf, a: &BnEval<'_, GpuBuf>, rows: usize) -> Result<GpuBuf, KernelError> {
    let op = "bn_eval_fwd_f32";
    let cols = a.gamma.len();
    let prm = params(op, x, rows, cols, a.eps, a.relu)?;
    let vecs = [
        ("running_mean", Some(a.running_mean)),
        ("running_var", Some(a.running_var)),
        ("gamma", Some(a.gamma)),
        ("beta", Some(a.beta)),
    ];
    check_vecs(op, x, cols, &vecs)?;
    let gpu = x.gpu();
    let mut y = gpu.uninit(rows * cols)?;
    if !y.is_empty() {
        let grid = ColGrid::new(rows, cols);
        let mut p = DevPtrs::new(gpu.stream());
        let args = BagsslBnEvalArgs {
            x: p.read(x.slice()),
            running_mean: p.read(a.running_mean.slice()),
            running_var: p.read(a.running_var.slice()),
            gamma: p.read(a.gamma.slice()),
            beta: p.read(a.beta.slice()),
            y: p.write(y.slice_mut()),
            prm,
            chunk_rows: grid.chunk_rows,
            pad: 0,
        };
        // SAFETY: lengths checked above; y holds rows*cols floats.
        unsafe { launch_struct(gpu, gpu.function("bn_eval_fwd_f32")?, &args, grid.cfg()) }?;
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
    let mut live: Vec<&mut (&mut GpuBuf, &GpuBuf)> = pairs.iter_mut().filter(|(r, _)| !r.is_empty()).collect();
    for group in live.chunks_mut(BAGSSL_EMA_MAX_TENSORS as usize) {
        let mut prm = BagsslEmaMulti { n_tensors: group.len() as u32, momentum, ..Default::default() };
        let mut p = DevPtrs::new(gpu.stream());
        let mut longest = 0;
        for (i, (r, b)) in group.iter_mut().map(|p| &mut **p).enumerate() {
            prm.n[i] = r.len() as u32;
            longest = longest.max(r.len());
            (prm.running[i], prm.batch[i]) = (p.write(r.slice_mut()), p.read(b.slice()));
        }
        let cfg = LaunchConfig { grid_dim: (cfg_1d(longest).grid_dim.0, prm.n_tensors, 1), ..cfg_1d(longest) };
        // SAFETY: every pointer addresses a live buffer of n[i] floats on this GPU, the running
        // ones distinct; grid.y covers the tensors, the x grid-stride loop their elements.
        unsafe { launch_struct(&gpu, gpu.function("bn_ema_multi_f32")?, &prm, cfg) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::GemmPrecision;
    use crate::{gpu_or_skip, Gpu};

    fn fwd<'a>(
        x: &'a GpuBuf,
        bias: Option<&'a GpuBuf>,
        gamma: &'a GpuBuf,
        beta: &'a GpuBuf,
        relu: bool,
    ) -> BnTrainArgs<'a, GpuBuf> {
        BnTrainArgs { x, bias, gamma, beta, eps: 1e-5, relu }
    }

    /// The backward's arguments for the forward `a` and its output `o`.
    fn bwd<'a>(a: &BnTrainArgs<'a, GpuBuf>, dy: &'a GpuBuf, o: &'a BnTrainOut) -> BnBackwardArgs<'a, GpuBuf> {
        BnBackwardArgs { fwd: *a, dy, y: &o.y, mean: &o.mean, invstd: &o.invstd }
    }

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
                let fa = fwd(&x, None, &gamma, &beta, relu);
                let fb = fwd(&x0, Some(&bias), &gamma, &beta, relu);
                let want = bn_train_fwd_f32(&fa, rows).unwrap();
                let got = bn_train_fwd_f32(&fb, rows).unwrap();
                for (name, g, w) in [
                    ("mean", &got.mean, &want.mean),
                    ("invstd", &got.invstd, &want.invstd),
                    ("var_unbiased", &got.var_unbiased, &want.var_unbiased),
                    ("y", &got.y, &want.y),
                ] {
                    assert_eq!(bits(&g.to_host().unwrap()), bits(&w.to_host().unwrap()), "{tag}: {name}");
                }
                let w = bn_train_bwd_f32(&bwd(&fa, &dy, &want), rows).unwrap();
                let g = bn_train_bwd_f32(&bwd(&fb, &dy, &got), rows).unwrap();
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
        let Some(gpu) = gpu_or_skip("bn_backward_mask_from_x_matches_mask_from_y") else {
            return;
        };
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
                let fa = fwd(&x, b, &gamma, &beta, true);
                let f = bn_train_fwd_f32(&fa, rows).unwrap();
                masked += f.y.to_host().unwrap().iter().filter(|v| **v <= 0.0 || v.is_nan()).count();
                let mut outs = Vec::new();
                for mask in [MaskSource::Output, MaskSource::Input] {
                    let v = BnVariant { mask, ..BnVariant::LIBRARY };
                    let g = bn_train_bwd_f32_variant(&bwd(&fa, &dy, &f), rows, v).unwrap();
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
                    let fa = fwd(&x, None, &gamma, &beta, relu);
                    let f = bn_train_fwd_f32(&fa, rows).unwrap();
                    let dx = bn_train_bwd_f32(&bwd(&fa, &dy, &f), rows).unwrap().dx;
                    let tag = format!("{rows}x{cols} relu={relu} {}", p.name());
                    assert_eq!(bad_bf16(&f.y), 0, "{tag}: y's bf16 copy");
                    assert_eq!(bad_bf16(&dx), 0, "{tag}: dx's bf16 copy");
                    outs.push((bits(&f.y.to_host().unwrap()), bits(&dx.to_host().unwrap())));
                    checked += 1;
                }
                assert!(outs[0] == outs[1], "{rows}x{cols} relu={relu}: f32 y or dx differ with the bf16 copies");
            }
        }
        println!("OK     bn bf16 copies of y and dx ({checked} runs)");
    }
}
