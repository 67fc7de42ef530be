//! "Keep allocations out of the step": once warm, a CPU training step allocates no buffer of
//! `cpu::pool::MIN_LEN` floats (16 KiB) or more. Every activation, gradient and GEMM output comes
//! back from the recycled-buffer pool, our bf16 GEMM's packing buffers are per thread and reused,
//! and the patch gather writes into a recycled tensor. The one exception is the `gemm` crate
//! behind the f32 GEMMs, which allocates its packed right-hand side on every call (no API takes
//! a buffer): with f32 GEMMs at most one large allocation per product is allowed. (Small
//! per-column vectors, the tape's nodes and the sampler's specs still come from the allocator.)
//!
//! A counting global allocator; one test function, because the count and the precision switch
//! are process-wide.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bagssl_autograd::cpu::pool;
use bagssl_autograd::{set_cpu_matmul_precision, CpuMatmulPrecision, Device};
use bagssl_data::{synthetic, SyntheticSpec};
use bagssl_model::{ModelConfig, OptimizerKind, TrainConfig, Trainer};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LARGE: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if COUNTING.load(Ordering::Relaxed) && size >= pool::MIN_LEN * 4 {
        LARGE.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Steps before counting. Per-thread scratch buffers grow to their kind's largest size on first
/// need, and which worker first needs the largest one depends on scheduling: a few steps in,
/// every worker has, so every thread's buffers have stopped growing.
const WARM_STEPS: usize = 8;

/// After [`WARM_STEPS`], the large allocations of `steps` more: (count, largest in bytes).
fn large_allocations(trainer: &mut Trainer, data: &bagssl_data::ImageStore, steps: usize) -> (usize, usize) {
    for _ in 0..WARM_STEPS {
        trainer.step(data).unwrap();
    }
    LARGE.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..steps {
        trainer.step(data).unwrap();
    }
    COUNTING.store(false, Ordering::Relaxed);
    (LARGE.load(Ordering::Relaxed), LARGEST.load(Ordering::Relaxed))
}

#[test]
fn a_warm_cpu_step_allocates_no_large_buffer() {
    // 8 images x 16 patches = 128 rows; 128 wide: every (rows, width) tensor is 16384 floats.
    let data = synthetic(&SyntheticSpec { images: 64, classes: 4, height: 32, width: 32, seed: 3 });
    let model = ModelConfig::mlp(8, 2, 128, 128);
    for optimizer in [OptimizerKind::AdamW, OptimizerKind::Lars] {
        for precision in [CpuMatmulPrecision::F32, CpuMatmulPrecision::Bf16] {
            set_cpu_matmul_precision(precision);
            let config = TrainConfig { per_image: 16, total_steps: 100, seed: 5, ..common::train_config(optimizer) };
            let mut trainer = Trainer::new(model.clone(), config, &Device::Cpu).unwrap();
            let (n, largest) = large_allocations(&mut trainer, &data, 5);
            // Products per step: 4 forward, 4 weight gradients, 3 input gradients, bag-VICReg's 2.
            let allowed = match precision {
                CpuMatmulPrecision::F32 => 13 * 5,
                CpuMatmulPrecision::Bf16 => 0,
            };
            assert!(
                n <= allowed,
                "{optimizer:?} {precision:?}: 5 warm steps made {n} allocations of 16 KiB or more \
                 (largest {largest} bytes), allowed {allowed}"
            );
        }
    }
    // A ResNet (im2col, col2im, the weight re-layouts, the residual adds; 8 images x 16 patches
    // of 8x8 = 8192 rows of 4 to 8 channels) in bf16: no tensor buffer either. Its tape has more
    // than 64 nodes, so the node list itself (one allocation per step, 128 nodes of ~176 bytes)
    // passes 16 KiB: allowed, once per step and below 64 KiB.
    set_cpu_matmul_precision(CpuMatmulPrecision::Bf16);
    let config = TrainConfig { per_image: 16, total_steps: 100, seed: 5, ..common::train_config(OptimizerKind::AdamW) };
    let mut trainer = Trainer::new(ModelConfig::resnet(8, &[4, 8], &[1, 1], 64), config, &Device::Cpu).unwrap();
    let (n, largest) = large_allocations(&mut trainer, &data, 3);
    assert!(
        n <= 3 && largest < 64 * 1024,
        "ResNet bf16: 3 warm steps made {n} allocations of 16 KiB or more (largest {largest} bytes), allowed 3"
    );
    set_cpu_matmul_precision(CpuMatmulPrecision::F32);
}
