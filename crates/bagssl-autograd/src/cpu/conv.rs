//! The data movement of convolutions and pooling over NHWC rows ([`Window2d`]): im2col and its
//! adjoint col2im (a convolution is then one GEMM each way), the weight re-layout between
//! torchvision's (out, in, kh, kw) and the GEMM's (out, kh, kw, in), and max-pooling.
//!
//! Every output element is written by exactly one task and every sum is taken in one fixed order
//! (window positions ascending), so the results do not depend on the thread count, and the
//! CUDA kernels, which sum in the same order, agree bit for bit.

use bagssl_kernels::Window2d;

use super::par::for_rows_mut;

/// The input row (pixel index) under window offset (ki, kj) of output pixel (oy, ox) of image
/// `img`, or `None` where the window lies over the padding.
#[inline]
fn source_row(g: &Window2d, img: usize, oy: usize, ox: usize, ki: usize, kj: usize) -> Option<usize> {
    let iy = (oy * g.stride + ki).checked_sub(g.pad)?;
    let ix = (ox * g.stride + kj).checked_sub(g.pad)?;
    (iy < g.h && ix < g.w).then(|| (img * g.h + iy) * g.w + ix)
}

/// `cols[(img, oy, ox), (ki, kj, ch)] = x[(img, oy·s + ki - pad, ox·s + kj - pad), ch]`, zero
/// over the padding: (n·out_h·out_w, kh·kw·c).
pub fn im2col(x: &[f32], g: &Window2d, cols: &mut [f32]) {
    debug_assert_eq!(cols.len(), g.out_rows() * g.patch_len());
    for_rows_mut(cols, g.patch_len(), |r0, chunk| im2col_rows(x, g, r0, chunk));
}

/// [`im2col`] on the calling thread (for a caller that splits the images over the pool itself).
pub fn im2col_serial(x: &[f32], g: &Window2d, cols: &mut [f32]) {
    debug_assert_eq!(cols.len(), g.out_rows() * g.patch_len());
    im2col_rows(x, g, 0, cols);
}

/// Rows `r0 ..` of [`im2col`] into `chunk` (whole rows).
fn im2col_rows(x: &[f32], g: &Window2d, r0: usize, chunk: &mut [f32]) {
    let (oh, ow, c, k) = (g.out_h(), g.out_w(), g.c, g.patch_len());
    for (r, row) in chunk.chunks_exact_mut(k).enumerate() {
        let r = r0 + r;
        let (img, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let dst = &mut row[(ki * g.kw + kj) * c..][..c];
                match source_row(g, img, oy, ox, ki, kj) {
                    Some(src) => dst.copy_from_slice(&x[src * c..][..c]),
                    None => dst.fill(0.0),
                }
            }
        }
    }
}

/// The output pixels whose window covers input pixel (iy, ix) along one axis: pairs (out, k)
/// with `out·stride + k - pad = i`, k ascending.
#[inline]
fn covering(i: usize, size_out: usize, k: usize, stride: usize, pad: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).filter_map(move |kk| {
        let t = (i + pad).checked_sub(kk)?;
        (t % stride == 0 && t / stride < size_out).then_some((t / stride, kk))
    })
}

/// The gather that both adjoints (col2im, the max-pool backward) make: for every input pixel,
/// `out` (its `c` values, zeroed) and `f(out, output_row, ki·kw + kj)` for each window covering
/// it, offsets (ki, kj) ascending, so the sums are taken in one fixed order.
fn gather_windows(g: &Window2d, dx: &mut [f32], f: impl Fn(&mut [f32], usize, usize) + Sync + Send) {
    debug_assert_eq!(dx.len(), g.in_rows() * g.c);
    for_rows_mut(dx, g.c, |r0, chunk| gather_rows(g, r0, chunk, &f));
}

/// Input rows `r0 ..` of [`gather_windows`] into `chunk` (whole rows).
fn gather_rows(g: &Window2d, r0: usize, chunk: &mut [f32], f: &impl Fn(&mut [f32], usize, usize)) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c);
    for (r, out) in chunk.chunks_exact_mut(c).enumerate() {
        let r = r0 + r;
        let (img, iy, ix) = (r / (g.h * g.w), r / g.w % g.h, r % g.w);
        out.fill(0.0);
        for (oy, ki) in covering(iy, oh, g.kh, g.stride, g.pad) {
            for (ox, kj) in covering(ix, ow, g.kw, g.stride, g.pad) {
                f(out, (img * oh + oy) * ow + ox, ki * g.kw + kj);
            }
        }
    }
}

