// batchnorm.cu — BatchNorm1d over the rows of a (rows, cols) matrix, PyTorch semantics
// (DESIGN.md §3): training forward with batch statistics (biased variance to normalise, unbiased
// for the running statistics) and an optional fused ReLU, its backward, the eval forward with
// running statistics, and the running-statistics EMA.
//
// Build: cargo xtask build-kernels
// CPU reference: crates/bagssl-autograd/src/cpu.rs (bn_*); parity: crates/bagssl-autograd/tests/cuda_parity.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
// Training forward = bn_stats_fwd_f32 (column reduction) + bn_apply_fwd_f32 (elementwise).
// Backward, with g = dy * (y > 0) when relu, xhat = (x - mean) * invstd:
//   dbeta = sum_r g, dgamma = sum_r g * xhat                          (bn_bwd_reduce_f32)
//   dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma)         (bn_bwd_apply_f32)
//
// Versions:
//   1: column reductions with a (32 x 16) block per 32 columns, exact two-pass mean/variance
//      (the column is re-read from L2 for the second pass), elementwise kernels grid-stride.
//      H200, 4096 x 2048: forward 0.186 ms, backward 0.187 ms (9 % / 17 % of a copy's GB/s): 64
//      blocks for 132 SMs, and a 64-bit `i % cols` per element.
//   2: every kernel but the EMA on the 2-D column-tile grid of common.cuh: (32 x 8) blocks, float4
//      columns when cols % 4 == 0, grid.y = row chunks (launch.rs `ColGrid`: >= 528 blocks, 4 per
//      SM of an H100/H200, when the matrix is big enough; 43 chunks of 96 rows x 16 tiles of 128
//      columns = 688 blocks at 4096 x 2048). The reductions write per-chunk partials to a scratch
//      buffer and the last block of each column tile (atomic arrival counter) combines them in f64
//      in a fixed order: no second kernel, no float atomics, deterministic. Statistics: per-chunk
//      sum, and shifted mean and M2 (exact two-pass over registers), Chan's combination (bn_stats).
//      Elementwise kernels: per-thread column parameters in registers, a 32-bit column index, one
//      64-bit row offset per row, 4 rows' loads in flight, the rows of the training kernels walked
//      last-first (the reduction before them read those last: L2 hits).
//   3: bn_apply_fwd_f32 and bn_bwd_apply_f32 take an optional (null: none) bf16 output y16 / dx16
//      and store bf16_bits of every f32 they store (4 x bf16 in one 8-byte store on the float4
//      path): the bf16 GEMM operand copy (GpuBuf::bf16, installed by the launcher when the GEMMs
//      run in bf16; BAGSSL_BN_BF16=0 turns it off) without cast_bf16_f32 re-reading the output:
//      +2 B written per element (16.8 MB at 4096 x 2048), -6 B of the cast kernel. Separate
//      template instances with and without the copy: the f32 results and the f32-only path are v2's.
//   4: the bias of the Linear layer before the BatchNorm, folded in (`bias`, null: none): every
//      kernel reads x and normalises x + bias, computed in registers exactly as bias_add_fwd_f32
//      stores it (one f32 add), so the results are those of bias_add then BatchNorm, bit for bit,
//      without bias_add's pass (read 33.5 MB, write 33.5 MB at 4096 x 2048). bn_bwd_apply_f32 also
//      sums dx over the rows (`dbias`, null: none): the bias gradient, without sum_rows_f32
//      re-reading dx; its f32 lane sums and f64 chunk sums are col_sums' (common.cuh).
//   5: the backward's ReLU mask without y: with y null, both backward kernels recompute the
//      forward's pre-ReLU value from the x (+ bias) they read anyway, v = (x - mean) * invstd *
//      gamma + beta, bn_apply's expression and so its bits, and mask where !(v > 0), which is where
//      !(y > 0). -33.5 MB read per kernel at 4096 x 2048 (235 -> 168 MB for the backward).
//      bn_bwd_apply_f32's largest instance (bf16 copy, dbias, mask from x) takes 96 registers: 2
//      blocks per SM, still 64 KB of loads in flight per SM (128 B per thread), ~2.5x what the
//      copy rate needs; capped at 80 it spills. BAGSSL_BN_MASK_FROM_Y=1 (Gpu::set_bn_mask_from_output)
//      restores the v4 loads for an A/B timing (bench-kernels prints both).
//   bn_ema_multi_f32: the running-statistics update of every BatchNorm in one launch (grid.y =
//   vector; a step's six 2048-float updates were six launches).
//
// Napkin math (4096 x 2048 f32, one matrix = 33.5 MB; H200 copy 4148 GB/s, HBM3e 4.8 TB/s peak):
//   forward: stats read x (33.5 MB) + apply read x, write y (67 MB) = 100 MB, of which the second
//     read of x can largely hit the 50 MB L2 -> 67-100 MB of DRAM traffic, 16-24 us at the copy
//     rate. The bench counts 67 MB (x in, y out); 60 % of the copy rate is 27 us.
//   backward: reduce reads dy, x, y (100 MB), apply reads them again and writes dx (134 MB) = 235 MB
//     (without ReLU y is not read: 167 MB). The bench counts 134 MB; 60 % of the copy rate is 54 us,
//     which needs ~4.3 TB/s on the nominal bytes, i.e. the L2 hits of the reversed apply walk.
//   scratch: 3 (forward) or 2 (backward) floats per column per chunk (1 MB / 0.7 MB at 43 chunks),
//     written once, read once by the last blocks.

