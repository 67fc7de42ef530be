// batchnorm.cu — BatchNorm1d over the rows of a (rows, cols) matrix, PyTorch semantics
// (DESIGN.md §3): training forward with batch statistics (biased variance to normalise, unbiased
// for the running statistics) and an optional fused ReLU, its backward, the eval forward with
// running statistics, and the running-statistics EMA. The kernels take their buffers in one
// named struct (BagsslBnFwdArgs, BagsslBnBwdArgs, BagsslBnEvalArgs of include/bagssl_kernels.h).
//
// Build: cargo xtask build-kernels   (check: cargo xtask build-kernels --check)
// CPU reference: crates/bagssl-autograd/src/cpu/bn.rs (via cpu/mod.rs bn_train_fwd, bn_train_bwd,
//   bn_eval_fwd); parity: crates/bagssl-autograd/tests/cuda_parity.rs, crates/bagssl-kernels/src/batchnorm.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
// Timings: cargo xtask bench-kernels (A/B variants: BnVariant in batchnorm.rs); history: kernels/lab/HISTORY.md
//
// Training forward = bn_stats_fwd_f32 (column reduction) + bn_apply_fwd_f32 (elementwise).
// Backward, with g = dy * (y > 0) when relu, xhat = (x - mean) * invstd:
//   dbeta = sum_r g, dgamma = sum_r g * xhat                          (bn_bwd_reduce_f32)
//   dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma)         (bn_bwd_apply_f32)
//
// Why these versions (kernels/lab/HISTORY.md has the others and their timings):
//   bn_stats_fwd_f32: the 2-D column-tile grid (>= 4 blocks per SM) with per-chunk shifted two-pass
//     statistics combined in f64 by the last block of each tile: one pass, deterministic, no atomics.
//   bn_apply_fwd_f32: the same grid, rows walked last-first (L2 hits), writing y's bf16 GEMM copy
//     beside y, the Linear bias added as x is read: no cast kernel and no bias_add pass.
//   bn_bwd_reduce_f32 / bn_bwd_apply_f32: the ReLU mask recomputed from x (which they read anyway)
//     instead of read from y, the bias gradient summed as dx is written: 33.5 MB less per kernel.
//   bn_eval_fwd_f32: the column grid with per-thread column parameters in registers.
//   bn_ema_multi_f32: every running statistic of a step in one launch (grid.y = vector).
//
// Napkin math (4096 x 2048 f32, one matrix = 33.5 MB; H200 copy 4148 GB/s, HBM3e 4.8 TB/s peak):
//   forward: stats read x (33.5 MB) + apply read x, write y (67 MB) = 100 MB, of which the second
//     read of x can largely hit the 50 MB L2 -> 67-100 MB of DRAM traffic, 16-24 us at the copy
//     rate. The bench counts 67 MB (x in, y out); 60 % of the copy rate is 27 us.
//   backward: reduce reads dy, x (67 MB), apply reads them again and writes dx (100 MB) = 167 MB
//     (the ReLU mask comes from x; read from y it would be 235 MB). The bench counts 100 MB (dy, x in,
//     dx out); the second reads can hit L2 thanks to the reversed apply walk.
//   scratch: 3 (forward) or 2 (backward) floats per column per chunk (1 MB / 0.7 MB at 43 chunks),
//     written once, read once by the last blocks.

#include "common.cuh"

// The V bias values of the thread's columns, or zeros (no bias: x + 0 is x).
template <int V>
__device__ __forceinline__ void load_bias(const float* __restrict__ bias, uint32_t c0, float (&b)[V]) {
#pragma unroll
    for (int c = 0; c < V; ++c) b[c] = 0.0f;
    if (bias) load_cols_nc<V>(bias + c0, b);
}

// x + bias for V loaded values, in place.
template <int V>
__device__ __forceinline__ void add_bias(float (&v)[V], const float (&b)[V]) {
#pragma unroll
    for (int c = 0; c < V; ++c) v[c] += b[c];
}

