//! Launchers of `kernels/conv.cu`: im2col and its adjoint col2im, the conv weight re-layout and
//! max-pooling over NHWC rows (n·h·w, c), geometry [`Window2d`]. The results are the CPU kernels'
//! (`bagssl_autograd::cpu::conv`) bits: same gathers, same summation order.

use cudarc::driver::PushKernelArg;

use crate::device::same_gpu;
use crate::ffi::BagsslWindow2d;
use crate::launch::{arg_or_null, cfg_1d, check_len, u32_of};
use crate::{GpuBuf, KernelError, Window2d};

/// The product of `parts` as the u32 the kernels index with, or why it is not one.
fn count(op: &str, what: &str, parts: &[usize]) -> Result<u32, KernelError> {
    let n = parts.iter().try_fold(1usize, |acc, &p| acc.checked_mul(p));
    let n = n.ok_or_else(|| KernelError::Invalid(format!("{op}: {what} overflows ({parts:?})")))?;
    u32_of(n, &format!("{op}: {what}"))
}

/// `g` as the kernels' geometry, after checking it is usable and every element count of its
/// buffers (and every padded coordinate) fits in 32 bits.
fn window(op: &str, g: &Window2d) -> Result<BagsslWindow2d, KernelError> {
    g.check().map_err(|d| KernelError::Invalid(format!("{op}: {d}")))?;
    let padded = |s: usize| s.checked_add(g.pad.checked_mul(2)?);
    let (ph, pw) = (padded(g.h), padded(g.w));
    let (Some(ph), Some(pw)) = (ph, pw) else {
        return Err(KernelError::Invalid(format!("{op}: padding {} overflows", g.pad)));
    };
    let u = |v: usize, what: &str| u32_of(v, &format!("{op}: {what}"));
    u(ph, "padded height")?;
    u(pw, "padded width")?;
    count(op, "input elements", &[g.n, g.h, g.w, g.c])?;
    count(op, "im2col elements", &[g.n, g.out_h(), g.out_w(), g.kh, g.kw, g.c])?;
    Ok(BagsslWindow2d {
        n: u(g.n, "n")?,
        h: u(g.h, "h")?,
        w: u(g.w, "w")?,
        c: u(g.c, "c")?,
        kh: u(g.kh, "kh")?,
        kw: u(g.kw, "kw")?,
        stride: u(g.stride, "stride")?,
        pad: u(g.pad, "pad")?,
        out_h: u(g.out_h(), "out_h")?,
        out_w: u(g.out_w(), "out_w")?,
    })
}

/// Channels per thread of the conv kernels: 4 (float4) when `c % 4 == 0`, as `with_col_vec`.
fn vec_of(c: usize) -> usize {
    if c.is_multiple_of(4) {
        4
    } else {
        1
    }
}

/// The windows of `x` (n·h·w, c) as rows: (n·out_h·out_w, kh·kw·c), columns (ki, kj, channel),
/// zero over the padding. Writes the result's bf16 GEMM copy beside it when the GPU's GEMMs run
/// in bf16 (the columns are a GEMM operand next).
pub fn im2col_f32(x: &GpuBuf, g: Window2d) -> Result<GpuBuf, KernelError> {
    let op = "im2col_f32";
    let prm = window(op, &g)?;
    check_len(op, "x", x.len(), g.in_rows() * g.c)?;
    let gpu = x.gpu();
    let n = g.out_rows() * g.patch_len();
    let mut cols = gpu.uninit(n)?;
    let mut c16 = gpu.bf16_operand(n)?;
    let null = 0u64;
    let mut b = gpu.stream().launch_builder(gpu.function("im2col_f32")?);
    b.arg(x.slice()).arg(cols.slice_mut());
    arg_or_null(&mut b, c16.as_mut(), &null);
    b.arg(&prm);
    // SAFETY: x holds n·h·w·c floats, cols (and c16, a whole allocation, or null) the
    // n·out_h·out_w·kh·kw·c the kernel writes; all counts < 2^32 (checked by `window`).
    unsafe { b.launch(cfg_1d(n / vec_of(g.c))) }?;
    drop(b);
    if let Some(c) = c16 {
        cols.set_bf16(c);
    }
    Ok(cols)
}

/// The adjoint of [`im2col_f32`]: (n·out_h·out_w, kh·kw·c) -> (n·h·w, c), each pixel the sum of
/// its copies, window offsets (ki, kj) ascending.
pub fn col2im_f32(cols: &GpuBuf, g: Window2d) -> Result<GpuBuf, KernelError> {
    let op = "col2im_f32";
    let prm = window(op, &g)?;
    check_len(op, "cols", cols.len(), g.out_rows() * g.patch_len())?;
    let gpu = cols.gpu();
    let n = g.in_rows() * g.c;
    let mut dx = gpu.uninit(n)?;
    let mut b = gpu.stream().launch_builder(gpu.function("col2im_f32")?);
    b.arg(cols.slice()).arg(dx.slice_mut()).arg(&prm);
    // SAFETY: lengths checked above; all counts < 2^32.
    unsafe { b.launch(cfg_1d(n / vec_of(g.c))) }?;
    Ok(dx)
}

