//! Row-major single-precision GEMM on slices, through the `gemm` crate.
//!
//! `gemm` takes explicit row and column strides, so a transposed operand is just a swapped pair
//! of strides: no copy. It packs both operands into cache-sized panels itself and picks its
//! AVX2/AVX-512 micro-kernel at run time. On this project's Zen 4 CPUs one core reaches about
//! 105 GFLOP/s on the 512-wide layers of the target workload (about 2.5 ms per 512^3 product).

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul_bf16::{gemm_views_bf16, gemm_views_bf16_symmetric, sgemm_bf16};
use super::{cpu_matmul_precision, CpuMatmulPrecision};

/// Products with fewer multiply-adds than this run on the calling thread. Measured on the 2-core
/// Zen 4 machines (square shapes, quiet machine): 96^3 takes 16.6 µs on one thread and 15.3 µs
/// on two, 128^3 39 µs vs 27 µs, 192^3 128 µs vs 87 µs; below ~84^3 `gemm` stays on one thread
/// by itself. The switch sits at the quiet machine's break-even, 2^20 (~100^3); when the other
/// core is busy, two threads lose at all of these sizes. Every GEMM of the step is 50x bigger.
pub(crate) const PAR_MIN_MACS: usize = 1 << 20;

/// Shape and layout of one product `C (m, n) = op(A) (m, k) @ op(B) (k, n)` on row-major storage:
/// `A` is stored (m, k), or (k, m) when `trans_a`; `B` is stored (k, n), or (n, k) when `trans_b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// `c = acc * c + scale * op(a) @ op(b)`, where `acc` is 1 when `accumulate` else 0 (then the old
/// contents of `c` are never read, NaN included).
///
/// The CPU backend's one GEMM entry: in f32 ([`sgemm_f32`]) by default, on bf16-rounded operands
/// ([`sgemm_bf16`]) when [`cpu_matmul_precision`] is [`CpuMatmulPrecision::Bf16`].
///
/// Panics when a slice length does not match the shape: the lengths guard the raw-pointer call.
pub fn sgemm(s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool, scale: f32) {
    match cpu_matmul_precision() {
        CpuMatmulPrecision::F32 => sgemm_f32(s, a, b, c, accumulate, scale),
        CpuMatmulPrecision::Bf16 => sgemm_bf16(s, a, b, c, accumulate, scale),
    }
}

/// [`sgemm`] in f32 whatever the precision switch says.
pub fn sgemm_f32(s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool, scale: f32) {
    let (a, b) = s.views("sgemm", a, b);
    gemm_views(a, b, c, accumulate, scale, s.m * s.n * s.k >= PAR_MIN_MACS);
}

/// [`sgemm`] on the calling thread only, for callers that already split their work over the
/// rayon pool (one product per chunk of a convolution's images).
pub fn sgemm_serial(s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool, scale: f32) {
    let (a, b) = s.views("sgemm_serial", a, b);
    match cpu_matmul_precision() {
        CpuMatmulPrecision::F32 => gemm_views(a, b, c, accumulate, scale, false),
        CpuMatmulPrecision::Bf16 => gemm_views_bf16(a, b, c, accumulate, scale, false),
    }
}

impl GemmShape {
    /// op(A) and op(B) over row-major storage as strided views (a transpose swaps the strides);
    /// panics, naming `what`, when a slice length does not match the shape.
    pub(crate) fn views<'d>(self, what: &str, a: &'d [f32], b: &'d [f32]) -> (View<'d>, View<'d>) {
        let GemmShape { m, k, n, trans_a, trans_b } = self;
        assert_eq!(a.len(), m * k, "{what}: lhs has {} elements, shape {self:?}", a.len());
        assert_eq!(b.len(), k * n, "{what}: rhs has {} elements, shape {self:?}", b.len());
        let a = if trans_a { View::new(a, m, k, 1, m) } else { View::new(a, m, k, k, 1) };
        let b = if trans_b { View::new(b, k, n, 1, k) } else { View::new(b, k, n, n, 1) };
        (a, b)
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'d> {
    pub(crate) data: &'d [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'d> View<'d> {
    /// Panics when an element would fall outside `data`.
    pub fn new(data: &'d [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(last < data.len(), "View {rows}x{cols} strides ({rs}, {cs}) overruns {} elements", data.len());
        }
        View { data, rows, cols, rs, cs }
    }

    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'d [f32], rows: usize, cols: usize) -> Self {
        View::new(data, rows, cols, cols, 1)
    }

    /// The transpose, without a copy.
    pub fn t(self) -> Self {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// Checks the shapes of `c = op(a) op(b)` (`what` names the caller in the panic) and handles
/// the products with nothing to multiply (an empty `c`, or k = 0: `c` zeroed unless
/// accumulating). Returns whether that settled it.
pub(crate) fn gemm_trivial(what: &str, a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "{what}: inner dimensions {k} vs {}", b.rows);
    assert_eq!(c.len(), m * n, "{what}: dst has {} elements for {m}x{n}", c.len());
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return true;
    }
    false
}

