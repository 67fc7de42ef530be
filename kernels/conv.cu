// conv.cu — the data movement of convolutions and max-pooling over NHWC rows (n*h*w, c), geometry
// BagsslWindow2d: im2col (a convolution is then one GEMM), its adjoint col2im (the input gradient
// after the GEMM dY W), the conv weight re-layout (outer, a, b) -> (outer, b, a), and max-pooling
// forward and backward.
//
// Build: cargo xtask build-kernels   (check: cargo xtask build-kernels --check)
// CPU reference: crates/bagssl-autograd/src/cpu/conv.rs; parity: crates/bagssl-autograd/tests/cuda_parity.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
// Every kernel is a gather: one thread per output element (V = 4 adjacent channels, float4, when
// c % 4 == 0, else 1), no atomics, and every sum in the CPU's order (window offsets (ki, kj)
// ascending, from +0.0), so the results are the CPU's bits. Index math is 32-bit: the launchers
// check that every buffer has fewer than 2^32 elements.
//
// Why these versions (kernels/lab/HISTORY.md): col2im and max_pool_bwd gather instead of
// scattering with atomics (deterministic, and the same bits as the CPU); im2col writes its bf16
// GEMM copy beside the columns (no cast pass over the largest tensor of a conv); the transpose is
// a plain gather because it only ever moves conv weights (a few MB, its strided reads hit L2).
//
// Napkin math (64 images of 32x32x64, 3x3 stride 1 pad 1): im2col reads x (16.8 MB, each pixel
// ~9 times from L2) and writes 151 MB of columns + 75 MB of bf16: ~55 us at 4.1 TB/s; col2im the
// reverse, 151 MB read, 16.8 MB written, ~41 us. Max-pool 3x3 stride 2 reads 16.8 MB and
// writes 4.2 MB (forward), ~5 us.

#include "common.cuh"

// (ki, kj) ascending over the taps that cover input coordinate `i` along one axis:
// out * stride + k - pad = i, k < k_size, out < n_out. `f(out, k)`.
template <typename F>
__device__ __forceinline__ void covering(uint32_t i, uint32_t n_out, uint32_t k_size, uint32_t stride, uint32_t pad,
                                         F f) {
    const uint32_t t = i + pad;
    for (uint32_t k = t % stride; k < k_size && k <= t; k += stride) {
        const uint32_t out = (t - k) / stride;
        if (out < n_out) f(out, k);
    }
}

// The input pixel (row of x) under tap (ki, kj) of window (img, oy, ox), or -1 over the padding.
__device__ __forceinline__ int64_t source_row(const BagsslWindow2d& g, uint32_t img, uint32_t oy, uint32_t ox,
                                              uint32_t ki, uint32_t kj) {
    const uint32_t iy = oy * g.stride + ki, ix = ox * g.stride + kj;
    if (iy < g.pad || iy - g.pad >= g.h || ix < g.pad || ix - g.pad >= g.w) return -1;
    return ((int64_t)img * g.h + (iy - g.pad)) * g.w + (ix - g.pad);
}

// ---------------------------------------------------------------------------------------------

template <int V>
__device__ void im2col(const float* __restrict__ x, float* __restrict__ cols, uint16_t* __restrict__ cols16,
                       const BagsslWindow2d g) {
    const uint32_t cv = g.c / V, taps = g.kh * g.kw;
    const uint32_t n_items = g.n * g.out_h * g.out_w * taps * cv;
    for (size_t i = global_thread(); i < n_items; i += grid_threads()) {
        const uint32_t e = (uint32_t)i, ch = e % cv * V, t = e / cv;
        const uint32_t tap = t % taps, r = t / taps;
        const uint32_t ki = tap / g.kw, kj = tap - ki * g.kw;
        const uint32_t ox = r % g.out_w, q = r / g.out_w, oy = q % g.out_h, img = q / g.out_h;
        const int64_t src = source_row(g, img, oy, ox, ki, kj);
        float v[V] = {};
        if (src >= 0) load_cols<V>(x + (size_t)src * g.c + ch, v);
        // e * V = r * (taps * c) + tap * c + ch: the thread's place in the (rows, kh*kw*c) matrix.
        store_cols<V>(cols + (size_t)e * V, v);
        if (cols16) store_cols_bf16<V>(cols16 + (size_t)e * V, v);
    }
}

