//! Parity of every CUDA primitive ([`bagssl_autograd::cuda`] through [`ops`]) with its CPU
//! kernel ([`bagssl_autograd::cpu`]) on random inputs of awkward sizes.
//!
//! Without a usable GPU each test prints `skipped: <test>: <reason>` and passes; with
//! `BAGSSL_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it) it fails instead.
//!
//! Tolerances: `max |gpu - cpu| <= rtol * max |cpu| + atol` per tensor.
//! - Elementwise maps (ReLU, bias, axpy, scale, EMA, AdamW, group-mean backward): the same f32
//!   operations, so 1e-6 relative (FMA contraction may differ by an ulp).
//! - Reductions (column sums, group means, BatchNorm statistics and gradients, dot): f32 tree
//!   sums on the GPU vs f64 or sequential f32 on the CPU: ~sqrt(rows) ulps, bound 1e-5 relative
//!   (1e-4 for BatchNorm backward, whose dx is a difference of sums).
//! - GEMMs (matmul, the two products of bag-VICReg): plain f32 (`GemmPrecision::F32`) 1e-5;
//!   TF32 rounds operands to 10 mantissa bits, ~5e-4 relative per product, so 5e-3 of the
//!   output scale for matmul and 1e-2 for bag-VICReg's terms and gradient; bf16 (the default)
//!   keeps 8 bits, 4x that error, so 2e-2 and 4e-2.

mod common;

use bagssl_autograd::{ops, AdamW, BnEval, Device, Tensor, VicregWeights};
use bagssl_kernels::GemmPrecision;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::bn_args;

fn gpu(test: &str) -> Option<(Device, std::sync::Arc<bagssl_kernels::Gpu>)> {
    bagssl_testkit::gpu_or_skip(test).map(|g| (Device::Cuda(g.clone()), g))
}

/// The GPU (or a printed skip), a seeded generator and the report of a parity test.
fn setup(test: &str, seed: u64, title: &str) -> Option<(Device, ChaCha8Rng, Report)> {
    let (dev, _) = gpu(test)?;
    Some((dev, ChaCha8Rng::seed_from_u64(seed), Report::new(title)))
}

fn uniform(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn rand_t(r: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, uniform(r, shape.iter().product(), -1.0, 1.0))
}

fn on(t: &Tensor, d: &Device) -> Tensor {
    t.to_device(d).expect("copy to device")
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec().expect("host copy")
}

/// llm.c-style report: one `OK` / `NOT OK` line per tensor, panic at the end on any mismatch.
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn new(title: &str) -> Report {
        println!("== {title}");
        Report { failures: Vec::new() }
    }

    fn check(&mut self, name: &str, gpu: &Tensor, cpu: &Tensor, rtol: f64, atol: f64) {
        assert_eq!(gpu.shape(), cpu.shape(), "{name}: shapes");
        let (g, c) = (host(gpu), host(cpu));
        let scale = c.iter().fold(0f64, |m, &w| m.max(f64::from(w).abs()));
        let mut diff = 0f64;
        let mut worst = 0;
        for (i, (&a, &b)) in g.iter().zip(&c).enumerate() {
            let d = (f64::from(a) - f64::from(b)).abs();
            if d > diff || !d.is_finite() {
                diff = if d.is_finite() { d } else { f64::INFINITY };
                worst = i;
            }
        }
        let bound = rtol * scale + atol;
        let ok = diff <= bound;
        println!(
            "{} {name:<34} max diff {diff:.3e} at {worst} (bound {bound:.3e}, max |cpu| {scale:.3e})",
            if ok { "OK    " } else { "NOT OK" }
        );
        if !ok {
            let first: Vec<String> = g
                .iter()
                .zip(&c)
                .enumerate()
                .filter(|(_, (a, b))| (f64::from(**a) - f64::from(**b)).abs() > bound)
                .take(5)
                .map(|(i, (a, b))| format!("[{i}] gpu {a} cpu {b}"))
                .collect();
            self.failures.push(format!("{name}: max diff {diff:.3e} > {bound:.3e}; first: {}", first.join(", ")));
        }
    }

    fn check_scalar(&mut self, name: &str, gpu: f64, cpu: f64, rtol: f64, atol: f64) {
        let diff = (gpu - cpu).abs();
        let bound = rtol * cpu.abs() + atol;
        let ok = diff <= bound;
        println!(
            "{} {name:<34} gpu {gpu:.9e} cpu {cpu:.9e} (diff {diff:.3e}, bound {bound:.3e})",
            if ok { "OK    " } else { "NOT OK" }
        );
        if !ok {
            self.failures.push(format!("{name}: gpu {gpu} vs cpu {cpu}"));
        }
    }

    fn finish(self) {
        if self.failures.is_empty() {
            println!("overall: OK");
        } else {
            println!("overall: NOT OK");
            panic!("{} mismatches:\n{}", self.failures.len(), self.failures.join("\n"));
        }
    }
}

