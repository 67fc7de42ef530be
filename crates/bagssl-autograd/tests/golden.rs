//! The float64 PyTorch golden vectors (`fixtures/golden/`) against the f32 CPU path.
//!
//! Tolerances: the f32 forward rounds each value to ~6e-8 relative and every layer adds a few
//! such roundings, BatchNorm over 20 rows amplifies them by at most ~10, so values and gradients
//! agree to ~1e-6 of their scale (measured: at most 1e-6); `rtol = 2e-5` leaves a 10x margin yet
//! catches any wrong term (those are off by 1e-2 of the scale or more). Scalars (loss and terms
//! are reduced in f64) agree to ~1e-7: `rtol = 2e-6`. Gradients that are exactly zero in exact arithmetic
//! (a bias before BatchNorm, the last bias under a translation-invariant loss) come out as f32
//! rounding noise of sums of ~20 terms of size <~1: `atol = 1e-6` covers that.

mod common;

use bagssl_autograd::{ops, BnVars, Tape, Tensor, VicregWeights};
use bagssl_testkit::{golden, Report};
use common::{golden_array, golden_f64, golden_tensor, host};

fn weights(g: &serde_json::Value) -> VicregWeights {
    VicregWeights {
        invariance: golden_f64(g, "lambda") as f32,
        variance: golden_f64(g, "mu") as f32,
        covariance: golden_f64(g, "nu") as f32,
        eps: golden_f64(g, "eps") as f32,
    }
}

#[test]
fn vicreg_bag_golden() {
    let g = golden("vicreg_bag.json");
    let z = golden_tensor(&g, "z");
    let n = g["n_per_image"].as_u64().unwrap() as usize;
    let (parts, dz) = ops::vicreg_fwd_bwd(&z, n, weights(&g)).unwrap();

    let mut r = Report::new("vicreg_bag.json");
    r.check_scalar("loss", parts.loss, golden_f64(&g, "loss"), 1e-5);
    r.check_scalar("invariance", parts.invariance, golden_f64(&g, "invariance"), 1e-5);
    r.check_scalar("variance", parts.variance, golden_f64(&g, "variance"), 1e-5);
    r.check_scalar("covariance", parts.covariance, golden_f64(&g, "covariance"), 1e-5);
    r.check("grad_z", &host(&dz), &golden_array(&g, "grad_z").1, 1e-5, 0.0);
    r.finish();
}

