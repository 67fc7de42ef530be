//! The CPU kernels against naive float64 references, on awkward shapes, including shapes large
//! enough to take the multi-threaded paths (more than 2^15 elements or 64^3 multiply-adds).

mod common;

use bagssl_autograd::{ops, AdamW, BnEval, Device, Error, Tensor, VicregWeights};
use bagssl_testkit::Report;
use common::{bn_args, host, rand_tensor, rng};

fn f64s(t: &Tensor) -> Vec<f64> {
    host(t).iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------- matmul

/// `op(a) @ op(b)` in f64, plus `|op(a)| @ |op(b)|` for the rounding bound.
fn matmul_ref(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize), ta: bool, tb: bool) -> (Vec<f64>, Vec<f64>) {
    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
    let mut c = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += at(i, p) * bt(p, j);
                abs[i * n + j] += (at(i, p) * bt(p, j)).abs();
            }
        }
    }
    (c, abs)
}

/// Every element within the classic summation bound `k * eps_f32 * (|A| |B|)_ij` (plus the
/// rounding of the inputs themselves, which are exact f32 here).
#[test]
fn matmul_matches_f64_all_transposes() {
    let mut r = rng(1);
    for (m, k, n) in [(1, 1, 1), (17, 33, 5), (130, 70, 257), (3, 0, 4), (1, 200, 300), (64, 1, 65)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = rand_tensor(&mut r, &if ta { [k, m] } else { [m, k] });
                let b = rand_tensor(&mut r, &if tb { [n, k] } else { [k, n] });
                let c = ops::matmul(&a, &b, ta, tb).unwrap();
                assert_eq!(c.shape(), &[m, n]);
                let (want, abs) = matmul_ref(&f64s(&a), &f64s(&b), (m, k, n), ta, tb);
                let got = host(&c);
                let bound = (k as f64 + 2.0) * f32::EPSILON as f64;
                for i in 0..m * n {
                    let err = (got[i] as f64 - want[i]).abs();
                    assert!(
                        err <= bound * abs[i] + 1e-30,
                        "matmul {m}x{k}x{n} ta={ta} tb={tb}: element {i} is {} vs {} (err {err:e})",
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn linear_fwd_matches_f64() {
    let mut r = rng(2);
    for (rows, inp, out) in [(1, 1, 1), (13, 7, 3), (200, 96, 130)] {
        let x = rand_tensor(&mut r, &[rows, inp]);
        let w = rand_tensor(&mut r, &[out, inp]);
        let b = rand_tensor(&mut r, &[out]);
        let (xw, abs) = matmul_ref(&f64s(&x), &f64s(&w), (rows, inp, out), false, true);
        let bias = f64s(&b);
        let bound = (inp as f64 + 3.0) * f32::EPSILON as f64;
        for with_bias in [false, true] {
            let y = host(&ops::linear_fwd(&x, &w, with_bias.then_some(&b)).unwrap());
            for i in 0..rows * out {
                let want = xw[i] + if with_bias { bias[i % out] } else { 0.0 };
                let err = (y[i] as f64 - want).abs();
                assert!(
                    err <= bound * (abs[i] + bias[i % out].abs()),
                    "linear {rows}x{inp}->{out}: {} vs {want}",
                    y[i]
                );
            }
        }
    }
}

// ---------------------------------------------------------------- BatchNorm

struct BnRef {
    y: Vec<f64>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    var_unbiased: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

/// The f64 BatchNorm of `x` (rows, gamma.len()) and its backward for the upstream `dy`.
fn bn_ref(x: &[f64], dy: &[f64], gamma: &[f64], beta: &[f64], eps: f64, relu: bool) -> BnRef {
    let cols = gamma.len();
    let rows = x.len() / cols;
    let n = rows as f64;
    let col = |v: &[f64], j: usize| (0..rows).map(move |i| v[i * cols + j]).collect::<Vec<_>>();
    let mut r = BnRef {
        y: vec![0.0; rows * cols],
        mean: vec![0.0; cols],
        invstd: vec![0.0; cols],
        var_unbiased: vec![0.0; cols],
        dx: vec![0.0; rows * cols],
        dgamma: vec![0.0; cols],
        dbeta: vec![0.0; cols],
    };
    for j in 0..cols {
        let xc = col(x, j);
        let mean = xc.iter().sum::<f64>() / n;
        let var = xc.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let invstd = 1.0 / (var + eps).sqrt();
        r.mean[j] = mean;
        r.invstd[j] = invstd;
        r.var_unbiased[j] = var * n / (n - 1.0);
        let xhat: Vec<f64> = xc.iter().map(|v| (v - mean) * invstd).collect();
        let mut g = vec![0.0; rows];
        for i in 0..rows {
            let pre = gamma[j] * xhat[i] + beta[j];
            r.y[i * cols + j] = if relu { pre.max(0.0) } else { pre };
            g[i] = if relu && pre <= 0.0 { 0.0 } else { dy[i * cols + j] };
        }
        let sg: f64 = g.iter().sum();
        let sgx: f64 = g.iter().zip(&xhat).map(|(g, x)| g * x).sum();
        r.dbeta[j] = sg;
        r.dgamma[j] = sgx;
        for i in 0..rows {
            r.dx[i * cols + j] = gamma[j] * invstd / n * (n * g[i] - sg - xhat[i] * sgx);
        }
    }
    r
}

/// Forward outputs and statistics to 1e-5 of their scale (f32 rounding of O(1) values through a
/// handful of operations; the statistics are accumulated in f64), gradients likewise.
#[test]
fn batch_norm_matches_f64() {
    let mut r = rng(3);
    for (rows, cols) in [(2, 1), (7, 5), (300, 130), (1000, 3)] {
        for relu in [false, true] {
            let x = rand_tensor(&mut r, &[rows, cols]);
            // An offset keeps the one-pass variance honest: |mean| / std ~ 10.
            let x = Tensor::from_vec(&[rows, cols], host(&x).iter().map(|v| v * 0.5 + 3.0).collect());
            let dy = rand_tensor(&mut r, &[rows, cols]);
            let gamma = rand_tensor(&mut r, &[cols]);
            let beta = rand_tensor(&mut r, &[cols]);
            let want = bn_ref(&f64s(&x), &f64s(&dy), &f64s(&gamma), &f64s(&beta), 1e-5, relu);
            let f = ops::bn_train_fwd(bn_args(&x, None, &gamma, &beta, relu)).unwrap();
            let bagssl_autograd::BnBackward { dx, dgamma, dbeta, dbias } =
                ops::bn_train_bwd(f.backward_args(bn_args(&x, None, &gamma, &beta, relu), &dy)).unwrap();
            assert!(dbias.is_none());
            let mut rep = Report::new(&format!("batch norm {rows}x{cols} relu={relu}"));
            rep.check("y", &host(&f.y), &want.y, 1e-5, 0.0);
            rep.check("mean", &host(&f.mean), &want.mean, 1e-6, 0.0);
            rep.check("invstd", &host(&f.invstd), &want.invstd, 1e-6, 0.0);
            rep.check("var_unbiased", &host(&f.var_unbiased), &want.var_unbiased, 1e-5, 0.0);
            // dx is a difference of terms of size |gamma invstd dy|, which can cancel almost
            // completely (with 2 rows dx is 0 up to eps): f32 leaves ~1e-7 of the terms.
            let terms = (0..rows * cols)
                .map(|i| (f64s(&gamma)[i % cols] * want.invstd[i % cols] * f64s(&dy)[i]).abs())
                .fold(0.0, f64::max);
            rep.check("dx", &host(&dx), &want.dx, 1e-5, 1e-6 * terms);
            rep.check("dgamma", &host(&dgamma), &want.dgamma, 1e-5, 0.0);
            rep.check("dbeta", &host(&dbeta), &want.dbeta, 1e-5, 0.0);
            rep.finish();
        }
    }
}

/// The Linear bias folded into the BatchNorm gives the values of `bias_add` then BatchNorm (the
/// statistics, y, and every gradient) to f32 rounding, and its bias gradient is `sum_rows(dx)`,
/// bit for bit. The bias is large against x's spread (|b| up to 3), where forming x + b in f32 and
/// centring x on its own mean differ most.
#[test]
fn batch_norm_folded_bias_is_bias_add_then_batch_norm() {
    let bits = |t: &Tensor| host(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let mut r = rng(5);
    for (rows, cols) in [(2, 1), (7, 5), (300, 130), (1000, 3)] {
        for relu in [false, true] {
            let tag = format!("{rows}x{cols} relu={relu}");
            let x0 = rand_tensor(&mut r, &[rows, cols]);
            let bias = Tensor::from_vec(&[cols], host(&rand_tensor(&mut r, &[cols])).iter().map(|v| 3.0 * v).collect());
            let dy = rand_tensor(&mut r, &[rows, cols]);
            let (gamma, beta) = (rand_tensor(&mut r, &[cols]), rand_tensor(&mut r, &[cols]));
            let x = ops::bias_add(&x0, &bias).unwrap();
            let want = ops::bn_train_fwd(bn_args(&x, None, &gamma, &beta, relu)).unwrap();
            let got = ops::bn_train_fwd(bn_args(&x0, Some(&bias), &gamma, &beta, relu)).unwrap();
            let mut rep = Report::new(&format!("folded bias {tag}"));
            let mut close =
                |name: &str, g: &Tensor, w: &Tensor, atol: f64| rep.check(name, &host(g), &f64s(w), 1e-5, atol);
            close("y", &got.y, &want.y, 1e-6);
            close("mean", &got.mean, &want.mean, 0.0);
            close("invstd", &got.invstd, &want.invstd, 0.0);
            close("var_unbiased", &got.var_unbiased, &want.var_unbiased, 1e-9);
            // Both backwards get the same y (its ReLU mask) and statistics.
            let is = &want.invstd;
            let w = ops::bn_train_bwd(want.backward_args(bn_args(&x, None, &gamma, &beta, relu), &dy)).unwrap();
            let g = ops::bn_train_bwd(want.backward_args(bn_args(&x0, Some(&bias), &gamma, &beta, relu), &dy)).unwrap();
            // dx: terms of size |gamma invstd dy| that can cancel (see batch_norm_matches_f64).
            let terms = (0..rows * cols)
                .map(|i| (f64s(&gamma)[i % cols] * f64s(is)[i % cols] * f64s(&dy)[i]).abs())
                .fold(0.0, f64::max);
            close("dx", &g.dx, &w.dx, 1e-6 * terms);
            close("dgamma", &g.dgamma, &w.dgamma, 1e-6);
            close("dbeta", &g.dbeta, &w.dbeta, 0.0);
            rep.finish();
            let dbias = g.dbias.expect("a bias gives dbias");
            assert_eq!(bits(&dbias), bits(&ops::sum_rows(&g.dx).unwrap()), "{tag}: dbias");
        }
    }
}

#[test]
fn batch_norm_eval_matches_f64() {
    let mut r = rng(4);
    let (rows, cols) = (257, 131);
    let x = rand_tensor(&mut r, &[rows, cols]);
    let mean = rand_tensor(&mut r, &[cols]);
    let var = Tensor::from_vec(&[cols], host(&rand_tensor(&mut r, &[cols])).iter().map(|v| v.abs() + 0.1).collect());
    let gamma = rand_tensor(&mut r, &[cols]);
    let beta = rand_tensor(&mut r, &[cols]);
    for relu in [false, true] {
        let y = host(
            &ops::bn_eval_fwd(
                &x,
                BnEval { running_mean: &mean, running_var: &var, gamma: &gamma, beta: &beta, eps: 1e-5, relu },
            )
            .unwrap(),
        );
        let (xv, mv, vv, gv, bv) = (f64s(&x), f64s(&mean), f64s(&var), f64s(&gamma), f64s(&beta));
        let want: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let j = i % cols;
                let pre = (xv[i] - mv[j]) / (vv[j] + 1e-5).sqrt() * gv[j] + bv[j];
                if relu {
                    pre.max(0.0)
                } else {
                    pre
                }
            })
            .collect();
        let mut rep = Report::new(&format!("batch norm eval relu={relu}"));
        rep.check("y", &y, &want, 1e-5, 0.0);
        rep.finish();
    }
}

// ---------------------------------------------------------------- bag-VICReg

/// bag-VICReg by the generic chain rule in f64, deliberately not using the simplifications of
/// the kernel: the per-image and the global means are differentiated through explicitly, and
/// the covariance gradient goes through `dL/dC` and `Zc (G + G^T) / (N - 1)`.
fn vicreg_ref(z: &[f64], rows: usize, d: usize, n: usize, w: VicregWeights) -> ([f64; 4], Vec<f64>) {
    let (lam, mu_w, nu, eps) = (w.invariance as f64, w.variance as f64, w.covariance as f64, w.eps as f64);
    let nf = rows as f64;
    let mut grad = vec![0.0; rows * d];
    // Invariance.
    let mut inv = 0.0;
    for b in 0..rows / n {
        for e in 0..d {
            let m = (0..n).map(|i| z[(b * n + i) * d + e]).sum::<f64>() / n as f64;
            let diffs: Vec<f64> = (0..n).map(|i| z[(b * n + i) * d + e] - m).collect();
            inv += diffs.iter().map(|x| x * x).sum::<f64>();
            let dsum: f64 = diffs.iter().sum();
            for i in 0..n {
                grad[(b * n + i) * d + e] += lam * 2.0 / (nf * d as f64) * (diffs[i] - dsum / n as f64);
            }
        }
    }
    inv /= nf * d as f64;
    // Covariance matrix of the centered z.
    let mean: Vec<f64> = (0..d).map(|e| (0..rows).map(|i| z[i * d + e]).sum::<f64>() / nf).collect();
    let zc: Vec<f64> = (0..rows * d).map(|i| z[i] - mean[i % d]).collect();
    let mut c = vec![0.0; d * d];
    for a in 0..d {
        for b in 0..d {
            c[a * d + b] = (0..rows).map(|i| zc[i * d + a] * zc[i * d + b]).sum::<f64>() / (nf - 1.0);
        }
    }
    // dL/dC.
    let mut g = vec![0.0; d * d];
    let mut var = 0.0;
    let mut cov = 0.0;
    for a in 0..d {
        let s = (c[a * d + a] + eps).sqrt();
        var += (1.0 - s).max(0.0) / d as f64;
        if s < 1.0 {
            g[a * d + a] += mu_w * (-1.0 / (2.0 * s)) / d as f64;
        }
        for b in 0..d {
            if a != b {
                cov += c[a * d + b].powi(2) / d as f64;
                g[a * d + b] += nu * 2.0 * c[a * d + b] / d as f64;
            }
        }
    }
    // dL/dZc = Zc (G + G^T) / (N - 1), then through the centering.
    let mut dzc = vec![0.0; rows * d];
    for i in 0..rows {
        for b in 0..d {
            dzc[i * d + b] = (0..d).map(|a| zc[i * d + a] * (g[a * d + b] + g[b * d + a])).sum::<f64>() / (nf - 1.0);
        }
    }
    for e in 0..d {
        let m = (0..rows).map(|i| dzc[i * d + e]).sum::<f64>() / nf;
        for i in 0..rows {
            grad[i * d + e] += dzc[i * d + e] - m;
        }
    }
    ([lam * inv + mu_w * var + nu * cov, inv, var, cov], grad)
}

/// Loss parts to 1e-6 relative (reduced in f64 from f32 products), dL/dz to 1e-5 of its scale.
#[test]
fn vicreg_matches_f64() {
    let mut r = rng(5);
    let w = VicregWeights { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 };
    for (rows, d, n, spread) in
        [(12, 5, 3, 1.0), (96, 40, 8, 0.3), (6, 3, 1, 2.0), (8, 4, 8, 1.0), (512, 64, 16, 1.5), (130, 257, 5, 1.0)]
    {
        let z = rand_tensor(&mut r, &[rows, d]);
        // Spread the column scales so both sides of the variance hinge occur.
        let z = Tensor::from_vec(
            &[rows, d],
            host(&z).iter().enumerate().map(|(i, v)| v * spread * (0.5 + 3.0 * (i % d) as f32 / d as f32)).collect(),
        );
        let (parts, dz) = ops::vicreg_fwd_bwd(&z, n, w).unwrap();
        let (want, grad) = vicreg_ref(&f64s(&z), rows, d, n, w);
        let mut rep = Report::new(&format!("vicreg {rows}x{d} n={n}"));
        rep.check("loss", &[parts.loss as f32], &want[..1], 1e-6, 0.0);
        rep.check("invariance", &[parts.invariance as f32], &want[1..2], 1e-6, 1e-12);
        rep.check("variance", &[parts.variance as f32], &want[2..3], 1e-6, 1e-12);
        rep.check("covariance", &[parts.covariance as f32], &want[3..4], 1e-6, 0.0);
        rep.check("grad_z", &host(&dz), &grad, 1e-5, 0.0);
        rep.finish();
    }
}

// ---------------------------------------------------------------- elementwise

/// Elementwise results are exact or within one f32 rounding (2^-23 relative, `1.2e-7` of the
/// scale) per operation of the f64 value.
#[test]
fn elementwise_match_f64() {
    let mut r = rng(6);
    let (rows, cols) = (301, 233); // 70k elements: several rayon tasks
    let x = rand_tensor(&mut r, &[rows, cols]);
    let y = rand_tensor(&mut r, &[rows, cols]);
    let b = rand_tensor(&mut r, &[cols]);
    let (xv, yv, bv) = (f64s(&x), f64s(&y), f64s(&b));
    let mut rep = Report::new("elementwise");

    let relu: Vec<f64> = xv.iter().map(|v| v.max(0.0)).collect();
    rep.check("relu", &host(&ops::relu_fwd(&x).unwrap()), &relu, 0.0, 0.0);
    let relu_bwd: Vec<f64> = xv.iter().zip(&yv).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect();
    rep.check("relu_bwd", &host(&ops::relu_bwd(&x, &y).unwrap()), &relu_bwd, 0.0, 0.0);
    let bias: Vec<f64> = xv.iter().enumerate().map(|(i, v)| v + bv[i % cols]).collect();
    rep.check("bias_add", &host(&ops::bias_add(&x, &b).unwrap()), &bias, 1.2e-7, 0.0);
    let sums: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| xv[i * cols + j]).sum()).collect();
    rep.check("sum_rows", &host(&ops::sum_rows(&x).unwrap()), &sums, 2e-7, 0.0);

    let n = 7;
    let gm = host(&ops::group_mean(&x, n).unwrap());
    let want: Vec<f64> = (0..rows / n * cols)
        .map(|i| (0..n).map(|k| xv[((i / cols) * n + k) * cols + i % cols]).sum::<f64>() / n as f64)
        .collect();
    rep.check("group_mean", &gm, &want, 2e-7, 0.0);
    let dy = rand_tensor(&mut r, &[rows / n, cols]);
    let dyv = f64s(&dy);
    let gmb = host(&ops::group_mean_bwd(&dy, n).unwrap());
    let want: Vec<f64> = (0..rows / n * n * cols).map(|i| dyv[(i / cols / n) * cols + i % cols] / n as f64).collect();
    rep.check("group_mean_bwd", &gmb, &want, 2e-7, 0.0);

    let dot: f64 = xv.iter().zip(&yv).map(|(a, b)| a * b).sum();
    rep.check_scalar("dot", ops::dot(&x, &y).unwrap(), dot, 1e-12);

    let mut a = x.try_clone().unwrap();
    ops::axpy_(&mut a, 0.3, &y).unwrap();
    let want: Vec<f64> = xv.iter().zip(&yv).map(|(x, y)| x + 0.3f32 as f64 * y).collect();
    rep.check("axpy_", &host(&a), &want, 2.4e-7, 0.0);
    let mut s = x.try_clone().unwrap();
    ops::scale_(&mut s, -1.7).unwrap();
    let want: Vec<f64> = xv.iter().map(|x| x * -1.7f32 as f64).collect();
    rep.check("scale_", &host(&s), &want, 1.2e-7, 0.0);
    let mut e = x.try_clone().unwrap();
    ops::ema_(&mut e, &y, 0.1).unwrap();
    let want: Vec<f64> = xv.iter().zip(&yv).map(|(r, b)| 0.9 * r + 0.1 * b).collect();
    rep.check("ema_", &host(&e), &want, 3.6e-7, 0.0);
    rep.finish();
}

/// Three AdamW steps against `torch.optim.AdamW`'s update rule in f64.
#[test]
fn adamw_matches_f64() {
    let mut r = rng(7);
    let n = 100_003;
    let mut p = rand_tensor(&mut r, &[n]);
    let mut m = Tensor::zeros(&[n], &Device::Cpu).unwrap();
    let mut v = Tensor::zeros(&[n], &Device::Cpu).unwrap();
    let (mut pw, mut mw, mut vw) = (f64s(&p), vec![0.0; n], vec![0.0; n]);
    let (lr, b1, b2, eps, wd) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32, 0.05f32);
    let mut rep = Report::new("adamw");
    for step in 1..=3u64 {
        let g = rand_tensor(&mut r, &[n]);
        let h = AdamW { lr, beta1: b1, beta2: b2, eps, weight_decay: wd, step };
        ops::adamw_(&mut p, &g, &mut m, &mut v, h).unwrap();
        let (lr, b1, b2, eps, wd) = (lr as f64, b1 as f64, b2 as f64, eps as f64, wd as f64);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for (i, g) in f64s(&g).into_iter().enumerate() {
            pw[i] *= 1.0 - lr * wd;
            mw[i] = b1 * mw[i] + (1.0 - b1) * g;
            vw[i] = b2 * vw[i] + (1.0 - b2) * g * g;
            pw[i] -= lr / bc1 * mw[i] / (vw[i].sqrt() / bc2.sqrt() + eps);
        }
        rep.check(&format!("param after step {step}"), &host(&p), &pw, 1e-6, 0.0);
        rep.check(&format!("m after step {step}"), &host(&m), &mw, 1e-6, 0.0);
        rep.check(&format!("v after step {step}"), &host(&v), &vw, 1e-6, 0.0);
    }
    rep.finish();
}

// ---------------------------------------------------------------- shape errors

#[test]
fn shape_mismatches_are_errors() {
    let cpu = Device::Cpu;
    let t = |s: &[usize]| Tensor::zeros(s, &cpu).unwrap();
    let is_shape = |e: Result<(), Error>| matches!(e, Err(Error::Shape { .. }));
    assert!(is_shape(ops::matmul(&t(&[3, 4]), &t(&[5, 2]), false, false).map(drop)));
    assert!(is_shape(ops::matmul(&t(&[3, 4]), &t(&[3, 2]), false, true).map(drop)));
    assert!(is_shape(ops::linear_fwd(&t(&[3, 4]), &t(&[2, 4]), Some(&t(&[3]))).map(drop)));
    assert!(is_shape(ops::bias_add(&t(&[3, 4]), &t(&[3])).map(drop)));
    assert!(is_shape(ops::bn_train_fwd(bn_args(&t(&[1, 4]), None, &t(&[4]), &t(&[4]), true)).map(drop)));
    assert!(is_shape(ops::bn_train_fwd(bn_args(&t(&[5, 4]), None, &t(&[3]), &t(&[4]), true)).map(drop)));
    assert!(is_shape(ops::vicreg_fwd_bwd(&t(&[10, 4]), 3, VicregWeights::default()).map(drop)));
    assert!(is_shape(ops::vicreg_fwd_bwd(&t(&[1, 4]), 1, VicregWeights::default()).map(drop)));
    assert!(is_shape(ops::group_mean(&t(&[10, 4]), 3).map(drop)));
    assert!(is_shape(ops::group_mean(&t(&[10, 4]), 0).map(drop)));
    assert!(is_shape(ops::dot(&t(&[3]), &t(&[4])).map(drop)));
    assert!(is_shape(ops::axpy_(&mut t(&[3]), 1.0, &t(&[4]))));
    assert!(is_shape(ops::relu_bwd(&t(&[3, 2]), &t(&[2, 3])).map(drop)));
}