#include "common.cuh"

// The V bias values of the thread's columns, or zeros (no bias: x + 0 is x).
template <int V>
__device__ __forceinline__ void load_bias(const float* __restrict__ bias, uint32_t c0, float (&b)[V]) {
#pragma unroll
    for (int c = 0; c < V; ++c) b[c] = 0.0f;
    if (bias) load_cols<V>(bias + c0, b);
}

// x + bias for V loaded values, in place.
template <int V>
__device__ __forceinline__ void add_bias(float (&v)[V], const float (&b)[V]) {
#pragma unroll
    for (int c = 0; c < V; ++c) v[c] += b[c];
}

// Arrival counters of the column reductions of this module (see last_chunk_block).
__device__ unsigned int bn_tile_arrivals[BAGSSL_COL_MAX_TILES];

// ---------------------------------------------------------------------------------------------
// Batch statistics, from per-chunk partials combined by the last block of each column tile.
// - mean: plain sums, f32 per lane (as v1) and per block, then f64 over the chunks (or K + md, below).
// - M2 = sum (x - mean)^2: every value is shifted by the column's first value K = x[0, c]
//   (d = x - K is exact when x is within a factor 2 of K, e.g. 1000 + N(0, 1)); each lane keeps the
//   count, shifted mean and M2 of its rows, each pass of BAGSSL_COL_RPT rows computed exactly in two
//   passes over registers and merged with Chan's formula
//     n = na + nb, delta = mb - ma, mean = ma + delta nb / n, M2 = M2a + M2b + delta^2 na nb / n,
//   then the lanes merge the same way in a fixed tree, and the block writes its chunk's shifted
//   mean m_i and M2_i. The last block adds the chunks in f64: md = sum n_i m_i / N, M2 = sum M2_i +
//   n_i (m_i - md)^2 (two passes: no cancellation).
// Why this is as good as the v1 two-pass (and the float64 two-pass reference): the shifted means
// are of the order of the spread, not of |mean|, so no term is large against M2 and |mean| >> std
// costs nothing; if K is an outlier, M2 >= (K - mean)^2 bounds every error by ~ f32 eps * sqrt(N)
// relative. The shifted means then carry an absolute error ~ eps |K - mean|, which is why the mean
// is K + md only when |md| < |mean| and the plain sums' mean otherwise.
template <int V>
__device__ void bn_stats(const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ mean,
                         float* __restrict__ invstd, float* __restrict__ var_unbiased, float* __restrict__ partial,
                         const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    const uint32_t tx = threadIdx.x, ty = threadIdx.y, n_chunks = gridDim.y;
    float shift[V] = {}, n = 0.0f, sx[V] = {}, m[V] = {}, m2[V] = {}, bb[V] = {};
    if (s.ok) {
        load_bias<V>(bias, s.c0, bb);
        load_cols<V>(x + s.c0, shift);
        add_bias<V>(shift, bb);
        for (uint32_t p = s.r0; p < s.r1; p += BAGSSL_COL_PASS) {
            const uint32_t left = s.r1 - p;
            float d[BAGSSL_COL_RPT][V];
#pragma unroll
            for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k) {  // clamped rows: all loads in bounds, issued together
                const uint32_t o = ty + k * BAGSSL_COL_LANES;
                load_cols<V>(x + (size_t)(p + (o < left ? o : left - 1)) * prm.cols + s.c0, d[k]);
                add_bias<V>(d[k], bb);
            }
            const uint32_t np = left > ty ? (left - ty + BAGSSL_COL_LANES - 1) / BAGSSL_COL_LANES : 0;
            if (np == 0) break;  // the later passes have even fewer rows
            const float nb = (float)(np < BAGSSL_COL_RPT ? np : BAGSSL_COL_RPT);
            const float nn = n + nb, fm = nb / nn, f2 = n * nb / nn;
#pragma unroll
            for (int c = 0; c < V; ++c) {
                float sum = 0.0f;
#pragma unroll
                for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                    if (k < np) {
                        sx[c] += d[k][c];
                        sum += (d[k][c] -= shift[c]);
                    }
                const float mb = sum / nb;
                float q = 0.0f;
#pragma unroll
                for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                    if (k < np) q += (d[k][c] - mb) * (d[k][c] - mb);
                const float delta = mb - m[c];
                m[c] += delta * fm;
                m2[c] += q + delta * delta * f2;
            }
            n = nn;
        }
    }
    // Merge the lanes: a fixed tree in shared memory.
    struct Tree {
        float n[BAGSSL_COL_LANES][BAGSSL_COL_TILE];
        float v[3][BAGSSL_COL_LANES][V][BAGSSL_COL_TILE];  // sum, shifted mean, M2
    };
    static_assert(sizeof(Tree) <= BAGSSL_COL_SMEM_BYTES, "col_smem too small");
    Tree& tree = *reinterpret_cast<Tree*>(col_smem());
    auto& sh_n = tree.n;
    auto& sh = tree.v;
    sh_n[ty][tx] = n;
