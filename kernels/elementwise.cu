// elementwise.cu — the small memory-bound kernels of the training step: ReLU forward/backward,
// bias add, column sums (the bias gradient), group mean forward/backward (bag aggregation),
// add, axpy, scale and a dot product with an f64 result.
//
// Build: cargo xtask build-kernels   (check: cargo xtask build-kernels --check)
// CPU reference: crates/bagssl-autograd/src/cpu/elementwise.rs; parity: crates/bagssl-autograd/tests/cuda_parity.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
// Why these versions (kernels/lab/HISTORY.md has the others and their timings): the column kernels
// (bias add, column sums, group mean) on the 2-D column-tile grid of common.cuh, float4 columns and
// no 64-bit `%`, enough blocks to fill the GPU; sum_rows_f32 writes its input's bf16 GEMM copy as it
// reads it (no cast pass); the 1-D kernels are grid-stride loops, dot a deterministic f64 tree.
//
// Napkin math: every kernel here moves 8-12 bytes per element and does ~1 FLOP: at 4.1 TB/s (an
// H200 copy) a (4096 x 2048) f32 matrix pass (33.5 MB read + 33.5 MB written) costs ~16 us.
// sum_rows reads it once (33.5 MB, ~8 us at the copy rate, 13.5 us is 60 % of it) and writes
// one float per column per chunk (43 chunks: 0.35 MB) that the last blocks read back.

#include "common.cuh"

// Arrival counters of the column reductions of this module (see last_chunk_block).
__device__ unsigned int sum_rows_tile_arrivals[BAGSSL_COL_MAX_TILES];

extern "C" __global__ void relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] = x[i] < 0.0f ? 0.0f : x[i];  // NaN propagates, as in PyTorch
}

// y = bf16(x): the operand copies of the bf16 GEMMs. x and y start 16- and 8-byte aligned
// (whole allocations); four elements per thread and iteration, the n % 4 tail one by one.
extern "C" __global__ void cast_bf16_f32(const float* __restrict__ x, uint16_t* __restrict__ y, uint32_t n) {
    const size_t n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    uint2* y4 = reinterpret_cast<uint2*>(y);
    for (size_t i = global_thread(); i < n4; i += grid_threads()) {
        const float4 v = x4[i];
        uint2 o;
        o.x = bf16_bits(v.x) | (bf16_bits(v.y) << 16);
        o.y = bf16_bits(v.z) | (bf16_bits(v.w) << 16);
        y4[i] = o;
    }
    for (size_t i = n4 * 4 + global_thread(); i < n; i += grid_threads()) y[i] = (uint16_t)bf16_bits(x[i]);
}

