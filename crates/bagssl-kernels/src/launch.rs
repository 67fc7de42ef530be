//! Launch-configuration helpers shared by the family launchers.

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};

use crate::ffi::{BAGSSL_COL_LANES, BAGSSL_COL_MAX_TILES, BAGSSL_COL_PASS, BAGSSL_COL_TILE};
use crate::{Gpu, KernelError};

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
/// (Mirrored in kernels/lab/check.cpp.) The kernels take any chunk size, so another target
/// ([`ColGrid::with_target`], timed by `bench_kernels`) moves only the time.
pub(crate) const COL_TARGET_BLOCKS: usize = 4 * 132;

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
        ColGrid::with_target(rows, cols, COL_TARGET_BLOCKS)
    }

    /// The grid aiming for `target_blocks` (at least 1) instead of [`COL_TARGET_BLOCKS`].
    pub(crate) fn with_target(rows: usize, cols: usize, target_blocks: usize) -> ColGrid {
        let vec = if cols.is_multiple_of(4) { 4 } else { 1 };
        let tiles = cols.div_ceil(BAGSSL_COL_TILE as usize * vec).max(1);
        let passes = rows.div_ceil(BAGSSL_COL_PASS as usize).max(1);
        let chunk_rows = (passes * tiles / target_blocks.max(1)).clamp(1, passes) * BAGSSL_COL_PASS as usize;
        // chunk_rows < rows + 32 <= 2^32 (rows * cols < 2^32 is checked by the launchers).
        ColGrid { tiles, chunks: rows.div_ceil(chunk_rows).max(1), chunk_rows: chunk_rows as u32 }
    }

    /// The grid of a column reduction (one arrival counter per tile), or why it cannot run.
    pub(crate) fn reduction(op: &str, rows: usize, cols: usize) -> Result<ColGrid, KernelError> {
        ColGrid::new(rows, cols).checked_reduction(op, cols)
    }

    /// `self`, when a column reduction can run on it (one arrival counter per tile).
    pub(crate) fn checked_reduction(self, op: &str, cols: usize) -> Result<ColGrid, KernelError> {
        let g = self;
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

/// The device addresses for a kernel argument struct (`BagsslBn*Args`, `BagsslAdamWMulti`, ...),
/// with the guards cudarc hands out, kept until the launch is queued (dropped after it).
pub(crate) struct DevPtrs<'a> {
    stream: &'a CudaStream,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> DevPtrs<'a> {
    pub(crate) fn new(stream: &'a CudaStream) -> DevPtrs<'a> {
        DevPtrs { stream, guards: Vec::new() }
    }

    /// The address of a buffer the kernel reads.
    pub(crate) fn read<T>(&mut self, s: &'a CudaSlice<T>) -> u64 {
        let (p, g) = s.device_ptr(self.stream);
        self.guards.push(g);
        p
    }

    /// The address of a buffer the kernel writes.
    pub(crate) fn write<T>(&mut self, s: &'a mut CudaSlice<T>) -> u64 {
        let (p, g) = s.device_ptr_mut(self.stream);
        self.guards.push(g);
        p
    }

    /// [`DevPtrs::read`] of an optional buffer: 0 (the kernels' "none") without one.
    pub(crate) fn read_opt<T>(&mut self, s: Option<&'a CudaSlice<T>>) -> u64 {
        s.map_or(0, |s| self.read(s))
    }

    /// [`DevPtrs::write`] of an optional buffer: 0 without one.
    pub(crate) fn write_opt<T>(&mut self, s: Option<&'a mut CudaSlice<T>>) -> u64 {
        s.map_or(0, |s| self.write(s))
    }
}

/// Launches `f`, whose one argument is the struct `args`, on `gpu`'s stream.
///
/// # Safety
/// `args` must be the kernel's parameter type, and every device address in it valid, on `gpu`,
/// for what the kernel reads and writes on the grid `cfg`.
pub(crate) unsafe fn launch_struct<T: DeviceRepr>(
    gpu: &Gpu,
    f: &CudaFunction,
    args: &T,
    cfg: LaunchConfig,
) -> Result<(), KernelError> {
    let mut b = gpu.stream().launch_builder(f);
    b.arg(args);
    // SAFETY: the caller's.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Pushes an optional output argument (a bf16 copy, Zc, ...): the buffer, or `null` (a
/// `CUdeviceptr` of 0: the kernel then writes none).
pub(crate) fn arg_or_null<'a, T>(b: &mut LaunchArgs<'a>, out: Option<&'a mut CudaSlice<T>>, null: &'a u64) {
    match out {
        Some(c) => b.arg(c),
        None => b.arg(null),
    };
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
        // An explicit block target (bench_kernels' one-wave grid): 16 tiles x 32 chunks of 128 rows.
        assert_eq!(ColGrid::with_target(4096, 2048, 512), ColGrid { tiles: 16, chunks: 32, chunk_rows: 128 });
        assert_eq!(ColGrid::with_target(4096, 2048, COL_TARGET_BLOCKS), ColGrid::new(4096, 2048));
        assert_eq!(ColGrid::with_target(64, 8, 0), ColGrid::with_target(64, 8, 1), "a target of 0 counts as 1");
        assert!(ColGrid::reduction("t", 1, 16384 * 32 + 1).is_err());
        assert!(ColGrid::reduction("t", 1, 16384 * 32).is_ok());
    }
}
