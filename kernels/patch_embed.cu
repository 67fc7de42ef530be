// patch_embed.cu — the patch-embedding producer: gathers training patches straight from the u8
// dataset resident on the GPU, augments them exactly as docs/DEFINITIONS.md §3 says, and writes the
// normalised patch matrix X (rows = patches, p*p*3 floats each, HWC flatten) that the first
// Linear's GEMM consumes; the backward of that Linear is dW = dY^T X on the device too.
//
// Build: cargo xtask build-kernels   (PTX compute_80 + cubin sm_90a, ptxas report, no spills)
// CPU reference: bagssl_data::gather_patches (crates/bagssl-data/src/gather.rs); parity test: crates/bagssl-kernels/tests/patch_parity.rs
// Emulated check (no GPU): cargo xtask emulate-kernels (kernels/lab/check.cpp)
//
// Per patch (spec = image, box oy, ox, box_h, box_w, flags, b, c, s, sigma), w = (0.299, 0.587, 0.114):
//   x = img[oy..oy+box_h, ox..ox+box_w, :] / 255, resized bilinearly to p x p when the box is not
//       (half-pixel centres, no antialias: PyTorch's align_corners=False), mirrored if FLIP
//   if JITTER: y = x*b; m = mean over the patch of (y . w); y = (y - m)*c + m;
//              g = y . w; y = (y - g)*s + g; x = clamp(y, 0, 1)
//   if GRAY:   every channel = x . w
//   if BLUR:   separable Gaussian of sigma, half-width min(ceil(3 sigma), p - 1), reflect padding
//   if SOLARIZE: v >= 0.5 -> 1 - v
//   out = (x - mean) / std, per channel
// The contrast step needs the patch mean of the gray value of the brightness-scaled patch: a
// block reduction, so one thread block handles one patch. The blur needs its neighbours: the
// block writes the patch to `out`, blurs the rows into `scratch` and the columns back (two
// barriers; a global scratch, not shared memory, so any p works).
//
// Why this version (kernels/lab/HISTORY.md): one block per patch (its contrast needs a block
// reduction), one thread per pixel, and X's bf16 GEMM copy written beside X (no cast pass).
// v3 adds the resized box, blur and solarize; a fixed crop takes the v2 path, value for value.
//
// Napkin math (p = 8, 4096 patches): reads 4096*192 B = 0.8 MB of u8, writes 4096*192*4 B =
// 3.1 MB of f32: ~2 us of HBM traffic at 3 TB/s; it is launch-bound at training sizes. A
// resized box reads at most 4 source pixels per output pixel (L1/L2-resident).

#include "common.cuh"

__constant__ float kGrayW[3] = {0.299f, 0.587f, 0.114f};

__device__ __forceinline__ float gray_of(float r, float g, float b) {
    return r * kGrayW[0] + g * kGrayW[1] + b * kGrayW[2];
}

// One axis of the bilinear resize from `len` source pixels to `out`: output i reads source
// pixels i0 (returned) and i1 with weights l0, l1 (bagssl_data's linear_tap, same f32 steps).
__device__ __forceinline__ int linear_tap(int i, int len, int out, int& i1, float& l0, float& l1) {
    const float scale = (float)len / (float)out;
    const float src = fmaxf(((float)i + 0.5f) * scale - 0.5f, 0.0f);
    const int i0 = (int)src < len - 1 ? (int)src : len - 1;
    i1 = i0 + 1 < len ? i0 + 1 : i0;
    l1 = fminf(fmaxf(src - (float)i0, 0.0f), 1.0f);
    l0 = 1.0f - l1;
    return i0;
}

// The crop box of one patch and its output side.
struct PatchBox {
    const unsigned char* img;  // the image's first pixel
    uint32_t width;            // the image's width
    int oy, ox, h, w, p;
    bool flip;
};

