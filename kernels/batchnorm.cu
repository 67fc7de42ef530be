// batchnorm.cu — BatchNorm1d over the rows of a (rows, cols) matrix, PyTorch semantics
// (DESIGN.md §3): training forward with batch statistics (biased variance to normalise, unbiased
// for the running statistics) and an optional fused ReLU, its backward, the eval forward with
// running statistics, and the running-statistics EMA.
//
// Build: cargo xtask build-kernels
// CPU reference: crates/bagssl-autograd/src/cpu.rs (bn_*); parity: crates/bagssl-autograd/tests/cuda_parity.rs
//
// Training forward = bn_stats_fwd_f32 (column reduction) + bn_apply_fwd_f32 (elementwise).
// Backward, with g = dy * (y > 0) when relu, xhat = (x - mean) * invstd:
//   dbeta = sum_r g, dgamma = sum_r g * xhat                          (bn_bwd_reduce_f32)
//   dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma)         (bn_bwd_apply_f32)
//
// Versions:
//   1: column reductions with a (32 x 16) block per 32 columns, exact two-pass mean/variance
//      (the column is re-read from L2 for the second pass), elementwise kernels grid-stride.
//
// Napkin math (4096 x 2048 f32 = 32 MB): forward reads x twice (stats) + once (apply) and writes
// y once: ~130 MB, ~45 us at 3 TB/s; backward ~ the same. Column reductions use 64 blocks at
// 2048 columns, so they reach maybe half of the bandwidth; fine next to the GEMMs.

#include "common.cuh"

// grid.x = ceil(cols / 32), block (32, BAGSSL_COL_ROWS).
extern "C" __global__ void bn_stats_fwd_f32(const float* __restrict__ x, float* __restrict__ mean,
                                            float* __restrict__ invstd, float* __restrict__ var_unbiased,
                                            BagsslBnParams prm) {
    const uint32_t c = blockIdx.x * BAGSSL_COL_TILE + threadIdx.x;
    const bool ok = c < prm.cols;
    float s = 0.0f;
    if (ok)
        for (uint32_t r = threadIdx.y; r < prm.rows; r += blockDim.y) s += x[(size_t)r * prm.cols + c];
    const float m = column_total(s) / (float)prm.rows;
    float ss = 0.0f;
    if (ok)
        for (uint32_t r = threadIdx.y; r < prm.rows; r += blockDim.y) {
            const float d = x[(size_t)r * prm.cols + c] - m;
            ss += d * d;
        }
    ss = column_total(ss);
    if (ok && threadIdx.y == 0) {
        mean[c] = m;
        invstd[c] = 1.0f / sqrtf(ss / (float)prm.rows + prm.eps);
        var_unbiased[c] = prm.rows > 1 ? ss / (float)(prm.rows - 1) : 0.0f;
    }
}

// y = (x - mean) * invstd * gamma + beta, then ReLU when prm.relu.
extern "C" __global__ void bn_apply_fwd_f32(const float* __restrict__ x, const float* __restrict__ mean,
                                            const float* __restrict__ invstd, const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float* __restrict__ y,
                                            BagsslBnParams prm) {
    const size_t n = (size_t)prm.rows * prm.cols;
    for (size_t i = global_thread(); i < n; i += grid_threads()) {
        const size_t c = i % prm.cols;
        float v = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
        if (prm.relu && v < 0.0f) v = 0.0f;  // NaN propagates, as in PyTorch
        y[i] = v;
    }
}

// dbeta[c] = sum_r g, dgamma[c] = sum_r g * xhat. grid.x = ceil(cols / 32), block (32, BAGSSL_COL_ROWS).
extern "C" __global__ void bn_bwd_reduce_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             const float* __restrict__ y, const float* __restrict__ mean,
                                             const float* __restrict__ invstd, float* __restrict__ dgamma,
                                             float* __restrict__ dbeta, BagsslBnParams prm) {
    const uint32_t c = blockIdx.x * BAGSSL_COL_TILE + threadIdx.x;
    const bool ok = c < prm.cols;
    float sg = 0.0f, sgx = 0.0f;
    if (ok) {
        const float m = mean[c], is = invstd[c];
        for (uint32_t r = threadIdx.y; r < prm.rows; r += blockDim.y) {
            const size_t i = (size_t)r * prm.cols + c;
            const float g = (prm.relu && !(y[i] > 0.0f)) ? 0.0f : dy[i];
            sg += g;
            sgx += g * ((x[i] - m) * is);
        }
    }
    sg = column_total(sg);
    sgx = column_total(sgx);
    if (ok && threadIdx.y == 0) {
        dbeta[c] = sg;
        dgamma[c] = sgx;
    }
}

// dx = gamma * invstd / N * (N * g - dbeta - xhat * dgamma)
extern "C" __global__ void bn_bwd_apply_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                            const float* __restrict__ y, const float* __restrict__ mean,
                                            const float* __restrict__ invstd, const float* __restrict__ gamma,
                                            const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                                            float* __restrict__ dx, BagsslBnParams prm) {
    const size_t n = (size_t)prm.rows * prm.cols;
    const float rows = (float)prm.rows;
    for (size_t i = global_thread(); i < n; i += grid_threads()) {
        const size_t c = i % prm.cols;
        const float g = (prm.relu && !(y[i] > 0.0f)) ? 0.0f : dy[i];
        const float xhat = (x[i] - mean[c]) * invstd[c];
        dx[i] = gamma[c] * invstd[c] / rows * (rows * g - dbeta[c] - xhat * dgamma[c]);
    }
}

// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, then ReLU when prm.relu.
extern "C" __global__ void bn_eval_fwd_f32(const float* __restrict__ x, const float* __restrict__ running_mean,
                                           const float* __restrict__ running_var, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float* __restrict__ y,
                                           BagsslBnParams prm) {
    const size_t n = (size_t)prm.rows * prm.cols;
    for (size_t i = global_thread(); i < n; i += grid_threads()) {
        const size_t c = i % prm.cols;
        float v = (x[i] - running_mean[c]) / sqrtf(running_var[c] + prm.eps) * gamma[c] + beta[c];
        if (prm.relu && v < 0.0f) v = 0.0f;  // NaN propagates, as in PyTorch
        y[i] = v;
    }
}

// running = (1 - momentum) * running + momentum * batch
extern "C" __global__ void bn_ema_f32(float* __restrict__ running, const float* __restrict__ batch, float momentum,
                                      uint32_t n) {
    for (size_t i = global_thread(); i < n; i += grid_threads())
        running[i] = (1.0f - momentum) * running[i] + momentum * batch[i];
}