// The fields of the argument structs (include/bagssl_kernels.h) as the typed parameters of the
// templates below, in the structs' order: each template's parameter list is its struct's fields
// (the ones it does not use unnamed).
// (__restrict__ parameters of an inlined function, unlike __restrict__ locals, let nvcc read the
// inputs through the read-only path, as kernel parameters would.)
#define BAGSSL_BN_FWD_FIELDS(a)                                                                               \
    dev_ptr<const float>(a.x), dev_ptr<const float>(a.bias), dev_ptr<const float>(a.gamma),                  \
        dev_ptr<const float>(a.beta), dev_ptr<float>(a.mean), dev_ptr<float>(a.invstd),                      \
        dev_ptr<float>(a.var_unbiased), dev_ptr<float>(a.partial), dev_ptr<float>(a.y), dev_ptr<uint16_t>(a.y16), \
        a.prm, a.chunk_rows
#define BAGSSL_BN_BWD_FIELDS(a)                                                                                    \
    dev_ptr<const float>(a.dy), dev_ptr<const float>(a.x), dev_ptr<const float>(a.bias), dev_ptr<const float>(a.y), \
        dev_ptr<const float>(a.gamma), dev_ptr<const float>(a.beta), dev_ptr<const float>(a.mean),                 \
        dev_ptr<const float>(a.invstd), dev_ptr<float>(a.dgamma), dev_ptr<float>(a.dbeta), dev_ptr<float>(a.dx),   \
        dev_ptr<uint16_t>(a.dx16), dev_ptr<float>(a.dbias), dev_ptr<float>(a.partial), a.prm, a.chunk_rows

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
__device__ void bn_stats(const float* __restrict__ x, const float* __restrict__ bias, const float* /*gamma*/,
                         const float* /*beta*/, float* __restrict__ mean, float* __restrict__ invstd,
                         float* __restrict__ var_unbiased, float* __restrict__ partial, float* /*y*/,
                         uint16_t* /*y16*/, const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    const uint32_t tx = threadIdx.x, ty = threadIdx.y, n_chunks = gridDim.y;
    float shift[V] = {}, n = 0.0f, sx[V] = {}, m[V] = {}, m2[V] = {}, bb[V] = {};
    if (s.ok) {
        load_bias<V>(bias, s.c0, bb);
        load_cols_nc<V>(x + s.c0, shift);
        add_bias<V>(shift, bb);
        for (uint32_t p = s.r0; p < s.r1; p += BAGSSL_COL_PASS) {
            const uint32_t left = s.r1 - p;
            float d[BAGSSL_COL_RPT][V];
#pragma unroll
            for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k) {  // clamped rows: all loads in bounds, issued together
                const uint32_t o = ty + k * BAGSSL_COL_LANES;
                load_cols_nc<V>(x + (size_t)(p + (o < left ? o : left - 1)) * prm.cols + s.c0, d[k]);
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
// (BagsslBnFwdArgs: x, bias or 0, mean, invstd, var_unbiased, partial of 3 * gridDim.y * cols floats).
// Grid: launch.rs `ColGrid` (chunk_rows rows per grid.y). At most 64 registers: 4 blocks per SM.
extern "C" __global__ void __launch_bounds__(BAGSSL_COL_TILE * BAGSSL_COL_LANES, 4)
    bn_stats_fwd_f32(const BagsslBnFwdArgs a) {
    with_col_vec(a.prm.cols, [=](auto v) { bn_stats<decltype(v)::value>(BAGSSL_BN_FWD_FIELDS(a)); });
}

// ---------------------------------------------------------------------------------------------
// W16: also write the bf16 copy y16 (a separate instance, so the f32-only one is v2's code).
template <int V, bool W16>
__device__ void bn_apply(const float* __restrict__ x, const float* __restrict__ bias, const float* __restrict__ gamma,
                         const float* __restrict__ beta, const float* __restrict__ mean,
                         const float* __restrict__ invstd, float* /*var_unbiased*/, float* /*partial*/,
                         float* __restrict__ y,
                         uint16_t* __restrict__ y16, const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    if (!s.ok) return;
    float m[V], is[V], g[V], b[V], bb[V];
    load_bias<V>(bias, s.c0, bb);
    load_cols_nc<V>(mean + s.c0, m);
    load_cols_nc<V>(invstd + s.c0, is);
    load_cols_nc<V>(gamma + s.c0, g);
    load_cols_nc<V>(beta + s.c0, b);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched(
        s, prm.cols, true,  // last-first: bn_stats read those rows last
        [&](size_t o, uint32_t k) {
            load_cols_nc<V>(x + o, v[k]);
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

// y = (x + bias - mean) * invstd * gamma + beta, then ReLU when prm.relu (BagsslBnFwdArgs: x, bias,
// gamma, beta, mean, invstd, y, y16). Grid: `ColGrid`, as bn_stats_fwd_f32. y16: 0, or rows * cols
// bf16 (as bit patterns) that get bf16_bits of every y: the bf16 GEMM operand copy of y
// (GpuBuf::bf16), without a cast kernel re-reading y. At most 64 registers (4 blocks per SM).
extern "C" __global__ void __launch_bounds__(BAGSSL_COL_TILE * BAGSSL_COL_LANES, 4)
    bn_apply_fwd_f32(const BagsslBnFwdArgs a) {
    with_col_vec(a.prm.cols, [=](auto v) {
        constexpr int V = decltype(v)::value;
        if (a.y16)
            bn_apply<V, true>(BAGSSL_BN_FWD_FIELDS(a));
        else
            bn_apply<V, false>(BAGSSL_BN_FWD_FIELDS(a));
    });
}

// ---------------------------------------------------------------------------------------------
// g = dy, or (unless MX: the mask is applied later, from x) 0 where the ReLU output y is not
// positive (NaN included).
template <int V, bool MX>
__device__ __forceinline__ void relu_grad(const float* __restrict__ dy, const float* __restrict__ y, bool relu,
                                          size_t o, float (&g)[V]) {
    load_cols_nc<V>(dy + o, g);
    if (!MX && relu) {
        float yv[V];
        load_cols_nc<V>(y + o, yv);
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
                              float* /*dx*/, uint16_t* /*dx16*/, float* /*dbias*/, float* __restrict__ partial,
                              const BagsslBnParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.rows, prm.cols, chunk_rows);
    float m[V] = {}, is[V] = {}, bb[V] = {}, gr[V] = {}, be[V] = {};
    if (s.ok) {
        load_bias<V>(bias, s.c0, bb);
        load_cols_nc<V>(mean + s.c0, m);
        load_cols_nc<V>(invstd + s.c0, is);
        if (MX) {
            load_cols_nc<V>(gamma + s.c0, gr);
            load_cols_nc<V>(beta + s.c0, be);
        }
    }
    const bool relu = prm.relu != 0;
    col_sums<V, 2>(
        s, prm.cols, partial, bn_tile_arrivals,
        [&](uint32_t r, float (&q)[2][V]) {
            const size_t o = (size_t)r * prm.cols + s.c0;
            float xv[V];
            relu_grad<V, MX>(dy, y, relu, o, q[0]);
            load_cols_nc<V>(x + o, xv);
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

// dbeta[c] = sum_r g, dgamma[c] = sum_r g * xhat, xhat of x + bias (BagsslBnBwdArgs: dy, x, bias, y,
// gamma, beta, mean, invstd in; dgamma, dbeta out, through partial, 2 * gridDim.y * cols floats).
// The ReLU mask (prm.relu): y > 0, or, with y 0, recomputed from x, gamma and beta. Grid: `ColGrid`.
extern "C" __global__ void bn_bwd_reduce_f32(const BagsslBnBwdArgs a) {
    const bool mx = a.prm.relu && !a.y;
    with_col_vec(a.prm.cols, [=](auto v) {
        constexpr int V = decltype(v)::value;
        if (mx)
            bn_bwd_reduce<V, true>(BAGSSL_BN_BWD_FIELDS(a));
        else
            bn_bwd_reduce<V, false>(BAGSSL_BN_BWD_FIELDS(a));
    });
}

// W16: also write the bf16 copy dx16 (as bn_apply). DB: also sum dx over the rows into dbias (the
// bias gradient), through partial (gridDim.y * cols floats) and the last block of each column tile.
template <int V, bool W16, bool DB, bool MX>
__device__ void bn_bwd_apply(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ bias,
                             const float* __restrict__ y, const float* __restrict__ gamma,
                             const float* __restrict__ beta, const float* __restrict__ mean,
                             const float* __restrict__ invstd, const float* __restrict__ dgamma,
                             const float* __restrict__ dbeta, float* __restrict__ dx,
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
        load_cols_nc<V>(mean + s.c0, m);
        load_cols_nc<V>(invstd + s.c0, is);
        load_cols_nc<V>(gamma + s.c0, gr);
        load_cols_nc<V>(dgamma + s.c0, dg);
        load_cols_nc<V>(dbeta + s.c0, db);
        if (MX) load_cols_nc<V>(beta + s.c0, be);
#pragma unroll
        for (int c = 0; c < V; ++c) a[c] = gr[c] * is[c] / rows;  // gamma * invstd / N, as v1 per element
        float g[BAGSSL_COL_RPT][V], v[BAGSSL_COL_RPT][V];
        lane_rows_batched(
            s, prm.cols, true,  // last-first: bn_bwd_reduce read those rows last
            [&](size_t o, uint32_t k) {
                relu_grad<V, MX>(dy, y, relu, o, g[k]);
                load_cols_nc<V>(x + o, v[k]);
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
__device__ void bn_bwd_apply_v(const BagsslBnBwdArgs& a) {
    if (a.dx16) {
        if (a.dbias)
            bn_bwd_apply<V, true, true, MX>(BAGSSL_BN_BWD_FIELDS(a));
        else
            bn_bwd_apply<V, true, false, MX>(BAGSSL_BN_BWD_FIELDS(a));
    } else {
        if (a.dbias)
            bn_bwd_apply<V, false, true, MX>(BAGSSL_BN_BWD_FIELDS(a));
        else
            bn_bwd_apply<V, false, false, MX>(BAGSSL_BN_BWD_FIELDS(a));
    }
}

// dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma), xhat of x + bias, the ReLU mask as
// bn_bwd_reduce_f32's (BagsslBnBwdArgs: its inputs and dgamma, dbeta in; dx, dx16, dbias out).
// Grid: `ColGrid`, as bn_bwd_reduce_f32. dx16: 0, or rows * cols bf16 that get bf16_bits of every
// dx (its GEMM operand copy, as y16). dbias: 0, or cols floats that get the column sums of dx (the
// bias gradient), through partial (gridDim.y * cols floats; bn_bwd_reduce_f32's may be reused).
extern "C" __global__ void bn_bwd_apply_f32(const BagsslBnBwdArgs a) {
    const bool mx = a.prm.relu && !a.y;
    with_col_vec(a.prm.cols, [=](auto v) {
        constexpr int V = decltype(v)::value;
        if (mx)
            bn_bwd_apply_v<V, true>(a);
        else
            bn_bwd_apply_v<V, false>(a);
    });
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
    load_cols_nc<V>(running_mean + s.c0, m);
    load_cols_nc<V>(running_var + s.c0, sd);
    load_cols_nc<V>(gamma + s.c0, g);
    load_cols_nc<V>(beta + s.c0, b);
#pragma unroll
    for (int c = 0; c < V; ++c) sd[c] = sqrtf(sd[c] + prm.eps);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched(
        s, prm.cols, false, [&](size_t o, uint32_t k) { load_cols_nc<V>(x + o, v[k]); },
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
#define BAGSSL_BN_EVAL_FIELDS(a)                                                                          \
    dev_ptr<const float>(a.x), dev_ptr<const float>(a.running_mean), dev_ptr<const float>(a.running_var), \
        dev_ptr<const float>(a.gamma), dev_ptr<const float>(a.beta), dev_ptr<float>(a.y), a.prm, a.chunk_rows
extern "C" __global__ void bn_eval_fwd_f32(const BagsslBnEvalArgs a) {
    with_col_vec(a.prm.cols, [=](auto v) { bn_eval<decltype(v)::value>(BAGSSL_BN_EVAL_FIELDS(a)); });
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