#pragma unroll
    for (int c = 0; c < V; ++c) sh[0][ty][c][tx] = sx[c], sh[1][ty][c][tx] = m[c], sh[2][ty][c][tx] = m2[c];
    __syncthreads();
#pragma unroll
    for (uint32_t h = BAGSSL_COL_LANES / 2; h > 0; h >>= 1) {
        if (ty < h) {
            const float nb = sh_n[ty + h][tx];
            if (nb > 0.0f) {
                const float nn = n + nb, fm = nb / nn, f2 = n * nb / nn;
#pragma unroll
                for (int c = 0; c < V; ++c) {
                    const float delta = sh[1][ty + h][c][tx] - m[c];
                    sx[c] += sh[0][ty + h][c][tx];
                    m[c] += delta * fm;
                    m2[c] += sh[2][ty + h][c][tx] + delta * delta * f2;
                    sh[0][ty][c][tx] = sx[c], sh[1][ty][c][tx] = m[c], sh[2][ty][c][tx] = m2[c];
                }
                n = nn;
                sh_n[ty][tx] = n;
            }
        }
        __syncthreads();
    }
    // partial[(j * n_chunks + chunk) * cols + c]: j = 0 sum, 1 shifted mean, 2 M2.
    auto part = [&](uint32_t j, uint32_t i) { return partial + ((size_t)j * n_chunks + i) * prm.cols + s.c0; };
    if (s.ok && ty == 0) {
        store_cols<V>(part(0, blockIdx.y), sx);
        store_cols<V>(part(1, blockIdx.y), m);
        store_cols<V>(part(2, blockIdx.y), m2);
    }
    if (!last_chunk_block(bn_tile_arrivals)) return;

    // The last block of this column tile: combine the chunks in f64, chunk i holding
    // min(chunk_rows, rows - i chunk_rows) rows; lane ty takes the chunks ty, ty + LANES, ...
    auto rows_of = [&](uint32_t i) {
        const uint32_t rest = prm.rows - i * chunk_rows;
        return (double)(rest < chunk_rows ? rest : chunk_rows);
    };
    double a[2][V] = {}, b[1][V] = {};
    if (s.ok)