/// matmul and bag-VICReg at both GEMM precisions. One test sets the precision, so no other test
/// of this binary sees it change (the others use no GEMM).
#[test]
fn gemm_backed_ops_match_cpu() {
    let Some((dev, g)) = gpu("gemm_backed_ops_match_cpu") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let mut rep = Report::new("matmul + bag-VICReg, CUDA vs CPU");
    let before = g.gemm_precision();
    for (prec, mm_tol, vic_tol) in
        [(GemmPrecision::F32, 1e-5, 1e-4), (GemmPrecision::Tf32, 5e-3, 1e-2), (GemmPrecision::Bf16, 2e-2, 4e-2)]
    {
        g.set_gemm_precision(prec);
        for &(m, k, n) in &[(37, 29, 41), (1, 1, 1), (5, 300, 3), (256, 192, 512)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = rand_t(&mut r, &if ta { [k, m] } else { [m, k] });
                let b = rand_t(&mut r, &if tb { [n, k] } else { [k, n] });
                let want = ops::matmul(&a, &b, ta, tb).unwrap();
                let got = ops::matmul(&on(&a, &dev), &on(&b, &dev), ta, tb).unwrap();
                rep.check(&format!("matmul {prec:?} {m}x{k}x{n} t{}{}", ta as u8, tb as u8), &got, &want, mm_tol, 0.0);
            }
        }
        // Awkward, then the training size (B = 256 images x n = 16 patches, D = 2048).
        for &(rows, d, n) in &[(39, 29, 3), (36, 7, 36), (64, 33, 1), (4096, 2048, 16)] {
            // Every third column has a std above 1, so the variance hinge is active on some only.
            let z: Vec<f32> =
                (0..rows * d).map(|i| r.random_range(-1.0f32..1.0) * if i % d % 3 == 0 { 3.0 } else { 1.0 }).collect();
            let z = Tensor::from_vec(&[rows, d], z);
            let w = VicregWeights::default();
            let (pc, dzc) = ops::vicreg_fwd_bwd(&z, n, w).unwrap();
            let (pg, dzg) = ops::vicreg_fwd_bwd(&on(&z, &dev), n, w).unwrap();
            let tag = format!("vicreg {prec:?} {rows}x{d}/{n}");
            rep.check_scalar(&format!("{tag} loss"), pg.loss, pc.loss, vic_tol, 1e-9);
            rep.check_scalar(&format!("{tag} invariance"), pg.invariance, pc.invariance, vic_tol, 1e-9);
            rep.check_scalar(&format!("{tag} variance"), pg.variance, pc.variance, vic_tol, 1e-9);
            rep.check_scalar(&format!("{tag} covariance"), pg.covariance, pc.covariance, vic_tol, 1e-9);
            rep.check(&format!("{tag} dz"), &dzg, &dzc, vic_tol, 0.0);
        }
    }
    g.set_gemm_precision(before);
    rep.finish();
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some((dev, mut r, mut rep)) = setup("elementwise_ops_match_cpu", 2, "elementwise, CUDA vs CPU") else { return };
    for &(rows, cols) in &[(37, 29), (1, 1), (1000, 3), (513, 2048)] {
        let tag = format!("{rows}x{cols}");
        let x = rand_t(&mut r, &[rows, cols]);
        let b = rand_t(&mut r, &[cols]);
        let (xg, bg) = (on(&x, &dev), on(&b, &dev));
        rep.check(&format!("relu_fwd {tag}"), &ops::relu_fwd(&xg).unwrap(), &ops::relu_fwd(&x).unwrap(), 0.0, 0.0);
        let dy = rand_t(&mut r, &[rows, cols]);
        rep.check(
            &format!("relu_bwd {tag}"),
            &ops::relu_bwd(&on(&dy, &dev), &xg).unwrap(),
            &ops::relu_bwd(&dy, &x).unwrap(),
            0.0,
            0.0,
        );
        rep.check(
            &format!("bias_add {tag}"),
            &ops::bias_add(&xg, &bg).unwrap(),
            &ops::bias_add(&x, &b).unwrap(),
            1e-6,
            0.0,
        );
        rep.check(&format!("sum_rows {tag}"), &ops::sum_rows(&xg).unwrap(), &ops::sum_rows(&x).unwrap(), 1e-5, 1e-5);
        let w = rand_t(&mut r, &[rows, cols]);
        let (dg, dc) = (ops::dot(&xg, &on(&w, &dev)).unwrap(), ops::dot(&x, &w).unwrap());
        rep.check_scalar(&format!("dot {tag}"), dg, dc, 1e-6, 1e-9);
        let (mut yg, mut yc) = (on(&w, &dev), w.try_clone().unwrap());
        ops::axpy_(&mut yg, -0.37, &xg).unwrap();
        ops::axpy_(&mut yc, -0.37, &x).unwrap();
        rep.check(&format!("axpy_ {tag}"), &yg, &yc, 1e-6, 0.0);
        ops::scale_(&mut yg, 1.7).unwrap();
        ops::scale_(&mut yc, 1.7).unwrap();
        rep.check(&format!("scale_ {tag}"), &yg, &yc, 1e-6, 0.0);
        let (mut eg, mut ec) = (on(&b, &dev), b.try_clone().unwrap());
        let batch = rand_t(&mut r, &[cols]);
        ops::ema_(&mut eg, &on(&batch, &dev), 0.1).unwrap();
        ops::ema_(&mut ec, &batch, 0.1).unwrap();
        rep.check(&format!("ema_ {tag}"), &eg, &ec, 1e-6, 0.0);
    }
    for &(groups, n, cols) in &[(13, 3, 29), (1, 1, 1), (256, 16, 64)] {
        let tag = format!("{groups}x{n}x{cols}");
        let x = rand_t(&mut r, &[groups * n, cols]);
        let xg = on(&x, &dev);
        rep.check(
            &format!("group_mean {tag}"),
            &ops::group_mean(&xg, n).unwrap(),
            &ops::group_mean(&x, n).unwrap(),
            1e-5,
            1e-6,
        );
        let dy = rand_t(&mut r, &[groups, cols]);
        rep.check(
            &format!("group_mean_bwd {tag}"),
            &ops::group_mean_bwd(&on(&dy, &dev), n).unwrap(),
            &ops::group_mean_bwd(&dy, n).unwrap(),
            1e-6,
            0.0,
        );
    }
    rep.finish();
}

