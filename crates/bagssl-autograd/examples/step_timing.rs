//! Times one training step's forward + backward through the tape on the CPU, for the target
//! workload of the project's CPU benchmark: 32 images x 16 patches of 8x8x3 (N = 512 rows of 192),
//! encoder 192 -> 512 -> 512 (Linear-BN-ReLU x2), projector 512 -> 512 (Linear-BN-ReLU) -> 512
//! (Linear), bag-VICReg with D = 512. PyTorch takes 67 ms for the whole step (with patch sampling
//! and the optimizer) on this project's 2-core CPU machines.
//!
//!     cargo run --release -p bagssl-autograd --example step_timing [-- iters]
//!
//! Napkin math: the step is 11 GEMMs of 2 N in out flops (4 forward, 4 weight gradients, 3 input
//! gradients: the patches need none) plus the two N D^2 GEMMs of bag-VICReg: 3.15 GFLOP. One
//! Zen 4 core does ~105 GFLOP/s in `gemm`, so ~30 ms on one core, ~15 ms on two. The
//! elementwise passes move ~40 MB through L2/L3: well under a millisecond.
//! Then the primitives alone, to see where the time goes.

use std::time::Instant;

use bagssl_autograd::{ops, Tape, Tensor, VicregWeights};

const N_IMAGES: usize = 32;
const PER_IMAGE: usize = 16;
const IN: usize = 192;
const HIDDEN: usize = 512;
const PROJ: usize = 512;

/// Deterministic pseudo-random values in [-scale, scale) (xorshift; no rand dependency needed).
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

struct Layer {
    w: Tensor,
    b: Tensor,
    gamma: Tensor,
    beta: Tensor,
}

impl Layer {
    fn new(inp: usize, out: usize, seed: u64) -> Layer {
        let bound = 1.0 / (inp as f32).sqrt(); // PyTorch's default Linear init range
        Layer {
            w: Tensor::from_vec(&[out, inp], values(out * inp, seed, bound)),
            b: Tensor::from_vec(&[out], values(out, seed + 1, bound)),
            gamma: Tensor::from_vec(&[out], vec![1.0; out]),
            beta: Tensor::from_vec(&[out], vec![0.0; out]),
        }
    }
}

/// Median milliseconds of `iters` runs of `f` after 3 warm-up runs.
fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[iters / 2]
}

fn main() {
    let iters: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let n = N_IMAGES * PER_IMAGE;
    let x = Tensor::from_vec(&[n, IN], values(n * IN, 1, 1.0));
    let layers = [Layer::new(IN, HIDDEN, 10), Layer::new(HIDDEN, HIDDEN, 20), Layer::new(HIDDEN, PROJ, 30)];
    let last = Layer::new(PROJ, PROJ, 40);
    let w = VicregWeights::default();

    let step = || {
        let mut tape = Tape::new();
        let mut h = tape.input(x.try_clone().unwrap(), false);
        let mut params = Vec::new();
        for l in &layers {
            let (wv, bv) = (tape.leaf(&l.w, true), tape.leaf(&l.b, true));
            let (g, be) = (tape.leaf(&l.gamma, true), tape.leaf(&l.beta, true));
            params.extend([wv, bv, g, be]);
            let y = tape.linear(h, wv, Some(bv)).unwrap();
            h = tape.batch_norm(y, g, be, 1e-5, true).unwrap();
        }
        let (wv, bv) = (tape.leaf(&last.w, true), tape.leaf(&last.b, true));
        params.extend([wv, bv]);
        let z = tape.linear(h, wv, Some(bv)).unwrap();
        let (loss, parts) = tape.bag_vicreg(z, PER_IMAGE, w).unwrap();
        let grads = tape.backward(loss).unwrap();
        assert!(params.iter().all(|&p| grads.get(p).is_some()));
        parts.loss
    };

    let linear_flops = 2.0 * n as f64 * (IN * HIDDEN + HIDDEN * HIDDEN + HIDDEN * PROJ + PROJ * PROJ) as f64;
    let dx_flops = 2.0 * n as f64 * (HIDDEN * HIDDEN + HIDDEN * PROJ + PROJ * PROJ) as f64;
    let vicreg_flops = 4.0 * n as f64 * (PROJ * PROJ) as f64;
    let flops = 2.0 * linear_flops + dx_flops + vicreg_flops;

    println!("loss at init: {:.4}", step());
    let ms = median_ms(iters, || {
        step();
    });
    println!(
        "step (forward + backward, N = {n}, {IN} -> {HIDDEN} -> {HIDDEN} -> {PROJ} -> {PROJ}): {ms:.2} ms median of {iters}, \
         {:.1} GFLOP/s ({:.2} GFLOP), {} rayon threads",
        flops / ms / 1e6,
        flops / 1e9,
        rayon::current_num_threads()
    );

    // The primitives alone, on the shapes of the step.
    println!("\n{:<40} {:>9} {:>8}", "primitive", "ms", "GFLOP/s");
    let h = Tensor::from_vec(&[n, HIDDEN], values(n * HIDDEN, 2, 1.0));
    let dy = Tensor::from_vec(&[n, HIDDEN], values(n * HIDDEN, 3, 1.0));
    let l = &layers[1];
    let gemm = 2.0 * (n * HIDDEN * HIDDEN) as f64;
    let row = |name: &str, flops: f64, ms: f64| {
        let rate = if flops > 0.0 { format!("{:8.1}", flops / ms / 1e6) } else { String::new() };
        println!("{name:<40} {ms:9.3} {rate}");
    };
    row(
        "linear_fwd 512x512 (x W^T + b)",
        gemm,
        median_ms(iters, || drop(ops::linear_fwd(&h, &l.w, Some(&l.b)).unwrap())),
    );
    row("matmul dy W (dx)", gemm, median_ms(iters, || drop(ops::matmul(&dy, &l.w, false, false).unwrap())));
    row("matmul dy^T x (dW)", gemm, median_ms(iters, || drop(ops::matmul(&dy, &h, true, false).unwrap())));
    let gemm0 = 2.0 * (n * IN * HIDDEN) as f64;
    row(
        "linear_fwd 192->512",
        gemm0,
        median_ms(iters, || drop(ops::linear_fwd(&x, &layers[0].w, Some(&layers[0].b)).unwrap())),
    );
    row("matmul dy^T x (dW, 512x192)", gemm0, median_ms(iters, || drop(ops::matmul(&dy, &x, true, false).unwrap())));
    let f = ops::bn_train_fwd(&h, &l.gamma, &l.beta, 1e-5, true).unwrap();
    row(
        "bn_train_fwd + relu",
        0.0,
        median_ms(iters, || drop(ops::bn_train_fwd(&h, &l.gamma, &l.beta, 1e-5, true).unwrap())),
    );
    row(
        "bn_train_bwd + relu",
        0.0,
        median_ms(iters, || drop(ops::bn_train_bwd(&dy, &h, &f.y, &l.gamma, &f.mean, &f.invstd, true).unwrap())),
    );
    row("sum_rows (db)", 0.0, median_ms(iters, || drop(ops::sum_rows(&dy).unwrap())));
    row("vicreg_fwd_bwd", vicreg_flops, median_ms(iters, || drop(ops::vicreg_fwd_bwd(&h, PER_IMAGE, w).unwrap())));
    let mut acc = dy.try_clone().unwrap();
    row("axpy_ 512x512", 0.0, median_ms(iters, || ops::axpy_(&mut acc, 1.0, &dy).unwrap()));
}
