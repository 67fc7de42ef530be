// cov_loss.cu — bag-VICReg (DESIGN.md §3) on z (N = B*n rows, D columns; rows b*n .. b*n+n-1 are
// image b's patches): the three loss terms and dL/dz, without a round trip to the host. Only the
// four scalars (loss, I, V, Cv) in f64 come back, 32 bytes.
//
// Build: cargo xtask build-kernels   (check: cargo xtask build-kernels --check)
// CPU reference: crates/bagssl-autograd/src/cpu/vicreg.rs (fwd_bwd); golden: shared/golden/vicreg_bag.json
// parity: crates/bagssl-autograd/tests/cuda_parity.rs (N = 4096, D = 2048 among others)
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
//   gm[b]  = mean of image b's rows                      I  = mean over b,i,d of (z - gm[b])^2
//   mu     = column means, Zc = z - mu                   C  = Zc^T Zc / (N - 1)     (cuBLAS)
//   s_d    = sqrt(C_dd + eps)                            V  = mean_d relu(1 - s_d)
//   Coff   = C with a zero diagonal                      Cv = sum(Coff^2) / D
//   loss   = lambda I + mu V + nu Cv
//   dL/dz  = 2 lambda / (N D) (z - gm[b])                                  (invariance)
//          - mu / (D (N-1)) [s_d < 1] / s_d * Zc                           (variance)
//          + 4 nu / (D (N-1)) Zc Coff                                      (covariance, cuBLAS, beta = 1)
// (the centering's own gradient vanishes: every term above already has zero column means.)
//
// Launch order (crates/bagssl-kernels/src/vicreg.rs): vicreg_group_stats_f32 (gm, mu, I partials)
// -> vicreg_center_f32 (Zc f32, or its bf16 copy when the GEMMs are bf16) -> GEMM C ->
// vicreg_cov_terms_f32 (Coff in place, its bf16 copy when bf16) -> vicreg_grad_init_f32 ->
// GEMM dz += Zc Coff -> vicreg_finalize_f32.
//
// Why this version (kernels/lab/HISTORY.md has v1 and its timings): every kernel but the finalize
// on the 2-D column-tile grid; vicreg_group_stats_f32 also gives the column means (one kernel
// less), and center / cov_terms write the bf16 GEMM operands themselves (two cast passes less).
//
// Napkin math (N = 4096, D = 2048; an N x D f32 matrix is 33.5 MB, bf16 16.8 MB; C 16.8 MB; copy
// rate ~4.1 TB/s): each GEMM is 2*N*D^2 = 34 GFLOP, ~0.05 ms each in bf16, ~0.1 ms in TF32, ~0.7 ms
// in plain f32.
//   bf16: group_stats R z 33.5 (+ gm 2 MB) | center R z, W Zc16 50 | grad_init R z, W dz 67
//      (+ gm from L2) = 151 MB, + C: cov_terms R 16.8, W Coff16 8.4 = 25 MB: ~176 MB, ~43 us at the
//      copy rate. TF32/F32: center writes Zc in f32 (+16.8 MB): ~193 MB. 5 kernels instead of 8.

#include "common.cuh"

// Arrival counters of the column-mean reduction of vicreg_group_stats_f32 (see last_chunk_block).
__device__ unsigned int vicreg_tile_arrivals[BAGSSL_COL_MAX_TILES];

// Rows of a group that vicreg_group_stats_f32 keeps in registers (loads in flight per thread); a
// group of more rows is read in batches of this many, twice (the second time mostly from L1/L2).
#define VICREG_GROUP_BATCH 16u

// Sum of v over the whole (BAGSSL_COL_TILE x BAGSSL_COL_LANES) block in a fixed order: the lane tree
// of lane_sum, then the 32 columns of warp 0 (a warp is one row lane: blockDim.x = 32). Every thread
// gets the total; every thread of the block must call it.
__device__ __forceinline__ double vicreg_block_total(double v) {
    double t[1][1] = {{v}};
    lane_sum(t);
    return warp_sum(t[0][0]);
}

