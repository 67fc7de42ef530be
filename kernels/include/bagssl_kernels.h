/*
 * bagssl_kernels.h — the parameter structs shared by the CUDA kernels (kernels/NAME.cu) and Rust
 * (crates/bagssl-kernels/src/generated/bindings.rs, made from this file by bindgen through
 * `cargo xtask build-kernels`). Plain C: fixed-width fields, no pointer types (device addresses
 * are uint64_t, a CUdeviceptr), so the layout is the same for nvcc, clang and rustc; bindgen emits
 * layout assertions that catch drift at compile time.
 *
 * Every kernel takes its scalar parameters as one of these structs, by value; the BatchNorm
 * kernels take their device buffers in one too, by name, so two of them cannot trade places.
 */
#ifndef BAGSSL_KERNELS_H
#define BAGSSL_KERNELS_H

#include <stdint.h>

/* The column kernels (batch norm, column sums, bias add, group mean) run on a 2-D grid of
 * (BAGSSL_COL_TILE, BAGSSL_COL_LANES) blocks: grid.x = column tiles of BAGSSL_COL_TILE threads,
 * each thread owning V adjacent columns (V = 4, float4 loads, when cols % 4 == 0, else 1);
 * grid.y = chunks of chunk_rows rows (a multiple of BAGSSL_COL_PASS), walked by the row lanes.
 * A column reduction loads BAGSSL_COL_RPT rows per lane per pass. The launchers
 * (crates/bagssl-kernels/src/launch.rs, `ColGrid`) use the same numbers. */
#define BAGSSL_COL_TILE 32u
#define BAGSSL_COL_LANES 8u
#define BAGSSL_COL_RPT 4u
#define BAGSSL_COL_PASS 32u /* BAGSSL_COL_LANES * BAGSSL_COL_RPT */
/* Column tiles a reduction may have: the size of its per-module arrival counters. */
#define BAGSSL_COL_MAX_TILES 16384u

/* PatchSpec.flags bits */
#define BAGSSL_PATCH_FLIP 1u     /* mirror the crop left-right */
#define BAGSSL_PATCH_JITTER 2u   /* colour jitter with brightness/contrast/saturation below */
#define BAGSSL_PATCH_GRAY 4u     /* every channel = x . (0.299, 0.587, 0.114) */
#define BAGSSL_PATCH_BLUR 8u     /* Gaussian blur of standard deviation blur_sigma (output pixels) */
#define BAGSSL_PATCH_SOLARIZE 16u /* every value v >= 0.5 becomes 1 - v */

/* One training patch (docs/DEFINITIONS.md §2-§3): which image, which crop box (resized
 * bilinearly to the output side when it is not p x p), which augmentations. 40 bytes. */
typedef struct BagsslPatchSpec {
    uint32_t image;   /* index of the image in the GPU-resident u8 dataset */
    uint32_t oy;      /* top row of the box, 0 <= oy <= H - box_h */
    uint32_t ox;      /* left column of the box, 0 <= ox <= W - box_w */
    uint32_t flags;   /* BAGSSL_PATCH_* bits */
    float brightness; /* jitter factors, used when flags has BAGSSL_PATCH_JITTER */
    float contrast;
    float saturation;
    float blur_sigma; /* used when flags has BAGSSL_PATCH_BLUR */
    uint32_t box_h;   /* the crop box, at least 1 x 1 */
    uint32_t box_w;
} BagsslPatchSpec;

/* The dataset on the GPU: n_images x height x width x 3 u8, HWC row-major. */
typedef struct BagsslImageDims {
    uint32_t n_images;
    uint32_t height;
    uint32_t width;
    uint32_t pad;
    float mean[3]; /* per-channel normalisation: (x - mean) / std */
    float std[3];
} BagsslImageDims;

/* patch_embed_fwd_f32: one output row of p*p*3 floats (HWC) per spec. */
typedef struct BagsslPatchParams {
    BagsslImageDims dims;
    uint32_t n_patches;
    uint32_t patch; /* p */
} BagsslPatchParams;