/// `out += src`, the step of [`col2im`]'s sum.
#[inline]
fn add_window(cols: &[f32], k: usize, c: usize) -> impl Fn(&mut [f32], usize, usize) + '_ {
    move |out, orow, off| {
        let src = &cols[orow * k + off * c..][..c];
        out.iter_mut().zip(src).for_each(|(o, &s)| *o += s);
    }
}

/// The adjoint of [`im2col`]: `dx[pixel, ch]` is the sum of every column entry that copied it,
/// window offsets (ki, kj) ascending: (n·h·w, c).
pub fn col2im(cols: &[f32], g: &Window2d, dx: &mut [f32]) {
    gather_windows(g, dx, add_window(cols, g.patch_len(), g.c));
}

/// [`col2im`] on the calling thread.
pub fn col2im_serial(cols: &[f32], g: &Window2d, dx: &mut [f32]) {
    debug_assert_eq!(dx.len(), g.in_rows() * g.c);
    gather_rows(g, 0, dx, &add_window(cols, g.patch_len(), g.c));
}

/// (outer, a, b) -> (outer, b, a): torchvision's conv weight (out, in, kh·kw) to the GEMM's
/// (out, kh·kw, in), and the GEMM's weight gradient back.
pub fn transpose_last2(x: &[f32], outer: usize, a: usize, b: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), outer * a * b);
    for_rows_mut(out, b * a, |o0, chunk| {
        for (o, dst) in chunk.chunks_exact_mut(b * a).enumerate() {
            let src = &x[(o0 + o) * a * b..][..a * b];
            for (j, row) in dst.chunks_exact_mut(a).enumerate() {
                row.iter_mut().enumerate().for_each(|(i, d)| *d = src[i * b + j]);
            }
        }
    });
}

/// Max over each window (padding never wins, as in PyTorch): (n·out_h·out_w, c).
pub fn max_pool_fwd(x: &[f32], g: &Window2d, y: &mut [f32]) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c);
    for_rows_mut(y, c, |r0, chunk| {
        for (r, out) in chunk.chunks_exact_mut(c).enumerate() {
            let r = r0 + r;
            let (img, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
            out.fill(f32::NEG_INFINITY);
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    if let Some(src) = source_row(g, img, oy, ox, ki, kj) {
                        for (o, &v) in out.iter_mut().zip(&x[src * c..][..c]) {
                            // A NaN wins and then stays, so a diverged step shows (PyTorch); a
                            // select, not a branch, so the channel loop vectorizes.
                            *o = if v > *o || v.is_nan() { v } else { *o };
                        }
                    }
                }
            }
        }
    });
}

