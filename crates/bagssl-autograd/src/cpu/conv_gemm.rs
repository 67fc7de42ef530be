//! Convolutions as one GEMM per chunk of images, the chunk's im2col columns never leaving L2.
//!
//! Materialising the whole im2col matrix costs more than its GEMM: a 3×3 convolution of 32
//! channels on 512 16×16 patches writes 151 MB of columns and reads them back to pack them, for
//! 2.4 GFLOP that the bf16 GEMM does in 7 ms. Here the rayon tasks take whole images: each
//! gathers its images' columns into a per-thread buffer of about [`COLS_BUDGET`] floats (in L2),
//! multiplies on its own thread ([`sgemm_serial`]) and moves on. The backward passes do the same:
//! dX is `col2im(dY Wm)` a chunk at a time, dW sums `colsᵀ dY` over the chunks.
//!
//! The chunking depends only on the shapes, never on the thread count, and every sum is taken in
//! one fixed order (the dW chunks' partial products are added in chunk order), so the results
//! are the same on any machine with the same CPU path.

use std::cell::Cell;

use bagssl_kernels::Window2d;
use rayon::prelude::*;

use super::conv::{col2im_serial, im2col_serial};
use super::matmul::{sgemm_serial, GemmShape};
use super::pool;
use super::scratch::HighWater;

/// f32 elements of columns per chunk (512 KiB): with the GEMM's packed copy of them, within the
/// L2 of the project's CPUs (1 MiB on Zen 4, 2 MiB on Sapphire Rapids).
pub const COLS_BUDGET: usize = 1 << 17;

/// Most chunks a weight gradient is split into (each keeps a partial dW until the final sum).
pub const DW_TASKS: usize = 16;

thread_local! {
    /// The columns of the chunk the calling thread is on, reused between chunks and calls.
    static COLS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}
static COLS_MARK: HighWater = HighWater::new(COLS_BUDGET);

/// Runs `f` on this thread's column buffer, `len` long (stale contents: `f` writes it first).
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = COLS.take();
    COLS_MARK.reserve(&mut buf, len);
    let r = f(&mut buf[..len]);
    COLS.set(buf);
    r
}

/// Images per chunk: as many as fit [`COLS_BUDGET`], at least one.
pub fn images_per_chunk(g: &Window2d) -> usize {
    let per_image = g.out_h() * g.out_w() * g.patch_len();
    (COLS_BUDGET / per_image.max(1)).clamp(1, g.n.max(1))
}

/// The geometry of a run of `count` of `g`'s images.
fn sub(g: &Window2d, count: usize) -> Window2d {
    Window2d { n: count, ..*g }
}

/// `y = im2col(x) wmᵀ`: `x` (n·h·w, c), `wm` (out, kh·kw·c), `y` (n·out_h·out_w, out).
pub fn conv2d_fwd(x: &[f32], wm: &[f32], g: &Window2d, out: usize, y: &mut [f32]) {
    let (k, in_px, out_px) = (g.patch_len(), g.h * g.w, g.out_h() * g.out_w());
    debug_assert_eq!(y.len(), g.out_rows() * out);
    let ipc = images_per_chunk(g);
    y.par_chunks_mut(ipc * out_px * out).enumerate().for_each(|(i, y)| {
        let gc = sub(g, y.len() / (out_px * out));
        let x = &x[i * ipc * in_px * g.c..][..gc.in_rows() * g.c];
        with_cols(gc.out_rows() * k, |cols| {
            im2col_serial(x, &gc, cols);
            let s = GemmShape { m: gc.out_rows(), k, n: out, trans_a: false, trans_b: true };
            sgemm_serial(s, cols, wm, y, false, 1.0);
        });
    });
}

/// `dx = col2im(dy wm)`: `dy` (n·out_h·out_w, out), `dx` (n·h·w, c).
pub fn conv2d_bwd_input(wm: &[f32], dy: &[f32], g: &Window2d, out: usize, dx: &mut [f32]) {
    let (k, in_px, out_px) = (g.patch_len(), g.h * g.w, g.out_h() * g.out_w());
    debug_assert_eq!(dx.len(), g.in_rows() * g.c);
    let ipc = images_per_chunk(g);
    dx.par_chunks_mut(ipc * in_px * g.c).enumerate().for_each(|(i, dx)| {
        let gc = sub(g, dx.len() / (in_px * g.c));
        let dy = &dy[i * ipc * out_px * out..][..gc.out_rows() * out];
        with_cols(gc.out_rows() * k, |dcols| {
            let s = GemmShape { m: gc.out_rows(), k: out, n: k, trans_a: false, trans_b: false };
            sgemm_serial(s, dy, wm, dcols, false, 1.0);
            col2im_serial(dcols, &gc, dx);
        });
    });
}

/// `dwm = dyᵀ im2col(x)`, (out, kh·kw·c): each of at most [`DW_TASKS`] runs of images sums
/// `colsᵀ dy` over its chunks into its own (kh·kw·c, out) partial, the partials are added in
/// order, and the sum is transposed.
pub fn conv2d_bwd_weight(x: &[f32], dy: &[f32], g: &Window2d, out: usize, dwm: &mut [f32]) {
    let (k, in_px, out_px) = (g.patch_len(), g.h * g.w, g.out_h() * g.out_w());
    debug_assert_eq!(dwm.len(), out * k);
    let ipc = images_per_chunk(g);
    let chunks = g.n.div_ceil(ipc);
    // Whole chunks per task, so a task's sum does not depend on where another's starts.
    let per_task = chunks.div_ceil(DW_TASKS.min(chunks));
    let tasks = chunks.div_ceil(per_task);
    let mut partials = pool::take(tasks * k * out);
    partials.par_chunks_mut(k * out).enumerate().for_each(|(t, part)| {
        for (j, chunk) in (t * per_task..chunks.min((t + 1) * per_task)).enumerate() {
            let first = chunk * ipc;
            let gc = sub(g, ipc.min(g.n - first));
            let x = &x[first * in_px * g.c..][..gc.in_rows() * g.c];
            let dy = &dy[first * out_px * out..][..gc.out_rows() * out];
            with_cols(gc.out_rows() * k, |cols| {
                im2col_serial(x, &gc, cols);
                let s = GemmShape { m: k, k: gc.out_rows(), n: out, trans_a: true, trans_b: false };
                sgemm_serial(s, cols, dy, part, j > 0, 1.0);
            });
        }
    });
    let (first, rest) = partials.split_at_mut(k * out);
    for part in rest.chunks_exact(k * out) {
        first.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
    }
    // (k, out) -> (out, k).
    for (o, row) in dwm.chunks_exact_mut(k).enumerate() {
        row.iter_mut().enumerate().for_each(|(j, v)| *v = first[j * out + o]);
    }
    pool::give(partials);
}
