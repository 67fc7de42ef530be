//! bf16 GEMM with f32 accumulation: the opt-in fast path of [`super::matmul::sgemm`]
//! ([`super::CpuMatmulPrecision::Bf16`]).
//!
//! Computes what `sgemm` computes, except that every element of op(A) and op(B) is first rounded
//! to bf16 (round to nearest even, NaN kept quiet: `half::bf16::from_f32`, except that subnormals
//! become zero, which `vdpbf16ps` does to them anyway); the products of two bf16 values are exact
//! in f32 and are summed in f32.
//!
//! On a CPU with AVX512-BF16 (Zen 4, Sapphire Rapids) the work is `vdpbf16ps`: each f32 lane adds
//! two products per instruction, twice the multiply-adds of an f32 FMA. Layout, BLIS style:
//! - op(A) is packed into panels of [`MR`] rows, op(B) into panels of [`NR`] columns, both as
//!   k-pairs: one `u32` holds the bf16 of `k` (low half) and of `k + 1` (high half), the pair
//!   `vdpbf16ps` multiplies lane by lane. Odd `k` and the panels' edges are padded with zeros.
//!   The rounding happens while packing (`vcvtne2ps2bf16`, 32 values an instruction). B is packed
//!   whole, up front, in parallel; so is A when several column blocks share its rows, otherwise
//!   (tall products) each task packs its own rows of A one k-block at a time, into L2. The
//!   buffers are per thread and reused between calls.
//! - The micro-kernel keeps an `MR x NR` = 14 x 32 tile of C in 28 zmm accumulators; per k-pair it
//!   loads two B vectors and broadcasts 14 A pairs: 28 `vdpbf16ps` for 2 loads + 14 broadcasts.
//! - C is cut into blocks of at most [`MC_PANELS`] x [`NC_PANELS`] micro-tiles, the tasks of the
//!   rayon pool when the product is large (a whole number per thread); inside a block the loop
//!   order is k-block ([`KC`]), column panel, row panel, so the k-block of the block's A rows
//!   stays in L2 and one B micro-panel (KC x NR bf16 = 16 KiB) in L1 while the row panels go by.
//! - C is written once per k-block: `c = scale * acc` (or `c += scale * acc` when accumulating or
//!   past the first k-block), with masked loads/stores on the edge tiles. The last k-block can
//!   apply a per-column map on the way out ([`ColumnMap`]: a bias, eval-mode BatchNorm + ReLU).
//! - Symmetric products (`A^T A`) compute only the tiles that reach the upper triangle and mirror
//!   them ([`gemm_views_bf16_symmetric`]).
//!
//! Without AVX512-BF16 the operands are rounded to bf16 copies and the f32 GEMM runs on them:
//! the same products, summed in another order. `vdpbf16ps` treats bf16 subnormals as zero, so the
//! two paths differ there too (by less than 2^-126 per product).

use std::cell::Cell;

use rayon::prelude::*;

use super::matmul::{gemm_trivial, gemm_views, GemmShape, View, PAR_MIN_MACS};
use super::scratch::HighWater;

/// Rows of the micro-tile (A pairs broadcast per k-pair).
pub const MR: usize = 14;
/// Columns of the micro-tile: two zmm of 16 f32 lanes.
pub const NR: usize = 32;
/// k per block (even): A micro-panel 7 KiB, B micro-panel 16 KiB.
pub const KC: usize = 256;
/// Most row panels per task (MC = 336 rows: 168 KiB of A per k-block, in L2).
pub const MC_PANELS: usize = 24;
/// Most column panels per task (NC = 512 columns).
pub const NC_PANELS: usize = 16;

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN, made quiet), as f32 bits whose low
/// 16 bits are zero.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1));
    let quiet_nan = b | 0x0040_0000;
    (if b & 0x7FFF_FFFF > 0x7F80_0000 { quiet_nan } else { rounded }) & 0xFFFF_0000
}

/// `x` rounded to the nearest bf16 (ties to even), as `half::bf16::from_f32(x).to_f32()`.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x))
}

/// The k-pair `(lo, hi)` as `vdpbf16ps` reads it: bf16(lo) in the low half, bf16(hi) in the high.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    (bf16_bits(lo) >> 16) | bf16_bits(hi)
}

