//! CPU kernel microbenchmarks: the primitives of one training step, timed through
//! `bagssl_autograd::ops` on CPU tensors, each reported against a limit measured in the same run.
//! One aligned line per op: `op | shape | ms | GFLOP/s or GB/s | % of limit`.
//!
//!     cargo xtask bench-kernels [--quick]      (this table, then the GPU one or why it is skipped)
//!     cargo run --release -p bagssl-autograd --example bench_cpu [-- --quick]
//!
//! Shapes: `cpu` is the CPU training config (32 images x 16 patches = N 512 rows of 8*8*3 = 192,
//! encoder 192 -> 512 -> 512, bag-VICReg at D = 512, as `bagssl-train bench --config
//! configs/bench-cpu.toml` trains); `ref` is the reference config of docs/DEFINITIONS.md §11 (256 x 16 = N 4096
//! rows, 192 -> 2048, D = 2048). `--quick` (CI) runs fewer repeats and skips the reference
//! config's N x 2048 x 2048 products and its bag-VICReg (172 of the full run's 197 GFLOP per
//! repeat).
//!
//! Every GEMM-like op is timed twice: in f32, then as a `bf16` row with the CPU GEMMs switched to
//! bf16 operands (`CpuMatmulPrecision::Bf16`, AVX512-BF16 `vdpbf16ps`), reported against twice
//! the FMA rate (two multiply-adds per f32 lane per instruction) and as a multiple of the FMA rate.
//!
//! Limits, measured first, on as many threads as the rayon pool that runs the ops:
//! - `fma`: the machine's f32 FMA rate. Each thread runs a loop of 12 independent FMA chains that
//!   never leave the registers (AVX-512F, else AVX2+FMA, chosen at run time; 2 flops per lane per
//!   FMA). Zen 4 retires one 512-bit (or two 256-bit) FMA per cycle per core: 32 flops/cycle. The
//!   GEMM-like ops are reported against it; the `gemm` crate's rate on a 2048^3 product is printed
//!   beside it, as what a GEMM on this machine reaches at best.
//! - `copy@SIZE`: memory bandwidth through a working set of SIZE, split over the threads,
//!   counted as bytes read + bytes written: the fastest of glibc memcpy, a load-scale-store copy
//!   and an in-place scale (see `copy_rate`). Four working sets: 2 MiB (the L2s), 8 MiB (L3),
//!   64 MiB (past a 32 MiB L3, partly cached) and 512 MiB (DRAM). A streaming op is reported
//!   against the smallest working set that holds its own, so a cache-resident op is not
//!   flattered by a DRAM limit. An op that writes a fresh output with plain stores also reads
//!   every output line first (read for ownership): it tops out near 2/3 of the limit.
//!
//! Counting convention (the same as `bagssl-kernels/examples/bench_kernels.rs`): FLOPs are 2 per
//! multiply-add of the dense products; bytes are each input read once and each output written
//! once. Extra passes over an input, the write-allocate of an output and the zeroing of a fresh
//! output are the op's inefficiency, not counted as work. Ops allocate their outputs, as in
//! training, so the allocation is in the time: at the ref config an N x H output is 32 MiB,
//! which glibc maps fresh on every call (its mmap threshold stops growing at 32 MiB), and the
//! page faults of touching it cost more than the op itself (relu_fwd 17 ms instead of 2.3 ms with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2000000000`, measured on the 2-core CI VMs).
//!
//! An op's time is the median of the repeats after warm-up runs; a limit's is the fastest run (a
//! capability, which interference only lowers). The machines are shared 2-core VMs: expect
//! 10-20 % between runs, more when another build is running.

// The allocator of bagssl-train: large step buffers are reused instead of page-faulted back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Instant;

use bagssl_autograd::cpu::matmul_bf16::has_avx512_bf16;
use bagssl_autograd::{ops, set_cpu_matmul_precision, AdamW, BnTrainArgs, CpuMatmulPrecision, Tensor, VicregWeights};
use bagssl_data::{gather_patches, ImageStore, PatchSampler};
use rayon::prelude::*;