// cols[(img, oy, ox), (ki, kj, ch)] = x[(img, oy*s + ki - pad, ox*s + kj - pad), ch], 0 over the
// padding. cols16: null, or the same count of bf16 (bf16_bits of every column entry: the GEMM copy).
extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ cols,
                                      uint16_t* __restrict__ cols16, BagsslWindow2d g) {
    with_col_vec(g.c, [=](auto v) { im2col<decltype(v)::value>(x, cols, cols16, g); });
}

template <int V>
__device__ void col2im(const float* __restrict__ cols, float* __restrict__ dx, const BagsslWindow2d g) {
    const uint32_t cv = g.c / V, k_len = g.kh * g.kw * g.c;
    const uint32_t n_items = g.n * g.h * g.w * cv;
    for (size_t i = global_thread(); i < n_items; i += grid_threads()) {
        const uint32_t e = (uint32_t)i, ch = e % cv * V, p = e / cv;
        const uint32_t ix = p % g.w, q = p / g.w, iy = q % g.h, img = q / g.h;
        float acc[V] = {};
        covering(iy, g.out_h, g.kh, g.stride, g.pad, [&](uint32_t oy, uint32_t ki) {
            covering(ix, g.out_w, g.kw, g.stride, g.pad, [&](uint32_t ox, uint32_t kj) {
                const size_t row = ((size_t)img * g.out_h + oy) * g.out_w + ox;
                float v[V];
                load_cols<V>(cols + row * k_len + (ki * g.kw + kj) * g.c + ch, v);
#pragma unroll
                for (int c = 0; c < V; ++c) acc[c] += v[c];
            });
        });
        store_cols<V>(dx + (size_t)e * V, acc);
    }
}

// The adjoint of im2col_f32: dx[pixel, ch] = the sum of every column entry that copied it, taps
// (ki, kj) ascending.
extern "C" __global__ void col2im_f32(const float* __restrict__ cols, float* __restrict__ dx, BagsslWindow2d g) {
    with_col_vec(g.c, [=](auto v) { col2im<decltype(v)::value>(cols, dx, g); });
}

// (outer, a, b) -> (outer, b, a): y[(o*b + j)*a + i] = x[(o*a + i)*b + j]; coalesced writes.
extern "C" __global__ void transpose_last2_f32(const float* __restrict__ x, float* __restrict__ y, uint32_t outer,
                                               uint32_t a, uint32_t b) {
    const uint32_t n = outer * a * b;
    for (size_t i = global_thread(); i < n; i += grid_threads()) {
        const uint32_t e = (uint32_t)i, ii = e % a, t = e / a, j = t % b, o = t / b;
        y[e] = x[((size_t)o * a + ii) * b + j];
    }
}

// ---------------------------------------------------------------------------------------------
// Max-pooling. The forward's update `v > m || v is NaN` (a NaN, once there, stays) and the backward's tie rule (the first tap, in
// window order, equal to y; a NaN y matches the first NaN) are the CPU's, element for element.

__device__ __forceinline__ bool equals_max(float v, float m) { return v == m || (v != v && m != m); }