#pragma unroll 4
        for (uint32_t i = ty; i < n_chunks; i += BAGSSL_COL_LANES) {
            const double ni = rows_of(i);
            float si[V], mi[V];
            load_cols_cg<V>(part(0, i), si);
            load_cols_cg<V>(part(1, i), mi);
#pragma unroll
            for (int c = 0; c < V; ++c) a[0][c] += (double)si[c], a[1][c] += ni * (double)mi[c];
        }
    lane_sum(a);
    const double rows = (double)prm.rows;
    double md[V];
#pragma unroll
    for (int c = 0; c < V; ++c) md[c] = a[1][c] / rows;
    if (s.ok)
#pragma unroll 4
        for (uint32_t i = ty; i < n_chunks; i += BAGSSL_COL_LANES) {
            const double ni = rows_of(i);
            float mi[V], m2i[V];
            load_cols_cg<V>(part(1, i), mi);
            load_cols_cg<V>(part(2, i), m2i);
#pragma unroll
            for (int c = 0; c < V; ++c) {
                const double e = (double)mi[c] - md[c];
                b[0][c] += (double)m2i[c] + ni * e * e;
            }
        }
    lane_sum(b);
    if (s.ok && ty == 0) {
        float mo[V], io[V], vo[V];
#pragma unroll
        for (int c = 0; c < V; ++c) {
            // Of the two means, the one with the smaller error bound: f32 eps times |mean| (the
            // plain sums) or times |mean - K| (the shifted means, e.g. 1000 + N(0, 1)).
            const double plain = a[0][c] / rows;
            mo[c] = (float)(fabs(md[c]) < fabs(plain) ? (double)shift[c] + md[c] : plain);
            io[c] = (float)(1.0 / sqrt(b[0][c] / rows + (double)prm.eps));
            vo[c] = prm.rows > 1 ? (float)(b[0][c] / (rows - 1.0)) : 0.0f;
        }
        store_cols<V>(mean + s.c0, mo);
        store_cols<V>(invstd + s.c0, io);
        store_cols<V>(var_unbiased + s.c0, vo);
    }
}

// mean, invstd = 1 / sqrt(biased var + eps), unbiased var (0 when rows = 1) per column of x + bias
// (bias: cols floats, or null). Grid: launch.rs `ColGrid` (chunk_rows rows per grid.y); partial:
// 3 * gridDim.y * cols floats. At most 64 registers: 4 blocks per SM, as ColGrid plans (65 with the bias).
extern "C" __global__ void __launch_bounds__(BAGSSL_COL_TILE * BAGSSL_COL_LANES, 4)
    bn_stats_fwd_f32(const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ mean,
                     float* __restrict__ invstd, float* __restrict__ var_unbiased, float* __restrict__ partial,
                     BagsslBnParams prm, uint32_t chunk_rows) {
    if (prm.cols % 4 == 0)
        bn_stats<4>(x, bias, mean, invstd, var_unbiased, partial, prm, chunk_rows);
    else
        bn_stats<1>(x, bias, mean, invstd, var_unbiased, partial, prm, chunk_rows);
}

