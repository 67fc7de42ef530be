// common.cuh — device helpers shared by the kernel families (reductions, grid-stride loops).
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

// Column total over the row lanes of a (BAGSSL_COL_TILE, BAGSSL_COL_ROWS) block: every thread of
// column threadIdx.x gets the sum of the `v` of its column's lanes. All threads must call it.
template <typename T>
__device__ T column_total(T v) {
    __shared__ T part[BAGSSL_COL_ROWS][BAGSSL_COL_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    part[ty][tx] = v;
    __syncthreads();
#pragma unroll
    for (int s = BAGSSL_COL_ROWS / 2; s > 0; s >>= 1) {
        if (ty < s) part[ty][tx] += part[ty + s][tx];
        __syncthreads();
    }
    T t = part[0][tx];
    __syncthreads();  // everyone has read part[0] before a next call overwrites it
    return t;
}

__device__ __forceinline__ size_t global_thread() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_threads() { return (size_t)gridDim.x * blockDim.x; }
