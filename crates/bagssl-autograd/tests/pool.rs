//! The recycled output buffers (`cpu::pool`) never leak into results: every op that takes its
//! output from the pool gives bit-identical results when the pool is full of NaN-filled buffers
//! of exactly the lengths it asks for. A kernel that read its output before writing all of it
//! would turn up NaNs here. One test function, because the pool is process-wide.

mod common;

use bagssl_autograd::cpu::pool;
use bagssl_autograd::{ops, set_cpu_matmul_precision, BnEval, CpuMatmulPrecision, Tensor, VicregWeights};
use common::{bn_args, host, rand_tensor, rng};

/// Images x patches and widths big enough that every output is at least `pool::MIN_LEN` long,
/// and `d` makes the bag-VICReg Gram matrix take its blocked path (three 128-column blocks).
const IMAGES: usize = 6;
const PATCHES: usize = 16;
const N: usize = IMAGES * PATCHES;
const K: usize = 50;
const D: usize = 300;

/// Every op that takes its output from the pool, on fixed inputs; the outputs, in order.
fn run_all() -> Vec<Vec<f32>> {
    let mut r = rng(7);
    let x = rand_tensor(&mut r, &[N, K]);
    let w = rand_tensor(&mut r, &[D, K]);
    let b = rand_tensor(&mut r, &[D]);
    let gamma = rand_tensor(&mut r, &[D]);
    let dy = rand_tensor(&mut r, &[N, D]);
    let mut out = Vec::new();
    let mut keep = |t: &Tensor| out.push(host(t));

    keep(&ops::matmul(&x, &w, false, true).unwrap());
    keep(&ops::matmul(&dy, &x, true, false).unwrap());
    let h = ops::linear_fwd(&x, &w, Some(&b)).unwrap();
    keep(&h);
    keep(&ops::linear_fwd(&x, &w, None).unwrap());
    keep(&ops::bias_add(&h, &b).unwrap());
    let bn = ops::bn_train_fwd(bn_args(&h, Some(&b), &gamma, &b, true)).unwrap();
    keep(&bn.y);
    let g = ops::bn_train_bwd(bn.backward_args(bn_args(&h, Some(&b), &gamma, &b, true), &dy)).unwrap();
    keep(&g.dx);
    keep(&g.dgamma);
    keep(&g.dbeta);
    keep(g.dbias.as_ref().expect("a bias gives dbias"));
    let var = Tensor::from_vec(&[D], host(&bn.var_unbiased));
    keep(
        &ops::bn_eval_fwd(
            &h,
            BnEval { running_mean: &bn.mean, running_var: &var, gamma: &gamma, beta: &b, eps: 1e-5, relu: true },
        )
        .unwrap(),
    );
    keep(
        &ops::linear_bn_eval(
            &x,
            &w,
            None,
            BnEval { running_mean: &bn.mean, running_var: &var, gamma: &gamma, beta: &b, eps: 1e-5, relu: true },
        )
        .unwrap(),
    );
    keep(&ops::relu_fwd(&h).unwrap());
    keep(&ops::relu_bwd(&dy, &h).unwrap());
    let g = ops::group_mean(&h, 2).unwrap();
    keep(&g);
    keep(&ops::group_mean_bwd(&g, 2).unwrap());
    let (parts, dz) = ops::vicreg_fwd_bwd(&h, PATCHES, VicregWeights::default()).unwrap();
    keep(&dz);
    out.push(vec![parts.loss as f32, parts.invariance as f32, parts.variance as f32, parts.covariance as f32]);
    out
}

/// Lengths the ops above ask the pool for (outputs, bag-VICReg's temporaries, the Gram blocks).
const LENS: [usize; 7] = [N * D, D * K, N / 2 * D, D * D, 128 * 128, 128 * (D - 256), (D - 256) * (D - 256)];

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|o| o.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn poisoned_pool_buffers_never_reach_results() {
    for precision in [CpuMatmulPrecision::F32, CpuMatmulPrecision::Bf16] {
        set_cpu_matmul_precision(precision);
        pool::clear();
        let clean = run_all();
        assert!(clean.iter().flatten().all(|x| x.is_finite()), "{precision:?}: non-finite output on clean buffers");

        pool::clear();
        for &len in LENS.iter().filter(|&&l| l >= pool::MIN_LEN) {
            for _ in 0..6 {
                pool::give(vec![f32::NAN; len]);
            }
        }
        // The mechanism itself: a take of a pooled length hands back a stale (here NaN) buffer.
        let probe = pool::take(N * D);
        assert!(probe.iter().all(|x| x.is_nan()), "take did not reuse a pooled buffer");
        pool::give(probe);
        assert!(pool::pooled_bytes() > 0);

        let poisoned = run_all();
        assert_eq!(bits(&poisoned), bits(&clean), "{precision:?}: a pooled buffer's stale contents reached a result");

        // The pool keeps what the ops dropped, within its bound, and `clear` empties it.
        assert!(pool::pooled_bytes() <= pool::MAX_BYTES);
        pool::clear();
        assert_eq!(pool::pooled_bytes(), 0);
    }
    set_cpu_matmul_precision(CpuMatmulPrecision::F32);

    // Bounds: short buffers are not kept; past MAX_BYTES the oldest go. (calloc'd pages that are
    // never touched: these cost no memory.)
    pool::give(vec![1.0; pool::MIN_LEN - 1]);
    assert_eq!(pool::pooled_bytes(), 0);
    let half = pool::MAX_BYTES / 8;
    for _ in 0..3 {
        pool::give(vec![0.0; half]);
    }
    assert_eq!(pool::pooled_bytes(), 2 * half * 4, "the oldest of three half-MAX_BYTES buffers is evicted");
    pool::give(vec![0.0; pool::MAX_BYTES / 4 + 1]);
    assert_eq!(pool::pooled_bytes(), 2 * half * 4, "a buffer over MAX_BYTES is not kept");
    pool::clear();
}
