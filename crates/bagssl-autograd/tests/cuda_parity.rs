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
//! - The conv data movement (im2col, col2im, the weight transpose, max-pooling) and `add`: the
//!   same gathers summed in the same order, so the same bits (NaN included). The convolutions
//!   through them are GEMMs: the matmul bounds, doubled for the input gradient, whose col2im adds
//!   up to kh·kw/stride² GEMM outputs per pixel.

mod common;

use bagssl_autograd::{ops, AdamW, BnEval, Device, Tensor, VicregWeights, Window2d};
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

    /// The same f32 bit patterns (a NaN is only equal to the same NaN).
    fn check_bits(&mut self, name: &str, gpu: &Tensor, cpu: &Tensor) {
        assert_eq!(gpu.shape(), cpu.shape(), "{name}: shapes");
        let (g, c) = (host(gpu), host(cpu));
        let bad: Vec<usize> = (0..c.len()).filter(|&i| g[i].to_bits() != c[i].to_bits()).collect();
        println!(
            "{} {name:<34} {} of {} differ in bits",
            if bad.is_empty() { "OK    " } else { "NOT OK" },
            bad.len(),
            c.len()
        );
        if !bad.is_empty() {
            let first: Vec<String> = bad.iter().take(5).map(|&i| format!("[{i}] gpu {} cpu {}", g[i], c[i])).collect();
            self.failures.push(format!(
                "{name}: {} of {} differ in bits; first: {}",
                bad.len(),
                c.len(),
                first.join(", ")
            ));
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

/// The (matmul, bag-VICReg) tolerances at GEMM precision `p` (see the module comment).
fn gemm_tols(p: GemmPrecision) -> (f64, f64) {
    match p {
        GemmPrecision::F32 => (1e-5, 1e-4),
        GemmPrecision::Tf32 => (5e-3, 1e-2),
        GemmPrecision::Bf16 => (2e-2, 4e-2),
    }
}

/// matmul and bag-VICReg at every GEMM precision (`at_each_gemm_precision`: the tests that set
/// it take turns).
#[test]
fn gemm_backed_ops_match_cpu() {
    let Some((dev, g)) = gpu("gemm_backed_ops_match_cpu") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let mut rep = Report::new("matmul + bag-VICReg, CUDA vs CPU");
    bagssl_testkit::at_each_gemm_precision(&g, |prec| {
        let (mm_tol, vic_tol) = gemm_tols(prec);
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
    });
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

fn window(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Window2d {
    Window2d { n, h, w, c, kh: k, kw: k, stride, pad }
}

/// im2col, col2im, the weight transpose, max-pooling and add: the CPU's bits.
#[test]
fn conv_data_movement_matches_cpu_bit_for_bit() {
    let title = "im2col / col2im / transpose / max-pool / add, CUDA vs CPU (bits)";
    let Some((dev, mut r, mut rep)) = setup("conv_data_movement_matches_cpu_bit_for_bit", 6, title) else { return };
    let geoms = [
        window(2, 7, 5, 3, 3, 2, 1),
        window(1, 6, 9, 2, 3, 1, 3),
        window(3, 5, 5, 4, 1, 2, 0),
        window(1, 9, 7, 1, 7, 2, 3),
        window(2, 15, 13, 8, 7, 2, 3),
        window(4, 16, 16, 32, 3, 1, 1),
        Window2d { n: 2, h: 6, w: 7, c: 5, kh: 2, kw: 3, stride: 2, pad: 1 },
    ];
    for g in geoms {
        let tag = format!("{}x{}x{}x{} k{}x{} s{} p{}", g.n, g.h, g.w, g.c, g.kh, g.kw, g.stride, g.pad);
        let x = rand_t(&mut r, &[g.in_rows(), g.c]);
        let cols = ops::im2col(&x, g).unwrap();
        rep.check_bits(&format!("im2col {tag}"), &ops::im2col(&on(&x, &dev), g).unwrap(), &cols);
        let dcols = rand_t(&mut r, &[g.out_rows(), g.patch_len()]);
        let dx = ops::col2im(&dcols, g).unwrap();
        rep.check_bits(&format!("col2im {tag}"), &ops::col2im(&on(&dcols, &dev), g).unwrap(), &dx);
        let (out, taps) = (3, g.kh * g.kw);
        let w = rand_t(&mut r, &[out, g.c, g.kh, g.kw]);
        let wt = ops::transpose_last2(&w, out, g.c, taps).unwrap();
        rep.check_bits(
            &format!("transpose_last2 {tag}"),
            &ops::transpose_last2(&on(&w, &dev), out, g.c, taps).unwrap(),
            &wt,
        );
        let back = ops::transpose_last2(&on(&wt, &dev), out, taps, g.c).unwrap();
        rep.check_bits(
            &format!("transpose_last2 back {tag}"),
            &back,
            &w.try_clone().unwrap().reshape(&[out, g.c * taps]),
        );
    }
    // Max-pooling: uniform values, many ties (integers 0..3), and NaN / infinities / signed zeros.
    let pools = [
        window(2, 9, 7, 3, 3, 2, 1),
        window(2, 8, 8, 8, 3, 2, 1),
        window(1, 5, 6, 4, 2, 2, 0),
        window(1, 7, 7, 1, 3, 1, 1),
        window(8, 32, 32, 64, 3, 2, 1),
        Window2d { n: 1, h: 6, w: 5, c: 2, kh: 5, kw: 3, stride: 2, pad: 1 },
    ];
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0];
    for g in pools {
        for kind in ["uniform", "ties", "specials"] {
            let tag = format!("{}x{}x{}x{} k{}x{} s{} p{} {kind}", g.n, g.h, g.w, g.c, g.kh, g.kw, g.stride, g.pad);
            let v: Vec<f32> = (0..g.in_rows() * g.c)
                .map(|_| match kind {
                    "ties" => r.random_range(0..3) as f32,
                    "specials" if r.random_range(0..6) == 0 => specials[r.random_range(0..specials.len())],
                    _ => r.random_range(-2.0f32..2.0),
                })
                .collect();
            let x = Tensor::from_vec(&[g.in_rows(), g.c], v);
            let xg = on(&x, &dev);
            let (y, yg) = (ops::max_pool_fwd(&x, g).unwrap(), ops::max_pool_fwd(&xg, g).unwrap());
            rep.check_bits(&format!("max_pool_fwd {tag}"), &yg, &y);
            let dy = rand_t(&mut r, &[g.out_rows(), g.c]);
            let dx = ops::max_pool_bwd(&x, &y, &dy, g).unwrap();
            rep.check_bits(
                &format!("max_pool_bwd {tag}"),
                &ops::max_pool_bwd(&xg, &yg, &on(&dy, &dev), g).unwrap(),
                &dx,
            );
        }
    }
    for shape in [&[1usize][..], &[37, 29], &[4096, 64]] {
        let (a, b) = (rand_t(&mut r, shape), rand_t(&mut r, shape));
        let want = ops::add(&a, &b).unwrap();
        rep.check_bits(&format!("add {shape:?}"), &ops::add(&on(&a, &dev), &on(&b, &dev)).unwrap(), &want);
    }
    rep.finish();
}

/// conv2d forward and both backward parts (im2col / col2im around the GEMMs) at every GEMM
/// precision.
#[test]
fn conv2d_matches_cpu() {
    let Some((dev, g)) = gpu("conv2d_matches_cpu") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let mut rep = Report::new("conv2d fwd / bwd_weight / bwd_input, CUDA vs CPU");
    // (geometry, output channels): odd sizes, stride 2, pad 0 / 1 / 3, 1x1 strided and pointwise,
    // the 7x7 stride-2 stem, a non-square window.
    let cases = [
        (window(2, 7, 5, 3, 3, 2, 1), 5),
        (window(1, 9, 7, 1, 7, 2, 3), 4),
        (window(3, 5, 5, 4, 1, 2, 0), 6),
        (window(2, 6, 9, 2, 3, 1, 3), 3),
        (window(2, 8, 8, 16, 1, 1, 0), 8),
        (window(2, 11, 13, 8, 3, 1, 1), 16),
        (window(4, 33, 31, 3, 7, 2, 3), 64),
        (window(8, 16, 16, 32, 3, 2, 1), 64),
        (Window2d { n: 1, h: 6, w: 7, c: 5, kh: 2, kw: 3, stride: 1, pad: 0 }, 3),
    ];
    let inputs: Vec<_> = cases
        .iter()
        .map(|&(w, out)| {
            let x = rand_t(&mut r, &[w.in_rows(), w.c]);
            let wt = rand_t(&mut r, &[out, w.c, w.kh, w.kw]);
            let dy = rand_t(&mut r, &[w.out_rows(), out]);
            let cpu = (
                ops::conv2d_fwd(&x, &wt, w).unwrap(),
                ops::conv2d_bwd_weight(&x, &wt, &dy, w).unwrap(),
                ops::conv2d_bwd_input(&wt, &dy, w).unwrap(),
            );
            ((on(&x, &dev), on(&wt, &dev), on(&dy, &dev)), cpu)
        })
        .collect();
    bagssl_testkit::at_each_gemm_precision(&g, |prec| {
        let tol = gemm_tols(prec).0;
        for ((w, _), ((x, wt, dy), (y, dw, dx))) in cases.iter().zip(&inputs) {
            let tag = format!("{prec:?} {}x{}x{}x{} k{}x{} s{} p{}", w.n, w.h, w.w, w.c, w.kh, w.kw, w.stride, w.pad);
            rep.check(&format!("conv2d_fwd {tag}"), &ops::conv2d_fwd(x, wt, *w).unwrap(), y, tol, 0.0);
            rep.check(
                &format!("conv2d_bwd_weight {tag}"),
                &ops::conv2d_bwd_weight(x, wt, dy, *w).unwrap(),
                dw,
                tol,
                0.0,
            );
            rep.check(
                &format!("conv2d_bwd_input {tag}"),
                &ops::conv2d_bwd_input(wt, dy, *w).unwrap(),
                dx,
                2.0 * tol,
                0.0,
            );
        }
    });
    rep.finish();
}
