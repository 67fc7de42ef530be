//! `embed_bag`, `embed_single_patch`, `embed_whole` and `embed_random` with the model on the GPU (the store resident on the GPU,
//! patches from `patch_grid_fwd_f32` / `patch_embed_fwd_f32`, eval-mode encoder on CUDA) against
//! the same weights on the CPU, at every GEMM precision (bf16, TF32, f32), on square and non-square images with
//! batch sizes that do and do not divide the dataset.
//!
//! Tolerance: `max |gpu - cpu| <= 3e * max |cpu|` with `e = GemmPrecision::tolerance(k)` (bf16:
//! 8e-3; TF32: 2e-3; f32: ~6e-5 at k = 192). The patch matrices agree to 2e-5 (the kernels' own parity
//! bound); each encoder block is a GEMM (relative error ~e of its operands), then BatchNorm with
//! the running statistics and a ReLU, which keep that error relative; two blocks, with margin,
//! give 3e, as for the training forward of `bagssl-model/tests/cpu_gpu_step.rs`. No gradient is
//! involved, so a ReLU input within the error of 0 changes the output by no more than that error.
//! The bag mean only averages errors. The layout (image-major, `hidden` per image) must be equal.
//!
//! Without a GPU every test prints `skipped: <test>: <reason>` and passes (fails with
//! `BAGSSL_REQUIRE_GPU=1`).

use bagssl_autograd::Device;
use bagssl_data::{synthetic, ImageStore, SyntheticSpec, Views};
use bagssl_eval::{embed_bag, embed_random, embed_single_patch, embed_whole, Grid};
use bagssl_model::{BagSslModel, ModelConfig};
use bagssl_testkit::{at_each_gemm_precision, gpu_or_skip};

const PATCH: usize = 8;
const HIDDEN: usize = 64;

/// A model whose BatchNorm running statistics are not the identity (eval-mode BN does work).
fn model() -> BagSslModel {
    let cfg = ModelConfig::mlp(PATCH, 2, HIDDEN, 48);
    let mut m = BagSslModel::new(cfg, 21, &Device::Cpu).unwrap();
    let mut rng = bagssl_data::SeededRng::new(22);
    for i in 0..2 {
        let mean: Vec<f32> = (0..HIDDEN).map(|_| 0.4 * (rng.uniform() - 0.5)).collect();
        let var: Vec<f32> = (0..HIDDEN).map(|_| 0.3 + rng.uniform()).collect();
        m.set_tensor(&format!("encoder.{i}.bn.running_mean"), &mean).unwrap();
        m.set_tensor(&format!("encoder.{i}.bn.running_var"), &var).unwrap();
    }
    m
}

/// (store, stride, batch sizes): square 32x32 with a 13x13 grid, non-square 20x28 with a 5x7 grid.
fn cases() -> Vec<(ImageStore, usize, [usize; 2])> {
    vec![
        (synthetic(&SyntheticSpec { images: 23, classes: 3, height: 32, width: 32, seed: 6 }), 2, [5, 23]),
        (synthetic(&SyntheticSpec { images: 10, classes: 2, height: 20, width: 28, seed: 7 }), 3, [4, 64]),
    ]
}

/// One `OK` / `NOT OK` line; returns whether it held.
fn check(name: &str, got: &[f32], want: &[f32], rtol: f64) -> bool {
    if got.len() != want.len() {
        println!("NOT OK {name:<52} {} values vs {}", got.len(), want.len());
        return false;
    }
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let (mut d, mut at) = (0f64, 0);
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let x = (f64::from(a) - f64::from(b)).abs();
        if x > d || x.is_nan() {
            (d, at) = (if x.is_nan() { f64::INFINITY } else { x }, i);
        }
    }
    let bound = rtol * scale;
    let ok = d <= bound;
    println!(
        "{} {name:<52} max diff {d:.3e} at image {} dim {} (bound {bound:.3e}, max |cpu| {scale:.3e})",
        if ok { "OK    " } else { "NOT OK" },
        at / HIDDEN,
        at % HIDDEN
    );
    ok
}

type Embed = fn(&BagSslModel, &ImageStore, Grid, usize) -> bagssl_eval::Result<Vec<f32>>;

fn compare(test: &str, what: &str, embed: Embed) {
    let Some(gpu) = gpu_or_skip(test) else { return };
    let cpu_model = model();
    let gpu_model = cpu_model.to_device(&Device::Cuda(gpu.clone())).unwrap();
    let mut failures = Vec::new();
    at_each_gemm_precision(&gpu, |prec| {
        let rtol = 3.0 * f64::from(prec.tolerance(PATCH * PATCH * 3));
        for (store, stride, batches) in cases() {
            let want = embed(&cpu_model, &store, Grid { patch: PATCH, stride }, batches[0]).unwrap();
            assert_eq!(want.len(), store.len() * HIDDEN);
            for b in batches {
                let got = embed(&gpu_model, &store, Grid { patch: PATCH, stride }, b).unwrap();
                let name =
                    format!("{what} {prec:?} {}x{}x{} s={stride} batch {b}", store.len(), store.height, store.width);
                if !check(&name, &got, &want, rtol) {
                    failures.push(name);
                }
            }
        }
    });
    assert!(failures.is_empty(), "GPU embeddings differ from the CPU's: {failures:?}");
}

#[test]
fn gpu_embed_bag_matches_cpu() {
    compare("gpu_embed_bag_matches_cpu", "embed_bag", embed_bag);
}

#[test]
fn gpu_embed_single_patch_matches_cpu() {
    compare("gpu_embed_single_patch_matches_cpu", "embed_single_patch", embed_single_patch);
}

#[test]
fn gpu_embed_whole_matches_cpu() {
    compare("gpu_embed_whole_matches_cpu", "embed_whole", |m, s, _, b| embed_whole(m, s, b));
}

/// The draws go image by image, so every batch size sees the same boxes.
#[test]
fn gpu_embed_random_matches_cpu() {
    compare("gpu_embed_random_matches_cpu", "embed_random", |m, s, _, b| {
        embed_random(m, s, &Views { scale: Some([0.2, 1.0]), ..Views::default() }, 6, 3, b)
    });
}

/// A grid of larger patches, each resized to the input side by the patch kernel.
#[test]
fn gpu_embed_resized_grid_matches_cpu() {
    compare("gpu_embed_resized_grid_matches_cpu", "embed_bag (resized grid)", |m, s, g, b| {
        embed_bag(m, s, Grid { patch: g.patch + 3, stride: g.stride }, b)
    });
}
