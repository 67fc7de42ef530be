// emu.hpp — runs the CUDA kernels of kernels/*.cu on the CPU, for checking their logic on
// machines without a GPU (`cargo xtask emulate-kernels`). Not a CUDA implementation: just
// enough of the language for these kernels. Blocks run one after another, in the order
// g_block_order chooses; the threads of a block are std::threads, so __syncthreads and warp
// shuffles are real barriers and a divergent barrier deadlocks (reported after a timeout) like
// the bug it is on a GPU. __shared__ becomes `static`, which is per block because blocks never
// overlap; __device__ globals are plain globals.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>
#ifdef __linux__
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __constant__

// CUDA's vector types (only what the kernels use), with CUDA's alignment: a misaligned float4
// access is then reported by UBSan, as it would fault on a GPU.
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

// A reusable barrier of n threads. On Linux the waiters sleep on a futex of the generation word
// (one wake-up call, no mutex for the 255 woken threads to queue on: ~10x faster than a
// condition variable at 256 threads); elsewhere a condition variable.
class Barrier {
  public:
    explicit Barrier(int n) : n_(n) {}
    // `timed`: abort after 20 s (a deadlocked kernel); the idle workers of a Pool wait untimed.
    void wait(bool timed = true) {
#ifdef __linux__
        const uint32_t gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
            count_.store(0, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_release);
            syscall(SYS_futex, reinterpret_cast<uint32_t*>(&gen_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
            return;
        }
        const auto start = std::chrono::steady_clock::now();
        while (gen_.load(std::memory_order_acquire) == gen) {
            timespec ts{1, 0};
            syscall(SYS_futex, reinterpret_cast<uint32_t*>(&gen_), FUTEX_WAIT_PRIVATE, gen, &ts, nullptr, 0);
            if (timed && std::chrono::steady_clock::now() - start > std::chrono::seconds(20)) timeout();
        }
#else
        std::unique_lock<std::mutex> lk(m_);
        const unsigned long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        if (!timed)
            cv_.wait(lk, [&] { return gen_ != gen; });
        else if (!cv_.wait_for(lk, std::chrono::seconds(20), [&] { return gen_ != gen; }))
            timeout();
#endif
    }

  private:
    [[noreturn]] static void timeout() {
        std::fprintf(stderr, "emu: barrier timeout (divergent __syncthreads or shuffle?) in block (%u,%u)\n", blockIdx.x,
                     blockIdx.y);
        std::abort();
    }
    int n_;
#ifdef __linux__
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
    std::atomic<int> count_{0};
    std::atomic<uint32_t> gen_{0};
#else
    int count_ = 0;
    unsigned long gen_ = 0;
    std::mutex m_;
    std::condition_variable cv_;
#endif
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

// Order in which launch() runs the blocks: a GPU promises none, and the "last block done"
// reductions must give the same bits whichever block is last. 0: in order; 1: reversed;
// 2 or more: a pseudo-random permutation seeded by the value.
inline unsigned g_block_order = 0;

inline int linear_tid() { return (int)(threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y); }

// One std::thread per thread of a block, kept for the whole program (creating 256 threads costs
// more than most launches): each runs its thread of every block of a launch in turn, and a barrier
// separates the blocks.
class Pool {
  public:
    explicit Pool(int n) : start_(n + 1), finish_(n + 1) {
        for (int t = 0; t < n; ++t)
            threads_.emplace_back([this, t] {
                for (;;) {
                    start_.wait(false);
                    if (quit_) return;
                    job_(t);
                    finish_.wait();
                }
            });
    }
    ~Pool() {
        quit_ = true;
        start_.wait(false);
        for (auto& t : threads_) t.join();
    }
    // Runs job(t) on every thread t and returns when all are done.
    void run(const std::function<void(int)>& job) {
        job_ = job;
        start_.wait(false);
        finish_.wait(false);
    }
    static Pool& of(int n) {
        static std::map<int, std::unique_ptr<Pool>> pools;
        auto& p = pools[n];
        if (!p) p.reset(new Pool(n));
        return *p;
    }

  private:
    Barrier start_, finish_;
    std::function<void(int)> job_;
    bool quit_ = false;  // written before start_, read after it
    std::vector<std::thread> threads_;
};

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    const int n = (int)(block.x * block.y * block.z);
    std::vector<dim3> order;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) order.emplace_back(bx, by, bz);
    if (g_block_order == 1) {
        for (size_t i = 0; i < order.size() / 2; ++i) std::swap(order[i], order[order.size() - 1 - i]);
    } else if (g_block_order >= 2) {
        uint64_t s = 0x9E3779B97F4A7C15ull * g_block_order;
        for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates with an xorshift
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            std::swap(order[i - 1], order[s % i]);
        }
    }
    Block b(n);
    Barrier between(n);
    g_block = &b;
    Pool::of(n).run([&](int t) {
        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        for (const dim3 bi : order) {
            blockIdx = bi;
            kernel(args...);
            between.wait();
        }
    });
    g_block = nullptr;
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

// Loads through L2 (cache-global) or the read-only path: plain loads here.
template <typename T>
T __ldcg(const T* p) {
    return *p;
}
template <typename T>
T __ldg(const T* p) {
    return *p;
}

// Memory fence: the blocks run one after another here, so a real fence is more than enough.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// CUDA's atomicInc: old = *p; *p = old >= limit ? 0 : old + 1; returns old.
inline unsigned int atomicInc(unsigned int* p, unsigned int limit) {
    static std::mutex m;
    std::lock_guard<std::mutex> lk(m);
    const unsigned int old = *p;
    *p = old >= limit ? 0 : old + 1;
    return old;
}