/// Patches per image, patch side, and the width of a patch vector.
const PER_IMAGE: usize = 16;
const PATCH: usize = 8;
const IN: usize = PATCH * PATCH * 3;
const MIB: usize = 1024 * 1024;
/// Working sets (source + destination) of the copy limits.
const COPY_SETS_MIB: [usize; 4] = [2, 8, 64, 512];

struct Opts {
    quick: bool,
    warmups: usize,
    repeats: usize,
}

/// Sorted milliseconds of `o.repeats` runs of `f` after `o.warmups` runs.
fn times_ms(o: &Opts, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..o.warmups {
        f();
    }
    let mut t: Vec<f64> = (0..o.repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// Median milliseconds of `f` (the ops).
fn median_ms(o: &Opts, f: impl FnMut()) -> f64 {
    let t = times_ms(o, f);
    t[t.len() / 2]
}

/// Fastest milliseconds of `f` (the limits: a capability, which noise only lowers).
fn best_ms(o: &Opts, f: impl FnMut()) -> f64 {
    times_ms(o, f)[0]
}

/// Deterministic pseudo-random values in [-scale, scale) (xorshift).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
    Tensor::from_vec(&[rows, cols], values(rows * cols, seed, 1.0))
}

// ---------------------------------------------------------------------------------------------
// Limits

/// Register-resident FMA loops: `ACC` independent chains `acc = acc * a + b`, enough to cover the
/// 4-cycle FMA latency on two pipes. Each returns the flops it did.
mod fma {
    use std::hint::black_box;

    /// Independent accumulators (12 of the 16 ymm / 32 zmm registers).
    const ACC: usize = 12;
    // The constants go through `black_box`: with known values LLVM folds the chains (1.0 is a
    // fixed point of `x * 0.999999 + 1e-6` in f32) and deletes the loop.

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn avx512(iters: usize) -> f64 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-6)));
        let mut acc = [_mm512_set1_ps(black_box(1.0)); ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        black_box(acc);
        (iters * ACC * 16 * 2) as f64
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub fn avx2(iters: usize) -> f64 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-6)));
        let mut acc = [_mm256_set1_ps(black_box(1.0)); ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        black_box(acc);
        (iters * ACC * 8 * 2) as f64
    }

    /// Any other CPU: 8-lane arrays the compiler vectorizes, multiply and add (not fused).
    pub fn portable(iters: usize) -> f64 {
        let (a, b) = (black_box(0.999_999f32), black_box(1e-6f32));
        let mut acc = [[black_box(1.0f32); 8]; ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                for v in r.iter_mut() {
                    *v = *v * a + b;
                }
            }
        }
        black_box(acc);
        (iters * ACC * 8 * 2) as f64
    }

    /// The widest loop the running CPU supports: (name, flops per iteration, the loop).
    pub fn best() -> (&'static str, usize, fn(usize) -> f64) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: avx512f was detected on the running CPU just above.
                return ("avx512f", ACC * 32, |n| unsafe { avx512(n) });
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: avx2 and fma were detected on the running CPU just above.
                return ("avx2+fma", ACC * 16, |n| unsafe { avx2(n) });
            }
        }
        ("portable mul+add", ACC * 16, portable)
    }
}

struct Limits {
    /// GFLOP/s of the FMA loops on all threads.
    fma: f64,
    /// (working set in bytes, GB/s read + write) of the copies, smallest first.
    copy: Vec<(f64, f64)>,
}

impl Limits {
    /// The copy limit for a working set of `footprint` bytes: (GB/s, its label).
    fn copy_for(&self, footprint: f64) -> (f64, String) {
        let &(set, gbs) =
            self.copy.iter().find(|(set, _)| *set >= footprint).unwrap_or(&self.copy[self.copy.len() - 1]);
        (gbs, format!("copy@{}M", set / MIB as f64))
    }
}