template <int V>
__device__ void max_pool_fwd(const float* __restrict__ x, float* __restrict__ y, const BagsslWindow2d g) {
    const uint32_t cv = g.c / V;
    const uint32_t n_items = g.n * g.out_h * g.out_w * cv;
    for (size_t i = global_thread(); i < n_items; i += grid_threads()) {
        const uint32_t e = (uint32_t)i, ch = e % cv * V, r = e / cv;
        const uint32_t ox = r % g.out_w, q = r / g.out_w, oy = q % g.out_h, img = q / g.out_h;
        float m[V];
#pragma unroll
        for (int c = 0; c < V; ++c) m[c] = -INFINITY;
        for (uint32_t ki = 0; ki < g.kh; ++ki)
            for (uint32_t kj = 0; kj < g.kw; ++kj) {
                const int64_t src = source_row(g, img, oy, ox, ki, kj);
                if (src < 0) continue;
                float v[V];
                load_cols<V>(x + (size_t)src * g.c + ch, v);
#pragma unroll
                for (int c = 0; c < V; ++c)
                    if (v[c] > m[c] || v[c] != v[c]) m[c] = v[c];
            }
        store_cols<V>(y + (size_t)e * V, m);
    }
}

// y[(img, oy, ox), ch] = max over the window's taps inside the image (padding never wins).
extern "C" __global__ void max_pool_fwd_f32(const float* __restrict__ x, float* __restrict__ y, BagsslWindow2d g) {
    with_col_vec(g.c, [=](auto v) { max_pool_fwd<decltype(v)::value>(x, y, g); });
}

template <int V>
__device__ void max_pool_bwd(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                             float* __restrict__ dx, const BagsslWindow2d g) {
    const uint32_t cv = g.c / V;
    const uint32_t n_items = g.n * g.h * g.w * cv;
    for (size_t i = global_thread(); i < n_items; i += grid_threads()) {
        const uint32_t e = (uint32_t)i, ch = e % cv * V, p = e / cv;
        const uint32_t ix = p % g.w, q = p / g.w, iy = q % g.h, img = q / g.h;
        float self[V], acc[V] = {};
        load_cols<V>(x + (size_t)e * V, self);
        covering(iy, g.out_h, g.kh, g.stride, g.pad, [&](uint32_t oy, uint32_t ki) {
            covering(ix, g.out_w, g.kw, g.stride, g.pad, [&](uint32_t ox, uint32_t kj) {
                const size_t o = (((size_t)img * g.out_h + oy) * g.out_w + ox) * g.c + ch;
                float m[V];
                load_cols<V>(y + o, m);
                // This pixel gets the window's gradient when it equals the max and no earlier tap does.
                bool mine[V], any = false;
#pragma unroll
                for (int c = 0; c < V; ++c) {
                    mine[c] = equals_max(self[c], m[c]);
                    any = any || mine[c];
                }
                const uint32_t me = ki * g.kw + kj;
                for (uint32_t tap = 0; tap < me && any; ++tap) {
                    const int64_t src = source_row(g, img, oy, ox, tap / g.kw, tap % g.kw);
                    if (src < 0) continue;
                    float v[V];
                    load_cols<V>(x + (size_t)src * g.c + ch, v);
                    any = false;
#pragma unroll
                    for (int c = 0; c < V; ++c) {
                        mine[c] = mine[c] && !equals_max(v[c], m[c]);
                        any = any || mine[c];
                    }
                }
                if (!any) return;
                float d[V];
                load_cols<V>(dy + o, d);
#pragma unroll
                for (int c = 0; c < V; ++c)
                    if (mine[c]) acc[c] += d[c];
            });
        });
        store_cols<V>(dx + (size_t)e * V, acc);
    }
}

// dx[pixel, ch] = the sum, taps (ki, kj) ascending, of dy over the windows whose first tap equal
// to their max y is this pixel.
extern "C" __global__ void max_pool_bwd_f32(const float* __restrict__ x, const float* __restrict__ y,
                                            const float* __restrict__ dy, float* __restrict__ dx, BagsslWindow2d g) {
    with_col_vec(g.c, [=](auto v) { max_pool_bwd<decltype(v)::value>(x, y, dy, dx, g); });
}