// Pixel i (row-major over p x p) of the patch after crop, / 255, resize and flip.
__device__ __forceinline__ void crop_pixel(const PatchBox& b, int i, float& x0, float& x1, float& x2) {
    const int py = i / b.p, px = i - py * b.p;
    const int sx = b.flip ? b.p - 1 - px : px;
    if (b.h == b.p && b.w == b.p) {
        const unsigned char* src = b.img + ((size_t)(b.oy + py) * b.width + (b.ox + sx)) * 3;
        x0 = (float)src[0] / 255.0f;
        x1 = (float)src[1] / 255.0f;
        x2 = (float)src[2] / 255.0f;
        return;
    }
    int y1, xr1;
    float h0, h1, w0, w1;
    const int y0 = linear_tap(py, b.h, b.p, y1, h0, h1);
    const int xr0 = linear_tap(sx, b.w, b.p, xr1, w0, w1);
    const unsigned char* r0 = b.img + ((size_t)(b.oy + y0) * b.width + b.ox) * 3;
    const unsigned char* r1 = b.img + ((size_t)(b.oy + y1) * b.width + b.ox) * 3;
    float v[3];
    for (int c = 0; c < 3; ++c) {
        const float top = w0 * ((float)r0[xr0 * 3 + c] / 255.0f) + w1 * ((float)r0[xr1 * 3 + c] / 255.0f);
        const float bottom = w0 * ((float)r1[xr0 * 3 + c] / 255.0f) + w1 * ((float)r1[xr1 * 3 + c] / 255.0f);
        v[c] = h0 * top + h1 * bottom;
    }
    x0 = v[0];
    x1 = v[1];
    x2 = v[2];
}

// Reflect padding (PyTorch's): -1 -> 1, p -> p - 2; |overhang| <= p - 1.
__device__ __forceinline__ int reflect_index(int i, int p) { return i < 0 ? -i : (i >= p ? 2 * (p - 1) - i : i); }

// Weight of tap t of the normalised Gaussian of sigma, half-width k (bagssl_data's blur_weight).
__device__ __forceinline__ float blur_weight(int t, float sigma, int k) {
    float sum = 0.0f;
    for (int u = -k; u <= k; ++u) sum += expf(-0.5f * ((float)u / sigma) * ((float)u / sigma));
    return expf(-0.5f * ((float)t / sigma) * ((float)t / sigma)) / sum;
}