/// FMA rate on `threads` threads at once (GFLOP/s) and the ISA used.
fn fma_peak(o: &Opts, threads: usize) -> (f64, &'static str) {
    let (isa, per_iter, kernel) = fma::best();
    // 3 GFLOP per thread per run (~25 ms): runs of a few ms read 25 % low (clock ramp, spawns).
    let iters = (3e9 / per_iter as f64) as usize;
    let mut flops = 0.0;
    let ms = best_ms(o, || {
        flops = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(move || kernel(iters))).collect();
            hs.into_iter().map(|h| h.join().expect("fma thread panicked")).sum::<f64>()
        });
    });
    (flops / ms / 1e6, isa)
}

/// GB/s (bytes read + bytes written) of streaming through a working set of `set` bytes, split
/// over the rayon pool: the fastest of three kernels (measured here: memcpy wins in the caches,
/// the in-place scale from DRAM, where it moves 1.5x the bytes of `scale` in the same traffic):
/// - `memcpy`: `copy_from_slice` between two halves (glibc memcpy, non-temporal stores when large);
/// - `scale`: `dst = s * src` between two halves (STREAM's "scale": plain stores);
/// - `in place`: `x *= s` over both halves (no read for ownership: each written line was read).
fn copy_rate(o: &Opts, set: usize) -> f64 {
    // At least 256 MiB moved per timed run, so small sets are not all fork-join overhead.
    let inner = (256 * MIB / set).max(1);
    let len = set / 8; // floats per half
    let mut src = values(len, 7, 1.0);
    let mut dst = vec![0f32; len];
    let chunk = len.div_ceil(rayon::current_num_threads());
    let s = black_box(1.0001f32);
    let mut best = 0f64;
    for kernel in 0..3 {
        let ms = best_ms(o, || {
            for _ in 0..inner {
                dst.par_chunks_mut(chunk).zip(src.par_chunks_mut(chunk)).for_each(|(d, x)| match kernel {
                    0 => d.copy_from_slice(x),
                    1 => d.iter_mut().zip(x.iter()).for_each(|(d, x)| *d = x * s),
                    _ => d.iter_mut().chain(x.iter_mut()).for_each(|v| *v *= s),
                });
                black_box(&mut dst);
            }
        });
        // The copies read one half and write the other; the in-place scale reads and writes both.
        let moved = if kernel < 2 { set } else { 2 * set };
        best = best.max((moved * inner) as f64 / ms / 1e6);
    }
    best
}

// ---------------------------------------------------------------------------------------------
// The table

enum Work {
    /// Floating-point operations (GEMM-like: against the FMA rate).
    Flop(f64),
    /// Floating-point operations of a bf16 GEMM (against twice the FMA rate: `vdpbf16ps` does
    /// two multiply-adds per f32 lane).
    FlopBf16(f64),
    /// Bytes moved and the working set (streaming: against the copy of a working set as large).
    Bytes { moved: f64, footprint: f64 },
}

fn header() {
    line("op", "shape", "median", &format!("{:>15}", "rate"), "% of limit");
    println!("{}", "-".repeat(100));
}

fn gflops(g: f64) -> String {
    format!("{g:>8.1} GFLOP/s")
}

fn gbs(g: f64) -> String {
    format!("{g:>8.1} GB/s   ")
}

/// One aligned line of the table.
fn line(op: &str, shape: &str, ms: &str, rate: &str, pct: &str) {
    println!("{op:<30} | {shape:<22} | {ms:>12} | {rate} | {pct}");
}