/// Whether the running CPU takes the `vdpbf16ps` path (cached by std after the first call).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = acc * c + scale * bf16(op(a)) @ bf16(op(b))` with f32 accumulation; the shapes, layouts
/// and panics of [`super::matmul::sgemm`].
pub fn sgemm_bf16(s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool, scale: f32) {
    let (av, bv) = s.views("sgemm_bf16", a, b);
    gemm_views_bf16(av, bv, c, accumulate, scale, s.m * s.n * s.k >= PAR_MIN_MACS);
}

/// [`sgemm_bf16`] without AVX512-BF16: the operands rounded to bf16, then the f32 GEMM. Public so
/// the tests can run it on any CPU.
pub fn sgemm_bf16_fallback(s: GemmShape, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool, scale: f32) {
    let (av, bv) = s.views("sgemm_bf16", a, b);
    gemm_views_bf16_fallback(av, bv, c, accumulate, scale, s.m * s.n * s.k >= PAR_MIN_MACS);
}

/// The strided-view form of [`sgemm_bf16`] (as [`gemm_views`] is of `sgemm`): `c` row-major
/// (a.rows, b.cols), multi-threaded when `par`.
pub fn gemm_views_bf16(a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool, scale: f32, par: bool) {
    if !has_avx512_bf16() {
        return gemm_views_bf16_fallback(a, b, c, accumulate, scale, par);
    }
    if gemm_trivial("gemm_views_bf16", a, b, c, accumulate) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    avx512::gemm(a, b, c, accumulate, scale, par);
}

/// A per-column map applied to each finished element of C before it is stored:
/// `v = (c - sub[j]) * mul[j] + add[j]`, then `max(v, 0)` when `relu` (NaN kept). Exactly the
/// arithmetic of eval-mode BatchNorm (+ ReLU) in [`super::bn`], separate multiply and add, so
/// the fused product equals the GEMM followed by that pass bit for bit.
#[derive(Clone, Copy, Debug)]
pub struct ColumnMap<'a> {
    pub sub: &'a [f32],
    pub mul: &'a [f32],
    pub add: &'a [f32],
    pub relu: bool,
}

/// `c = map(bf16(op(a)) @ bf16(op(b)))` ([`ColumnMap`] per column of C), or `None` without
/// AVX512-BF16: the caller then runs the GEMM and the map as two passes.
pub fn gemm_views_bf16_mapped(a: View<'_>, b: View<'_>, c: &mut [f32], map: ColumnMap<'_>, par: bool) -> Option<()> {
    if !has_avx512_bf16() {
        return None;
    }
    let n = b.cols;
    assert!(
        map.sub.len() == n && map.mul.len() == n && map.add.len() == n,
        "gemm_views_bf16_mapped: column map of {}/{}/{} for {n} columns",
        map.sub.len(),
        map.mul.len(),
        map.add.len()
    );
    if gemm_trivial("gemm_views_bf16_mapped", a, b, c, false) {
        if a.cols == 0 {
            // k = 0: c is zeros; the map still applies.
            for row in c.chunks_exact_mut(n) {
                for (j, v) in row.iter_mut().enumerate() {
                    let y = (*v - map.sub[j]) * map.mul[j] + map.add[j];
                    *v = if map.relu && y < 0.0 { 0.0 } else { y };
                }
            }
        }
        return Some(());
    }
    #[cfg(target_arch = "x86_64")]
    avx512::gemm_mapped(a, b, c, 1.0, Some(map), par);
    Some(())
}

/// `c = scale * bf16(op(a)) @ bf16(op(b))` for a product the caller knows is symmetric
/// (`op(b) = op(a)^T`, e.g. `A^T A`): only the micro-tiles that reach the upper triangle are
/// computed (45% fewer multiply-adds at 512 x 512), then the upper triangle is copied onto the
/// lower one with 16 x 16 register transposes. `None` without AVX512-BF16 (nothing written).
pub fn gemm_views_bf16_symmetric(a: View<'_>, b: View<'_>, c: &mut [f32], scale: f32, par: bool) -> Option<()> {
    if !has_avx512_bf16() {
        return None;
    }
    assert_eq!(
        a.rows, b.cols,
        "gemm_views_bf16_symmetric: a {}x{} b {}x{} is not square",
        a.rows, a.cols, b.rows, b.cols
    );
    if !gemm_trivial("gemm_views_bf16_symmetric", a, b, c, false) {
        #[cfg(target_arch = "x86_64")]
        {
            avx512::gemm_upper(a, b, c, scale, par);
            avx512::mirror_upper(c, a.rows);
        }
    }
    Some(())
}