/// The backward of [`max_pool_fwd`]: each window's gradient goes to its first element (window
/// offsets ascending) equal to the window's max `y`, PyTorch's choice; `dx` (n·h·w, c) gathers,
/// per input pixel, the windows that chose it, in the order of [`col2im`]. `arg` (n·out_h·out_w,
/// c) is scratch: the chosen window offset `ki·kw + kj` of each output, found once.
pub fn max_pool_bwd(x: &[f32], y: &[f32], dy: &[f32], g: &Window2d, arg: &mut [f32], dx: &mut [f32]) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c);
    for_rows_mut(arg, c, |r0, chunk| {
        for (r, arg) in chunk.chunks_exact_mut(c).enumerate() {
            let r = r0 + r;
            let (img, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
            let ymax = &y[r * c..][..c];
            arg.fill(-1.0);
            // Offsets in reverse, each overwriting: the first equal one is left.
            for off in (0..g.kh * g.kw).rev() {
                if let Some(src) = source_row(g, img, oy, ox, off / g.kw, off % g.kw) {
                    for ((a, &v), &m) in arg.iter_mut().zip(&x[src * c..][..c]).zip(ymax) {
                        *a = if v == m || (v.is_nan() && m.is_nan()) { off as f32 } else { *a };
                    }
                }
            }
        }
    });
    let arg = &*arg;
    gather_windows(g, dx, |out, orow, off| {
        let (a, d) = (&arg[orow * c..][..c], &dy[orow * c..][..c]);
        for ((o, &a), &d) in out.iter_mut().zip(a).zip(d) {
            *o += if a == off as f32 { d } else { 0.0 };
        }
    });
}

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    super::par::for_chunks_mut(out, |i0, o| {
        let (a, b) = (&a[i0..i0 + o.len()], &b[i0..i0 + o.len()]);
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = a + b);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Window2d {
        Window2d { n, h, w, c, kh: k, kw: k, stride, pad }
    }

    fn ramp(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect()
    }

    /// col2im is im2col's adjoint: <im2col(x), c> = <x, col2im(c)> for random x and c.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for g in
            [geom(2, 7, 5, 3, 3, 2, 1), geom(1, 6, 9, 2, 3, 1, 3), geom(3, 5, 5, 4, 1, 2, 0), geom(1, 9, 7, 1, 7, 2, 3)]
        {
            let x = ramp(g.in_rows() * g.c);
            let c: Vec<f32> = ramp(g.out_rows() * g.patch_len() + 5)[5..].to_vec();
            let mut cols = vec![f32::NAN; c.len()];
            im2col(&x, &g, &mut cols);
            let mut dx = vec![f32::NAN; x.len()];
            col2im(&c, &g, &mut dx);
            let lhs: f64 = cols.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((lhs - rhs).abs() <= 1e-9 * lhs.abs().max(1.0) + 1e-3, "{g:?}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn transpose_last2_swaps_the_inner_axes() {
        let x = ramp(2 * 3 * 4);
        let mut t = vec![0.0; x.len()];
        transpose_last2(&x, 2, 3, 4, &mut t);
        for o in 0..2 {
            for i in 0..3 {
                for j in 0..4 {
                    assert_eq!(t[(o * 4 + j) * 3 + i], x[(o * 3 + i) * 4 + j]);
                }
            }
        }
        let mut back = vec![0.0; x.len()];
        transpose_last2(&t, 2, 4, 3, &mut back);
        assert_eq!(back, x);
    }

    /// Ties go to the first element of the window; a window's gradient is sent exactly once.
    #[test]
    fn max_pool_sends_each_window_gradient_to_one_element() {
        let g = geom(1, 5, 5, 2, 3, 2, 1);
        let x: Vec<f32> = (0..50).map(|i| (i % 3) as f32).collect(); // many ties
        let mut y = vec![0.0; g.out_rows() * 2];
        max_pool_fwd(&x, &g, &mut y);
        let dy: Vec<f32> = (0..y.len()).map(|i| 1.0 + i as f32).collect();
        let (mut dx, mut arg) = (vec![0.0; x.len()], vec![0.0; y.len()]);
        max_pool_bwd(&x, &y, &dy, &g, &mut arg, &mut dx);
        let total: f32 = dy.iter().sum();
        assert_eq!(dx.iter().sum::<f32>(), total);
        assert_eq!(y.iter().copied().fold(f32::MIN, f32::max), 2.0);

        // All equal: the first pixel of each window inside the image wins. The 3x3 stride-2
        // windows of a 3x3 image padded by 1 start at rows/columns -1 and 1: their first
        // pixels are (0, 0), (0, 1), (1, 0) and (1, 1).
        let g = geom(1, 3, 3, 1, 3, 2, 1);
        let x = vec![5.0; 9];
        let mut y = vec![0.0; 4];
        max_pool_fwd(&x, &g, &mut y);
        assert_eq!(y, [5.0; 4]);
        let (mut dx, mut arg) = (vec![0.0; 9], vec![0.0; 4]);
        max_pool_bwd(&x, &y, &[1.0, 2.0, 3.0, 4.0], &g, &mut arg, &mut dx);
        assert_eq!(dx, [1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);

        // A NaN anywhere in a window is its max, as in PyTorch.
        let g = geom(1, 1, 3, 1, 3, 1, 1);
        for x in [[f32::NAN, 1.0, 2.0], [1.0, f32::NAN, 2.0], [1.0, 2.0, f32::NAN]] {
            let mut y = vec![0.0; 3];
            max_pool_fwd(&x, &g, &mut y);
            assert!(
                y.iter()
                    .enumerate()
                    .all(|(i, v)| v.is_nan() == (x[i.saturating_sub(1)..(i + 2).min(3)].iter().any(|v| v.is_nan()))),
                "{x:?} -> {y:?}"
            );
        }
    }
}
