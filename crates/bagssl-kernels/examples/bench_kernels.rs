//! GPU kernel microbenchmarks at the reference configuration of docs/DEFINITIONS.md §11 (256 images x 16
//! patches of 8x8 = N 4096 rows of 192, hidden = D = 2048), one aligned line per kernel and shape:
//! `op | shape | median ms | GB/s or TFLOP/s | % of limit`.
//!
//!     cargo xtask bench-kernels [--quick]    (after the CPU table; prints "GPU part skipped: ..."
//!                                             when `probe()` finds no usable GPU)
//!     cargo xtask device-tests, then on the GPU machine:
//!     LD_LIBRARY_PATH=/usr/local/cuda/lib64 .device/bin/bench_kernels [--quick] [--ptx]
//!
//! `--ptx` loads the compute_80 PTX (JIT) even where the sm_90a cubins would load. The BatchNorm
//! lines come once per `BnVariant` (the library's, mask from y, no bf16 copies, a 512-block grid).
//!
//! Timing: one warm-up, then per repeat an L2 flush (a 256 MiB memset, outside the timed span,
//! which also keeps the GPU busy while the host queues the next launch), CUDA events around the
//! launch, the median over the repeats.
//!
//! Limits, measured in the same run at the same shapes:
//! - bandwidth: a device-to-device copy of 2 x 256 MiB, counted as bytes read + written. The
//!   streaming kernels are reported against it.
//! - GEMM: cuBLAS `cublasGemmEx` with bf16 inputs and output, f32 accumulation, at the exact shape
//!   (and transposes) of each product. Ours have f32 output and, with bf16 (the default), read
//!   the operands' cached bf16 copies (the cast is timed on its own line: `cast_bf16_f32`); with
//!   TF32 or F32 they read the f32 operands. The bf16 line is the ceiling of what the hardware
//!   does at that shape.
//!   bag-VICReg is reported against the bf16 time of its two products, `C = Zc^T Zc` (D x N x D)
//!   and `Zc M` (N x D x D), and, after "|", against the same two products in our own GEMM
//!   precision (how much the loss's own passes cost on top of its GEMMs).
//! - The patch embedding is reported against the better of its two roofline limits: its bytes at
//!   the copy bandwidth and, fused with the first Linear, that product at the bf16 GEMM rate.
//!
//! Counting convention (as in `bagssl-autograd/examples/bench_cpu.rs`): FLOPs are 2 per
//! multiply-add of the dense products; bytes are each input read once and each output written
//! once. Extra passes are the kernel's inefficiency, not work.
//!
//! Targets (issue "bench-kernels"): vicreg_fwd_bwd at >= 70 % of the GEMM limit at D = 2048,
//! N = 4096; the patch embedding at >= 70 % of its better limit.

use std::sync::Arc;

use bagssl_kernels::*;
use bagssl_testkit::REQUIRE_GPU_ENV;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, DevicePtr, DevicePtrMut};

const MIB: usize = 1024 * 1024;

/// Times launches with CUDA events: median of `repeats`, L2 flushed before each.
struct Timer {
    gpu: Arc<Gpu>,
    flush: CudaSlice<u8>,
    events: Vec<(CudaEvent, CudaEvent)>,
}

impl Timer {
    fn new(gpu: &Arc<Gpu>, repeats: usize) -> Result<Timer, KernelError> {
        let flush = gpu.stream().alloc_zeros::<u8>(256 * MIB)?;
        let ev = || gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
        let events = (0..repeats).map(|_| Ok((ev()?, ev()?))).collect::<Result<_, KernelError>>()?;
        Ok(Timer { gpu: gpu.clone(), flush, events })
    }

    /// Median milliseconds of `f` (one warm-up first).
    fn median_ms(&mut self, mut f: impl FnMut() -> Result<(), KernelError>) -> Result<f64, KernelError> {
        f()?;
        let stream = self.gpu.stream().clone();
        for (start, end) in &self.events {
            stream.memset_zeros(&mut self.flush)?;
            start.record(&stream)?;
            f()?;
            end.record(&stream)?;
        }
        self.gpu.synchronize()?;
        let mut t = self.events.iter().map(|(s, e)| s.elapsed_ms(e).map(f64::from)).collect::<Result<Vec<f64>, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }
}

