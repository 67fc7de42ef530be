// common.cuh — device helpers shared by the kernel families (reductions, grid-stride loops, the
// 2-D column-tile kernels).
// Included by every kernels/*.cu; not seen by bindgen (only include/*.h is).
#pragma once

#include "bagssl_kernels.h"

#define BAGSSL_FULL_MASK 0xffffffffu

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(BAGSSL_FULL_MASK, v, o);
    return v;
}

// Sum of `v` over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// total. Every thread of the block must call it (it synchronises).
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T warp_part[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading warp_part
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    T t = lane < n_warps ? warp_part[lane] : T(0);
    return warp_sum(t);
}

// ---------------------------------------------------------------------------------------------
// The column kernels (v2): a 2-D grid of (BAGSSL_COL_TILE, BAGSSL_COL_LANES) blocks, see
// include/bagssl_kernels.h. Thread (tx, ty) of block (bx, by) owns the V adjacent columns
// c0 = (bx * BAGSSL_COL_TILE + tx) * V and, of the rows [by * chunk_rows, ...), those of row lane ty
// (every BAGSSL_COL_LANES-th). A warp reads BAGSSL_COL_TILE * V contiguous floats of one row.
// V = 4 (float4) exactly when cols % 4 == 0: the row starts are then 16-byte aligned, because every
// matrix starts an allocation (GpuBuf, or the scratch of a launcher); launch.rs uses the same rule.

// V as a type, for with_col_vec.
template <int N>
struct ColVec {
    static constexpr int value = N;
};

// f(ColVec<4>()) when cols % 4 == 0 (float4 columns), else f(ColVec<1>()): the one dispatch of the
// column kernels onto their `template <int V>` bodies, as
//   with_col_vec(cols, [=](auto v) { body<decltype(v)::value>(...); });
template <typename F>
__device__ __forceinline__ void with_col_vec(uint32_t cols, F f) {
    if (cols % 4 == 0)
        f(ColVec<4>());
    else
        f(ColVec<1>());
}

// Column index math is 32-bit (cols < 2^32); only the element offset r * cols + c is 64-bit, once
// per row.
struct ColSpan {
    uint32_t c0;     // the first of the thread's V columns
    bool ok;         // c0 < cols: the thread has columns (the last tile may be partial)
    uint32_t r0, r1; // the block's rows [r0, r1), r0 < r1
};

template <int V>
__device__ __forceinline__ ColSpan col_span(uint32_t rows, uint32_t cols, uint32_t chunk_rows) {
    ColSpan s;
    s.c0 = (blockIdx.x * BAGSSL_COL_TILE + threadIdx.x) * V;
    s.ok = s.c0 < cols;
    s.r0 = blockIdx.y * chunk_rows;
    s.r1 = rows - s.r0 < chunk_rows ? rows : s.r0 + chunk_rows;
    return s;
}

// Number of rows of this thread's lane in [r0, r1): rows r0 + threadIdx.y + k * BAGSSL_COL_LANES.
__device__ __forceinline__ uint32_t lane_rows(const ColSpan& s) {
    const uint32_t n = s.r1 - s.r0, ty = threadIdx.y;
    return n > ty ? (n - ty + BAGSSL_COL_LANES - 1) / BAGSSL_COL_LANES : 0;
}

// The elementwise column kernels: the lane's rows in batches of BAGSSL_COL_RPT, each batch's loads
// issued before any of its stores (BAGSSL_COL_RPT 16-byte loads in flight per thread whatever the
// compiler proves about aliasing). load(r, o, k) reads row r, at element offset o = r * cols + c0,
// into slot k, store(r, o, k) finishes it; rows past the lane's last are loaded again (clamped: in
// bounds) but not stored. `last_first`: the batches from the chunk's end (the rows a reduction over
// the same grid read last, the likeliest to be in L2).
template <typename Load, typename Store>
__device__ __forceinline__ void lane_rows_batched_r(const ColSpan& s, uint32_t cols, bool last_first, Load load,
                                                    Store store) {
    const uint32_t n = lane_rows(s), n_batches = (n + BAGSSL_COL_RPT - 1) / BAGSSL_COL_RPT;
    for (uint32_t i = 0; i < n_batches; ++i) {
        const uint32_t k0 = (last_first ? n_batches - 1 - i : i) * BAGSSL_COL_RPT;
#pragma unroll
        for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k) {
            const uint32_t kk = k0 + k < n ? k0 + k : n - 1;
            const uint32_t r = s.r0 + threadIdx.y + kk * BAGSSL_COL_LANES;
            load(r, (size_t)r * cols + s.c0, k);
        }
#pragma unroll
        for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
            if (k0 + k < n) {
                const uint32_t r = s.r0 + threadIdx.y + (k0 + k) * BAGSSL_COL_LANES;
                store(r, (size_t)r * cols + s.c0, k);
            }
    }
}

