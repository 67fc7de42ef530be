//! A ResNet training step (forward and backward) on the GPU against the same step on the CPU:
//! same weights, same patch matrix (a BasicBlock ResNet of widths 4-8 with two blocks in the
//! second stage, CIFAR stem, 8x8 patches, 4 per image x 8 images), at every GEMM precision.
//! Compared: h, z, the loss and its terms, every parameter gradient and every BatchNorm's batch
//! statistics. The data movement of the convolutions (im2col, col2im, the weight re-layout,
//! max-pool, add) is bit-identical across the backends (`bagssl-autograd/tests/cuda_parity.rs`);
//! what differs is the GEMMs' rounding.
//!
//! Tolerances, in units of `e = GemmPrecision::tolerance(72)` (the largest GEMM depth, 3x3x8),
//! the bounds of `cpu_gpu_step.rs` scaled for a deeper chain (seven GEMMs forward, not four):
//! forward values `6e` of the largest value, the loss `3e`, each term `8e` relative, gradients
//! `6 sqrt(e)` of the gradient's L2 norm (ReLU flips near zero, see `cpu_gpu_step.rs`), and
//! zero-in-exact-arithmetic gradients (the output bias, under the centred loss) on the scale of
//! the output weight's gradient. `bounds_hold_for_rounded_weights` checks the comparison and the
//! bounds on the CPU alone, against weights rounded to the mantissa of each precision's operands.
//! Without a GPU the GPU test prints `skipped: <test>: <reason>` and passes.

mod common;

use bagssl_autograd::{Device, Tensor};
use bagssl_data::{gather_patches, synthetic, PatchSampler, SyntheticSpec};
use bagssl_kernels::GemmPrecision;
use bagssl_model::{BagSslModel, ModelConfig, ParamKind};
use bagssl_testkit::{at_each_gemm_precision, gpu_or_skip, Report};

const PATCH: usize = 8;
const PER_IMAGE: usize = 4;

fn config() -> ModelConfig {
    ModelConfig::resnet(PATCH, &[4, 8], &[1, 2], 12)
}

/// The patch matrix of 8 images x 4 augmented patches.
fn patches() -> Tensor {
    let store = synthetic(&SyntheticSpec { images: 8, classes: 4, height: 32, width: 32, seed: 3 });
    let images: Vec<u32> = (0..8).collect();
    let specs = PatchSampler::new(7, true).sample(&images, PER_IMAGE, PATCH, store.height, store.width);
    let mut x = vec![0f32; specs.len() * PATCH * PATCH * 3];
    gather_patches(&store, &specs, PATCH, &mut x);
    Tensor::from_vec(&[specs.len(), PATCH * PATCH * 3], x)
}

/// The step's values on the host (batch statistics copied back too).
struct Step {
    h: Vec<f32>,
    z: Vec<f32>,
    parts: [f64; 4],
    grads: Vec<(String, Vec<f32>)>,
    stats: Vec<(Vec<f32>, Vec<f32>)>,
}

fn step(model: &BagSslModel, x: Tensor) -> Step {
    let r = common::record_step(model, x, PER_IMAGE, false);
    let stats = r.stats.iter().map(|(m, v)| (m.to_vec().unwrap(), v.to_vec().unwrap())).collect();
    Step { h: r.h, z: r.z, parts: r.parts, grads: r.grads, stats }
}

fn l2(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

fn compare(tag: &str, prec: GemmPrecision, cpu: &Step, other: &Step) {
    let e = f64::from(prec.tolerance(72));
    let mut r = Report::new(tag);
    r.check_relative("h", &other.h, &cpu.h.iter().map(|&v| v as f64).collect::<Vec<_>>(), 0.0, 6.0 * e);
    r.check_relative("z", &other.z, &cpu.z.iter().map(|&v| v as f64).collect::<Vec<_>>(), 0.0, 6.0 * e);
    r.check_scalar("loss", other.parts[0], cpu.parts[0], 3.0 * e);
    for (i, name) in ["invariance", "variance", "covariance"].iter().enumerate() {
        r.check_scalar(name, other.parts[i + 1], cpu.parts[i + 1], 8.0 * e);
    }
    let out_weight_norm = cpu
        .grads
        .iter()
        .find(|(n, _)| n == "projector.1.weight")
        .map(|(_, g)| l2(g.iter().map(|&v| v as f64)))
        .unwrap();
    for ((name, want), (_, got)) in cpu.grads.iter().zip(&other.grads) {
        let norm = l2(want.iter().map(|&v| v as f64));
        // The output bias's gradient is zero in exact arithmetic: rounding noise on both sides.
        let scale = if name == "projector.1.bias" || name == "projector.0.bias" { out_weight_norm } else { norm };
        r.check_norm(&format!("grad {name}"), got, want, 6.0 * e.sqrt() * scale + 1e-6);
    }
    for (i, ((m0, v0), (m1, v1))) in cpu.stats.iter().zip(&other.stats).enumerate() {
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        r.check_relative(&format!("bn {i} batch mean"), m1, &f(m0), 0.0, 6.0 * e);
        r.check_relative(&format!("bn {i} batch var"), v1, &f(v0), 0.0, 6.0 * e);
    }
    r.finish();
}

#[test]
fn gpu_resnet_step_matches_cpu() {
    let Some(gpu) = gpu_or_skip("gpu_resnet_step_matches_cpu") else { return };
    let cpu_model = BagSslModel::new(config(), 11, &Device::Cpu).unwrap();
    let cpu = step(&cpu_model, patches());
    at_each_gemm_precision(&gpu, |prec| {
        let device = Device::Cuda(gpu.clone());
        let gpu_model = cpu_model.to_device(&device).unwrap();
        let gpu_step = step(&gpu_model, patches().to_device(&device).unwrap());
        compare(&format!("resnet step {prec:?}"), prec, &cpu, &gpu_step);
    });
}

/// `x` rounded to nearest-even with `bits` mantissa bits.
fn round_mantissa(x: f32, bits: u32) -> f32 {
    let drop = 23 - bits;
    let b = x.to_bits();
    let bias = ((b >> drop) & 1) + (1 << (drop - 1)) - 1;
    f32::from_bits(b.wrapping_add(bias) & !((1u32 << drop) - 1))
}

/// The bounds on the CPU alone: the "device" is the CPU with every weight (convolution kernels
/// and Linear weights) rounded to 9 bits (TF32-like) or 7 bits (bf16-like).
#[test]
fn bounds_hold_for_rounded_weights() {
    let model = BagSslModel::new(config(), 11, &Device::Cpu).unwrap();
    let cpu = step(&model, patches());
    for (prec, bits) in [(GemmPrecision::Tf32, 9), (GemmPrecision::Bf16, 7)] {
        let mut proxy = model.to_device(&Device::Cpu).unwrap();
        let names: Vec<String> =
            proxy.params().iter().filter(|p| p.kind == ParamKind::Weight).map(|p| p.name.clone()).collect();
        for n in names {
            let v: Vec<f32> =
                proxy.param(&n).unwrap().value.to_vec().unwrap().iter().map(|&x| round_mantissa(x, bits)).collect();
            proxy.set_tensor(&n, &v).unwrap();
        }
        compare(&format!("resnet step, {bits}-bit weights vs {prec:?} bounds"), prec, &cpu, &step(&proxy, patches()));
    }
}
