// cov_loss.cu — bag-VICReg (DESIGN.md §3) on z (N = B*n rows, D columns; rows b*n .. b*n+n-1 are
// image b's patches): the three loss terms and dL/dz, without a round trip to the host. Only the
// four scalars (loss, I, V, Cv) in f64 come back, 32 bytes.
//
// Build: cargo xtask build-kernels
// CPU reference: crates/bagssl-autograd/src/cpu.rs (vicreg_fwd_bwd); golden: shared/golden/vicreg_bag.json
// parity: crates/bagssl-autograd/tests/cuda_parity.rs (N = 4096, D = 2048 among others)
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
// Launch order (crates/bagssl-kernels/src/vicreg.rs): vicreg_group_stats_f32 -> vicreg_colmean_f32
// -> vicreg_center_f32 -> GEMM C -> vicreg_cov_terms_f32 (makes Coff in place) ->
// vicreg_grad_init_f32 -> GEMM dz += Zc Coff -> vicreg_finalize_f32.
//
// Versions:
//   1: the two D x D x N products on cuBLAS (TF32 tensor cores or full f32, see Gpu::gemm_precision),
//      the rest as fused memory-bound kernels with per-block f64 partials (deterministic, no atomics).
//
// Napkin math (N = 4096, D = 2048): each GEMM is 2*N*D^2 = 34 GFLOP, ~0.1 ms each in TF32 on an
// H100/H200 (~400 TFLOP/s sustained), ~0.7 ms each in plain f32; the fused kernels move z (32 MB)
// ~5 times and C (16 MB) twice, ~0.07 ms. The GEMMs bound it.

#include "common.cuh"

// gm[b, d] = mean_i z[b*n + i, d]; partial[blockIdx.x] = sum over this block's (b, d) of
// sum_i (z[b*n+i, d] - gm[b, d])^2. Grid-stride over n_groups * dim.
extern "C" __global__ void vicreg_group_stats_f32(const float* __restrict__ z, float* __restrict__ gm,
                                                  double* __restrict__ partial, BagsslVicregParams prm) {
    const size_t total = (size_t)prm.n_groups * prm.dim;
    const uint32_t n = prm.n_per_image;
    float acc = 0.0f;
    for (size_t i = global_thread(); i < total; i += grid_threads()) {
        const size_t b = i / prm.dim, d = i % prm.dim;
        const float* src = z + b * n * prm.dim + d;
        float s = 0.0f;
        for (uint32_t k = 0; k < n; ++k) s += src[(size_t)k * prm.dim];
        const float g = s / (float)n;
        gm[i] = g;
        for (uint32_t k = 0; k < n; ++k) {
            const float e = src[(size_t)k * prm.dim] - g;
            acc += e * e;
        }
    }
    const double t = block_sum((double)acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

// mu[d] = mean_b gm[b, d] (the column mean: every group has n rows). Grid-stride over dim.
extern "C" __global__ void vicreg_colmean_f32(const float* __restrict__ gm, float* __restrict__ mu,
                                              BagsslVicregParams prm) {
    for (size_t d = global_thread(); d < prm.dim; d += grid_threads()) {
        float s = 0.0f;
        for (uint32_t b = 0; b < prm.n_groups; ++b) s += gm[(size_t)b * prm.dim + d];
        mu[d] = s / (float)prm.n_groups;
    }
}

// zc = z - mu (broadcast over rows).
extern "C" __global__ void vicreg_center_f32(const float* __restrict__ z, const float* __restrict__ mu,
                                             float* __restrict__ zc, BagsslVicregParams prm) {
    const size_t total = (size_t)prm.n_rows * prm.dim;
    for (size_t i = global_thread(); i < total; i += grid_threads()) zc[i] = z[i] - mu[i % prm.dim];
}

// On C (dim x dim, already divided by N - 1): zeroes the diagonal in place (C becomes Coff),
// vcoef[d] = -mu / (D (N-1)) [s_d < 1] / s_d, and per-block f64 partials of sum(Coff^2) and
// sum_d relu(1 - s_d). Grid-stride over dim * dim.
extern "C" __global__ void vicreg_cov_terms_f32(float* __restrict__ c, float* __restrict__ vcoef,
                                                double* __restrict__ cov_partial, double* __restrict__ var_partial,
                                                BagsslVicregParams prm) {
    const size_t total = (size_t)prm.dim * prm.dim;
    const double coef = -(double)prm.variance / ((double)prm.dim * (double)(prm.n_rows - 1));
    double off = 0.0, hinge = 0.0;
    for (size_t i = global_thread(); i < total; i += grid_threads()) {
        const size_t r = i / prm.dim, col = i % prm.dim;
        const float v = c[i];
        if (r == col) {
            const float s = sqrtf(v + prm.eps);
            const float h = 1.0f - s;
            if (h > 0.0f) {
                hinge += (double)h;
                vcoef[r] = (float)(coef / (double)s);
            } else {
                vcoef[r] = 0.0f;
            }
            c[i] = 0.0f;
        } else {
            off += (double)v * (double)v;
        }
    }
    off = block_sum(off);
    hinge = block_sum(hinge);
    if (threadIdx.x == 0) {
        cov_partial[blockIdx.x] = off;
        var_partial[blockIdx.x] = hinge;
    }
}

// dz = 2 lambda / (N D) (z - gm[row / n]) + vcoef[d] * zc  (the covariance GEMM adds on top).
extern "C" __global__ void vicreg_grad_init_f32(const float* __restrict__ z, const float* __restrict__ gm,
                                                const float* __restrict__ zc, const float* __restrict__ vcoef,
                                                float* __restrict__ dz, BagsslVicregParams prm) {
    const size_t total = (size_t)prm.n_rows * prm.dim;
    const float c_inv = (float)(2.0 * (double)prm.invariance / ((double)prm.n_rows * (double)prm.dim));
    for (size_t i = global_thread(); i < total; i += grid_threads()) {
        const size_t r = i / prm.dim, d = i % prm.dim;
        const float g = gm[(r / prm.n_per_image) * prm.dim + d];
        dz[i] = c_inv * (z[i] - g) + vcoef[d] * zc[i];
    }
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