#[test]
fn batchnorm_matches_cpu() {
    let Some((dev, mut r, mut rep)) = setup("batchnorm_matches_cpu", 3, "BatchNorm, CUDA vs CPU") else { return };
    // The backward gets the CPU's forward results on both devices, and reads its ReLU mask from
    // that y (`MaskSource::Output`, not recomputed from x with the CPU's statistics, which could flip
    // an element within rounding of 0); bagssl-kernels' tests show the two masks equal on the GPU's
    // own forward. So the CUDA backward runs through that launcher variant, not `ops`.
    for &(rows, cols) in &[(37, 29), (2, 1), (4096, 96), (300, 2048)] {
        for relu in [false, true] {
            let tag = format!("{rows}x{cols} relu={relu}");
            // Non-zero means and scales so the statistics matter.
            let x = Tensor::from_vec(
                &[rows, cols],
                (0..rows * cols)
                    .map(|i| r.random_range(-1.0f32..1.0) * (1.0 + (i % cols) as f32 * 0.1) + 0.3)
                    .collect(),
            );
            let gamma = Tensor::from_vec(&[cols], uniform(&mut r, cols, 0.5, 1.5));
            let beta = rand_t(&mut r, &[cols]);
            let (xg, gg, bg) = (on(&x, &dev), on(&gamma, &dev), on(&beta, &dev));
            let c = ops::bn_train_fwd(bn_args(&x, None, &gamma, &beta, relu)).unwrap();
            let g = ops::bn_train_fwd(bn_args(&xg, None, &gg, &bg, relu)).unwrap();
            rep.check(&format!("bn_train_fwd y {tag}"), &g.y, &c.y, 1e-5, 1e-5);
            rep.check(&format!("bn_train_fwd mean {tag}"), &g.mean, &c.mean, 1e-5, 1e-6);
            rep.check(&format!("bn_train_fwd invstd {tag}"), &g.invstd, &c.invstd, 1e-5, 0.0);
            rep.check(&format!("bn_train_fwd var_unbiased {tag}"), &g.var_unbiased, &c.var_unbiased, 1e-5, 0.0);
            // The backward gets the CPU's forward results on both devices, so the ReLU masks agree.
            let dy = rand_t(&mut r, &[rows, cols]);
            let bc = ops::bn_train_bwd(c.backward_args(bn_args(&x, None, &gamma, &beta, relu), &dy)).unwrap();
            let dyg = on(&dy, &dev);
            let (yg, mg, ig) = (on(&c.y, &dev), on(&c.mean, &dev), on(&c.invstd, &dev));
            let gb = bn_bwd_mask_from_y([&dyg, &xg, &yg, &gg, &bg, &mg, &ig], None, relu);
            rep.check(&format!("bn_train_bwd dx {tag}"), &gb.dx, &bc.dx, 1e-4, 1e-6);
            rep.check(&format!("bn_train_bwd dgamma {tag}"), &gb.dgamma, &bc.dgamma, 1e-4, 1e-5);
            rep.check(&format!("bn_train_bwd dbeta {tag}"), &gb.dbeta, &bc.dbeta, 1e-5, 1e-5);
            // The Linear bias folded in (x is then the product without its bias). dbias: the column
            // sums of dx cancel to ~0, so the bound is at the scale of the summed magnitudes.
            let bias = rand_t(&mut r, &[cols]);
            let bgpu = on(&bias, &dev);
            let cf = ops::bn_train_fwd(bn_args(&x, Some(&bias), &gamma, &beta, relu)).unwrap();
            let gf = ops::bn_train_fwd(bn_args(&xg, Some(&bgpu), &gg, &bg, relu)).unwrap();
            rep.check(&format!("bn_train_fwd+bias y {tag}"), &gf.y, &cf.y, 1e-5, 1e-5);
            rep.check(&format!("bn_train_fwd+bias mean {tag}"), &gf.mean, &cf.mean, 1e-5, 1e-6);
            rep.check(&format!("bn_train_fwd+bias invstd {tag}"), &gf.invstd, &cf.invstd, 1e-5, 0.0);
            let cb = ops::bn_train_bwd(cf.backward_args(bn_args(&x, Some(&bias), &gamma, &beta, relu), &dy)).unwrap();
            let (yg, mg, ig) = (on(&cf.y, &dev), on(&cf.mean, &dev), on(&cf.invstd, &dev));
            let gb = bn_bwd_mask_from_y([&dyg, &xg, &yg, &gg, &bg, &mg, &ig], Some(&bgpu), relu);
            rep.check(&format!("bn_train_bwd+bias dx {tag}"), &gb.dx, &cb.dx, 1e-4, 1e-6);
            rep.check(&format!("bn_train_bwd+bias dgamma {tag}"), &gb.dgamma, &cb.dgamma, 1e-4, 1e-5);
            let mag: f64 = host(&cb.dx).iter().map(|v| v.abs() as f64).fold(0.0, f64::max) * rows as f64;
            let (dbias_g, dbias_c) = (gb.dbias.unwrap(), cb.dbias.unwrap());
            rep.check(&format!("bn_train_bwd+bias dbias {tag}"), &dbias_g, &dbias_c, 0.0, 1e-6 * mag + 1e-30);
            let rm = rand_t(&mut r, &[cols]);
            let rv = Tensor::from_vec(&[cols], uniform(&mut r, cols, 0.1, 2.0));
            rep.check(
                &format!("bn_eval_fwd {tag}"),
                &ops::bn_eval_fwd(
                    &xg,
                    BnEval {
                        running_mean: &on(&rm, &dev),
                        running_var: &on(&rv, &dev),
                        gamma: &gg,
                        beta: &bg,
                        eps: 1e-5,
                        relu,
                    },
                )
                .unwrap(),
                &ops::bn_eval_fwd(
                    &x,
                    BnEval { running_mean: &rm, running_var: &rv, gamma: &gamma, beta: &beta, eps: 1e-5, relu },
                )
                .unwrap(),
                1e-5,
                1e-6,
            );
        }
    }
    rep.finish();
}