// dx = dy * (y > 0)
extern "C" __global__ void relu_bwd_f32(const float* __restrict__ dy, const float* __restrict__ y,
                                        float* __restrict__ dx, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// The column kernels: grid launch.rs `ColGrid` (chunk_rows rows per grid.y), see common.cuh.

template <int V>
__device__ void bias_add(const float* __restrict__ x, const float* __restrict__ b, float* __restrict__ y,
                         BagsslMatrixDims d, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(d.rows, d.cols, chunk_rows);
    if (!s.ok) return;
    float bv[V];
    load_cols<V>(b + s.c0, bv);
    float v[BAGSSL_COL_RPT][V];
    lane_rows_batched(
        s, d.cols, false, [&](size_t o, uint32_t k) { load_cols<V>(x + o, v[k]); },
        [&](size_t o, uint32_t k) {
#pragma unroll
            for (int c = 0; c < V; ++c) v[k][c] += bv[c];
            store_cols<V>(y + o, v[k]);
        });
}

// y = x + b (b broadcast over the rows)
extern "C" __global__ void bias_add_fwd_f32(const float* __restrict__ x, const float* __restrict__ b,
                                            float* __restrict__ y, BagsslMatrixDims d, uint32_t chunk_rows) {
    with_col_vec(d.cols, [=](auto v) { bias_add<decltype(v)::value>(x, b, y, d, chunk_rows); });
}

template <int V, bool W16>
__device__ void sum_rows(const float* __restrict__ x, uint16_t* __restrict__ x16, float* __restrict__ out,
                         float* __restrict__ partial, BagsslMatrixDims d, uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(d.rows, d.cols, chunk_rows);
    col_sums<V, 1>(
        s, d.cols, partial, sum_rows_tile_arrivals,
        [&](uint32_t r, float (&q)[1][V]) {
            const size_t o = (size_t)r * d.cols + s.c0;
            load_cols<V>(x + o, q[0]);
            // A clamped row (col_sums reloads a pass's last row) writes the same bits again.
            if (W16) store_cols_bf16<V>(x16 + o, q[0]);
        },
        [&](const double (&tot)[1][V]) {
            float o[V];
#pragma unroll
            for (int c = 0; c < V; ++c) o[c] = (float)tot[0][c];
            store_cols<V>(out + s.c0, o);
        });
}

// out[c] = sum_r x[r, c] (rows >= 1). partial: gridDim.y * cols floats. x16: null, or rows * cols
// bf16 that get bf16_bits of every x (its GEMM operand copy, as batchnorm.cu's y16).
extern "C" __global__ void sum_rows_f32(const float* __restrict__ x, uint16_t* __restrict__ x16,
                                        float* __restrict__ out, float* __restrict__ partial, BagsslMatrixDims d,
                                        uint32_t chunk_rows) {
    with_col_vec(d.cols, [=](auto v) {
        constexpr int V = decltype(v)::value;
        if (x16)
            sum_rows<V, true>(x, x16, out, partial, d, chunk_rows);
        else
            sum_rows<V, false>(x, x16, out, partial, d, chunk_rows);
    });
}

template <int V>
__device__ void group_mean_fwd(const float* __restrict__ x, float* __restrict__ y, BagsslMatrixDims d, uint32_t n,
                               uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(d.rows, d.cols, chunk_rows);
    if (!s.ok) return;
    const uint32_t n_rows = lane_rows(s);
    for (uint32_t k = 0; k < n_rows; ++k) {
        const uint32_t g = s.r0 + threadIdx.y + k * BAGSSL_COL_LANES;
        const float* src = x + (size_t)g * n * d.cols + s.c0;
        float acc[V] = {};
#pragma unroll 4
        for (uint32_t i = 0; i < n; ++i) {
            float v[V];
            load_cols<V>(src + (size_t)i * d.cols, v);
#pragma unroll
            for (int c = 0; c < V; ++c) acc[c] += v[c];
        }
#pragma unroll
        for (int c = 0; c < V; ++c) acc[c] /= (float)n;
        store_cols<V>(y + (size_t)g * d.cols + s.c0, acc);
    }
}

// y[g, c] = mean over the n rows g*n .. g*n+n-1 of x[r, c]; d = dims of y (groups, cols), the grid's rows.
extern "C" __global__ void group_mean_fwd_f32(const float* __restrict__ x, float* __restrict__ y, BagsslMatrixDims d,
                                              uint32_t n, uint32_t chunk_rows) {
    with_col_vec(d.cols, [=](auto v) { group_mean_fwd<decltype(v)::value>(x, y, d, n, chunk_rows); });
}

template <int V>
__device__ void group_mean_bwd(const float* __restrict__ dy, float* __restrict__ dx, BagsslMatrixDims d, uint32_t n,
                               uint32_t chunk_rows) {
    const ColSpan s = col_span<V>(d.rows, d.cols, chunk_rows);
    if (!s.ok) return;
    const uint32_t n_rows = lane_rows(s);
#pragma unroll 4
    for (uint32_t k = 0; k < n_rows; ++k) {
        const uint32_t r = s.r0 + threadIdx.y + k * BAGSSL_COL_LANES;
        float v[V];
        load_cols<V>(dy + (size_t)(r / n) * d.cols + s.c0, v);
#pragma unroll
        for (int c = 0; c < V; ++c) v[c] /= (float)n;
        store_cols<V>(dx + (size_t)r * d.cols + s.c0, v);
    }
}

// dx[r, c] = dy[r / n, c] / n; d = dims of dx (groups * n, cols), the grid's rows.
extern "C" __global__ void group_mean_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx, BagsslMatrixDims d,
                                              uint32_t n, uint32_t chunk_rows) {
    with_col_vec(d.cols, [=](auto v) { group_mean_bwd<decltype(v)::value>(dy, dx, d, n, chunk_rows); });
}

// ---------------------------------------------------------------------------------------------
// y += alpha * x
extern "C" __global__ void axpy_f32(float* __restrict__ y, float alpha, const float* __restrict__ x, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] += alpha * x[i];
}

// y = a + b (a residual connection; one pass instead of a copy and an axpy)
extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                   uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] = a[i] + b[i];
}

// x *= s
extern "C" __global__ void scale_f32(float* __restrict__ x, float s, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) x[i] *= s;
}

// partial[blockIdx.x] = sum over this block's grid-stride elements of x*w, in f64.
extern "C" __global__ void dot_partial_f32(const float* __restrict__ x, const float* __restrict__ w,
                                           double* __restrict__ partial, uint32_t n) {
    double s = 0.0;
    for (size_t i = global_thread(); i < n; i += grid_threads()) s += (double)x[i] * (double)w[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = sum of partial[0..n]; one block.
extern "C" __global__ void sum_f64(const double* __restrict__ partial, double* __restrict__ out, uint32_t n) {
    double s = 0.0;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}