/// A timed op: its rate and its percentage of the limit of its kind.
fn row(op: &str, shape: &str, ms: f64, work: Work, l: &Limits) {
    let (rate, pct) = match work {
        Work::Flop(f) => {
            let g = f / ms / 1e6;
            (gflops(g), format!("{:>5.1}% of fma", 100.0 * g / l.fma))
        }
        Work::FlopBf16(f) => {
            let g = f / ms / 1e6;
            (gflops(g), format!("{:>5.1}% of 2x fma ({:.2}x fma)", 50.0 * g / l.fma, g / l.fma))
        }
        Work::Bytes { moved, footprint } => {
            let g = moved / ms / 1e6;
            let (lim, name) = l.copy_for(footprint);
            (gbs(g), format!("{:>5.1}% of {name}", 100.0 * g / lim))
        }
    };
    line(op, shape, &format!("{ms:.3} ms"), &rate, &pct);
}

/// A workload configuration: rows N = images x PER_IMAGE, hidden width H (= D of bag-VICReg).
struct Config {
    name: &'static str,
    images: usize,
    hidden: usize,
    /// Run the N x H x H products and bag-VICReg (skipped for `ref` in quick mode).
    big: bool,
}

fn bench_config(o: &Opts, l: &Limits, c: &Config) {
    let (n, h) = (c.images * PER_IMAGE, c.hidden);
    let tag = c.name;
    let x = tensor(n, IN, 1); // patches
    let a = tensor(n, h, 2); // a hidden activation
    let dy = tensor(n, h, 3); // its gradient
    let w1 = tensor(h, IN, 4); // first Linear (out, in)
    let w2 = tensor(h, h, 5); // hidden Linear
    let f4 = |v: usize| 4.0 * v as f64;

    // GEMMs, the three training orientations. Napkin math: 2 m n k flops on (m k + k n + m n)
    // floats; at N = 512, H = 512 that is 268 MFLOP on 3 MiB (85 flops/byte, far past any
    // machine balance), so the limit is the FMA rate.
    // Each GEMM twice: in f32, then with `CpuMatmulPrecision::Bf16` (the `bf16` rows, against
    // twice the FMA rate).
    let gemm = |op: &str, m: usize, k: usize, nn: usize, f: &dyn Fn() -> Tensor| {
        let flop = 2.0 * (m * k * nn) as f64;
        let ms = median_ms(o, || drop(black_box(f())));
        row(&format!("{op} {tag}"), &format!("{m}x{k}x{nn}"), ms, Work::Flop(flop), l);
        let ms = bf16(|| median_ms(o, || drop(black_box(f()))));
        row(&format!("{op} {tag} bf16"), &format!("{m}x{k}x{nn}"), ms, Work::FlopBf16(flop), l);
    };
    gemm("matmul x W1^T", n, IN, h, &|| ops::matmul(&x, &w1, false, true).unwrap());
    gemm("matmul dY^T X", h, n, IN, &|| ops::matmul(&dy, &x, true, false).unwrap());
    if c.big {
        gemm("matmul h W2^T", n, h, h, &|| ops::matmul(&a, &w2, false, true).unwrap());
        gemm("matmul dY W2", n, h, h, &|| ops::matmul(&dy, &w2, false, false).unwrap());
        gemm("matmul dY^T h", h, n, h, &|| ops::matmul(&dy, &a, true, false).unwrap());
        // bag-VICReg: the (D x N x D) covariance and the (N x D x D) gradient product, counted as
        // two dense GEMMs, 4 N D^2 (the CPU exploits the symmetry of the first: about 5/8 of it at
        // D = 512 in f32, the upper micro-tiles, ~55%, in bf16; so the rate is an effective one
        // and can pass the GEMM's) plus three streaming passes over N x D.
        let vicreg = || drop(black_box(ops::vicreg_fwd_bwd(&a, PER_IMAGE, VicregWeights::default()).unwrap()));
        let ms = median_ms(o, vicreg);
        let flop = 4.0 * (n * h * h) as f64;
        row(&format!("vicreg_fwd_bwd {tag}"), &format!("{n}x{h}/{PER_IMAGE}"), ms, Work::Flop(flop), l);
        let ms = bf16(|| median_ms(o, vicreg));
        row(&format!("vicreg_fwd_bwd {tag} bf16"), &format!("{n}x{h}/{PER_IMAGE}"), ms, Work::FlopBf16(flop), l);
    }

    // Streaming ops on an N x H activation (1 MiB at the cpu config, 32 MiB at ref).
    let mat = f4(n * h);
    let gamma = Tensor::from_vec(&[h], vec![1.0; h]);
    let beta = Tensor::from_vec(&[h], vec![0.0; h]);
    // BN forward (+ReLU): reads x, writes y (+ four H vectors): 2 N H floats.
    let ms = median_ms(o, || {
        drop(black_box(
            ops::bn_train_fwd(BnTrainArgs { x: &a, bias: None, gamma: &gamma, beta: &beta, eps: 1e-5, relu: true })
                .unwrap(),
        ))
    });
    row(
        &format!("bn_train_fwd+relu {tag}"),
        &format!("{n}x{h}"),
        ms,
        Work::Bytes { moved: 2.0 * mat, footprint: 2.0 * mat },
        l,
    );
    // BN backward (+ReLU): reads dy, x, y, writes dx: 4 N H floats.
    let fwd = ops::bn_train_fwd(BnTrainArgs { x: &a, bias: None, gamma: &gamma, beta: &beta, eps: 1e-5, relu: true })
        .unwrap();
    let ms = median_ms(o, || {
        drop(black_box(
            ops::bn_train_bwd(fwd.backward_args(
                BnTrainArgs { x: &a, bias: None, gamma: &gamma, beta: &beta, eps: 1e-5, relu: true },
                &dy,
            ))
            .unwrap(),
        ))
    });
    row(
        &format!("bn_train_bwd+relu {tag}"),
        &format!("{n}x{h}"),
        ms,
        Work::Bytes { moved: 4.0 * mat, footprint: 4.0 * mat },
        l,
    );
    // ReLU: reads x, writes y: 2 N H floats.
    let ms = median_ms(o, || drop(black_box(ops::relu_fwd(&a).unwrap())));
    row(&format!("relu_fwd {tag}"), &format!("{n}x{h}"), ms, Work::Bytes { moved: 2.0 * mat, footprint: 2.0 * mat }, l);
    // AdamW on the hidden H x H weight: reads p, g, m, v, writes p, m, v: 28 bytes per parameter.
    let (mut p, g) = (tensor(h, h, 6), tensor(h, h, 7));
    let (mut m1, mut v1) = (Tensor::from_vec(&[h, h], vec![0.0; h * h]), Tensor::from_vec(&[h, h], vec![0.0; h * h]));
    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-5, step: 1 };
    let ms = median_ms(o, || ops::adamw_(&mut p, &g, &mut m1, &mut v1, hp).unwrap());
    row(
        &format!("adamw_ {tag}"),
        &format!("{h}x{h}"),
        ms,
        Work::Bytes { moved: 28.0 * (h * h) as f64, footprint: f4(4 * h * h) },
        l,
    );

    // Patch gather + augmentation (the CPU reference of the GPU patch embedding): reads p*p*3
    // bytes per patch, writes p*p*3 floats: 5 bytes per output element; a few flops each.
    let store = store();
    let images: Vec<u32> = (0..c.images).map(|i| (i * 193 % store.len()) as u32).collect();
    let specs = PatchSampler::new(0, true).sample(&images, PER_IMAGE, PATCH, store.height, store.width);
    let mut out = vec![0f32; n * IN];
    let ms = median_ms(o, || gather_patches(&store, &specs, PATCH, black_box(&mut out)));
    let moved = 5.0 * (n * IN) as f64;
    row(&format!("gather_patches+aug {tag}"), &format!("{n}x{IN}"), ms, Work::Bytes { moved, footprint: moved }, l);
}