// ---------------------------------------------------------------------------------------------
// Group statistics on the column grid over the n_groups rows of gm (launch.rs ColGrid tiles,
// chunk_groups groups per grid.y): thread (tx, ty) reads its V columns of the n rows of each group
// g = r0 + ty + k * BAGSSL_COL_LANES of its chunk, writes gm[g], adds sum_i (z - gm[g])^2 (f32 per
// batch of <= VICREG_GROUP_BATCH rows, then f64) to the block's invariance partial, and gm[g] to the
// column sums of its chunk. The last block of each column tile adds the chunks' column sums in f64
// (fixed order) and writes mu = sum / n_groups (every group has n rows: the column mean).
template <int V>
__device__ void vicreg_group_stats(const float* __restrict__ z, float* __restrict__ gm, float* __restrict__ mu,
                                   float* __restrict__ col_partial, double* __restrict__ inv_partial,
                                   const BagsslVicregParams& prm, uint32_t chunk_groups) {
    const uint32_t cols = prm.dim, n = prm.n_per_image, ty = threadIdx.y;
    const ColSpan s = col_span<V>(prm.n_groups, cols, chunk_groups);
    float csum[1][V] = {};
    double inv = 0.0;
    if (s.ok)
        for (uint32_t g = s.r0 + ty; g < s.r1; g += BAGSSL_COL_LANES) {
            const float* src = z + (size_t)g * n * cols + s.c0;
            float mean[V], sq[V] = {};
            if (n <= VICREG_GROUP_BATCH) {
                // The group's rows stay in registers: all loads in flight, then both passes.
                float q[VICREG_GROUP_BATCH][V], sum[V] = {};
                const float* p = src;  // one pointer bump per row: fewer live 64-bit addresses
#pragma unroll
                for (uint32_t k = 0; k < VICREG_GROUP_BATCH; ++k) {
                    if (k < n) load_cols<V>(p, q[k]);
                    p += cols;
                }
#pragma unroll
                for (uint32_t k = 0; k < VICREG_GROUP_BATCH; ++k)
                    if (k < n)
#pragma unroll
                        for (int c = 0; c < V; ++c) sum[c] += q[k][c];
#pragma unroll
                for (int c = 0; c < V; ++c) mean[c] = sum[c] / (float)n;
#pragma unroll
                for (uint32_t k = 0; k < VICREG_GROUP_BATCH; ++k)
                    if (k < n)
#pragma unroll
                        for (int c = 0; c < V; ++c) {
                            const float e = q[k][c] - mean[c];
                            sq[c] += e * e;
                        }
            } else {
                // Larger groups: two passes over the rows, BAGSSL_COL_RPT loads in flight; the
                // second reads them again (L1/L2), its f32 sums go to f64 every VICREG_GROUP_BATCH rows.
                float sum[V] = {};
                for (uint32_t k0 = 0; k0 < n; k0 += BAGSSL_COL_RPT) {
                    float q[BAGSSL_COL_RPT][V];
#pragma unroll
                    for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                        if (k0 + k < n) load_cols<V>(src + (size_t)(k0 + k) * cols, q[k]);
#pragma unroll
                    for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                        if (k0 + k < n)
#pragma unroll
                            for (int c = 0; c < V; ++c) sum[c] += q[k][c];
                }
#pragma unroll
                for (int c = 0; c < V; ++c) mean[c] = sum[c] / (float)n;
                for (uint32_t k0 = 0; k0 < n; k0 += BAGSSL_COL_RPT) {
                    float q[BAGSSL_COL_RPT][V];
#pragma unroll
                    for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                        if (k0 + k < n) load_cols<V>(src + (size_t)(k0 + k) * cols, q[k]);
#pragma unroll
                    for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                        if (k0 + k < n)
#pragma unroll
                            for (int c = 0; c < V; ++c) {
                                const float e = q[k][c] - mean[c];
                                sq[c] += e * e;
                            }
                    if ((k0 + BAGSSL_COL_RPT) % VICREG_GROUP_BATCH == 0 || k0 + BAGSSL_COL_RPT >= n) {
#pragma unroll
                        for (int c = 0; c < V; ++c) {
                            inv += (double)sq[c];
                            sq[c] = 0.0f;
                        }
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < V; ++c) {
                inv += (double)sq[c];
                csum[0][c] += mean[c];
            }
            store_cols<V>(gm + (size_t)g * cols + s.c0, mean);
        }
    lane_sum(csum);
    if (s.ok && ty == 0) store_cols<V>(col_partial + (size_t)blockIdx.y * cols + s.c0, csum[0]);
    inv = vicreg_block_total(inv);
    if (threadIdx.x == 0 && ty == 0) inv_partial[blockIdx.y * gridDim.x + blockIdx.x] = inv;
    if (!last_chunk_block(vicreg_tile_arrivals)) return;
    double tot[1][V] = {};
    if (s.ok)
#pragma unroll 4
        for (uint32_t i = ty; i < gridDim.y; i += BAGSSL_COL_LANES) {
            float v[V];
            load_cols_cg<V>(col_partial + (size_t)i * cols + s.c0, v);
#pragma unroll
            for (int c = 0; c < V; ++c) tot[0][c] += (double)v[c];
        }
    lane_sum(tot);
    if (s.ok && ty == 0) {
        float m[V];
#pragma unroll
        for (int c = 0; c < V; ++c) m[c] = (float)(tot[0][c] / (double)prm.n_groups);
        store_cols<V>(mu + s.c0, m);
    }
}

// gm[b, d] = mean_i z[b*n + i, d]; mu[d] = mean_b gm[b, d]; inv_partial[by * gridDim.x + bx] = the
// block's sum of (z - gm)^2. Grid: (ColGrid tiles over dim, ceil(n_groups / chunk_groups)) blocks of
// (BAGSSL_COL_TILE, BAGSSL_COL_LANES). col_partial: gridDim.y * dim floats (scratch).
extern "C" __global__ void vicreg_group_stats_f32(const float* __restrict__ z, float* __restrict__ gm,
                                                  float* __restrict__ mu, float* __restrict__ col_partial,
                                                  double* __restrict__ inv_partial, BagsslVicregParams prm,
                                                  uint32_t chunk_groups) {
    with_col_vec(prm.dim, [=](auto v) { vicreg_group_stats<decltype(v)::value>(z, gm, mu, col_partial, inv_partial, prm, chunk_groups); });
}

// ---------------------------------------------------------------------------------------------
template <int V>
__device__ void vicreg_center(const float* __restrict__ z, const float* __restrict__ mu, float* __restrict__ zc,
                              uint16_t* __restrict__ zc16, const BagsslVicregParams& prm, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(prm.n_rows, prm.dim, chunk_rows);
    if (!s.ok) return;
    float m[V];
    load_cols<V>(mu + s.c0, m);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched_r(
        s, prm.dim, true, [&](uint32_t, size_t o, uint32_t k) { load_cols<V>(z + o, v[k]); },
        [&](uint32_t, size_t o, uint32_t k) {
#pragma unroll
            for (int c = 0; c < V; ++c) v[k][c] -= m[c];
            if (zc) store_cols<V>(zc + o, v[k]);
            if (zc16) store_cols_bf16<V>(zc16 + o, v[k]);
        });
}

// Zc = z - mu (broadcast over rows) into zc (f32) and/or zc16 (its bf16 bits, round to nearest
// even); either may be null (not written). Grid: launch.rs ColGrid over (n_rows, dim).
extern "C" __global__ void vicreg_center_f32(const float* __restrict__ z, const float* __restrict__ mu,
                                             float* __restrict__ zc, uint16_t* __restrict__ zc16,
                                             BagsslVicregParams prm, uint32_t chunk_rows) {
    with_col_vec(prm.dim, [=](auto v) { vicreg_center<decltype(v)::value>(z, mu, zc, zc16, prm, chunk_rows); });
}

// ---------------------------------------------------------------------------------------------
template <int V>
__device__ void vicreg_cov_terms(float* __restrict__ c, uint16_t* __restrict__ c16, float* __restrict__ vcoef,
                                 double* __restrict__ cov_partial, double* __restrict__ var_partial,
                                 const BagsslVicregParams& prm, uint32_t chunk_rows) {
    const uint32_t dim = prm.dim;
    const ColSpan s = col_span<V>(dim, dim, chunk_rows);
    const double coef = -(double)prm.variance / ((double)dim * (double)(prm.n_rows - 1));
    double off = 0.0, hinge = 0.0;
    if (s.ok) {
        float v[BAGSSL_COL_RPT][V];
        lane_rows_batched_r(
            s, dim, false, [&](uint32_t, size_t o, uint32_t k) { load_cols<V>(c + o, v[k]); },
            [&](uint32_t r, size_t o, uint32_t k) {
                const uint32_t j = r - s.c0;  // the diagonal's slot among the V columns, if < V
#pragma unroll
                for (int cc = 0; cc < V; ++cc) {
                    const float x = v[k][cc];
                    if ((uint32_t)cc == j) {
                        const float sd = sqrtf(x + prm.eps);
                        const float h = 1.0f - sd;
                        if (h > 0.0f) {
                            hinge += (double)h;
                            vcoef[r] = (float)(coef / (double)sd);
                        } else {
                            vcoef[r] = 0.0f;
                        }
                        v[k][cc] = 0.0f;
                    } else {
                        off += (double)x * (double)x;
                    }
                }
                if (j < (uint32_t)V) store_cols<V>(c + o, v[k]);
                if (c16) store_cols_bf16<V>(c16 + o, v[k]);
            });
    }
    off = vicreg_block_total(off);
    hinge = vicreg_block_total(hinge);
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        cov_partial[blockIdx.y * gridDim.x + blockIdx.x] = off;
        var_partial[blockIdx.y * gridDim.x + blockIdx.x] = hinge;
    }
}

// On C (dim x dim, already divided by N - 1): zeroes the diagonal in place (C becomes Coff), writes
// Coff's bf16 bits to c16 unless it is null, vcoef[d] = -mu / (D (N-1)) [s_d < 1] / s_d, and per-block
// f64 partials of sum(Coff^2) and sum_d relu(1 - s_d) at [by * gridDim.x + bx]. Grid: launch.rs
// ColGrid over (dim, dim).
extern "C" __global__ void vicreg_cov_terms_f32(float* __restrict__ c, uint16_t* __restrict__ c16,
                                                float* __restrict__ vcoef, double* __restrict__ cov_partial,
                                                double* __restrict__ var_partial, BagsslVicregParams prm,
                                                uint32_t chunk_rows) {
    with_col_vec(prm.dim, [=](auto v) { vicreg_cov_terms<decltype(v)::value>(c, c16, vcoef, cov_partial, var_partial, prm, chunk_rows); });
}

// ---------------------------------------------------------------------------------------------
template <int V>
__device__ void vicreg_grad_init(const float* __restrict__ z, const float* __restrict__ gm,
                                 const float* __restrict__ mu, const float* __restrict__ vcoef, float* __restrict__ dz,
                                 const BagsslVicregParams& prm, uint32_t chunk_rows) {
    const uint32_t cols = prm.dim, n = prm.n_per_image;
    const ColSpan s = col_span<V>(prm.n_rows, cols, chunk_rows);
    if (!s.ok) return;
    const float c_inv = (float)(2.0 * (double)prm.invariance / ((double)prm.n_rows * (double)prm.dim));
    float m[V], vc[V];
    load_cols<V>(mu + s.c0, m);
    load_cols<V>(vcoef + s.c0, vc);
    float v[BAGSSL_COL_RPT][V], g[BAGSSL_COL_RPT][V];
    lane_rows_batched_r(
        s, cols, false,
        [&](uint32_t r, size_t o, uint32_t k) {
            load_cols<V>(z + o, v[k]);
            load_cols<V>(gm + (size_t)(r / n) * cols + s.c0, g[k]);
        },
        [&](uint32_t, size_t o, uint32_t k) {
            float d[V];
#pragma unroll
            for (int c = 0; c < V; ++c) {
                const float zc = v[k][c] - m[c];  // the bits vicreg_center_f32 wrote
                d[c] = c_inv * (v[k][c] - g[k][c]) + vc[c] * zc;
            }
            store_cols<V>(dz + o, d);
        });
}

// dz = 2 lambda / (N D) (z - gm[row / n]) + vcoef[d] * (z - mu[d])  (the covariance GEMM adds on
// top); Zc is recomputed from z and mu (one matrix fewer to read). Grid: launch.rs ColGrid over
// (n_rows, dim).
extern "C" __global__ void vicreg_grad_init_f32(const float* __restrict__ z, const float* __restrict__ gm,
                                                const float* __restrict__ mu, const float* __restrict__ vcoef,
                                                float* __restrict__ dz, BagsslVicregParams prm, uint32_t chunk_rows) {
    with_col_vec(prm.dim, [=](auto v) { vicreg_grad_init<decltype(v)::value>(z, gm, mu, vcoef, dz, prm, chunk_rows); });
}

// One block: out = [loss, I, V, Cv] in f64 from the partial sums, and the loss in f32 into
// loss_f32[0] (the tape's scalar loss tensor, so the step needs no host round trip).
extern "C" __global__ void vicreg_finalize_f32(const double* __restrict__ inv_partial, uint32_t n_inv,
                                               const double* __restrict__ cov_partial,
                                               const double* __restrict__ var_partial, uint32_t n_cov,
                                               double* __restrict__ out, float* __restrict__ loss_f32,
                                               BagsslVicregParams prm) {
    double si = 0.0, sc = 0.0, sv = 0.0;
    for (uint32_t i = threadIdx.x; i < n_inv; i += blockDim.x) si += inv_partial[i];
    for (uint32_t i = threadIdx.x; i < n_cov; i += blockDim.x) {
        sc += cov_partial[i];
        sv += var_partial[i];
    }
    si = block_sum(si);
    sc = block_sum(sc);
    sv = block_sum(sv);
    if (threadIdx.x == 0) {
        const double inv = si / ((double)prm.n_rows * (double)prm.dim);
        const double var = sv / (double)prm.dim;
        const double cov = sc / (double)prm.dim;
        out[0] = (double)prm.invariance * inv + (double)prm.variance * var + (double)prm.covariance * cov;
        loss_f32[0] = (float)out[0];
        out[1] = inv;
        out[2] = var;
        out[3] = cov;
    }
}