/// bf16 cuBLAS GEMMs at given row-major shapes: the GEMM limit.
struct Bf16Gemm {
    blas: CudaBlas,
    gpu: Arc<Gpu>,
}

impl Bf16Gemm {
    /// Median ms of the row-major bf16 `C (m, n) = op(A) op(B)` (f32 accumulation, bf16 out).
    fn ms(&self, timer: &mut Timer, g: Gemm) -> Result<f64, KernelError> {
        let stream = self.gpu.stream();
        let bits = |len: usize, seed: u32| -> Vec<u16> {
            rnd(len, seed).into_iter().map(|v| half::bf16::from_f32(v).to_bits()).collect()
        };
        let a = stream.clone_htod(&bits(g.m * g.k, 21))?;
        let b = stream.clone_htod(&bits(g.k * g.n, 22))?;
        let mut c = stream.alloc_zeros::<u16>(g.m * g.n)?;
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let i = |v: usize| v as i32;
        let (alpha, beta) = (1f32, 0f32);
        timer.median_ms(|| {
            let (pa, _ra) = a.device_ptr(stream);
            let (pb, _rb) = b.device_ptr(stream);
            let (pc, _rc) = c.device_ptr_mut(stream);
            // Row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T: B first.
            // SAFETY: the buffers hold m*k, k*n and m*n bf16 values; leading dimensions match the
            // dense row-major layouts; alpha and beta outlive the call (host pointer mode).
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    op(g.trans_b),
                    op(g.trans_a),
                    i(g.n),
                    i(g.m),
                    i(g.k),
                    (&alpha) as *const f32 as *const _,
                    pb as *const _,
                    blas_sys::cudaDataType_t::CUDA_R_16BF,
                    i(if g.trans_b { g.k } else { g.n }),
                    pa as *const _,
                    blas_sys::cudaDataType_t::CUDA_R_16BF,
                    i(if g.trans_a { g.m } else { g.k }),
                    (&beta) as *const f32 as *const _,
                    pc as *mut _,
                    blas_sys::cudaDataType_t::CUDA_R_16BF,
                    i(g.n),
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )?;
            }
            Ok(())
        })
    }
}

fn rnd(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

fn gemm(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
    Gemm { m, n, k, trans_a, trans_b, alpha: 1.0, beta: 0.0 }
}

/// The backward of the forward `f` (its output `o`) with gradient `dy`.
fn bwd_of<'a>(f: &BnTrainArgs<'a, GpuBuf>, dy: &'a GpuBuf, o: &'a BnTrainOut) -> BnBackwardArgs<'a, GpuBuf> {
    BnBackwardArgs { fwd: *f, dy, y: &o.y, mean: &o.mean, invstd: &o.invstd }
}

fn flop(g: &Gemm) -> f64 {
    2.0 * (g.m * g.n * g.k) as f64
}

fn line(op: &str, shape: &str, ms: &str, rate: &str, pct: &str) {
    println!("{op:<30} | {shape:<20} | {ms:>11} | {rate:>15} | {pct}");
}

fn gbs(bytes: f64, ms: f64) -> String {
    format!("{:>8.1} GB/s   ", bytes / ms / 1e6)
}

fn tflops(flop: f64, ms: f64) -> String {
    format!("{:>8.1} TFLOP/s", flop / ms / 1e9)
}

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    // --ptx: the kernels JIT-compiled from the PTX even where the cubins would load (H100/H200).
    let ptx = std::env::args().skip(1).any(|a| a == "--ptx");
    let p = probe();
    let required = std::env::var(REQUIRE_GPU_ENV).as_deref() == Ok("1");
    let open = || if ptx { Gpu::with_modules(0, ModuleKind::Ptx) } else { Gpu::new(0) };
    let gpu = match p.reason.clone().map_or_else(open, |r| Err(KernelError::NoGpu(r))) {
        Ok(gpu) => gpu,
        Err(e) => {
            let reason = match e {
                KernelError::NoGpu(r) => r,
                other => other.to_string(),
            };
            println!("GPU part skipped: {reason}");
            if required {
                eprintln!("bench_kernels: {REQUIRE_GPU_ENV}=1 but the GPU is unusable");
                std::process::exit(1);
            }
            return;
        }
    };
    if let Err(e) = run(&gpu, quick) {
        eprintln!("bench_kernels: {e}");
        std::process::exit(1);
    }
}