/// The convolution primitives at the small ResNet's shapes (`configs/cifar10-resnet-cpu.toml`:
/// 16x16 patches, widths 32-64-128): a 3x3 stride-1 convolution of `layer1` and the stride-2 one
/// that opens `layer2`, each as im2col / col2im (streaming, against the copy limit) and the three
/// convolution GEMMs (forward, dW, dX: 2 MACs per output and window element, against the FMA
/// limit, in f32 and bf16), then the ImageNet stem's max-pool and the residual add.
/// `patches` images of 16x16; the full run uses the config's 512, `--quick` 128.
fn bench_conv(o: &Opts, l: &Limits, patches: usize) {
    use bagssl_autograd::Window2d;
    let f4 = |v: usize| 4.0 * v as f64;
    for (name, c_in, c_out, stride, side) in [("conv3x3 s1", 32, 32, 1, 16), ("conv3x3 s2", 32, 64, 2, 16)] {
        let g = Window2d { n: patches, h: side, w: side, c: c_in, kh: 3, kw: 3, stride, pad: 1 };
        let shape = format!("{patches}x{side}x{side}x{c_in}->{c_out}");
        let x = tensor(g.in_rows(), c_in, 21);
        let w = Tensor::from_vec(&[c_out, c_in, 3, 3], values(c_out * c_in * 9, 22, 0.1));
        let dy = tensor(g.out_rows(), c_out, 23);
        let cols_bytes = f4(g.out_rows() * g.patch_len());
        let ms = median_ms(o, || drop(black_box(ops::im2col(&x, g).unwrap())));
        let moved = f4(x.numel()) + cols_bytes;
        row(&format!("im2col {name}"), &shape, ms, Work::Bytes { moved, footprint: moved }, l);
        let cols = ops::im2col(&x, g).unwrap();
        let ms = median_ms(o, || drop(black_box(ops::col2im(&cols, g).unwrap())));
        row(&format!("col2im {name}"), &shape, ms, Work::Bytes { moved, footprint: moved }, l);
        let flop = 2.0 * (g.out_rows() * g.patch_len() * c_out) as f64;
        let fwd = || ops::conv2d_fwd(&x, &w, g).unwrap();
        let dw = || ops::conv2d_bwd_weight(&x, &w, &dy, g).unwrap();
        let dx = || ops::conv2d_bwd_input(&w, &dy, g).unwrap();
        let convs: [(&str, &dyn Fn() -> Tensor); 3] =
            [("conv2d_fwd", &fwd), ("conv2d_bwd_weight", &dw), ("conv2d_bwd_input", &dx)];
        for (op, f) in convs {
            let ms = median_ms(o, || drop(black_box(f())));
            row(&format!("{op} {name}"), &shape, ms, Work::Flop(flop), l);
            let ms = bf16(|| median_ms(o, || drop(black_box(f()))));
            row(&format!("{op} {name} bf16"), &shape, ms, Work::FlopBf16(flop), l);
        }
    }
    // Max-pool 3x3 s2 p1 on the ImageNet stem's 64 channels: reads x, writes y; backward reads x,
    // y, dy, writes dx.
    let g = Window2d { n: patches, h: 16, w: 16, c: 64, kh: 3, kw: 3, stride: 2, pad: 1 };
    let shape = format!("{patches}x16x16x64");
    let x = tensor(g.in_rows(), 64, 24);
    let ms = median_ms(o, || drop(black_box(ops::max_pool_fwd(&x, g).unwrap())));
    let (xin, yout) = (f4(x.numel()), f4(g.out_rows() * 64));
    row("max_pool_fwd 3x3 s2", &shape, ms, Work::Bytes { moved: xin + yout, footprint: xin + yout }, l);
    let y = ops::max_pool_fwd(&x, g).unwrap();
    let dyp = tensor(g.out_rows(), 64, 25);
    let ms = median_ms(o, || drop(black_box(ops::max_pool_bwd(&x, &y, &dyp, g).unwrap())));
    let moved = 2.0 * xin + 2.0 * yout;
    row("max_pool_bwd 3x3 s2", &shape, ms, Work::Bytes { moved, footprint: moved }, l);
    let b = tensor(g.in_rows(), 64, 26);
    let ms = median_ms(o, || drop(black_box(ops::add(&x, &b).unwrap())));
    row("add (residual)", &shape, ms, Work::Bytes { moved: 3.0 * xin, footprint: 3.0 * xin }, l);
}