/// The CUDA BatchNorm backward of `[dy, x, y, gamma, beta, mean, invstd]` (CUDA tensors) with its
/// ReLU mask read from y: `bagssl_kernels::bn_train_bwd_f32_variant` with `MaskSource::Output`.
fn bn_bwd_mask_from_y(t: [&Tensor; 7], bias: Option<&Tensor>, relu: bool) -> bagssl_autograd::BnBackward {
    use bagssl_kernels as k;
    let [dy, x, y, gamma, beta, mean, invstd] = t.map(cuda_buf);
    let (rows, cols) = x_dims(t[1]);
    let fwd = k::BnTrainArgs { x, bias: bias.map(cuda_buf), gamma, beta, eps: 1e-5, relu };
    let args = k::BnBackwardArgs { fwd, dy, y, mean, invstd };
    let v = k::BnVariant { mask: k::MaskSource::Output, ..k::BnVariant::LIBRARY };
    let g = k::bn_train_bwd_f32_variant(&args, rows, v).expect("CUDA BatchNorm backward");
    bagssl_autograd::BnBackward {
        dx: Tensor::from_gpu(t[1].shape(), g.dx),
        dgamma: Tensor::from_gpu(&[cols], g.dgamma),
        dbeta: Tensor::from_gpu(&[cols], g.dbeta),
        dbias: g.dbias.map(|d| Tensor::from_gpu(&[cols], d)),
    }
}

