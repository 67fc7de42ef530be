// optim.cu — optimizer updates, fused into one pass over each parameter tensor.
//
// Build: cargo xtask build-kernels
// CPU reference: crates/bagssl-autograd/src/cpu.rs (adamw_); parity: crates/bagssl-autograd/tests/cuda_parity.rs
//
// adamw_f32 is torch.optim.AdamW (amsgrad=False, maximize=False), step t >= 1:
//   p = p * (1 - lr * wd)
//   m = m + (1 - beta1) * (g - m)              (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v = v * beta2 + (1 - beta2) * g * g
//   p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
// The two bias corrections are computed on the host in f64 and passed in BagsslAdamWParams.
//
// Versions:
//   1: one grid-stride pass, 16 bytes read + 12 written per element.
//
// Napkin math: hidden = proj = 2048, 2 layers, p = 8: ~12.9 M parameters, 360 MB moved per step,
// ~120 us at 3 TB/s (one launch per parameter tensor; a multi-tensor launch is the next version).

#include "common.cuh"

extern "C" __global__ void adamw_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                     float* __restrict__ v, BagsslAdamWParams prm) {
    for (size_t i = global_thread(); i < prm.n; i += grid_threads()) {
        const float g = grad[i];
        float p = param[i] * (1.0f - prm.lr * prm.weight_decay);
        float mi = m[i];
        mi = mi + (1.0f - prm.beta1) * (g - mi);
        const float vi = v[i] * prm.beta2 + (1.0f - prm.beta2) * g * g;
        const float denom = sqrtf(vi) / prm.bias_correction2_sqrt + prm.eps;
        p = p - prm.step_size * (mi / denom);
        param[i] = p;
        m[i] = mi;
        v[i] = vi;
    }
}