/// [`gemm_views_bf16`] on any CPU: dense bf16-rounded copies of op(a) and op(b), then the f32 GEMM.
pub fn gemm_views_bf16_fallback(a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool, scale: f32, par: bool) {
    let round = |v: View<'_>| -> Vec<f32> {
        (0..v.rows).flat_map(|i| (0..v.cols).map(move |j| round_to_bf16(v.data[i * v.rs + j * v.cs]))).collect()
    };
    let (ar, br) = (round(a), round(b));
    gemm_views(View::row_major(&ar, a.rows, a.cols), View::row_major(&br, b.rows, b.cols), c, accumulate, scale, par);
}

/// One operand as the packer sees it: `len` rows or columns (the non-k dimension), `k` deep;
/// element (r, kk) is `data[r * sr + kk * sk]`.
#[derive(Clone, Copy)]
struct Operand<'d> {
    data: &'d [f32],
    len: usize,
    k: usize,
    sr: usize,
    sk: usize,
}

impl<'d> Operand<'d> {
    /// op(A): rows i, columns k.
    fn lhs(a: View<'d>) -> Self {
        Operand { data: a.data, len: a.rows, k: a.cols, sr: a.rs, sk: a.cs }
    }

    /// op(B): rows k, columns j.
    fn rhs(b: View<'d>) -> Self {
        Operand { data: b.data, len: b.cols, k: b.rows, sr: b.cs, sk: b.rs }
    }
}

/// Packs rows (or columns) `r0 .. r0 + R` of `op` into `out` (`kp * R` u32, `kp = ceil(k / 2)`):
/// `out[p * R + i]` is the pair (op(r0 + i, 2p), op(r0 + i, 2p + 1)); zeros past the edges.
/// The scalar form, for views with no unit stride (and the reference of the AVX-512 packers).
fn pack_panel<const R: usize>(op: Operand<'_>, r0: usize, out: &mut [u32]) {
    let Operand { data, len, k, sr, sk } = op;
    debug_assert_eq!(out.len(), k.div_ceil(2) * R);
    let rows = R.min(len - r0);
    let at = |r: usize, kk: usize| if r < rows && kk < k { data[(r0 + r) * sr + kk * sk] } else { 0.0 };
    for (p, dst) in out.chunks_exact_mut(R).enumerate() {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = pair(at(i, 2 * p), at(i, 2 * p + 1));
        }
    }
}

/// A raw pointer to C shared by the tasks, which write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: the pointer is only dereferenced by the tasks of one `gemm` call, each on its own
// disjoint block of C, while `gemm` holds the `&mut [f32]` it came from.
unsafe impl Send for CPtr {}
// SAFETY: as above: no two threads touch the same element.
unsafe impl Sync for CPtr {}

thread_local! {
    /// Packing buffers of the calling thread, reused between calls (taken out while in use, so a
    /// nested call on the same thread just allocates its own).
    static PACK: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
    /// A task's own k-block of A rows ([`APanels::PerBlock`]), reused likewise.
    static ABLOCK: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}
static PACK_A_MARK: HighWater = HighWater::new(0);
static PACK_B_MARK: HighWater = HighWater::new(0);
static ABLOCK_MARK: HighWater = HighWater::new(0);

