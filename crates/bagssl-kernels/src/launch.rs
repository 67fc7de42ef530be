//! Launch-configuration helpers shared by the family launchers.

use std::sync::OnceLock;

use cudarc::driver::LaunchConfig;

use crate::ffi::{BAGSSL_COL_LANES, BAGSSL_COL_MAX_TILES, BAGSSL_COL_PASS, BAGSSL_COL_TILE};
use crate::KernelError;

/// Threads per block of the 1-D kernels.
pub(crate) const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels (enough to fill any current GPU several times over).
pub(crate) const MAX_GRID: usize = 8192;
/// Grid cap of the kernels that write one f64 partial per block.
pub(crate) const MAX_PARTIALS: usize = 1024;

/// A grid-stride launch over `n` elements.
pub(crate) fn cfg_1d(n: usize) -> LaunchConfig {
    cfg_blocks(n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID))
}

/// `blocks` blocks of [`BLOCK`] threads.
pub(crate) fn cfg_blocks(blocks: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Number of blocks of a partial-sum kernel over `n` elements (its partial array's length).
pub(crate) fn partial_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_PARTIALS)
}

/// Blocks a column kernel aims for when the matrix is big enough: 4 per SM of a 132-SM H100/H200.
/// (Mirrored in kernels/lab/check.cpp.)
const COL_TARGET_BLOCKS: usize = 4 * 132;

/// [`COL_TARGET_BLOCKS`], or `BAGSSL_COL_BLOCKS` (read once) for timing other grids on a GPU: at
/// 4096 x 2048 the default makes 688 blocks, 1.3 waves of 4 per SM, and 512 (chunks of 128 rows)
/// one wave; the kernels take any chunk size, so this moves only the time.
fn col_target_blocks() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("BAGSSL_COL_BLOCKS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(COL_TARGET_BLOCKS)
    })
}

/// The 2-D grid of the column kernels (kernels/common.cuh): `tiles` column tiles of
/// `BAGSSL_COL_TILE` threads, each thread owning 4 adjacent columns (float4) when `cols % 4 == 0`,
/// else 1; `chunks` chunks of `chunk_rows` rows, a multiple of `BAGSSL_COL_PASS`, as large as allows
/// at least [`COL_TARGET_BLOCKS`] blocks (at 4096 x 2048: 16 tiles x 43 chunks of 96 rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColGrid {
    pub(crate) tiles: usize,
    pub(crate) chunks: usize,
    /// Rows per chunk, the kernels' `chunk_rows` argument.
    pub(crate) chunk_rows: u32,
}

impl ColGrid {
    pub(crate) fn new(rows: usize, cols: usize) -> ColGrid {
        let vec = if cols.is_multiple_of(4) { 4 } else { 1 };
        let tiles = cols.div_ceil(BAGSSL_COL_TILE as usize * vec).max(1);
        let passes = rows.div_ceil(BAGSSL_COL_PASS as usize).max(1);
        let chunk_rows = (passes * tiles / col_target_blocks()).clamp(1, passes) * BAGSSL_COL_PASS as usize;
        // chunk_rows < rows + 32 <= 2^32 (rows * cols < 2^32 is checked by the launchers).
        ColGrid { tiles, chunks: rows.div_ceil(chunk_rows).max(1), chunk_rows: chunk_rows as u32 }
    }

    /// The grid of a column reduction (one arrival counter per tile), or why it cannot run.
    pub(crate) fn reduction(op: &str, rows: usize, cols: usize) -> Result<ColGrid, KernelError> {
        let g = ColGrid::new(rows, cols);
        if g.tiles > BAGSSL_COL_MAX_TILES as usize {
            return Err(KernelError::Invalid(format!(
                "{op}: {cols} columns make {} column tiles, more than the {BAGSSL_COL_MAX_TILES} the column \
                 reductions support",
                g.tiles
            )));
        }
        Ok(g)
    }

    pub(crate) fn cfg(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.tiles as u32, self.chunks as u32, 1),
            block_dim: (BAGSSL_COL_TILE, BAGSSL_COL_LANES, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// `n` as the u32 the kernels index with.
pub(crate) fn u32_of(n: usize, what: &str) -> Result<u32, KernelError> {
    u32::try_from(n).map_err(|_| KernelError::Invalid(format!("{what} = {n} exceeds the kernels' u32 range")))
}

pub(crate) fn check_len(op: &str, what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Invalid(format!("{op}: {what} has {got} elements, expected {want}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col_grid_fills_the_gpu_and_covers_the_rows() {
        // The reference shape: 16 tiles of 128 columns x 43 chunks of 96 rows.
        assert_eq!(ColGrid::new(4096, 2048), ColGrid { tiles: 16, chunks: 43, chunk_rows: 96 });
        for (rows, cols) in
            [(1, 1), (3, 33), (17, 2050), (1000, 130), (4099, 33), (4099, 2050), (100_000, 7), (4096, 2048)]
        {
            let g = ColGrid::new(rows, cols);
            let c = g.chunk_rows as usize;
            assert_eq!(c % BAGSSL_COL_PASS as usize, 0, "{rows}x{cols}");
            assert!(g.chunks * c >= rows && (g.chunks - 1) * c < rows.max(1), "{rows}x{cols}: {g:?}");
            assert!(g.chunks <= 65535);
            // Enough blocks whenever the matrix has that many passes of 32 rows per tile.
            let passes = rows.div_ceil(BAGSSL_COL_PASS as usize);
            assert!(g.tiles * g.chunks >= COL_TARGET_BLOCKS.min(passes * g.tiles), "{rows}x{cols}: {g:?}");
        }
        assert!(ColGrid::reduction("t", 1, 16384 * 32 + 1).is_err());
        assert!(ColGrid::reduction("t", 1, 16384 * 32).is_ok());
    }
}
