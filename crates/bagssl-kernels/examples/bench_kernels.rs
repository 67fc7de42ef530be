//! Times the kernels at the training configuration of DESIGN.md §3 (256 images x 16 patches of
//! 8x8, hidden = proj = 2048), one aligned line per op: `op | shape | ms | GB/s or TFLOP/s`.
//! CUDA events around `REPEATS` launches after a warm-up; no L2 flush (the operands, 16-32 MB,
//! mostly exceed what a repeat leaves in the 50 MB L2 only for the larger ones: treat GB/s of
//! the small ops as optimistic). cuBLAS GEMMs are the ceiling for the hand-written kernels.
//!
//! Build here: `cargo xtask device-tests` (copies it to .device/bin); run on the GPU machine:
//! `LD_LIBRARY_PATH=/usr/local/cuda/lib64 .device/bin/bench_kernels`.

use std::sync::Arc;

use bagssl_kernels::*;
use cudarc::driver::sys::CUevent_flags;

const REPEATS: usize = 20;

fn time_ms(gpu: &Arc<Gpu>, mut f: impl FnMut() -> Result<(), KernelError>) -> Result<f64, KernelError> {
    f()?;
    gpu.synchronize()?;
    let start = gpu.stream().record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    for _ in 0..REPEATS {
        f()?;
    }
    let end = gpu.stream().record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    Ok(f64::from(start.elapsed_ms(&end)?) / REPEATS as f64)
}

fn line(op: &str, shape: &str, ms: f64, rate: String) {
    println!("{op:<28} | {shape:<22} | {ms:>9.4} ms | {rate}");
}

fn gbs(bytes: f64, ms: f64) -> String {
    format!("{:>8.1} GB/s", bytes / ms / 1e6)
}

fn tflops(flop: f64, ms: f64) -> String {
    format!("{:>8.1} TFLOP/s", flop / ms / 1e9)
}

fn main() -> Result<(), KernelError> {
    let gpu = Gpu::new(0)?;
    println!("{} ({:?} kernels), gemm precision {:?}", gpu.name(), gpu.module_kind(), gpu.gemm_precision());
    let (b, n, p, h) = (256usize, 16usize, 8usize, 2048usize);
    let rows = b * n;
    let din = p * p * 3;
    let rnd = |len: usize, seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            .collect()
    };

    // Patch embedding from a CIFAR-sized resident dataset.
    let pixels: Vec<u8> = (0..50_000 * 32 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let images = GpuImages::upload(&gpu, &pixels, 32, 32, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])?;
    let specs: Vec<PatchSpec> = (0..rows)
        .map(|i| {
            PatchSpec::new(
                (i * 193 % 50_000) as u32,
                (i % 25) as u32,
                (i * 7 % 25) as u32,
                i % 2 == 0,
                Some([1.1, 0.9, 1.2]),
                i % 5 == 0,
            )
        })
        .collect();
    let dspecs = GpuPatchSpecs::upload(&gpu, &specs)?;
    let mut x = gpu.uninit(rows * din)?;
    let ms = time_ms(&gpu, || patch_embed_fwd_f32_into(&images, &dspecs, p, &mut x))?;
    line("patch_embed_fwd_f32", &format!("{rows}x{din}"), ms, gbs((rows * din * 4 + rows * din / 4) as f64, ms));

    // First Linear forward and its weight gradient, and a hidden Linear.
    let w1 = gpu.upload(&rnd(h * din, 1))?;
    let w2 = gpu.upload(&rnd(h * h, 2))?;
    let a = gpu.upload(&rnd(rows * h, 3))?;
    for prec in [GemmPrecision::Tf32, GemmPrecision::F32] {
        gpu.set_gemm_precision(prec);
        let ms = time_ms(&gpu, || matmul_f32(&x, &w1, rows, h, din, false, true).map(drop))?;
        line(
            &format!("matmul {prec:?} x W1^T"),
            &format!("{rows}x{din}x{h}"),
            ms,
            tflops(2.0 * (rows * din * h) as f64, ms),
        );
        let ms = time_ms(&gpu, || matmul_f32(&a, &w2, rows, h, h, false, true).map(drop))?;
        line(
            &format!("matmul {prec:?} h W2^T"),
            &format!("{rows}x{h}x{h}"),
            ms,
            tflops(2.0 * (rows * h * h) as f64, ms),
        );
        let ms = time_ms(&gpu, || matmul_f32(&a, &x, h, din, rows, true, false).map(drop))?;
        line(
            &format!("matmul {prec:?} dY^T X"),
            &format!("{h}x{rows}x{din}"),
            ms,
            tflops(2.0 * (rows * din * h) as f64, ms),
        );
        let ms = time_ms(&gpu, || vicreg_fwd_bwd_f32(&a, rows, h, n, VicregConfig::default()).map(drop))?;
        line(
            &format!("vicreg_fwd_bwd {prec:?}"),
            &format!("{rows}x{h}/{n}"),
            ms,
            tflops(4.0 * (rows * h * h) as f64, ms),
        );
    }
    gpu.set_gemm_precision(GemmPrecision::Tf32);

    let gamma = gpu.upload(&vec![1.0; h])?;
    let beta = gpu.zeros(h)?;
    let mb = (rows * h * 4) as f64;
    let ms = time_ms(&gpu, || bn_train_fwd_f32(&a, &gamma, &beta, rows, h, 1e-5, true).map(drop))?;
    line("bn_train_fwd_f32 (+relu)", &format!("{rows}x{h}"), ms, gbs(4.0 * mb, ms));
    let o = bn_train_fwd_f32(&a, &gamma, &beta, rows, h, 1e-5, true)?;
    let ms = time_ms(&gpu, || bn_train_bwd_f32(&a, &a, &o.y, &gamma, &o.mean, &o.invstd, rows, h, true).map(drop))?;
    line("bn_train_bwd_f32 (+relu)", &format!("{rows}x{h}"), ms, gbs(7.0 * mb, ms));
    let ms = time_ms(&gpu, || sum_rows_f32(&a, rows, h).map(drop))?;
    line("sum_rows_f32", &format!("{rows}x{h}"), ms, gbs(mb, ms));
    let ms = time_ms(&gpu, || relu_fwd_f32(&a).map(drop))?;
    line("relu_fwd_f32", &format!("{rows}x{h}"), ms, gbs(2.0 * mb, ms));
    let mut pm = gpu.upload(&rnd(h * h, 4))?;
    let (mut m1, mut v1) = (gpu.zeros(h * h)?, gpu.zeros(h * h)?);
    let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-5, step: 1 };
    let ms = time_ms(&gpu, || adamw_f32(&mut pm, &w2, &mut m1, &mut v1, cfg))?;
    line("adamw_f32", &format!("{h}x{h}"), ms, gbs((h * h * 28) as f64, ms));
    Ok(())
}