// ---------------------------------------------------------------------------------------------
// W16: also write the bf16 copy y16 (a separate instance, so the f32-only one is v2's code).
template <int V, bool W16>
__device__ void bn_apply(const float* __restrict__ x, const float* __restrict__ bias, const float* __restrict__ mean,
                         const float* __restrict__ invstd,
                         const float* __restrict__ gamma, const float* __restrict__ beta, float* __restrict__ y,
                         uint16_t* __restrict__ y16, const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    if (!s.ok) return;
    float m[V], is[V], g[V], b[V], bb[V];
    load_bias<V>(bias, s.c0, bb);
    load_cols<V>(mean + s.c0, m);
    load_cols<V>(invstd + s.c0, is);
    load_cols<V>(gamma + s.c0, g);
    load_cols<V>(beta + s.c0, b);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched(
        s, prm.cols, true,  // last-first: bn_stats read those rows last
        [&](size_t o, uint32_t k) {
            load_cols<V>(x + o, v[k]);
            add_bias<V>(v[k], bb);
        },
        [&](size_t o, uint32_t k) {
#pragma unroll
            for (int c = 0; c < V; ++c) {
                v[k][c] = (v[k][c] - m[c]) * is[c] * g[c] + b[c];
                if (prm.relu && v[k][c] < 0.0f) v[k][c] = 0.0f;  // NaN propagates, as in PyTorch
            }
            store_cols<V>(y + o, v[k]);
            if (W16) store_cols_bf16<V>(y16 + o, v[k]);
        });
}

// y = (x + bias - mean) * invstd * gamma + beta, then ReLU when prm.relu. Grid: `ColGrid`, as
// bn_stats_fwd_f32. bias: as bn_stats_fwd_f32. y16: null, or rows * cols bf16 (as bit patterns) that
// get bf16_bits of every y: the bf16 GEMM operand copy of y (GpuBuf::bf16), without a cast kernel
// re-reading y. At most 64 registers (4 blocks per SM, as ColGrid plans; the bias took it to 70).
extern "C" __global__ void __launch_bounds__(BAGSSL_COL_TILE * BAGSSL_COL_LANES, 4)
    bn_apply_fwd_f32(const float* __restrict__ x, const float* __restrict__ bias, const float* __restrict__ mean,
                     const float* __restrict__ invstd, const float* __restrict__ gamma, const float* __restrict__ beta,
                     float* __restrict__ y, uint16_t* __restrict__ y16, BagsslBnParams prm, uint32_t chunk_rows) {
    if (prm.cols % 4 == 0) {
        if (y16)
            bn_apply<4, true>(x, bias, mean, invstd, gamma, beta, y, y16, prm, chunk_rows);
        else
            bn_apply<4, false>(x, bias, mean, invstd, gamma, beta, y, y16, prm, chunk_rows);
    } else {
        if (y16)
            bn_apply<1, true>(x, bias, mean, invstd, gamma, beta, y, y16, prm, chunk_rows);
        else
            bn_apply<1, false>(x, bias, mean, invstd, gamma, beta, y, y16, prm, chunk_rows);
    }
}

// ---------------------------------------------------------------------------------------------
// g = dy, or (unless MX: the mask is applied later, from x) 0 where the ReLU output y is not
// positive (NaN included).
template <int V, bool MX>
__device__ __forceinline__ void relu_grad(const float* __restrict__ dy, const float* __restrict__ y, bool relu,
                                          size_t o, float (&g)[V]) {
    load_cols<V>(dy + o, g);
    if (!MX && relu) {
        float yv[V];
        load_cols<V>(y + o, yv);
#pragma unroll
        for (int c = 0; c < V; ++c)
            if (!(yv[c] > 0.0f)) g[c] = 0.0f;
    }
}

// MX: g = 0 where the forward's pre-ReLU value, from xhat = (x + bias - mean) * invstd, is not
// positive: xhat * gamma + beta is bn_apply's `(x - m) * is * g + b` term by term (the same
// product, then the same contracted multiply-add), so the same bits and the same mask as y > 0.
template <bool MX>
__device__ __forceinline__ void relu_mask_x(bool relu, float xhat, const float& gamma, const float& beta, float& g) {
    if (MX && relu && !(xhat * gamma + beta > 0.0f)) g = 0.0f;
}

