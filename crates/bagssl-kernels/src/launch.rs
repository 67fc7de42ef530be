//! Launch-configuration helpers shared by the family launchers.

use cudarc::driver::LaunchConfig;

use crate::ffi::{BAGSSL_COL_ROWS, BAGSSL_COL_TILE};
use crate::KernelError;

/// Threads per block of the 1-D kernels.
pub(crate) const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels (enough to fill any current GPU several times over).
const MAX_GRID: usize = 8192;
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

/// The (32 x BAGSSL_COL_ROWS) column-reduction blocks over `cols` columns.
pub(crate) fn cfg_cols(cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(BAGSSL_COL_TILE as usize).max(1) as u32, 1, 1),
        block_dim: (BAGSSL_COL_TILE, BAGSSL_COL_ROWS, 1),
        shared_mem_bytes: 0,
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
