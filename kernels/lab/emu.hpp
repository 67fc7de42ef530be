// emu.hpp — runs the CUDA kernels of kernels/*.cu on the CPU, for checking their logic on
// machines without a GPU (`cargo xtask emulate-kernels`). Not a CUDA implementation: just
// enough of the language for these kernels. Blocks run one after another; the threads of a
// block are std::threads, so __syncthreads and warp shuffles are real barriers and a divergent
// barrier deadlocks (reported after a timeout) like the bug it is on a GPU. __shared__ becomes
// `static`, which is per block because blocks never overlap.
#pragma once

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __constant__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

class Barrier {
  public:
    explicit Barrier(int n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lk(m_);
        const unsigned long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        if (!cv_.wait_for(lk, std::chrono::seconds(20), [&] { return gen_ != gen; })) {
            std::fprintf(stderr, "emu: barrier timeout (divergent __syncthreads or shuffle?) in block (%u,%u)\n",
                         blockIdx.x, blockIdx.y);
            std::abort();
        }
    }

  private:
    int n_, count_ = 0;
    unsigned long gen_ = 0;
    std::mutex m_;
    std::condition_variable cv_;
};

struct Warp {
    explicit Warp(int n) : bar(n) {}
    Barrier bar;
    unsigned char slot[32][8];
};

struct Block {
    explicit Block(int threads) : bar(threads) {
        for (int w = 0; w * 32 < threads; ++w) warps.emplace_back(new Warp(threads - w * 32 < 32 ? threads - w * 32 : 32));
    }
    Barrier bar;
    std::vector<std::unique_ptr<Warp>> warps;
};

inline Block* g_block = nullptr;

inline int linear_tid() { return (int)(threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y); }

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    const int n = (int)(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                Block b(n);
                g_block = &b;
                std::vector<std::thread> ts;
                ts.reserve(n);
                for (int t = 0; t < n; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        blockIdx = dim3(bx, by, bz);
                        kernel(args...);
                    });
                for (auto& t : ts) t.join();
                g_block = nullptr;
            }
}

}  // namespace emu

inline void __syncthreads() { emu::g_block->bar.wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "emu shuffle: at most 8 bytes");
    const int tid = emu::linear_tid();
    emu::Warp& w = *emu::g_block->warps[tid / 32];
    const int lane = tid % 32;
    std::memcpy(w.slot[lane], &v, sizeof(T));
    w.bar.wait();
    T r;
    std::memcpy(&r, w.slot[lane ^ lane_mask], sizeof(T));
    w.bar.wait();
    return r;
}
