//! Launchers of `kernels/elementwise.cu`: ReLU, bias add, column sums, group mean, add, axpy, scale,
//! dot.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::same_gpu;
use crate::ffi::BagsslMatrixDims;
use crate::launch::{arg_or_null, cfg_1d, cfg_blocks, check_len, partial_blocks, u32_of, ColGrid};
use crate::{Gpu, GpuBuf, KernelError};

fn dims(rows: usize, cols: usize) -> Result<BagsslMatrixDims, KernelError> {
    u32_of(rows * cols, "rows * cols")?;
    Ok(BagsslMatrixDims { rows: rows as u32, cols: cols as u32 })
}

/// `bf16(x[..n])` (round to nearest even) into a new buffer of `max(n, 1)` bf16 bit patterns:
/// the operand copies of the bf16 GEMMs (see [`GpuBuf::bf16`]).
pub(crate) fn cast_bf16_raw(gpu: &Gpu, x: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<u16>, KernelError> {
    let mut y = gpu.alloc_raw::<u16>(n.max(1))?;
    let n32 = u32_of(n, "cast_bf16_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("cast_bf16_f32")?);
        b.arg(x).arg(&mut y).arg(&n32);
        // SAFETY: x holds at least n floats and y n u16, both whole (aligned) allocations.
        unsafe { b.launch(cfg_1d(n.div_ceil(4))) }?;
    }
    Ok(y)
}

/// `x` rounded to bf16 (nearest even) as bit patterns, always a fresh copy (the cached one is
/// [`GpuBuf::bf16`]).
pub fn cast_bf16_f32(x: &GpuBuf) -> Result<CudaSlice<u16>, KernelError> {
    cast_bf16_raw(x.gpu(), x.slice(), x.len())
}

/// `max(x, 0)`.
pub fn relu_fwd_f32(x: &GpuBuf) -> Result<GpuBuf, KernelError> {
    let gpu = x.gpu();
    let mut y = gpu.uninit(x.len())?;
    let n = u32_of(x.len(), "relu_fwd_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("relu_fwd_f32")?);
        b.arg(x.slice()).arg(y.slice_mut()).arg(&n);
        // SAFETY: x and y hold n floats.
        unsafe { b.launch(cfg_1d(x.len())) }?;
    }
    Ok(y)
}

/// `dy * (y > 0)`.
pub fn relu_bwd_f32(dy: &GpuBuf, y: &GpuBuf) -> Result<GpuBuf, KernelError> {
    let gpu = dy.gpu();
    same_gpu("relu_bwd_f32", gpu, &[y.gpu()])?;
    check_len("relu_bwd_f32", "y", y.len(), dy.len())?;
    let mut dx = gpu.uninit(dy.len())?;
    let n = u32_of(dy.len(), "relu_bwd_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("relu_bwd_f32")?);
        b.arg(dy.slice()).arg(y.slice()).arg(dx.slice_mut()).arg(&n);
        // SAFETY: all three hold n floats.
        unsafe { b.launch(cfg_1d(dy.len())) }?;
    }
    Ok(dx)
}

/// `x + bias` with `bias` (cols) broadcast over the rows of `x` (rows, cols).
pub fn bias_add_fwd_f32(x: &GpuBuf, bias: &GpuBuf, rows: usize, cols: usize) -> Result<GpuBuf, KernelError> {
    let gpu = x.gpu();
    same_gpu("bias_add_fwd_f32", gpu, &[bias.gpu()])?;
    check_len("bias_add_fwd_f32", "x", x.len(), rows * cols)?;
    check_len("bias_add_fwd_f32", "bias", bias.len(), cols)?;
    let mut y = gpu.uninit(x.len())?;
    let d = dims(rows, cols)?;
    if !x.is_empty() {
        let grid = ColGrid::new(rows, cols);
        let mut b = gpu.stream().launch_builder(gpu.function("bias_add_fwd_f32")?);
        b.arg(x.slice()).arg(bias.slice()).arg(y.slice_mut()).arg(&d).arg(&grid.chunk_rows);
        // SAFETY: lengths checked above.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok(y)
}

/// Column sums: (rows, cols) -> (cols).
pub fn sum_rows_f32(x: &GpuBuf, rows: usize, cols: usize) -> Result<GpuBuf, KernelError> {
    let gpu = x.gpu();
    check_len("sum_rows_f32", "x", x.len(), rows * cols)?;
    let d = dims(rows, cols)?;
    if rows == 0 || cols == 0 {
        return gpu.zeros(cols);
    }
    let grid = ColGrid::reduction("sum_rows_f32", rows, cols)?;
    let mut out = gpu.uninit(cols)?;
    // Per-chunk column sums, added by the last block of each column tile.
    let mut partial = gpu.alloc_raw::<f32>(grid.chunks * cols)?;
    // The column sums of a gradient come right before the bf16 GEMMs on it: write x's copy here.
    let mut x16 = if x.has_bf16() { None } else { gpu.bf16_operand(rows * cols)? };
    let null = 0u64;
    let mut b = gpu.stream().launch_builder(gpu.function("sum_rows_f32")?);
    b.arg(x.slice());
    arg_or_null(&mut b, x16.as_mut(), &null);
    b.arg(out.slice_mut()).arg(&mut partial).arg(&d).arg(&grid.chunk_rows);
    // SAFETY: x holds rows*cols floats, out holds cols, partial chunks*cols for the grid `grid`;
    // x16 (a whole allocation) rows*cols u16, or null.
    unsafe { b.launch(grid.cfg()) }?;
    drop(b);
    if let Some(c) = x16 {
        x.offer_bf16(c);
    }
    Ok(out)
}

/// Mean over consecutive groups of `n` rows: (rows, cols) -> (rows / n, cols).
pub fn group_mean_fwd_f32(x: &GpuBuf, rows: usize, cols: usize, n: usize) -> Result<GpuBuf, KernelError> {
    let gpu = x.gpu();
    check_len("group_mean_fwd_f32", "x", x.len(), rows * cols)?;
    if n == 0 || !rows.is_multiple_of(n) {
        return Err(KernelError::Invalid(format!("group_mean_fwd_f32: {rows} rows are not groups of {n}")));
    }
    let groups = rows / n;
    let mut y = gpu.uninit(groups * cols)?;
    let d = dims(groups, cols)?;
    let n32 = u32_of(n, "group size")?;
    if !y.is_empty() {
        let grid = ColGrid::new(groups, cols);
        let mut b = gpu.stream().launch_builder(gpu.function("group_mean_fwd_f32")?);
        b.arg(x.slice()).arg(y.slice_mut()).arg(&d).arg(&n32).arg(&grid.chunk_rows);
        // SAFETY: x holds groups*n*cols floats, y groups*cols.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok(y)
}

/// Backward of [`group_mean_fwd_f32`]: (groups, cols) -> (groups * n, cols), rows `dy[g] / n`.
pub fn group_mean_bwd_f32(dy: &GpuBuf, groups: usize, cols: usize, n: usize) -> Result<GpuBuf, KernelError> {
    let gpu = dy.gpu();
    check_len("group_mean_bwd_f32", "dy", dy.len(), groups * cols)?;
    if n == 0 {
        return Err(KernelError::Invalid("group_mean_bwd_f32: group size 0".into()));
    }
    let mut dx = gpu.uninit(groups * n * cols)?;
    let d = dims(groups * n, cols)?;
    let n32 = u32_of(n, "group size")?;
    if !dx.is_empty() {
        let grid = ColGrid::new(groups * n, cols);
        let mut b = gpu.stream().launch_builder(gpu.function("group_mean_bwd_f32")?);
        b.arg(dy.slice()).arg(dx.slice_mut()).arg(&d).arg(&n32).arg(&grid.chunk_rows);
        // SAFETY: dy holds groups*cols floats, dx groups*n*cols.
        unsafe { b.launch(grid.cfg()) }?;
    }
    Ok(dx)
}

/// `a + b` into a new buffer (a residual connection).
pub fn add_f32(a: &GpuBuf, b: &GpuBuf) -> Result<GpuBuf, KernelError> {
    let gpu = a.gpu();
    same_gpu("add_f32", gpu, &[b.gpu()])?;
    check_len("add_f32", "b", b.len(), a.len())?;
    let mut y = gpu.uninit(a.len())?;
    let n = u32_of(a.len(), "add_f32 n")?;
    if n > 0 {
        let mut l = gpu.stream().launch_builder(gpu.function("add_f32")?);
        l.arg(a.slice()).arg(b.slice()).arg(y.slice_mut()).arg(&n);
        // SAFETY: all three hold n floats.
        unsafe { l.launch(cfg_1d(n as usize)) }?;
    }
    Ok(y)
}

/// `y += alpha * x`.
pub fn axpy_f32(y: &mut GpuBuf, alpha: f32, x: &GpuBuf) -> Result<(), KernelError> {
    let gpu = y.gpu().clone();
    same_gpu("axpy_f32", &gpu, &[x.gpu()])?;
    check_len("axpy_f32", "x", x.len(), y.len())?;
    let n = u32_of(y.len(), "axpy_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("axpy_f32")?);
        b.arg(y.slice_mut()).arg(&alpha).arg(x.slice()).arg(&n);
        // SAFETY: both hold n floats.
        unsafe { b.launch(cfg_1d(n as usize)) }?;
    }
    Ok(())
}

/// `x *= s`.
pub fn scale_f32(x: &mut GpuBuf, s: f32) -> Result<(), KernelError> {
    let gpu = x.gpu().clone();
    let n = u32_of(x.len(), "scale_f32 n")?;
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("scale_f32")?);
        b.arg(x.slice_mut()).arg(&s).arg(&n);
        // SAFETY: x holds n floats.
        unsafe { b.launch(cfg_1d(n as usize)) }?;
    }
    Ok(())
}

/// `sum(x * w)` accumulated in f64 (per-block partials, then one block; deterministic).
pub fn dot_f32(x: &GpuBuf, w: &GpuBuf) -> Result<f64, KernelError> {
    let gpu = x.gpu();
    same_gpu("dot_f32", gpu, &[w.gpu()])?;
    check_len("dot_f32", "w", w.len(), x.len())?;
    let n = u32_of(x.len(), "dot_f32 n")?;
    if n == 0 {
        return Ok(0.0);
    }
    let blocks = partial_blocks(x.len());
    let mut partial = gpu.alloc_raw::<f64>(blocks)?;
    let mut out = gpu.alloc_raw::<f64>(1)?;
    let mut b = gpu.stream().launch_builder(gpu.function("dot_partial_f32")?);
    b.arg(x.slice()).arg(w.slice()).arg(&mut partial).arg(&n);
    // SAFETY: x, w hold n floats; one partial per block.
    unsafe { b.launch(cfg_blocks(blocks)) }?;
    let nb = blocks as u32;
    let mut b = gpu.stream().launch_builder(gpu.function("sum_f64")?);
    b.arg(&partial).arg(&mut out).arg(&nb);
    // SAFETY: `blocks` partials in, one f64 out.
    unsafe { b.launch(cfg_blocks(1)) }?;
    Ok(gpu.download_raw(&out, 1)?[0])
}