/// The tape through the tiny encoder + projector of `model_step.json`, built by hand.
#[test]
fn model_step_golden() {
    let g = golden("model_step.json");
    let n = g["n_per_image"].as_u64().unwrap() as usize;
    let bn_eps = golden_f64(&g, "bn_eps") as f32;
    let params = &g["params"];
    let names = [
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.0.bn.gamma",
        "encoder.0.bn.beta",
        "encoder.1.weight",
        "encoder.1.bias",
        "encoder.1.bn.gamma",
        "encoder.1.bn.beta",
        "projector.0.weight",
        "projector.0.bias",
        "projector.0.bn.gamma",
        "projector.0.bn.beta",
        "projector.1.weight",
        "projector.1.bias",
    ];
    let values: Vec<Tensor> = names.iter().map(|k| golden_tensor(params, k)).collect();

    let mut tape = Tape::new();
    let p: Vec<_> = values.iter().map(|t| tape.leaf(t, true)).collect();
    let x = tape.input(golden_tensor(&g, "x"), true);
    // Linear -> BatchNorm -> ReLU, with the parameters of block `i` at p[4 i ..]. Block 0 adds
    // the bias in the Linear layer, the others fold it into the BatchNorm (as the model does):
    // both forms are pinned.
    let block = |tape: &mut Tape, input, i: usize| {
        let (w, b, gamma, beta) = (p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
        if i == 0 {
            let y = tape.linear(input, w, Some(b)).unwrap();
            tape.batch_norm(BnVars { x: y, bias: None, gamma, beta, eps: bn_eps, relu: true }).unwrap()
        } else {
            let y = tape.linear(input, w, None).unwrap();
            tape.batch_norm(BnVars { x: y, bias: Some(b), gamma, beta, eps: bn_eps, relu: true }).unwrap()
        }
    };
    let a0 = block(&mut tape, x, 0);
    let h = block(&mut tape, a0, 1);
    let a2 = block(&mut tape, h, 2);
    let z = tape.linear(a2, p[12], Some(p[13])).unwrap();
    let w = VicregWeights { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 };
    let (loss, parts) = tape.bag_vicreg(z, None, n, w).unwrap();

    let mut r = Report::new("model_step.json");
    r.check("h", &host(tape.value(h)), &golden_array(&g, "h").1, 2e-5, 0.0);
    r.check("z", &host(tape.value(z)), &golden_array(&g, "z").1, 2e-5, 0.0);
    r.check_scalar("loss", parts.loss, golden_f64(&g, "loss"), 2e-6);
    r.check_scalar("loss (tape value)", tape.scalar(loss).unwrap(), golden_f64(&g, "loss"), 2e-6);
    r.check_scalar("invariance", parts.invariance, golden_f64(&g, "invariance"), 2e-6);
    r.check_scalar("variance", parts.variance, golden_f64(&g, "variance"), 2e-6);
    r.check_scalar("covariance", parts.covariance, golden_f64(&g, "covariance"), 2e-6);

    // Running statistics after one step, from mean 0 / var 1 with momentum 0.1.
    let (mean, var) = tape.bn_stats(a0).expect("a0 is a BatchNorm output");
    let cols = mean.numel();
    let mut running_mean = Tensor::zeros(&[cols], &mean.device()).unwrap();
    let mut running_var = Tensor::full(&[cols], 1.0, &var.device()).unwrap();
    ops::ema_(&mut running_mean, mean, 0.1).unwrap();
    ops::ema_(&mut running_var, var, 0.1).unwrap();
    let running = &g["bn_running_after_one_step"];
    r.check(
        "encoder.0.bn running mean",
        &host(&running_mean),
        &golden_array(running, "encoder.0.bn.mean").1,
        2e-5,
        0.0,
    );
    r.check("encoder.0.bn running var", &host(&running_var), &golden_array(running, "encoder.0.bn.var").1, 2e-5, 0.0);

    let grads = tape.backward(loss).unwrap();
    r.check("grad_x", &host(grads.get(x).unwrap()), &golden_array(&g, "grad_x").1, 2e-5, 1e-6);
    for (name, &v) in names.iter().zip(&p) {
        let got = grads.get(v).unwrap_or_else(|| panic!("no gradient for {name}"));
        let (shape, want) = golden_array(&g["grads"], name);
        assert_eq!(got.shape(), shape.as_slice(), "{name} gradient shape");
        r.check(&format!("grad {name}"), &host(got), &want, 2e-5, 1e-6);
    }
    r.finish();
}

/// One strided convolution (`conv2d.json`): y, and dx, dw for the golden upstream dy, through
/// the tape (NHWC rows, torchvision's weight layout).
#[test]
fn conv2d_golden() {
    let g = golden("conv2d.json");
    let (xs, wt) = (golden_array(&g, "x").0, golden_tensor(&g, "weight"));
    let (n, h, w, c) = (xs[0], xs[1], xs[2], xs[3]);
    let k = g["kernel"].as_u64().unwrap() as usize;
    let (stride, pad) = (g["stride"].as_u64().unwrap() as usize, g["padding"].as_u64().unwrap() as usize);
    let geom = bagssl_autograd::Window2d { n, h, w, c, kh: k, kw: k, stride, pad };
    let x = golden_tensor(&g, "x").reshape(&[n * h * w, c]);
    let dy = golden_tensor(&g, "dy");
    assert_eq!(golden_array(&g, "y").0, [n, geom.out_h(), geom.out_w(), wt.shape()[0]]);

    let mut tape = Tape::new();
    let (xv, wv) = (tape.input(x, true), tape.leaf(&wt, true));
    let y = tape.conv2d(xv, wv, geom).unwrap();
    let got_y = host(tape.value(y));
    let loss = tape.dot_const(y, dy.reshape(&[geom.out_rows(), wt.shape()[0]])).unwrap();
    let grads = tape.backward(loss).unwrap();

    let mut r = Report::new("conv2d.json");
    r.check("y", &got_y, &golden_array(&g, "y").1, 2e-5, 1e-6);
    r.check("dx", &host(grads.get(xv).unwrap()), &golden_array(&g, "dx").1, 2e-5, 1e-6);
    assert_eq!(grads.get(wv).unwrap().shape(), wt.shape());
    r.check("dweight", &host(grads.get(wv).unwrap()), &golden_array(&g, "dweight").1, 2e-5, 1e-6);
    r.finish();
}