/// `c = acc * c + scale * a @ b` with `c` row-major (a.rows, b.cols); multi-threaded when `par`.
pub fn gemm_views(a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool, scale: f32, par: bool) {
    if gemm_trivial("gemm_views", a, b, c, accumulate) {
        return;
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // SAFETY: `View::new` checked that every element of a and b is inside its slice, the length of
    // `c` was checked above, and `c` is borrowed mutably, so it aliases neither a nor b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            if par { Parallelism::Rayon(0) } else { Parallelism::None },
        );
    }
}

/// `scale * A^T A` for `A` row-major (rows, d) (in the precision of [`sgemm`]), exploiting
/// symmetry. With bf16 GEMMs on AVX512-BF16 one product over the micro-tiles that reach the upper
/// triangle, mirrored ([`gemm_views_bf16_symmetric`], 45% fewer multiply-adds at d = 512). In f32 the
/// column blocks of A give `T (T + 1) / 2` block products instead of `T^2` (37% fewer flops at
/// d = 512), run as independent single-threaded GEMMs on the rayon pool, then mirrored.
pub fn gram(a: &[f32], rows: usize, d: usize, scale: f32) -> Vec<f32> {
    /// Block width: big enough for the GEMM micro-kernel to run at full speed, small enough that
    /// 512 columns make 10 block products to balance over the threads.
    const BLOCK: usize = 128;
    assert_eq!(a.len(), rows * d, "gram: {} elements for {rows}x{d}", a.len());
    // Written in full: the diagonal blocks, the upper ones and their mirror images.
    let mut c = super::pool::take(d * d);
    let bf16 = cpu_matmul_precision() == CpuMatmulPrecision::Bf16;
    if bf16 {
        let (at, av) = (View::new(a, d, rows, 1, d), View::row_major(a, rows, d));
        if gemm_views_bf16_symmetric(at, av, &mut c, scale, rows * d * d >= PAR_MIN_MACS).is_some() {
            return c;
        }
    }
    let nb = d.div_ceil(BLOCK);
    if nb < 2 {
        sgemm(GemmShape { m: d, k: rows, n: d, trans_a: true, trans_b: false }, a, a, &mut c, false, scale);
        return c;
    }
    let span = |i: usize| (i * BLOCK, BLOCK.min(d - i * BLOCK));
    let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i, j))).collect();
    let blocks: Vec<Vec<f32>> = pairs
        .par_iter()
        .map(|&(i, j)| {
            let ((r0, rn), (c0, cn)) = (span(i), span(j));
            // Columns r0.. of A, transposed: element (i, p) = a[p * d + r0 + i].
            let lhs = View::new(&a[r0..], rn, rows, 1, d);
            let rhs = View::new(&a[c0..], rows, cn, d, 1);
            let mut blk = super::pool::take(rn * cn);
            if bf16 {
                gemm_views_bf16(lhs, rhs, &mut blk, false, scale, false);
            } else {
                gemm_views(lhs, rhs, &mut blk, false, scale, false);
            }
            blk
        })
        .collect();
    for (&(i, j), blk) in pairs.iter().zip(&blocks) {
        let ((r0, rn), (c0, cn)) = (span(i), span(j));
        for r in 0..rn {
            let row = &blk[r * cn..(r + 1) * cn];
            c[(r0 + r) * d + c0..(r0 + r) * d + c0 + cn].copy_from_slice(row);
            if i != j {
                for (q, &v) in row.iter().enumerate() {
                    c[(c0 + q) * d + r0 + r] = v;
                }
            }
        }
    }
    blocks.into_iter().for_each(super::pool::give);
    c
}

#[cfg(test)]
mod view_tests {
    use super::*;

    #[test]
    fn row_major_and_transposed_views_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // stored (n, k)
        let mut dst = vec![f32::NAN; m * n];
        gemm_views(View::row_major(&a, m, k), View::row_major(&b, n, k).t(), &mut dst, false, 1.0, false);
        for i in 0..m {
            for j in 0..n {
                let e: f32 = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
                assert!((dst[i * n + j] - e).abs() < 1e-5);
            }
        }
    }
}