/* patch_grid_fwd_f32: every grid patch (stride s, row-major like unfold) of images
 * first_image .. first_image + count - 1; rows = count * ny * nx. */
typedef struct BagsslGridParams {
    BagsslImageDims dims;
    uint32_t first_image;
    uint32_t count;
    uint32_t patch;
    uint32_t stride;
    uint32_t ny; /* (H - p) / s + 1 */
    uint32_t nx; /* (W - p) / s + 1 */
} BagsslGridParams;

/* Row-major (rows, cols) matrices for the column-wise kernels. */
typedef struct BagsslMatrixDims {
    uint32_t rows;
    uint32_t cols;
} BagsslMatrixDims;

/* BatchNorm over the rows of a (rows, cols) matrix. */
typedef struct BagsslBnParams {
    uint32_t rows;
    uint32_t cols;
    float eps;
    uint32_t relu; /* 1: fuse ReLU after the affine transform (and mask the gradient) */
} BagsslBnParams;

/* The BatchNorm training forward, bn_stats_fwd_f32 then bn_apply_fwd_f32 (one struct for both, filled
 * once). Device addresses of floats (CUdeviceptr); "or 0" marks the optional ones. */
typedef struct BagsslBnFwdArgs {
    uint64_t x;            /* rows * cols, read */
    uint64_t bias;         /* cols, or 0: no bias (the Linear's bias, added as x is read) */
    uint64_t gamma;        /* cols, read by apply */
    uint64_t beta;         /* cols, read by apply */
    uint64_t mean;         /* cols, written by stats, read by apply */
    uint64_t invstd;       /* cols, 1 / sqrt(biased var + eps): as mean */
    uint64_t var_unbiased; /* cols, written by stats */
    uint64_t partial;      /* 3 * gridDim.y * cols scratch floats of stats */
    uint64_t y;            /* rows * cols, written by apply */
    uint64_t y16;          /* rows * cols bf16 bit patterns (uint16_t), or 0: no copy */
    BagsslBnParams prm;
    uint32_t chunk_rows; /* rows per grid.y chunk (ColGrid) */
    uint32_t pad;
} BagsslBnFwdArgs;

/* The BatchNorm training backward, bn_bwd_reduce_f32 then bn_bwd_apply_f32 (one struct for both). */
typedef struct BagsslBnBwdArgs {
    uint64_t dy;      /* rows * cols, read */
    uint64_t x;       /* rows * cols, read: the forward's input */
    uint64_t bias;    /* cols, or 0: as BagsslBnFwdArgs */
    uint64_t y;       /* rows * cols: the ReLU mask is y > 0; 0: recomputed from x, gamma and beta */
    uint64_t gamma;   /* cols, read */
    uint64_t beta;    /* cols, read (for the mask from x) */
    uint64_t mean;    /* cols, read: the forward's */
    uint64_t invstd;  /* cols, read: the forward's */
    uint64_t dgamma;  /* cols, written by reduce, read by apply */
    uint64_t dbeta;   /* cols, as dgamma */
    uint64_t dx;      /* rows * cols, written by apply */
    uint64_t dx16;    /* rows * cols bf16 bit patterns, or 0: no copy */
    uint64_t dbias;   /* cols, or 0: the column sums of dx (the bias gradient), by apply */
    uint64_t partial; /* scratch: 2 * gridDim.y * cols floats for reduce, then gridDim.y * cols for dbias */
    BagsslBnParams prm;
    uint32_t chunk_rows;
    uint32_t pad;
} BagsslBnBwdArgs;