/// (outer, a, b) -> (outer, b, a): the conv weight between torchvision's (out, c, kh·kw) and the
/// GEMM's (out, kh·kw, c).
pub fn transpose_last2_f32(x: &GpuBuf, outer: usize, a: usize, b: usize) -> Result<GpuBuf, KernelError> {
    let op = "transpose_last2_f32";
    let n = count(op, "elements", &[outer, a, b])?;
    check_len(op, "x", x.len(), n as usize)?;
    let gpu = x.gpu();
    let mut y = gpu.uninit(n as usize)?;
    if n > 0 {
        let (o32, a32, b32) = (outer as u32, a as u32, b as u32); // each <= n < 2^32
        let mut l = gpu.stream().launch_builder(gpu.function("transpose_last2_f32")?);
        l.arg(x.slice()).arg(y.slice_mut()).arg(&o32).arg(&a32).arg(&b32);
        // SAFETY: x and y hold outer·a·b floats.
        unsafe { l.launch(cfg_1d(n as usize)) }?;
    }
    Ok(y)
}

/// Max over each window of `x` (n·h·w, c), padding excluded: (n·out_h·out_w, c).
pub fn max_pool_fwd_f32(x: &GpuBuf, g: Window2d) -> Result<GpuBuf, KernelError> {
    let op = "max_pool_fwd_f32";
    let prm = window(op, &g)?;
    check_len(op, "x", x.len(), g.in_rows() * g.c)?;
    let gpu = x.gpu();
    let n = g.out_rows() * g.c;
    let mut y = gpu.uninit(n)?;
    let mut b = gpu.stream().launch_builder(gpu.function("max_pool_fwd_f32")?);
    b.arg(x.slice()).arg(y.slice_mut()).arg(&prm);
    // SAFETY: x holds n·h·w·c floats, y n·out_h·out_w·c.
    unsafe { b.launch(cfg_1d(n / vec_of(g.c))) }?;
    Ok(y)
}

/// dL/dx of [`max_pool_fwd_f32`] from its input `x`, output `y` and dL/dy: each window's gradient
/// to its first element (window offsets ascending) equal to its max, (n·h·w, c).
pub fn max_pool_bwd_f32(x: &GpuBuf, y: &GpuBuf, dy: &GpuBuf, g: Window2d) -> Result<GpuBuf, KernelError> {
    let op = "max_pool_bwd_f32";
    let prm = window(op, &g)?;
    let gpu = x.gpu();
    same_gpu(op, gpu, &[y.gpu(), dy.gpu()])?;
    check_len(op, "x", x.len(), g.in_rows() * g.c)?;
    check_len(op, "y", y.len(), g.out_rows() * g.c)?;
    check_len(op, "dy", dy.len(), g.out_rows() * g.c)?;
    let n = g.in_rows() * g.c;
    let mut dx = gpu.uninit(n)?;
    let mut b = gpu.stream().launch_builder(gpu.function("max_pool_bwd_f32")?);
    b.arg(x.slice()).arg(y.slice()).arg(dy.slice()).arg(dx.slice_mut()).arg(&prm);
    // SAFETY: lengths checked above; all counts < 2^32.
    unsafe { b.launch(cfg_1d(n / vec_of(g.c))) }?;
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Window2d {
        Window2d { n, h, w, c, kh: k, kw: k, stride, pad }
    }

    #[test]
    fn window_is_the_geometry_with_its_output_size() {
        let p = window("t", &geom(2, 7, 5, 3, 3, 2, 1)).unwrap();
        assert_eq!((p.n, p.h, p.w, p.c, p.kh, p.kw, p.stride, p.pad), (2, 7, 5, 3, 3, 3, 2, 1));
        assert_eq!((p.out_h, p.out_w), (4, 3));
        let p = window("t", &geom(1, 9, 7, 1, 7, 2, 3)).unwrap();
        assert_eq!((p.out_h, p.out_w), (5, 4));
    }

    #[test]
    fn window_refuses_unusable_or_oversized_geometry() {
        for (g, needle) in [
            (geom(0, 7, 5, 3, 3, 2, 1), "empty geometry"),
            (geom(1, 2, 2, 3, 5, 1, 0), "larger than the padded"),
            (geom(1, 1 << 16, 1 << 16, 2, 1, 1, 0), "input elements"),
            (geom(128, 256, 256, 64, 3, 1, 1), "im2col elements"),
            (geom(1, 4, 4, 1, 3, 1, 1 << 32), "padded height"),
        ] {
            let e = window("t", &g).expect_err(needle).to_string();
            assert!(e.contains(needle), "{g:?}: {e}");
        }
    }
}
