//! Splitting row-major work over the rayon pool.
//!
//! Rows are the batch, so passes split into chunks of whole rows; per-column reductions give each
//! chunk its own f64 accumulator and add the chunks' results in order. The chunking depends only
//! on the shape (never on the thread count or on work stealing), so reductions are bit-for-bit
//! reproducible on any machine.

use std::ops::Range;

use rayon::prelude::*;

/// Fewest elements worth a rayon task: below this the fork/join cost (a few µs) outweighs the work.
pub const MIN_TASK_ELEMS: usize = 1 << 15;

/// Most tasks one pass is split into: enough for work stealing to balance two to eight busy cores.
const MAX_TASKS: usize = 8;

/// Rows per task for a pass over a (rows, cols) matrix.
pub fn rows_per_task(rows: usize, cols: usize) -> usize {
    let by_size = MIN_TASK_ELEMS.div_ceil(cols.max(1));
    let by_count = rows.div_ceil(MAX_TASKS);
    by_size.max(by_count).max(1)
}

/// Calls `f(first_row, chunk)` on consecutive chunks of whole rows of `out` (row length `cols`),
/// in parallel when the matrix is large enough.
pub fn for_rows_mut(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if cols == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / cols;
    let chunk = rows_per_task(rows, cols);
    if chunk >= rows {
        f(0, out);
    } else {
        out.par_chunks_mut(chunk * cols).enumerate().for_each(|(i, c)| f(i * chunk, c));
    }
}

/// Like [`for_rows_mut`] over a flat slice with no row structure (chunks of any length).
pub fn for_chunks_mut(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    for_rows_mut(out, 1, f)
}

/// A column reduction over `rows` rows: `f(row_range, acc)` adds the contribution of those rows
/// into `acc` (zeroed, `len` long); the chunks' accumulators are summed in row order.
pub fn reduce_rows(rows: usize, cols: usize, len: usize, f: impl Fn(Range<usize>, &mut [f64]) + Sync) -> Vec<f64> {
    let chunk = rows_per_task(rows, cols);
    if chunk >= rows {
        let mut acc = vec![0.0; len];
        f(0..rows, &mut acc);
        return acc;
    }
    let parts: Vec<Vec<f64>> = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0; len];
            f(c * chunk..rows.min((c + 1) * chunk), &mut acc);
            acc
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0.0; len]);
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(t, v)| *t += v);
    }
    total
}