// Solarize (when asked), normalise and store pixel i: out (and its bf16 bits in out16).
__device__ __forceinline__ void store_pixel(const BagsslImageDims& dims, bool solarize, int i, float x0, float x1,
                                            float x2, float* __restrict__ out, uint16_t* __restrict__ out16) {
    if (solarize) {
        x0 = x0 >= 0.5f ? 1.0f - x0 : x0;
        x1 = x1 >= 0.5f ? 1.0f - x1 : x1;
        x2 = x2 >= 0.5f ? 1.0f - x2 : x2;
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

// Writes the p*p*3 normalised floats of one patch to `out`, and their bf16 bits to `out16` unless it
// is null. Called by every thread of the block (the jitter and blur paths synchronise; their
// branches are block-uniform). `scratch`: p*p*3 floats of this patch, used only with BLUR.
__device__ void embed_patch(const unsigned char* __restrict__ images, const BagsslImageDims& dims, uint32_t patch,
                            const BagsslPatchSpec& s, float* __restrict__ out, uint16_t* __restrict__ out16,
                            float* __restrict__ scratch) {
    const int p = (int)patch;
    const int n_pix = p * p;
    const PatchBox box{images + (size_t)s.image * dims.height * dims.width * 3, dims.width, (int)s.oy, (int)s.ox,
                       (int)s.box_h, (int)s.box_w, p, (s.flags & BAGSSL_PATCH_FLIP) != 0};
    const bool jitter = (s.flags & BAGSSL_PATCH_JITTER) != 0;
    const bool gray = (s.flags & BAGSSL_PATCH_GRAY) != 0;
    const bool blur = (s.flags & BAGSSL_PATCH_BLUR) != 0 && scratch != nullptr;
    const bool solarize = (s.flags & BAGSSL_PATCH_SOLARIZE) != 0;

    float m = 0.0f;
    if (jitter) {  // block-uniform branch
        float acc = 0.0f;
        for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {
            float r, g, b;
            crop_pixel(box, i, r, g, b);
            acc += gray_of(r * s.brightness, g * s.brightness, b * s.brightness);
        }
        m = block_sum(acc) / (float)n_pix;
    }
    for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {
        float x0, x1, x2;
        crop_pixel(box, i, x0, x1, x2);
        if (jitter) {
            float y0 = x0 * s.brightness, y1 = x1 * s.brightness, y2 = x2 * s.brightness;
            y0 = (y0 - m) * s.contrast + m;
            y1 = (y1 - m) * s.contrast + m;
            y2 = (y2 - m) * s.contrast + m;
            const float g = gray_of(y0, y1, y2);
            y0 = (y0 - g) * s.saturation + g;
            y1 = (y1 - g) * s.saturation + g;
            y2 = (y2 - g) * s.saturation + g;
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
        if (blur) {  // unnormalised, for the blur passes below
            float* o = out + (size_t)i * 3;
            o[0] = x0;
            o[1] = x1;
            o[2] = x2;
        } else {
            store_pixel(dims, solarize, i, x0, x1, x2, out, out16);
        }
    }
    if (!blur) return;  // block-uniform
    const int k3 = (int)ceilf(3.0f * s.blur_sigma), k = k3 < p - 1 ? k3 : p - 1;
    __syncthreads();  // the whole patch is in out
    for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {  // rows: out -> scratch
        const int py = i / p, px = i - py * p;
        float a[3] = {0.0f, 0.0f, 0.0f};
        for (int t = -k; t <= k; ++t) {
            const float wt = blur_weight(t, s.blur_sigma, k);
            const float* src = out + ((size_t)py * p + reflect_index(px + t, p)) * 3;
            for (int c = 0; c < 3; ++c) a[c] += wt * src[c];
        }
        for (int c = 0; c < 3; ++c) scratch[(size_t)i * 3 + c] = a[c];
    }
    __syncthreads();  // every row is blurred
    for (int i = threadIdx.x; i < n_pix; i += blockDim.x) {  // columns: scratch -> out
        const int py = i / p, px = i - py * p;
        float a[3] = {0.0f, 0.0f, 0.0f};
        for (int t = -k; t <= k; ++t) {
            const float wt = blur_weight(t, s.blur_sigma, k);
            const float* src = scratch + ((size_t)reflect_index(py + t, p) * p + px) * 3;
            for (int c = 0; c < 3; ++c) a[c] += wt * src[c];
        }
        store_pixel(dims, solarize, i, a[0], a[1], a[2], out, out16);
    }
}

// grid.x = n_patches, block.x = min(256, round_up(p*p, 32)). out16: null, or n_patches * p*p*3 bf16.
// scratch: null (no spec may then blur: BLUR is ignored), or n_patches * p*p*3 floats.
extern "C" __global__ void patch_embed_fwd_f32(const unsigned char* __restrict__ images,
                                               const BagsslPatchSpec* __restrict__ specs, float* __restrict__ out,
                                               uint16_t* __restrict__ out16, float* __restrict__ scratch,
                                               BagsslPatchParams prm) {
    const uint32_t row = blockIdx.x;
    if (row >= prm.n_patches) return;  // block-uniform
    const BagsslPatchSpec s = specs[row];
    const size_t row_len = (size_t)prm.patch * prm.patch * 3;
    embed_patch(images, prm.dims, prm.patch, s, out + row * row_len, out16 ? out16 + row * row_len : nullptr,
                scratch ? scratch + row * row_len : nullptr);
}

// Evaluation grid, no augmentation. grid.x = count * ny * nx, block as above; out16 as above.
extern "C" __global__ void patch_grid_fwd_f32(const unsigned char* __restrict__ images, float* __restrict__ out,
                                              uint16_t* __restrict__ out16, BagsslGridParams prm) {
    const uint32_t row = blockIdx.x;
    const uint32_t per_image = prm.ny * prm.nx;
    if (row >= prm.count * per_image) return;  // block-uniform
    const uint32_t t = row % per_image;
    BagsslPatchSpec s{};
    s.image = prm.first_image + row / per_image;
    s.oy = (t / prm.nx) * prm.stride;
    s.ox = (t % prm.nx) * prm.stride;
    s.box_h = prm.patch;
    s.box_w = prm.patch;
    const size_t row_len = (size_t)prm.patch * prm.patch * 3;
    embed_patch(images, prm.dims, prm.patch, s, out + row * row_len, out16 ? out16 + row * row_len : nullptr,
                nullptr);
}
