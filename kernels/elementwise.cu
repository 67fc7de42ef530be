// elementwise.cu — the small memory-bound kernels of the training step: ReLU forward/backward,
// bias add, column sums (the bias gradient), group mean forward/backward (bag aggregation),
// axpy, scale and a dot product with an f64 result.
//
// Build: cargo xtask build-kernels
// CPU reference: crates/bagssl-autograd/src/cpu.rs; parity: crates/bagssl-autograd/tests/cuda_parity.rs
//
// Versions:
//   1: grid-stride loops, one element per thread per iteration; column sums with a (32 x 16)
//      block per 32 columns (coalesced along rows, tree over the 16 row lanes); dot with per-block
//      f64 partials and a one-block final sum (deterministic, no atomics).
//
// Napkin math: every kernel here moves 8-12 bytes per element and does ~1 FLOP: at 3 TB/s an
// (4096 x 2048) f32 matrix pass costs ~30 us; they matter only by their launch count.

#include "common.cuh"

extern "C" __global__ void relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] = x[i] < 0.0f ? 0.0f : x[i];  // NaN propagates, as in PyTorch
}

// dx = dy * (y > 0)
extern "C" __global__ void relu_bwd_f32(const float* __restrict__ dy, const float* __restrict__ y,
                                        float* __restrict__ dx, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y = x + b (b broadcast over the rows)
extern "C" __global__ void bias_add_fwd_f32(const float* __restrict__ x, const float* __restrict__ b,
                                            float* __restrict__ y, BagsslMatrixDims d) {
    const size_t n = (size_t)d.rows * d.cols;
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] = x[i] + b[i % d.cols];
}

// out[c] = sum_r x[r, c]. grid.x = ceil(cols / 32), block (32, BAGSSL_COL_ROWS).
extern "C" __global__ void sum_rows_f32(const float* __restrict__ x, float* __restrict__ out, BagsslMatrixDims d) {
    const uint32_t c = blockIdx.x * BAGSSL_COL_TILE + threadIdx.x;
    float s = 0.0f;
    if (c < d.cols)
        for (uint32_t r = threadIdx.y; r < d.rows; r += blockDim.y) s += x[(size_t)r * d.cols + c];
    s = column_total(s);
    if (c < d.cols && threadIdx.y == 0) out[c] = s;
}

// y[g, c] = mean over the n rows g*n .. g*n+n-1 of x[r, c]; d = dims of y (groups, cols).
extern "C" __global__ void group_mean_fwd_f32(const float* __restrict__ x, float* __restrict__ y, BagsslMatrixDims d,
                                              uint32_t n) {
    const size_t total = (size_t)d.rows * d.cols;
    for (size_t i = global_thread(); i < total; i += grid_threads()) {
        const size_t g = i / d.cols, c = i % d.cols;
        const float* src = x + g * n * d.cols + c;
        float s = 0.0f;
        for (uint32_t k = 0; k < n; ++k) s += src[(size_t)k * d.cols];
        y[i] = s / (float)n;
    }
}

// dx[r, c] = dy[r / n, c] / n; d = dims of dx (groups * n, cols).
extern "C" __global__ void group_mean_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx, BagsslMatrixDims d,
                                              uint32_t n) {
    const size_t total = (size_t)d.rows * d.cols;
    for (size_t i = global_thread(); i < total; i += grid_threads()) {
        const size_t r = i / d.cols, c = i % d.cols;
        dx[i] = dy[(r / n) * d.cols + c] / (float)n;
    }
}

// y += alpha * x
extern "C" __global__ void axpy_f32(float* __restrict__ y, float alpha, const float* __restrict__ x, uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads()) y[i] += alpha * x[i];
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