/* bn_eval_fwd_f32: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta (+ ReLU). */
typedef struct BagsslBnEvalArgs {
    uint64_t x;            /* rows * cols, read */
    uint64_t running_mean; /* cols, read */
    uint64_t running_var;  /* cols, read */
    uint64_t gamma;        /* cols, read */
    uint64_t beta;         /* cols, read */
    uint64_t y;            /* rows * cols, written */
    BagsslBnParams prm;
    uint32_t chunk_rows;
    uint32_t pad;
} BagsslBnEvalArgs;

/* bag-VICReg on z (n_rows = n_groups * n_per_image, dim). */
typedef struct BagsslVicregParams {
    uint32_t n_rows;
    uint32_t dim;
    uint32_t n_per_image;
    uint32_t n_groups;
    float invariance; /* lambda */
    float variance;   /* mu */
    float covariance; /* nu */
    float eps;        /* inside sqrt(C_dd + eps) */
} BagsslVicregParams;

/* One torch.optim.AdamW update; the bias corrections are computed on the host in f64. */
typedef struct BagsslAdamWParams {
    uint32_t n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float step_size;             /* lr / (1 - beta1^t) */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
} BagsslAdamWParams;

/* adamw_multi_f32: one launch updates up to BAGSSL_ADAMW_MAX_TENSORS tensors. Each is cut into
 * tiles of BAGSSL_ADAMW_TILE elements, one block-iteration each; tensor t owns the tiles
 * [first_tile[t], first_tile[t + 1]). The pointers are device addresses (CUdeviceptr); param16 is 0
 * or the tensor's bf16 copy (bf16_bits of every updated element: the bf16 GEMM operand, kept current
 * without a cast kernel re-reading the weight). */
#define BAGSSL_ADAMW_MAX_TENSORS 16u
#define BAGSSL_ADAMW_TILE 4096u
typedef struct BagsslAdamWMulti {
    uint64_t param[BAGSSL_ADAMW_MAX_TENSORS];
    uint64_t grad[BAGSSL_ADAMW_MAX_TENSORS];
    uint64_t m[BAGSSL_ADAMW_MAX_TENSORS];
    uint64_t v[BAGSSL_ADAMW_MAX_TENSORS];
    uint64_t param16[BAGSSL_ADAMW_MAX_TENSORS];
    uint32_t n[BAGSSL_ADAMW_MAX_TENSORS];
    float weight_decay[BAGSSL_ADAMW_MAX_TENSORS];
    uint32_t first_tile[BAGSSL_ADAMW_MAX_TENSORS + 1];
    uint32_t n_tensors;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float step_size;             /* lr / (1 - beta1^t) */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
} BagsslAdamWMulti;

/* bn_ema_multi_f32: the running-statistics update of up to BAGSSL_EMA_MAX_TENSORS vectors in one
 * launch (grid.y = tensor); running[t] and batch[t] are device addresses of n[t] floats. */
#define BAGSSL_EMA_MAX_TENSORS 16u
typedef struct BagsslEmaMulti {
    uint64_t running[BAGSSL_EMA_MAX_TENSORS];
    uint64_t batch[BAGSSL_EMA_MAX_TENSORS];
    uint32_t n[BAGSSL_EMA_MAX_TENSORS];
    uint32_t n_tensors;
    float momentum;
} BagsslEmaMulti;

/* The geometry of a sliding window over NHWC images (conv.cu): n images of h x w pixels and c
 * channels stored as (n*h*w, c) rows; a kh x kw window moved by `stride` over the image padded by
 * `pad` on every side, giving out_h x out_w windows. Filled from `Window2d` (args.rs) by the
 * launchers, which check that every element count fits in 32 bits. */
typedef struct BagsslWindow2d {
    uint32_t n;
    uint32_t h;
    uint32_t w;
    uint32_t c;
    uint32_t kh;
    uint32_t kw;
    uint32_t stride;
    uint32_t pad;
    uint32_t out_h; /* (h + 2 pad - kh) / stride + 1 */
    uint32_t out_w; /* (w + 2 pad - kw) / stride + 1 */
} BagsslWindow2d;

#endif /* BAGSSL_KERNELS_H */