fn cuda_buf(t: &Tensor) -> &bagssl_kernels::GpuBuf {
    match t.storage() {
        bagssl_autograd::Storage::Cuda(b) => b,
        bagssl_autograd::Storage::Cpu(_) => panic!("not a CUDA tensor"),
    }
}

fn x_dims(x: &Tensor) -> (usize, usize) {
    (x.shape()[0], x.shape()[1])
}

#[test]
fn adamw_matches_cpu() {
    let Some((dev, mut r, mut rep)) = setup("adamw_matches_cpu", 4, "AdamW, CUDA vs CPU") else { return };
    for &n in &[1usize, 37 * 29, 100_003] {
        let p = rand_t(&mut r, &[n]);
        let (mut pc, mut mc, mut vc) =
            (p.try_clone().unwrap(), Tensor::from_vec(&[n], vec![0.0; n]), Tensor::from_vec(&[n], vec![0.0; n]));
        let (mut pg, mut mg, mut vg) = (on(&pc, &dev), on(&mc, &dev), on(&vc, &dev));
        for step in 1..=5 {
            let h = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05, step };
            let grad = rand_t(&mut r, &[n]);
            ops::adamw_(&mut pc, &grad, &mut mc, &mut vc, h).unwrap();
            ops::adamw_(&mut pg, &on(&grad, &dev), &mut mg, &mut vg, h).unwrap();
        }
        rep.check(&format!("adamw param n={n}"), &pg, &pc, 1e-6, 1e-7);
        rep.check(&format!("adamw m n={n}"), &mg, &mc, 1e-6, 0.0);
        rep.check(&format!("adamw v n={n}"), &vg, &vc, 1e-6, 0.0);
    }
    rep.finish();
}

#[test]
fn tensors_round_trip_through_the_gpu() {
    let Some((dev, _)) = gpu("tensors_round_trip_through_the_gpu") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for shape in [&[0usize][..], &[1], &[37, 29]] {
        let t = rand_t(&mut r, shape);
        let g = on(&t, &dev);
        assert!(g.is_cuda());
        assert_eq!(host(&g), host(&t));
        assert_eq!(host(&g.try_clone().unwrap()), host(&t));
        let z = Tensor::zeros(shape, &dev).unwrap();
        assert!(host(&z).iter().all(|&v| v == 0.0));
    }
}