/// Where a block task finds its packed A: all of A packed up front, or packed by the task itself.
#[derive(Clone, Copy)]
enum APanels<'a> {
    Whole(&'a [u32]),
    PerBlock(Operand<'a>),
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// The AVX512-BF16 GEMM; the caller checked the features, the shapes, and `m, n, k > 0`.
    pub(super) fn gemm(a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool, scale: f32, par: bool) {
        run(a, b, c, accumulate, scale, None, false, par)
    }

    /// [`gemm`] without accumulation, `map` applied to each finished element (checked lengths).
    pub(super) fn gemm_mapped(
        a: View<'_>,
        b: View<'_>,
        c: &mut [f32],
        scale: f32,
        map: Option<ColumnMap<'_>>,
        par: bool,
    ) {
        run(a, b, c, false, scale, map, false, par)
    }

    /// [`gemm`] without accumulation on the micro-tiles that reach the upper triangle only.
    pub(super) fn gemm_upper(a: View<'_>, b: View<'_>, c: &mut [f32], scale: f32, par: bool) {
        run(a, b, c, false, scale, None, true, par)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        a: View<'_>,
        b: View<'_>,
        c: &mut [f32],
        accumulate: bool,
        scale: f32,
        map: Option<ColumnMap<'_>>,
        upper: bool,
        par: bool,
    ) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let kp = k.div_ceil(2);
        let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
        // Blocks of C: at most MC_PANELS x NC_PANELS micro-tiles, cut finer when parallel so that
        // work stealing can balance about 4 blocks per thread.
        let mut rc = mp.div_ceil(MC_PANELS);
        let mut cc = np.div_ceil(NC_PANELS);
        if par {
            // Upper-triangle products leave some blocks empty: cut finer still.
            let want = if upper { 8 } else { 4 } * rayon::current_num_threads();
            while rc * cc < want && (cc < np || rc < mp) {
                if cc < np && (np / cc >= mp / rc || rc >= mp) {
                    cc += 1;
                } else {
                    rc += 1;
                }
            }
            // A whole number of blocks per thread, or the last one runs alone (tall products come
            // out at an odd count: 5408 rows make 17 blocks).
            let threads = rayon::current_num_threads();
            while (rc * cc) % threads != 0 && rc < mp {
                rc += 1;
            }
        }
        // With one column block per row block (tall products: evaluation batches, Gram blocks),
        // each task packs its own rows of A, a k-block at a time, just before using them (BLIS):
        // they stay in L2 instead of the whole packed A going out to memory and back. Otherwise
        // (several column blocks share the rows) A is packed once, whole, up front.
        let a_per_block = cc == 1;
        let (mut abuf, mut bbuf) = PACK.take();
        let a_len = if a_per_block { 0 } else { mp * kp * MR };
        PACK_A_MARK.reserve(&mut abuf, a_len);
        PACK_B_MARK.reserve(&mut bbuf, np * kp * NR);
        let (ap, bp) = (&mut abuf[..a_len], &mut bbuf[..np * kp * NR]);

        // Pack B (and A, when whole), a few panels per task.
        let (lhs, rhs) = (Operand::lhs(a), Operand::rhs(b));
        let pack_a = |(t, chunk): (usize, &mut [u32]), per: usize| {
            // SAFETY: `gemm` only runs after `has_avx512_bf16()` returned true.
            unsafe { pack_chunk::<MR>(lhs, t * per, chunk) };
        };
        let pack_b = |(t, chunk): (usize, &mut [u32]), per: usize| {
            // SAFETY: as above.
            unsafe { pack_chunk::<NR>(rhs, t * per, chunk) };
        };
        if par {
            let threads = rayon::current_num_threads();
            let per_a = mp.div_ceil(2 * threads).max(1);
            let per_b = np.div_ceil(2 * threads).max(1);
            if a_per_block {
                bp.par_chunks_mut(per_b * kp * NR).enumerate().for_each(|x| pack_b(x, per_b));
            } else {
                rayon::join(
                    || ap.par_chunks_mut(per_a * kp * MR).enumerate().for_each(|x| pack_a(x, per_a)),
                    || bp.par_chunks_mut(per_b * kp * NR).enumerate().for_each(|x| pack_b(x, per_b)),
                );
            }
        } else {
            if !a_per_block {
                pack_a((0, ap), mp);
            }
            pack_b((0, bp), np);
        }
        let a_src = if a_per_block { APanels::PerBlock(lhs) } else { APanels::Whole(ap) };

        let split = |total: usize, parts: usize, i: usize| (total * i / parts, total * (i + 1) / parts);
        let blocks: Vec<((usize, usize), (usize, usize))> =
            (0..rc).flat_map(|i| (0..cc).map(move |j| (split(mp, rc, i), split(np, cc, j)))).collect();
        let cptr = CPtr(c.as_mut_ptr());
        let bp = &*bp;
        let run = |&(rows, cols): &((usize, usize), (usize, usize))| {
            // SAFETY: features checked by the caller; the blocks partition the micro-tiles of C,
            // so each C element is written by one block; the packed buffers hold mp and np panels.
            unsafe { block(a_src, bp, cptr, m, n, kp, rows, cols, accumulate, scale, map, upper) };
        };
        if par {
            blocks.par_iter().for_each(run);
        } else {
            blocks.iter().for_each(run);
        }
        PACK.set((abuf, bbuf));
    }

    /// Packs the whole panels `out` holds (`out.len() / (kp * R)` of them, the first being panel
    /// `panel0` of `op`), as [`pack_panel`] does, with AVX-512 when one of the strides is 1.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_chunk<const R: usize>(op: Operand<'_>, panel0: usize, out: &mut [u32]) {
        let kp = op.k.div_ceil(2);
        if op.sr == 1 {
            pack_rows_contiguous::<R>(op, panel0, out);
        } else if op.sk == 1 {
            for (t, panel) in out.chunks_exact_mut(kp * R).enumerate() {
                pack_k_contiguous::<R>(op, (panel0 + t) * R, panel);
            }
        } else {
            for (t, panel) in out.chunks_exact_mut(kp * R).enumerate() {
                pack_panel::<R>(op, (panel0 + t) * R, panel);
            }
        }
    }

    /// The first `n` lanes (n <= 16).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `vcvtne2ps2bf16`: 32 bf16 from two f32 vectors, `lo` in words 0..16 and `hi` in words
    /// 16..32, rounded as [`bf16_bits`] does (nearest even, NaN made quiet) except that f32
    /// subnormals become zero, which `vdpbf16ps` does to bf16 subnormals anyway: the products
    /// are the same.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn to_bf16(lo: __m512i, hi: __m512i) -> __m512i {
        // SAFETY: __m512bh and __m512i are both 512 bits of plain data.
        unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_castsi512_ps(hi), _mm512_castsi512_ps(lo))) }
    }

    /// Case "rows contiguous" (`sr == 1`: op(A) transposed, op(B) as stored): for each k-pair,
    /// two lines of the chunk's rows in, one line of pairs per panel out.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_rows_contiguous<const R: usize>(op: Operand<'_>, panel0: usize, out: &mut [u32]) {
        let Operand { data, len, k, sk, .. } = op;
        let kp = k.div_ceil(2);
        let panels = out.len() / (kp * R);
        // Word 2r of the result is word r of the conversion (row r at k0), word 2r + 1 is word
        // 16 + r (row r at k0 + 1): one k-pair per u32 lane.
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        for p in 0..kp {
            let (k0, has1) = (2 * p, 2 * p + 1 < k);
            for t in 0..panels {
                let r0 = (panel0 + t) * R;
                let rows = R.min(len - r0);
                for v in 0..R.div_ceil(16) {
                    let (load, store) = (lanes(rows.saturating_sub(16 * v)), lanes(R - 16 * v));
                    let first = r0 + 16 * v;
                    // SAFETY: the loaded lanes are rows `first .. first + rows - 16 v` of k-lines
                    // k0 and k0 + 1 < k, inside `data` (checked by `View::new`); masked-off lanes
                    // are not accessed, so the pointers may point past the end (wrapping_add).
                    let (x0, x1) = unsafe {
                        let x0 = _mm512_maskz_loadu_epi32(load, data.as_ptr().wrapping_add(k0 * sk + first).cast());
                        let x1 = if has1 {
                            _mm512_maskz_loadu_epi32(load, data.as_ptr().wrapping_add((k0 + 1) * sk + first).cast())
                        } else {
                            _mm512_setzero_si512()
                        };
                        (x0, x1)
                    };
                    let pairs = _mm512_permutexvar_epi16(interleave, to_bf16(x0, x1));
                    let at = t * kp * R + p * R + 16 * v;
                    assert!(at + (R - 16 * v).min(16) <= out.len());
                    // SAFETY: the stored lanes are `out[at .. at + min(R - 16 v, 16)]`, in bounds.
                    unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), store, pairs) };
                }
            }
        }
    }

    /// Case "k contiguous" (`sk == 1`: op(A) as stored, op(B) transposed): per group of 16 rows
    /// and block of 16 k-pairs, the rows' pairs (one vector per row) are transposed in registers
    /// into one vector per k-pair.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_k_contiguous<const R: usize>(op: Operand<'_>, r0: usize, out: &mut [u32]) {
        let Operand { data, len, k, sr, .. } = op;
        let kp = k.div_ceil(2);
        let rows = R.min(len - r0);
        for g in 0..R.div_ceil(16) {
            let store = lanes(R - 16 * g);
            let real = rows.saturating_sub(16 * g).min(16);
            for pb in (0..kp).step_by(16) {
                let e0 = 2 * pb;
                let avail = k - e0;
                let (m0, m1) = (lanes(avail), lanes(avail.saturating_sub(16)));
                let mut v = [_mm512_setzero_si512(); 16];
                for (i, v) in v.iter_mut().enumerate().take(real) {
                    let src = data.as_ptr().wrapping_add((r0 + 16 * g + i) * sr + e0);
                    // SAFETY: row r0 + 16 g + i < len, elements e0 .. e0 + min(avail, 32) < k of it
                    // are inside `data`; masked-off lanes are not accessed.
                    let (x0, x1) = unsafe {
                        (
                            _mm512_maskz_loadu_epi32(m0, src.cast()),
                            _mm512_maskz_loadu_epi32(m1, src.wrapping_add(16).cast()),
                        )
                    };
                    // k e0 .. e0 + 32 of the row as 32 bf16 in order: u32 lane p is the pair
                    // (e0 + 2p, e0 + 2p + 1).
                    *v = to_bf16(x0, x1);
                }
                transpose16(&mut v);
                let np = (kp - pb).min(16);
                for (q, &v) in v.iter().enumerate().take(np) {
                    let at = (pb + q) * R + 16 * g;
                    assert!(at + (R - 16 * g).min(16) <= out.len());
                    // SAFETY: the stored lanes are `out[at .. at + min(R - 16 g, 16)]`, in bounds.
                    unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), store, v) };
                }
            }
        }
    }

    /// Copies the upper triangle of the (d, d) row-major `c` onto its lower triangle: 16 x 16
    /// blocks transposed in registers, the edge rows and columns (d % 16) one by one.
    pub(super) fn mirror_upper(c: &mut [f32], d: usize) {
        assert_eq!(c.len(), d * d);
        // SAFETY: `gemm_upper` ran before, so the features are present.
        unsafe { mirror_blocks(c, d) };
        let full = d / 16 * 16;
        for i in full..d {
            for j in 0..i {
                c[i * d + j] = c[j * d + i];
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn mirror_blocks(c: &mut [f32], d: usize) {
        let nb = d / 16;
        for bi in 0..nb {
            for bj in 0..=bi {
                // Block (bj, bi) of the upper triangle, transposed, is block (bi, bj) below.
                let mut r = [_mm512_setzero_si512(); 16];
                for (q, v) in r.iter_mut().enumerate() {
                    let at = (bj * 16 + q) * d + bi * 16;
                    assert!(at + 16 <= c.len());
                    // SAFETY: 16 floats from `at`, inside `c` (checked).
                    *v = unsafe { _mm512_loadu_si512(c.as_ptr().add(at).cast()) };
                }
                transpose16(&mut r);
                for (q, &v) in r.iter().enumerate() {
                    // On the diagonal block only the lanes left of the diagonal (j < q).
                    let mask: __mmask16 = if bi == bj { ((1u32 << q) - 1) as __mmask16 } else { 0xFFFF };
                    let at = (bi * 16 + q) * d + bj * 16;
                    assert!(at + 16 <= c.len());
                    // SAFETY: the stored lanes are `c[at .. at + 16]`, inside `c` (checked).
                    unsafe { _mm512_mask_storeu_epi32(c.as_mut_ptr().add(at).cast(), mask, v) };
                }
            }
        }
    }

    /// Transposes the 16 x 16 u32 matrix whose rows are `r`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn transpose16(r: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let b = 4 * i;
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for h in 0..2 {
            let b = 8 * h;
            for j in 0..4 {
                t[b + j] = _mm512_shuffle_i32x4::<0x88>(r[b + j], r[b + 4 + j]);
                t[b + 4 + j] = _mm512_shuffle_i32x4::<0xDD>(r[b + j], r[b + 4 + j]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[8 + j]);
            r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(t[j], t[8 + j]);
        }
    }

    /// Row panels `rows.0 .. rows.1` x column panels `cols.0 .. cols.1` of C, all of k.
    ///
    /// SAFETY: AVX512-BF16 present; `c` points to `m * n` f32 that no other thread touches in
    /// this block; `ap` and `bp` hold the packed panels of the whole operands.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn block(
        a_src: APanels<'_>,
        bp: &[u32],
        c: CPtr,
        m: usize,
        n: usize,
        kp: usize,
        rows: (usize, usize),
        cols: (usize, usize),
        accumulate: bool,
        scale: f32,
        map: Option<ColumnMap<'_>>,
        upper: bool,
    ) {
        let kcp = KC / 2;
        let mut own = match a_src {
            APanels::PerBlock(_) => ABLOCK.take(),
            APanels::Whole(_) => Vec::new(),
        };
        for p0 in (0..kp).step_by(kcp) {
            let pl = kcp.min(kp - p0);
            let load_c = accumulate || p0 > 0;
            let last = p0 + pl == kp;
            // This k-block of our rows of A: panel ip's pairs at `apanels[ip * stride + off..]`.
            let (apanels, stride, off, first) = match a_src {
                APanels::Whole(ap) => (ap, kp * MR, p0 * MR, 0),
                APanels::PerBlock(op) => {
                    let len = (rows.1 - rows.0) * pl * MR;
                    ABLOCK_MARK.reserve(&mut own, len);
                    let kk = 2 * p0;
                    let sub = Operand { data: &op.data[kk * op.sk..], k: (op.k - kk).min(2 * pl), ..op };
                    pack_chunk::<MR>(sub, rows.0, &mut own[..len]);
                    (&own[..len], pl * MR, 0, rows.0)
                }
            };
            for jp in cols.0..cols.1 {
                let bpan = &bp[jp * kp * NR + p0 * NR..][..pl * NR];
                let nc = NR.min(n - jp * NR);
                // The map's columns of this panel, applied as the last k-block stores C. (A match,
                // not `Option::map`: a closure would not inherit the target features `new` needs.)
                #[allow(clippy::manual_map)]
                let regs = match map.filter(|_| last) {
                    Some(m) => Some(MapRegs::new(&m, jp, nc)),
                    None => None,
                };
                for ip in rows.0..rows.1 {
                    if upper && (jp + 1) * NR <= ip * MR {
                        continue; // every column of the tile is left of its first row
                    }
                    let apan = &apanels[(ip - first) * stride + off..][..pl * MR];
                    let mr = MR.min(m - ip * MR);
                    // SAFETY: the tile (ip * MR .. + mr, jp * NR .. + nc) lies inside C (m x n).
                    let ct = unsafe { c.0.add(ip * MR * n + jp * NR) };
                    // SAFETY: the panels hold `pl` pairs; the tile is inside C and ours alone.
                    let (ap, bp) = (apan.as_ptr(), bpan.as_ptr());
                    // SAFETY: as above.
                    unsafe {
                        match &regs {
                            Some(r) => kernel::<true>(pl, ap, bp, ct, n, mr, nc, load_c, scale, r),
                            None => kernel::<false>(pl, ap, bp, ct, n, mr, nc, load_c, scale, &MapRegs::none()),
                        }
                    }
                }
            }
        }
        if let APanels::PerBlock(_) = a_src {
            ABLOCK.set(own);
        }
    }

    /// One MR x NR tile: `c = scale * acc` (or `c += scale * acc` when `load_c`) where `acc` is the
    /// sum over `kp` pairs of A panel (kp x MR pairs) times B panel (kp x NR pairs). Only the
    /// `rows x cols` corner of the tile is read and written (row stride `ldc`).
    ///
    /// SAFETY: AVX512-BF16 present; `a` holds `kp * MR` and `b` `kp * NR` u32; `c` rows
    /// `0..rows`, columns `0..cols` (row stride `ldc`) are valid for reads and writes.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel<const MAPPED: bool>(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load_c: bool,
        scale: f32,
        map: &MapRegs,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            // SAFETY: p < kp, so the B pair row p (NR u32) and the A pairs p (MR u32) are inside
            // the panels; unaligned loads.
            unsafe {
                let bv = b.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bv.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bv.add(16).cast()));
                let av = a.add(p * MR);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(av.add(i).read() as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], b0, ai);
                    acc[1] = _mm512_dpbf16_ps(acc[1], b1, ai);
                }
            }
        }
        let s = _mm512_set1_ps(scale);
        if rows == MR && cols == NR {
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: full tile: row i, columns 0..32 are inside C.
                unsafe {
                    let row = c.add(i * ldc);
                    for (h, &v) in acc.iter().enumerate() {
                        let dst = row.add(16 * h);
                        let out =
                            if load_c { _mm512_fmadd_ps(v, s, _mm512_loadu_ps(dst)) } else { _mm512_mul_ps(v, s) };
                        let out = if MAPPED { map.apply(out, h) } else { out };
                        _mm512_storeu_ps(dst, out);
                    }
                }
            }
        } else {
            let masks = tile_masks(cols);
            for (i, acc) in acc.iter().enumerate() {
                if i >= rows {
                    break;
                }
                // SAFETY: row i < rows; the masks keep the columns below `cols`, and masked
                // lanes are neither read nor written.
                unsafe {
                    let row = c.add(i * ldc);
                    for h in 0..2 {
                        // wrapping: past the last row of C the second half may lie out of bounds
                        // (fully masked, never dereferenced).
                        let dst = row.wrapping_add(16 * h);
                        let out = if load_c {
                            _mm512_fmadd_ps(acc[h], s, _mm512_maskz_loadu_ps(masks[h], dst))
                        } else {
                            _mm512_mul_ps(acc[h], s)
                        };
                        let out = if MAPPED { map.apply(out, h) } else { out };
                        _mm512_mask_storeu_ps(dst, masks[h], out);
                    }
                }
            }
        }
    }

    /// Lane masks of a tile's two column halves when it has `cols` (<= NR) columns.
    #[inline(always)]
    fn tile_masks(cols: usize) -> [__mmask16; 2] {
        let lane_mask = |from: usize| -> __mmask16 {
            let w = cols.saturating_sub(from).min(16);
            ((1u32 << w) - 1) as __mmask16
        };
        [lane_mask(0), lane_mask(16)]
    }

    /// A [`ColumnMap`]'s values for one column panel, in registers (masked past the edge).
    #[derive(Clone, Copy)]
    pub(super) struct MapRegs {
        sub: [__m512; 2],
        mul: [__m512; 2],
        add: [__m512; 2],
        relu: bool,
    }

    impl MapRegs {
        /// Column panel `jp` of `map` (its `cols` columns; the rest of the lanes zero).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        fn new(map: &ColumnMap<'_>, jp: usize, cols: usize) -> Self {
            let masks = tile_masks(cols);
            let ld = |v: &[f32], h: usize| {
                let v = &v[jp * NR..];
                // SAFETY: masked lanes are not read; the unmasked ones are the first `cols`
                // entries of `v`, which the caller checked are there.
                unsafe { _mm512_maskz_loadu_ps(masks[h], v.as_ptr().wrapping_add(16 * h)) }
            };
            MapRegs {
                sub: [ld(map.sub, 0), ld(map.sub, 1)],
                mul: [ld(map.mul, 0), ld(map.mul, 1)],
                add: [ld(map.add, 0), ld(map.add, 1)],
                relu: map.relu,
            }
        }

        /// Identity values (never applied: the unmapped kernel ignores them).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        fn none() -> Self {
            let z = [_mm512_setzero_ps(); 2];
            MapRegs { sub: z, mul: z, add: z, relu: false }
        }

        /// `(v - sub) * mul + add`, then `max(0, v)`: y when y is NaN (the second operand wins),
        /// as the scalar `if y < 0 { 0 } else { y }` does; and -0 stays -0.
        #[inline(always)]
        fn apply(&self, v: __m512, h: usize) -> __m512 {
            // SAFETY: only called from the AVX-512 kernel (the features are enabled there).
            unsafe {
                let y = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, self.sub[h]), self.mul[h]), self.add[h]);
                if self.relu {
                    _mm512_max_ps(_mm512_setzero_ps(), y)
                } else {
                    y
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The SIMD packers against the scalar one, all layouts, edges and odd k.
        #[test]
        fn simd_packing_matches_scalar() {
            if !has_avx512_bf16() {
                return;
            }
            for (len, k) in [(1usize, 1usize), (13, 3), (14, 33), (29, 64), (33, 31), (70, 65), (5, 300)] {
                let data: Vec<f32> = (0..len * k).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
                let kp = k.div_ceil(2);
                for (sr, sk) in [(1, len), (k, 1)] {
                    let op = Operand { data: &data, len, k, sr, sk };
                    let check = |r: usize, simd: &dyn Fn(&mut [u32])| {
                        let panels = len.div_ceil(r);
                        let mut want = vec![0u32; panels * kp * r];
                        let mut got = vec![7u32; panels * kp * r];
                        for (t, p) in want.chunks_exact_mut(kp * r).enumerate() {
                            match r {
                                MR => pack_panel::<MR>(op, t * r, p),
                                _ => pack_panel::<NR>(op, t * r, p),
                            }
                        }
                        simd(&mut got);
                        assert_eq!(got, want, "len {len} k {k} strides ({sr}, {sk}) R {r}");
                    };
                    // SAFETY: AVX512-BF16 detected above.
                    check(MR, &|o| unsafe { pack_chunk::<MR>(op, 0, o) });
                    // SAFETY: as above.
                    check(NR, &|o| unsafe { pack_chunk::<NR>(op, 0, o) });
                }
            }
        }
    }
}