template <int V, bool MX>
__device__ void bn_bwd_reduce(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ bias,
                              const float* __restrict__ y, const float* __restrict__ gamma,
                              const float* __restrict__ beta, const float* __restrict__ mean,
                              const float* __restrict__ invstd, float* __restrict__ dgamma, float* __restrict__ dbeta,
                              float* __restrict__ partial, const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    float m[V] = {}, is[V] = {}, bb[V] = {}, gr[V] = {}, be[V] = {};
    if (s.ok) {
        load_bias<V>(bias, s.c0, bb);
        load_cols<V>(mean + s.c0, m);
        load_cols<V>(invstd + s.c0, is);
        if (MX) {
            load_cols<V>(gamma + s.c0, gr);
            load_cols<V>(beta + s.c0, be);
        }
    }
    const bool relu = prm.relu != 0;
    col_sums<V, 2>(
        s, prm.cols, partial, bn_tile_arrivals,
        [&](uint32_t r, float (&q)[2][V]) {
            const size_t o = (size_t)r * prm.cols + s.c0;
            float xv[V];
            relu_grad<V, MX>(dy, y, relu, o, q[0]);
            load_cols<V>(x + o, xv);
            add_bias<V>(xv, bb);
#pragma unroll
            for (int c = 0; c < V; ++c) {
                const float xhat = (xv[c] - m[c]) * is[c];
                relu_mask_x<MX>(relu, xhat, gr[c], be[c], q[0][c]);
                q[1][c] = q[0][c] * xhat;
            }
        },
        [&](const double (&tot)[2][V]) {
            float db[V], dg[V];
#pragma unroll
            for (int c = 0; c < V; ++c) db[c] = (float)tot[0][c], dg[c] = (float)tot[1][c];
            store_cols<V>(dbeta + s.c0, db);
            store_cols<V>(dgamma + s.c0, dg);
        });
}

// dbeta[c] = sum_r g, dgamma[c] = sum_r g * xhat (xhat of x + bias; bias: cols floats or null).
// The ReLU mask (prm.relu): from y, or, with y null, recomputed from x, gamma and beta (v5).
// Grid: `ColGrid`; partial: 2 * gridDim.y * cols floats.
extern "C" __global__ void bn_bwd_reduce_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             const float* __restrict__ bias, const float* __restrict__ y,
                                             const float* __restrict__ gamma, const float* __restrict__ beta,
                                             const float* __restrict__ mean, const float* __restrict__ invstd,
                                             float* __restrict__ dgamma, float* __restrict__ dbeta,
                                             float* __restrict__ partial, BagsslBnParams prm, uint32_t chunk_rows) {
    const bool mx = prm.relu && !y;
#define BAGSSL_BN_BWD_REDUCE(V, MX) \
    bn_bwd_reduce<V, MX>(dy, x, bias, y, gamma, beta, mean, invstd, dgamma, dbeta, partial, prm, chunk_rows)
    if (prm.cols % 4 == 0) {
        if (mx)
            BAGSSL_BN_BWD_REDUCE(4, true);
        else
            BAGSSL_BN_BWD_REDUCE(4, false);
    } else {
        if (mx)
            BAGSSL_BN_BWD_REDUCE(1, true);
        else
            BAGSSL_BN_BWD_REDUCE(1, false);
    }
#undef BAGSSL_BN_BWD_REDUCE
}

