// patch_embed.cu — the patch-embedding producer: gathers training patches straight from the u8
// dataset resident on the GPU, augments them exactly as DESIGN.md §3 says, and writes the
// normalised patch matrix X (rows = patches, p*p*3 floats each, HWC flatten) that the first
// Linear's GEMM consumes; the backward of that Linear is dW = dY^T X on the device too.
//
// Build: cargo xtask build-kernels   (PTX compute_80 + cubin sm_90a, ptxas report, no spills)
// CPU reference: bagssl_data::gather_patches (crates/bagssl-data/src/gather.rs); parity test: crates/bagssl-kernels/tests/patch_parity.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
// Per patch (spec = image, oy, ox, flags, b, c, s), with w = (0.299, 0.587, 0.114):
//   x = img[oy..oy+p, ox..ox+p, :] / 255, mirrored left-right if FLIP
//   if JITTER: y = x*b; m = mean over the patch of (y . w); y = (y - m)*c + m;
//              g = y . w; y = (y - g)*s + g; x = clamp(y, 0, 1)
//   if GRAY:   every channel = x . w
//   out = (x - mean) / std, per channel
// The contrast step needs the patch mean of the gray value of the brightness-scaled patch: a
// block reduction, so one thread block handles one patch.
//
// Why this version (kernels/lab/HISTORY.md): one block per patch (its contrast needs a block
// reduction), one thread per pixel, and X's bf16 GEMM copy written beside X (no cast pass).
//
// Napkin math (p = 8, 4096 patches): reads 4096*192 B = 0.8 MB of u8, writes 4096*192*4 B =
// 3.1 MB of f32: ~2 us of HBM traffic at 3 TB/s; it is launch-bound at training sizes.

#include "common.cuh"

__constant__ float kGrayW[3] = {0.299f, 0.587f, 0.114f};

__device__ __forceinline__ float gray_of(float r, float g, float b) {
    return r * kGrayW[0] + g * kGrayW[1] + b * kGrayW[2];
}

// Writes the p*p*3 normalised floats of one patch to `out`, and their bf16 bits to `out16` unless it
// is null. Called by every thread of the block (the jitter path synchronises).
__device__ void embed_patch(const unsigned char* __restrict__ images, const BagsslImageDims& dims, uint32_t patch,
                            uint32_t image, uint32_t oy, uint32_t ox, uint32_t flags, float bright, float contr,
                            float satur, float* __restrict__ out, uint16_t* __restrict__ out16) {
    const int p = (int)patch;
    const int n_pix = p * p;
    const unsigned char* img = images + (size_t)image * dims.height * dims.width * 3;
    const bool flip = (flags & BAGSSL_PATCH_FLIP) != 0;
    const bool jitter = (flags & BAGSSL_PATCH_JITTER) != 0;
    const bool gray = (flags & BAGSSL_PATCH_GRAY) != 0;

    float m = 0.0f;
    if (jitter) {  // block-uniform branch
        float acc = 0.0f;
        for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {
            const int py = i / p, px = i - py * p;
            const int sx = flip ? p - 1 - px : px;
            const unsigned char* src = img + ((size_t)(oy + py) * dims.width + (ox + sx)) * 3;
            const float r = (float)src[0] / 255.0f * bright;
            const float g = (float)src[1] / 255.0f * bright;
            const float b = (float)src[2] / 255.0f * bright;
            acc += gray_of(r, g, b);
        }
        m = block_sum(acc) / (float)n_pix;
    }
    for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {
        const int py = i / p, px = i - py * p;
        const int sx = flip ? p - 1 - px : px;
        const unsigned char* src = img + ((size_t)(oy + py) * dims.width + (ox + sx)) * 3;
        float x0 = (float)src[0] / 255.0f;
        float x1 = (float)src[1] / 255.0f;
        float x2 = (float)src[2] / 255.0f;
        if (jitter) {
            float y0 = x0 * bright, y1 = x1 * bright, y2 = x2 * bright;
            y0 = (y0 - m) * contr + m;
            y1 = (y1 - m) * contr + m;
            y2 = (y2 - m) * contr + m;
            const float g = gray_of(y0, y1, y2);
            y0 = (y0 - g) * satur + g;
            y1 = (y1 - g) * satur + g;
            y2 = (y2 - g) * satur + g;
            x0 = fminf(fmaxf(y0, 0.0f), 1.0f);
            x1 = fminf(fmaxf(y1, 0.0f), 1.0f);
            x2 = fminf(fmaxf(y2, 0.0f), 1.0f);
        }
        if (gray) {
            const float g = gray_of(x0, x1, x2);
            x0 = g;
            x1 = g;
            x2 = g;
        }
        const float v0 = (x0 - dims.mean[0]) / dims.std[0];
        const float v1 = (x1 - dims.mean[1]) / dims.std[1];
        const float v2 = (x2 - dims.mean[2]) / dims.std[2];
        float* o = out + (size_t)i * 3;
        o[0] = v0;
        o[1] = v1;
        o[2] = v2;
        if (out16) {
            uint16_t* o16 = out16 + (size_t)i * 3;
            o16[0] = (uint16_t)bf16_bits(v0);
            o16[1] = (uint16_t)bf16_bits(v1);
            o16[2] = (uint16_t)bf16_bits(v2);
        }
    }
}

// grid.x = n_patches, block.x = min(256, round_up(p*p, 32)). out16: null, or n_patches * p*p*3 bf16.
extern "C" __global__ void patch_embed_fwd_f32(const unsigned char* __restrict__ images,
                                               const BagsslPatchSpec* __restrict__ specs, float* __restrict__ out,
                                               uint16_t* __restrict__ out16, BagsslPatchParams prm) {
    const uint32_t row = blockIdx.x;
    if (row >= prm.n_patches) return;  // block-uniform
    const BagsslPatchSpec s = specs[row];
    const size_t row_len = (size_t)prm.patch * prm.patch * 3;
    embed_patch(images, prm.dims, prm.patch, s.image, s.oy, s.ox, s.flags, s.brightness, s.contrast, s.saturation,
                out + row * row_len, out16 ? out16 + row * row_len : nullptr);
}

// Evaluation grid, no augmentation. grid.x = count * ny * nx, block as above; out16 as above.
extern "C" __global__ void patch_grid_fwd_f32(const unsigned char* __restrict__ images, float* __restrict__ out,
                                              uint16_t* __restrict__ out16, BagsslGridParams prm) {
    const uint32_t row = blockIdx.x;
    const uint32_t per_image = prm.ny * prm.nx;
    if (row >= prm.count * per_image) return;  // block-uniform
    const uint32_t image = prm.first_image + row / per_image;
    const uint32_t t = row % per_image;
    const uint32_t oy = (t / prm.nx) * prm.stride;
    const uint32_t ox = (t % prm.nx) * prm.stride;
    const size_t row_len = (size_t)prm.patch * prm.patch * 3;
    embed_patch(images, prm.dims, prm.patch, image, oy, ox, 0u, 1.0f, 1.0f, 1.0f, out + row * row_len,
                out16 ? out16 + row * row_len : nullptr);
}