/// Runs `f` with the CPU GEMMs in bf16 (`sgemm_bf16`), then switches back to f32.
fn bf16<T>(f: impl FnOnce() -> T) -> T {
    set_cpu_matmul_precision(CpuMatmulPrecision::Bf16);
    let out = f();
    set_cpu_matmul_precision(CpuMatmulPrecision::F32);
    out
}

/// 4096 CIFAR-sized pseudo-random images (12 MiB), enough that patches rarely share an image.
fn store() -> ImageStore {
    let (count, hw) = (4096, 32);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let pixels: Vec<u8> = (0..count * hw * hw * 3)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect();
    let labels = (0..count as u32).map(|i| i % 10).collect();
    let classes = (0..10).map(|i| format!("class{i}")).collect();
    ImageStore::new(hw, hw, pixels, labels, classes, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).expect("valid store")
}

fn main() {
    // On a rayon worker, as `bagssl-train` runs its commands: the ops then fork inside the pool.
    rayon::scope(|_| run());
}

fn run() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let o = if quick { Opts { quick, warmups: 1, repeats: 5 } } else { Opts { quick, warmups: 2, repeats: 11 } };
    let t0 = Instant::now();
    let threads = rayon::current_num_threads();
    println!(
        "bench_cpu{}: {threads} threads, median of {} runs after {} warm-up(s); shared machine: expect 10-20 % noise",
        if o.quick { " --quick" } else { "" },
        o.repeats,
        o.warmups
    );
    if !has_avx512_bf16() {
        println!("no AVX512-BF16: the bf16 rows time the fallback (bf16-rounded copies + the f32 GEMM)");
    }

    // Limits first, in this run.
    let (fma, isa) = fma_peak(&o, threads);
    let copy = COPY_SETS_MIB.iter().map(|&m| ((m * MIB) as f64, copy_rate(&o, m * MIB))).collect();
    let l = Limits { fma, copy };
    header();
    line(&format!("limit: fma {isa}"), &format!("{threads} threads x 12 chains"), "-", &gflops(fma), "100.0% of fma");
    let sq = 2048;
    let (sa, sb) = (tensor(sq, sq, 11), tensor(sq, sq, 12));
    let ms = median_ms(&o, || drop(black_box(ops::matmul(&sa, &sb, false, false).unwrap())));
    row("limit: gemm crate, square", &format!("{sq}x{sq}x{sq}"), ms, Work::Flop(2.0 * (sq * sq * sq) as f64), &l);
    let ms = bf16(|| median_ms(&o, || drop(black_box(ops::matmul(&sa, &sb, false, false).unwrap()))));
    row("limit: sgemm_bf16, square", &format!("{sq}x{sq}x{sq}"), ms, Work::FlopBf16(2.0 * (sq * sq * sq) as f64), &l);
    for (m, &(_, gbs_)) in COPY_SETS_MIB.iter().zip(&l.copy) {
        line(&format!("limit: copy@{m}M"), &format!("2 x {} MiB", m / 2), "-", &gbs(gbs_), "");
    }

    bench_config(&o, &l, &Config { name: "cpu", images: 32, hidden: 512, big: true });
    bench_config(&o, &l, &Config { name: "ref", images: 256, hidden: 2048, big: !o.quick });
    bench_conv(&o, &l, if o.quick { 128 } else { 512 });
    if o.quick {
        println!("(--quick: skipped the ref config's N x 2048 x 2048 matmuls and vicreg_fwd_bwd; convolutions on 128 patches, not 512)");
    }
    println!("bench_cpu: {:.1} s", t0.elapsed().as_secs_f64());
}