// W16: also write the bf16 copy dx16 (as bn_apply). DB: also sum dx over the rows into dbias (the
// bias gradient), through partial (gridDim.y * cols floats) and the last block of each column tile.
template <int V, bool W16, bool DB, bool MX>
__device__ void bn_bwd_apply(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ bias,
                             const float* __restrict__ y, const float* __restrict__ beta, const float* __restrict__ mean,
                             const float* __restrict__ invstd, const float* __restrict__ gamma,
                             const float* __restrict__ dgamma, const float* __restrict__ dbeta, float* __restrict__ dx,
                             uint16_t* __restrict__ dx16, float* __restrict__ dbias, float* __restrict__ partial,
                             const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    if (!DB && !s.ok) return;  // with DB every thread takes part in the block's reduction below
    float acc[1][V] = {};
    if (s.ok) {
        const float rows = (float)prm.rows;
        const bool relu = prm.relu != 0;
        float m[V], is[V], a[V], dg[V], db[V], bb[V], gr[V], be[V] = {};
        load_bias<V>(bias, s.c0, bb);
        load_cols<V>(mean + s.c0, m);
        load_cols<V>(invstd + s.c0, is);
        load_cols<V>(gamma + s.c0, gr);
        load_cols<V>(dgamma + s.c0, dg);
        load_cols<V>(dbeta + s.c0, db);
        if (MX) load_cols<V>(beta + s.c0, be);
#pragma unroll
        for (int c = 0; c < V; ++c) a[c] = gr[c] * is[c] / rows;  // gamma * invstd / N, as v1 per element
        float g[BAGSSL_COL_RPT][V], v[BAGSSL_COL_RPT][V];
        lane_rows_batched(
            s, prm.cols, true,  // last-first: bn_bwd_reduce read those rows last
            [&](size_t o, uint32_t k) {
                relu_grad<V, MX>(dy, y, relu, o, g[k]);
                load_cols<V>(x + o, v[k]);
                add_bias<V>(v[k], bb);
            },
            [&](size_t o, uint32_t k) {
#pragma unroll
                for (int c = 0; c < V; ++c) {
                    const float xhat = (v[k][c] - m[c]) * is[c];
                    relu_mask_x<MX>(relu, xhat, gr[c], be[c], g[k][c]);
                    v[k][c] = a[c] * (rows * g[k][c] - db[c] - xhat * dg[c]);
                    if (DB) acc[0][c] += v[k][c];
                }
                store_cols<V>(dx + o, v[k]);
                if (W16) store_cols_bf16<V>(dx16 + o, v[k]);
            });
    }
    if (DB)
        col_sums_finish<V, 1>(s, prm.cols, acc, partial, bn_tile_arrivals, [&](const double (&tot)[1][V]) {
            float o[V];
#pragma unroll
            for (int c = 0; c < V; ++c) o[c] = (float)tot[0][c];
            store_cols<V>(dbias + s.c0, o);
        });
}

template <int V, bool MX>
__device__ void bn_bwd_apply_v(const float* __restrict__ dy, const float* __restrict__ x,
                               const float* __restrict__ bias, const float* __restrict__ y,
                               const float* __restrict__ beta, const float* __restrict__ mean,
                               const float* __restrict__ invstd, const float* __restrict__ gamma,
                               const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                               float* __restrict__ dx, uint16_t* __restrict__ dx16,
                               float* __restrict__ dbias, float* __restrict__ partial, const BagsslBnParams& prm,
                               uint32_t chunk_rows) {
#define BAGSSL_BN_BWD_APPLY(W16, DB)                                                                                  \
    bn_bwd_apply<V, W16, DB, MX>(dy, x, bias, y, beta, mean, invstd, gamma, dgamma, dbeta, dx, dx16, dbias,      \
                                 partial, prm, chunk_rows)
    if (dx16) {
        if (dbias)
            BAGSSL_BN_BWD_APPLY(true, true);
        else
            BAGSSL_BN_BWD_APPLY(true, false);
    } else {
        if (dbias)
            BAGSSL_BN_BWD_APPLY(false, true);
        else
            BAGSSL_BN_BWD_APPLY(false, false);
    }
#undef BAGSSL_BN_BWD_APPLY
}

// dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma), xhat of x + bias (bias: cols floats or
// null). The ReLU mask as bn_bwd_reduce_f32 (y null: from x, gamma and beta). Grid: `ColGrid`, as
// bn_bwd_reduce_f32.
// dx16: null, or rows * cols bf16 that get bf16_bits of every dx (its GEMM operand copy, as y16).
// dbias: null, or cols floats that get the column sums of dx (the bias gradient); partial: then
// gridDim.y * cols floats of scratch (bn_bwd_reduce_f32's may be reused: it is done with it).
extern "C" __global__ void bn_bwd_apply_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                            const float* __restrict__ bias, const float* __restrict__ y,
                                            const float* __restrict__ beta, const float* __restrict__ mean,
                                            const float* __restrict__ invstd, const float* __restrict__ gamma,
                                            const float* __restrict__ dgamma,
                                            const float* __restrict__ dbeta, float* __restrict__ dx,
                                            uint16_t* __restrict__ dx16, float* __restrict__ dbias,
                                            float* __restrict__ partial, BagsslBnParams prm, uint32_t chunk_rows) {
    const bool mx = prm.relu && !y;
#define BAGSSL_BN_BWD_APPLY_V(V, MX) \
    bn_bwd_apply_v<V, MX>(dy, x, bias, y, beta, mean, invstd, gamma, dgamma, dbeta, dx, dx16, dbias, partial, prm, \
                          chunk_rows)
    if (prm.cols % 4 == 0) {
        if (mx)
            BAGSSL_BN_BWD_APPLY_V(4, true);
        else
            BAGSSL_BN_BWD_APPLY_V(4, false);
    } else {
        if (mx)
            BAGSSL_BN_BWD_APPLY_V(1, true);
        else
            BAGSSL_BN_BWD_APPLY_V(1, false);
    }
#undef BAGSSL_BN_BWD_APPLY_V
}

// ---------------------------------------------------------------------------------------------
template <int V>
__device__ void bn_eval(const float* __restrict__ x, const float* __restrict__ running_mean,
                        const float* __restrict__ running_var, const float* __restrict__ gamma,
                        const float* __restrict__ beta, float* __restrict__ y, const BagsslBnParams& prm,
                        uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    if (!s.ok) return;
    float m[V], sd[V], g[V], b[V];
    load_cols<V>(running_mean + s.c0, m);
    load_cols<V>(running_var + s.c0, sd);
    load_cols<V>(gamma + s.c0, g);
    load_cols<V>(beta + s.c0, b);
#pragma unroll
    for (int c = 0; c < V; ++c) sd[c] = sqrtf(sd[c] + prm.eps);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched(
        s, prm.cols, false, [&](size_t o, uint32_t k) { load_cols<V>(x + o, v[k]); },
        [&](size_t o, uint32_t k) {
#pragma unroll
            for (int c = 0; c < V; ++c) {
                v[k][c] = (v[k][c] - m[c]) / sd[c] * g[c] + b[c];
                if (prm.relu && v[k][c] < 0.0f) v[k][c] = 0.0f;  // NaN propagates, as in PyTorch
            }
            store_cols<V>(y + o, v[k]);
        });
}

// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, then ReLU when prm.relu.
// Grid: `ColGrid`.
extern "C" __global__ void bn_eval_fwd_f32(const float* __restrict__ x, const float* __restrict__ running_mean,
                                           const float* __restrict__ running_var, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float* __restrict__ y,
                                           BagsslBnParams prm, uint32_t chunk_rows) {
    if (prm.cols % 4 == 0)
        bn_eval<4>(x, running_mean, running_var, gamma, beta, y, prm, chunk_rows);
    else
        bn_eval<1>(x, running_mean, running_var, gamma, beta, y, prm, chunk_rows);
}

__device__ __forceinline__ float ema(float running, float batch, float momentum) {
    return (1.0f - momentum) * running + momentum * batch;
}

// running = (1 - momentum) * running + momentum * batch
extern "C" __global__ void bn_ema_f32(float* __restrict__ running, const float* __restrict__ batch, float momentum,
                                      uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) running[i] = ema(running[i], batch[i], momentum);
}

// bn_ema_f32 on prm.n_tensors vectors at once (a step's 2 per BatchNorm were as many launches of a
// few thousand elements): tensor blockIdx.y, grid-stride over its elements along x.
extern "C" __global__ void bn_ema_multi_f32(const BagsslEmaMulti prm) {
    const uint32_t t = blockIdx.y;
    if (t >= prm.n_tensors) return;  // block-uniform
    float* __restrict__ running = reinterpret_cast<float*>(prm.running[t]);
    const float* __restrict__ batch = reinterpret_cast<const float*>(prm.batch[t]);
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < prm.n[t]; i += gridDim.x * blockDim.x)
        running[i] = ema(running[i], batch[i], prm.momentum);
}
