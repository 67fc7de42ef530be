// optim.cu — optimizer updates, fused into one pass over each parameter tensor.
//
// Build: cargo xtask build-kernels   (check: cargo xtask build-kernels --check)
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
// CPU reference: crates/bagssl-autograd/src/cpu/elementwise.rs (adamw); parity: crates/bagssl-autograd/tests/cuda_parity.rs
//
// adamw_f32 is torch.optim.AdamW (amsgrad=False, maximize=False), step t >= 1:
//   p = p * (1 - lr * wd)
//   m = m + (1 - beta1) * (g - m)              (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v = v * beta2 + (1 - beta2) * g * g
//   p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
// The two bias corrections are computed on the host in f64 and passed in BagsslAdamWParams.
//
// Why these versions (kernels/lab/HISTORY.md): adamw_multi_f32 updates every tensor of a step in one
// launch (small tensors were launch-bound) and rewrites a weight's bf16 copy beside it; adamw_f32,
// the same expression per element, stays for single tensors.
//
// Napkin math: hidden = proj = 2048, 2 layers, p = 8: ~12.9 M parameters, 360 MB moved per step
// (+25 MB of bf16 copies), ~95 us at the H200's 4.1 TB/s copy rate.

#include "common.cuh"

// One element of torch.optim.AdamW; returns the new parameter, updates m and v in place.
__device__ __forceinline__ float adamw_elem(float p, float g, float& m, float& v, float lr, float weight_decay,
                                            float beta1, float beta2, float eps, float step_size, float bc2_sqrt) {
    p = p * (1.0f - lr * weight_decay);
    m = m + (1.0f - beta1) * (g - m);
    v = v * beta2 + (1.0f - beta2) * g * g;
    const float denom = sqrtf(v) / bc2_sqrt + eps;
    return p - step_size * (m / denom);
}

extern "C" __global__ void adamw_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                     float* __restrict__ v, BagsslAdamWParams prm) {
    for (size_t i = global_thread(); i < prm.n; i += grid_threads()) {
        float mi = m[i], vi = v[i];
        param[i] = adamw_elem(param[i], grad[i], mi, vi, prm.lr, prm.weight_decay, prm.beta1, prm.beta2, prm.eps,
                              prm.step_size, prm.bias_correction2_sqrt);
        m[i] = mi;
        v[i] = vi;
    }
}

// Tiles of BAGSSL_ADAMW_TILE elements over the n_tensors tensors of prm (see bagssl_kernels.h), block
// b taking tiles b, b + gridDim.x, ...; a tile's tensor is found by a scan of first_tile (<= 16 steps,
// uniform over the block). 1-D blocks of any size.
extern "C" __global__ void adamw_multi_f32(const BagsslAdamWMulti prm) {
    const uint32_t tiles = prm.first_tile[prm.n_tensors];
    for (uint32_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        uint32_t t = 0;
        while (tile >= prm.first_tile[t + 1]) ++t;
        float* __restrict__ param = reinterpret_cast<float*>(prm.param[t]);
        const float* __restrict__ grad = reinterpret_cast<const float*>(prm.grad[t]);
        float* __restrict__ m = reinterpret_cast<float*>(prm.m[t]);
        float* __restrict__ v = reinterpret_cast<float*>(prm.v[t]);
        uint16_t* __restrict__ param16 = reinterpret_cast<uint16_t*>(prm.param16[t]);
        const float wd = prm.weight_decay[t];
        const uint32_t start = (tile - prm.first_tile[t]) * BAGSSL_ADAMW_TILE;
        const uint32_t end = prm.n[t] - start < BAGSSL_ADAMW_TILE ? prm.n[t] : start + BAGSSL_ADAMW_TILE;
        for (uint32_t i = start + threadIdx.x; i < end; i += blockDim.x) {
            float mi = m[i], vi = v[i];
            const float p = adamw_elem(param[i], grad[i], mi, vi, prm.lr, wd, prm.beta1, prm.beta2, prm.eps,
                                       prm.step_size, prm.bias_correction2_sqrt);
            param[i] = p;
            m[i] = mi;
            v[i] = vi;
            if (param16) param16[i] = (uint16_t)bf16_bits(p);
        }
    }
}