fn run(gpu: &Arc<Gpu>, quick: bool) -> Result<(), KernelError> {
    let t0 = std::time::Instant::now();
    let repeats = if quick { 5 } else { 21 };
    println!(
        "bench_kernels{}: {} ({:?} kernels), median of {repeats} CUDA-event timings, L2 flushed before each",
        if quick { " --quick" } else { "" },
        gpu.name(),
        gpu.module_kind()
    );
    let mut timer = Timer::new(gpu, repeats)?;
    let bf16 = Bf16Gemm { blas: CudaBlas::new(gpu.stream().clone())?, gpu: gpu.clone() };
    let (b, n, p, h) = (256usize, 16usize, 8usize, 2048usize);
    let rows = b * n;
    let din = p * p * 3;
    let f4 = |v: usize| 4.0 * v as f64;

    line("op", "shape", "median", "rate", "% of limit");
    println!("{}", "-".repeat(110));

    // Bandwidth limit: device-to-device copy, read + write.
    let src = gpu.stream().alloc_zeros::<u8>(256 * MIB)?;
    let mut dst = gpu.stream().alloc_zeros::<u8>(256 * MIB)?;
    let ms = timer.median_ms(|| Ok(gpu.stream().memcpy_dtod(&src, &mut dst)?))?;
    let bw = (2 * 256 * MIB) as f64 / ms / 1e6; // GB/s
    line("limit: d2d copy", "2 x 256 MiB", &format!("{ms:.4} ms"), &gbs((2 * 256 * MIB) as f64, ms), "");
    drop((src, dst));
    let pct_bw = |bytes: f64, ms: f64| format!("{:>5.1}% of d2d copy", 100.0 * bytes / ms / 1e6 / bw);

    // Patch embedding from a CIFAR-sized resident dataset: reads p*p*3 bytes per patch (plus a
    // 40-byte spec), writes p*p*3 floats.
    let pixels: Vec<u8> = (0..50_000 * 32 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let images = GpuImages::upload(gpu, &pixels, 32, 32, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])?;
    let specs: Vec<PatchSpec> = (0..rows)
        .map(|i| {
            PatchSpec::new(
                (i * 193 % 50_000) as u32,
                (i % 25) as u32,
                (i * 7 % 25) as u32,
                p as u32,
                i % 2 == 0,
                Some([1.1, 0.9, 1.2]),
                i % 5 == 0,
            )
        })
        .collect();
    let mut dspecs = GpuPatchSpecs::upload(gpu, &specs)?;
    let mut x = gpu.uninit(rows * din)?;
    let embed_bytes = (rows * din * 5 + rows * 32) as f64;
    let ms_embed = timer.median_ms(|| patch_embed_fwd_f32_into(&images, &mut dspecs, p, &mut x))?;
    let shape = format!("{rows}x{din}");
    line(
        "patch_embed_fwd_f32",
        &shape,
        &format!("{ms_embed:.4} ms"),
        &gbs(embed_bytes, ms_embed),
        &pct_bw(embed_bytes, ms_embed),
    );

    // Patch embedding fused with the first Linear (x W1^T): the roofline limit is the slower of
    // its bytes (gather + W1 + the N x H output) at the copy bandwidth and its product at the
    // bf16 GEMM rate; the percentage is that limit's time over ours.
    let w1 = gpu.upload(&rnd(h * din, 1))?;
    let g1 = gemm(rows, h, din, false, true);
    let ms_fused = timer.median_ms(|| {
        patch_embed_fwd_f32_into(&images, &mut dspecs, p, &mut x)?;
        matmul_f32(&x, &w1, rows, h, din, false, true).map(drop)
    })?;
    let fused_bytes = embed_bytes + f4(h * din) + f4(rows * h);
    let (t_bw, t_gemm) = (fused_bytes / bw / 1e6, bf16.ms(&mut timer, g1)?);
    line(
        "patch_embed + x W1^T",
        &format!("{rows}x{din}x{h}"),
        &format!("{ms_fused:.4} ms"),
        &gbs(fused_bytes, ms_fused),
        &format!(
            "{:>5.1}% of roofline (bw {t_bw:.4} ms, bf16 gemm {t_gemm:.4} ms)",
            100.0 * t_bw.max(t_gemm) / ms_fused
        ),
    );

    // The GEMMs of a step, in the three training orientations, against bf16 cuBLAS at the same
    // shape. 2 m n k flops each; at N 4096, H 2048 they are far past the machine balance.
    let w2 = gpu.upload(&rnd(h * h, 2))?;
    let a = gpu.upload(&rnd(rows * h, 3))?;
    let products: [(&str, &GpuBuf, &GpuBuf, Gemm); 5] = [
        ("x W1^T", &x, &w1, g1),
        ("h W2^T", &a, &w2, gemm(rows, h, h, false, true)),
        ("dY W2", &a, &w2, gemm(rows, h, h, false, false)),
        ("dY^T X", &a, &x, gemm(h, din, rows, true, false)),
        ("dY^T h", &a, &a, gemm(h, h, rows, true, false)),
    ];
    let mut limits = Vec::new();
    for (_, _, _, g) in &products {
        limits.push(bf16.ms(&mut timer, *g)?);
    }
    let precisions = if quick { vec![GemmPrecision::Bf16] } else { GemmPrecision::ALL.to_vec() };
    for prec in &precisions {
        gpu.set_gemm_precision(*prec);
        for ((name, l, r, g), lim) in products.iter().zip(&limits) {
            let ms = timer.median_ms(|| matmul_f32(l, r, g.m, g.n, g.k, g.trans_a, g.trans_b).map(drop))?;
            line(
                &format!("matmul {prec:?} {name}"),
                &format!("{}x{}x{}", g.m, g.k, g.n),
                &format!("{ms:.4} ms"),
                &tflops(flop(g), ms),
                &format!("{:>5.1}% of bf16 cuBLAS ({})", 100.0 * lim / ms, tflops(flop(g), *lim).trim()),
            );
        }
    }

    // bag-VICReg at D = 2048, N = 4096: two dense-equivalent products, 4 N D^2 flops, plus a few
    // streaming passes over N x D.
    let (gc, gm) = (gemm(h, h, rows, true, false), gemm(rows, h, h, false, false));
    let lim = bf16.ms(&mut timer, gc)? + bf16.ms(&mut timer, gm)?;
    let vflop = flop(&gc) + flop(&gm);
    let m_dd = gpu.upload(&rnd(h * h, 5))?;
    for prec in &precisions {
        gpu.set_gemm_precision(*prec);
        let ms = timer.median_ms(|| vicreg_fwd_bwd_f32(&a, rows, h, n, VicregWeights::default()).map(drop))?;
        let own = timer.median_ms(|| {
            matmul_f32(&a, &a, h, h, rows, true, false)?;
            matmul_f32(&a, &m_dd, rows, h, h, false, false).map(drop)
        })?;
        line(
            &format!("vicreg_fwd_bwd {prec:?}"),
            &format!("{rows}x{h}/{n}"),
            &format!("{ms:.4} ms"),
            &tflops(vflop, ms),
            &format!(
                "{:>5.1}% of bf16 cuBLAS ({}) | {:.1}% of its 2 GEMMs in {prec:?}",
                100.0 * lim / ms,
                tflops(vflop, lim).trim(),
                100.0 * own / ms
            ),
        );
    }
    gpu.set_gemm_precision(GemmPrecision::Bf16);

    // Streaming kernels on the N x H activation (32 MiB).
    let gamma = gpu.upload(&vec![1.0; h])?;
    let beta = gpu.zeros(h)?;
    let mat = f4(rows * h);
    let shape = format!("{rows}x{h}");
    let streaming =
        |timer: &mut Timer, name: &str, shape: &str, bytes: f64, f: &mut dyn FnMut() -> Result<(), KernelError>| {
            let ms = timer.median_ms(f)?;
            line(name, shape, &format!("{ms:.4} ms"), &gbs(bytes, ms), &pct_bw(bytes, ms));
            Ok::<(), KernelError>(())
        };
    // BatchNorm, one line per variant (BnVariant; the library's is BnVariant::LIBRARY). Forward
    // (+ReLU): reads x, writes y; backward: reads dy and x (the ReLU mask recomputed from x), writes dx.
    let lib = BnVariant::LIBRARY;
    let plain = BnTrainArgs { x: &a, bias: None, gamma: &gamma, beta: &beta, eps: 1e-5, relu: true };
    streaming(&mut timer, "bn_train_fwd_f32 (+relu)", &shape, 2.0 * mat, &mut || {
        bn_train_fwd_f32(&plain, rows).map(drop)
    })?;
    let o = bn_train_fwd_f32(&plain, rows)?;
    streaming(&mut timer, "bn_train_bwd_f32 (+relu)", &shape, 3.0 * mat, &mut || {
        bn_train_bwd_f32(&bwd_of(&plain, &a, &o), rows).map(drop)
    })?;
    // The training step's form: the Linear bias folded in, and the backward summing dx into the bias
    // gradient. Same bytes; what it replaces is bias_add (2 x mat) and sum_rows (mat).
    let bias = gpu.upload(&rnd(h, 6))?;
    let folded = BnTrainArgs { bias: Some(&bias), ..plain };
    let ob = bn_train_fwd_f32(&folded, rows)?;
    let bwd_b = BnBackwardArgs { y: &ob.y, mean: &ob.mean, invstd: &ob.invstd, ..bwd_of(&folded, &a, &o) };
    // The variants: the library's; the ReLU mask read from y (+33.5 MB per backward kernel); no
    // bf16 copies written by the kernels (then the bf16 GEMMs' cast kernel makes them: see the
    // cast_bf16_f32 line); the column grid aiming for 512 blocks (one wave of 4 per SM at 4096 x
    // 2048: chunks of 128 rows) instead of 528 (688 blocks, 1.3 waves).
    let variants = [
        ("", lib, 3.0),
        (", mask from y", BnVariant { mask: MaskSource::Output, ..lib }, 4.0),
        (", no bf16 copies", BnVariant { bf16_copies: false, ..lib }, 3.0),
        (", 512-block grid", BnVariant { col_target_blocks: 512, ..lib }, 3.0),
    ];
    for (tag, v, bwd_mats) in variants {
        if v.mask == MaskSource::Input {
            streaming(&mut timer, &format!("bn_train_fwd_f32 (+bias +relu{tag})"), &shape, 2.0 * mat, &mut || {
                bn_train_fwd_f32_variant(&folded, rows, v).map(drop)
            })?;
        }
        if v == lib {
            // Its first kernel alone (reads x): the rest of the line above is the apply kernel.
            streaming(&mut timer, "  of which bn_stats_fwd_f32", &shape, mat, &mut || {
                bn_batch_stats_f32(&folded, rows, v).map(drop)
            })?;
        }
        streaming(
            &mut timer,
            &format!("bn_train_bwd_f32 (+bias +relu +dbias{tag})"),
            &shape,
            bwd_mats * mat,
            &mut || bn_train_bwd_f32_variant(&bwd_b, rows, v).map(drop),
        )?;
        if v == lib {
            // Its first kernel alone (reads dy, x): the rest is the apply kernel.
            streaming(&mut timer, "  of which bn_bwd_reduce_f32", &shape, 2.0 * mat, &mut || {
                bn_bwd_sums_f32(&bwd_b, rows, v).map(drop)
            })?;
        }
    }
    // bias_add (what the bias folding saves in the forward): reads x, writes y.
    streaming(&mut timer, "bias_add_fwd_f32", &shape, 2.0 * mat, &mut || {
        bias_add_fwd_f32(&a, &bias, rows, h).map(drop)
    })?;
    // Column sums: reads x.
    streaming(&mut timer, "sum_rows_f32", &shape, mat, &mut || sum_rows_f32(&a, rows, h).map(drop))?;
    // ReLU: reads x, writes y.
    streaming(&mut timer, "relu_fwd_f32", &shape, 2.0 * mat, &mut || relu_fwd_f32(&a).map(drop))?;
    // The bf16 operand copy of a bf16 GEMM: reads 4 bytes, writes 2 per element.
    streaming(&mut timer, "cast_bf16_f32", &shape, 1.5 * mat, &mut || cast_bf16_f32(&a).map(drop))?;
    // add (a residual connection): reads a and b, writes y.
    streaming(&mut timer, "add_f32", &shape, 3.0 * mat, &mut || add_f32(&a, &a).map(drop))?;

    // The conv data movement over NHWC rows: a 3x3 stride-1 conv on 64 images of 32x32x64, the
    // 7x7 stride-2 stem on 64 of 64x64x3, a 3x3 stride-2 max-pool, the weight re-layout of a
    // 512 -> 512 3x3 conv. Bytes: inputs read once, outputs written once (im2col's bf16 copy too).
    let g3 = Window2d { n: 64, h: 32, w: 32, c: 64, kh: 3, kw: 3, stride: 1, pad: 1 };
    let stem = Window2d { n: 64, h: 64, w: 64, c: 3, kh: 7, kw: 7, stride: 2, pad: 3 };
    let pool = Window2d { kh: 3, kw: 3, stride: 2, pad: 1, ..g3 };
    let desc = |g: &Window2d| format!("{}x{}x{}x{} k{} s{}", g.n, g.h, g.w, g.c, g.kh, g.stride);
    for g in [g3, stem] {
        let xi = gpu.upload(&rnd(g.in_rows() * g.c, 7))?;
        let (in_b, cols_n) = (f4(g.in_rows() * g.c), g.out_rows() * g.patch_len());
        streaming(&mut timer, "im2col_f32 (+bf16 copy)", &desc(&g), in_b + 6.0 * cols_n as f64, &mut || {
            im2col_f32(&xi, g).map(drop)
        })?;
        let cols = im2col_f32(&xi, g)?;
        streaming(&mut timer, "col2im_f32", &desc(&g), f4(cols_n) + in_b, &mut || col2im_f32(&cols, g).map(drop))?;
    }
    let xp = gpu.upload(&rnd(pool.in_rows() * pool.c, 8))?;
    let (xp_b, yp_b) = (f4(pool.in_rows() * pool.c), f4(pool.out_rows() * pool.c));
    streaming(&mut timer, "max_pool_fwd_f32", &desc(&pool), xp_b + yp_b, &mut || {
        max_pool_fwd_f32(&xp, pool).map(drop)
    })?;
    let yp = max_pool_fwd_f32(&xp, pool)?;
    let dyp = gpu.upload(&rnd(pool.out_rows() * pool.c, 9))?;
    streaming(&mut timer, "max_pool_bwd_f32", &desc(&pool), 2.0 * xp_b + 2.0 * yp_b, &mut || {
        max_pool_bwd_f32(&xp, &yp, &dyp, pool).map(drop)
    })?;
    let wconv = gpu.upload(&rnd(512 * 512 * 9, 10))?;
    streaming(&mut timer, "transpose_last2_f32", "512x512x9", 2.0 * f4(512 * 512 * 9), &mut || {
        transpose_last2_f32(&wconv, 512, 512, 9).map(drop)
    })?;
    drop((xp, yp, dyp, wconv));

    // AdamW: reads p, g, m, v, writes p, m, v: 28 bytes per parameter.
    let mut pm = gpu.upload(&rnd(h * h, 4))?;
    let (mut m1, mut v1) = (gpu.zeros(h * h)?, gpu.zeros(h * h)?);
    let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-5, step: 1 };
    streaming(&mut timer, "adamw_f32", &format!("{h}x{h}"), 28.0 * (h * h) as f64, &mut || {
        let t = AdamWTensor { param: &mut pm, grad: &w2, m: &mut m1, v: &mut v1, weight_decay: cfg.weight_decay };
        adamw_f32(t, cfg)
    })?;
    println!("bench_kernels: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