// lane_rows_batched_r for callbacks that need only the offset: load(o, k), store(o, k).
template <typename Load, typename Store>
__device__ __forceinline__ void lane_rows_batched(const ColSpan& s, uint32_t cols, bool last_first, Load load,
                                                  Store store) {
    lane_rows_batched_r(
        s, cols, last_first, [&](uint32_t, size_t o, uint32_t k) { load(o, k); },
        [&](uint32_t, size_t o, uint32_t k) { store(o, k); });
}

// The typed pointer of a device address in a parameter struct (a CUdeviceptr; 0 is the null pointer).
template <typename T>
__device__ __forceinline__ T* dev_ptr(uint64_t a) {
    return reinterpret_cast<T*>(a);
}

// V floats at p, p[0 .. V): one 16-byte access when V = 4. `_cg` reads through L2 only (data that
// other blocks of the same launch wrote).
template <int V>
__device__ __forceinline__ void load_cols(const float* p, float (&v)[V]);
template <>
__device__ __forceinline__ void load_cols<1>(const float* p, float (&v)[1]) {
    v[0] = *p;
}
template <>
__device__ __forceinline__ void load_cols<4>(const float* p, float (&v)[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
// `_nc` reads through the read-only (non-coherent) path: inputs no thread of the launch writes,
// reached through a parameter struct, where nvcc cannot prove that itself.
template <int V>
__device__ __forceinline__ void load_cols_nc(const float* p, float (&v)[V]);
template <>
__device__ __forceinline__ void load_cols_nc<1>(const float* p, float (&v)[1]) {
    v[0] = __ldg(p);
}
template <>
__device__ __forceinline__ void load_cols_nc<4>(const float* p, float (&v)[4]) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
template <int V>
__device__ __forceinline__ void load_cols_cg(const float* p, float (&v)[V]);
template <>
__device__ __forceinline__ void load_cols_cg<1>(const float* p, float (&v)[1]) {
    v[0] = __ldcg(p);
}
template <>
__device__ __forceinline__ void load_cols_cg<4>(const float* p, float (&v)[4]) {
    const float4 t = __ldcg(reinterpret_cast<const float4*>(p));
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
template <int V>
__device__ __forceinline__ void store_cols(float* p, const float (&v)[V]);
template <>
__device__ __forceinline__ void store_cols<1>(float* p, const float (&v)[1]) {
    *p = v[0];
}
template <>
__device__ __forceinline__ void store_cols<4>(float* p, const float (&v)[4]) {
    float4 t;
    t.x = v[0], t.y = v[1], t.z = v[2], t.w = v[3];
    *reinterpret_cast<float4*>(p) = t;
}

// The shared memory of the column reductions: one buffer per kernel for all their trees (a
// __shared__ array per template instance would add up to ~50 KB of static shared memory). Each
// user ends with a __syncthreads before the next one writes.
#define BAGSSL_COL_SMEM_BYTES (BAGSSL_COL_LANES * BAGSSL_COL_TILE * 8 * sizeof(double))
__device__ __forceinline__ unsigned char* col_smem() {
    __shared__ double buf[BAGSSL_COL_SMEM_BYTES / sizeof(double)];  // double: aligned for every use
    return reinterpret_cast<unsigned char*>(buf);
}

// Sums v over the BAGSSL_COL_LANES row lanes of a column block in a fixed order (a tree over
// shared memory); every thread gets the totals of its columns. All threads of the block must call it.
template <typename T, int A, int B>
__device__ void lane_sum(T (&v)[A][B]) {
    static_assert(sizeof(T[BAGSSL_COL_LANES][A * B][BAGSSL_COL_TILE]) <= BAGSSL_COL_SMEM_BYTES, "col_smem too small");
    auto part = reinterpret_cast<T(*)[A * B][BAGSSL_COL_TILE]>(col_smem());
    const uint32_t tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
    for (int j = 0; j < A * B; ++j) part[ty][j][tx] = v[j / B][j % B];
    __syncthreads();
#pragma unroll
    for (uint32_t s = BAGSSL_COL_LANES / 2; s > 0; s >>= 1) {
        if (ty < s)
#pragma unroll
            for (int j = 0; j < A * B; ++j) part[ty][j][tx] += part[ty + s][j][tx];
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < A * B; ++j) v[j / B][j % B] = part[0][j][tx];
    __syncthreads();  // everyone has read part[0] before a next call overwrites it
}

// "Last block done": called by every thread of a reduction block after it wrote its partials;
// true in the block that arrives last among the gridDim.y chunk blocks of column tile blockIdx.x.
// `arrivals` is a module-global array of BAGSSL_COL_MAX_TILES counters, zero when the module is
// loaded; atomicInc wraps each counter back to 0 at its last arrival, so every launch finds them
// at 0 without a memset (launches of one Gpu are ordered on its single stream, as in the CUDA
// sample threadFenceReduction).
__device__ __forceinline__ bool last_chunk_block(unsigned int* arrivals) {
    __shared__ bool last;
    __threadfence();  // this block's partials are visible to the whole device before it counts
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicInc(&arrivals[blockIdx.x], gridDim.y - 1) == gridDim.y - 1;
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// The tail of a column reduction: acc[j][0 .. V) holds this thread's f32 sums of quantity j over
// its lane's rows of the block's chunk. The lanes are added (lane_sum), the block writes its chunk's
// sums to partial[(j * gridDim.y + blockIdx.y) * cols + c]; the last block of each column tile adds
// the gridDim.y chunk sums in f64, chunk by chunk per lane then lane_sum (a fixed order:
// deterministic, whichever block is last), and calls out(tot) in its threads of lane 0 with
// tot[j][0 .. V). Every thread of the block must call it (threads without columns too).
template <int V, int NQ, typename Out>
__device__ void col_sums_finish(const ColSpan& s, uint32_t cols, float (&acc)[NQ][V], float* __restrict__ partial,
                                unsigned int* arrivals, Out out) {
    const uint32_t ty = threadIdx.y, n_chunks = gridDim.y;
    lane_sum(acc);
    if (s.ok && ty == 0)
#pragma unroll
        for (int j = 0; j < NQ; ++j) store_cols<V>(partial + ((size_t)j * n_chunks + blockIdx.y) * cols + s.c0, acc[j]);
    if (!last_chunk_block(arrivals)) return;
    double tot[NQ][V] = {};
    if (s.ok)
#pragma unroll 4
        for (uint32_t i = ty; i < n_chunks; i += BAGSSL_COL_LANES)
#pragma unroll
            for (int j = 0; j < NQ; ++j) {
                float v[V];
                load_cols_cg<V>(partial + ((size_t)j * n_chunks + i) * cols + s.c0, v);
#pragma unroll
                for (int c = 0; c < V; ++c) tot[j][c] += (double)v[c];
            }
    lane_sum(tot);
    if (s.ok && ty == 0) out(tot);
}

// Column sums of NQ quantities: load(r, q) fills q[j][0 .. V) with quantity j at row r and the
// thread's V columns. Each block sums its chunk in f32 (per lane), then col_sums_finish.
template <int V, int NQ, typename Load, typename Out>
__device__ void col_sums(const ColSpan& s, uint32_t cols, float* __restrict__ partial, unsigned int* arrivals,
                         Load load, Out out) {
    const uint32_t ty = threadIdx.y;
    float acc[NQ][V] = {};
    if (s.ok)
        for (uint32_t p = s.r0; p < s.r1; p += BAGSSL_COL_PASS) {
            const uint32_t left = s.r1 - p;
            float q[BAGSSL_COL_RPT][NQ][V];
            // Clamped rows: every load of the pass is in bounds and issued before the first use;
            // the rows past r1 are dropped below.
#pragma unroll
            for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k) {
                const uint32_t o = ty + k * BAGSSL_COL_LANES;
                load(p + (o < left ? o : left - 1), q[k]);
            }
#pragma unroll
            for (uint32_t k = 0; k < BAGSSL_COL_RPT; ++k)
                if (ty + k * BAGSSL_COL_LANES < left)
#pragma unroll
                    for (int j = 0; j < NQ; ++j)
#pragma unroll
                        for (int v = 0; v < V; ++v) acc[j][v] += q[k][j][v];
        }
    col_sums_finish<V, NQ>(s, cols, acc, partial, arrivals, out);
}

__device__ __forceinline__ size_t global_thread() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_threads() { return (size_t)gridDim.x * blockDim.x; }

// f32 -> bf16 bits, round to nearest even (as __float2bfloat16_rn); a NaN stays a (quiet) NaN.
// Every bf16 operand copy (GpuBuf::bf16) is made with this, wherever it is written.
__device__ __forceinline__ uint32_t bf16_bits(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x0040u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// The bf16 copy (bf16_bits, exactly what cast_bf16_f32 writes) of the V values store_cols<V> stored
// at the same element offset: one 8-byte store of 4 x bf16 for V = 4 (p 8-byte aligned: the offset
// is a multiple of 4 and the copy starts an allocation), a 2-byte store for V = 1.
template <int V>
__device__ __forceinline__ void store_cols_bf16(uint16_t* p, const float (&v)[V]);
template <>
__device__ __forceinline__ void store_cols_bf16<1>(uint16_t* p, const float (&v)[1]) {
    *p = (uint16_t)bf16_bits(v[0]);
}
template <>
__device__ __forceinline__ void store_cols_bf16<4>(uint16_t* p, const float (&v)[4]) {
    uint2 t;
    t.x = bf16_bits(v[0]) | (bf16_bits(v[1]) << 16);
    t.y = bf16_bits(v[2]) | (bf16_bits(v[3]) << 16);
    *reinterpret_cast<uint2*>(p) = t;
}
