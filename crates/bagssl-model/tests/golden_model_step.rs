//! Golden check of one training forward/backward against `fixtures/golden/model_step.json` (float64
//! PyTorch): h, z, the loss and its terms, dL/dx, every parameter gradient and the BatchNorm
//! running statistics after the step.
//!
//! Tolerances: the computation is f32 through six matmul/BN layers on a batch of 20, so the
//! expected error is a few f32 ulps times the condition of BN's normalisation (~1e-6 relative).
//! Errors are measured relative to the tensor's largest magnitude, floored at 0.1 for gradients:
//! several gradients (every bias followed by BatchNorm, and the last bias, whose effect the
//! centred loss removes) are exactly 0 in exact arithmetic, and their f32 values are rounding noise
//! on the scale of the neighbouring gradients (~0.1 - 1).

mod common;

use bagssl_autograd::{Device, Tensor};
use bagssl_model::{BagSslModel, ModelConfig, BN_MOMENTUM};
use bagssl_testkit::{array, golden, Report};

#[test]
fn model_step_matches_golden() {
    let g = golden("model_step.json");
    let cfg = ModelConfig::mlp(
        g["patch"].as_u64().unwrap() as usize,
        2,
        g["hidden"].as_u64().unwrap() as usize,
        g["proj"].as_u64().unwrap() as usize,
    );
    let n = g["n_per_image"].as_u64().unwrap() as usize;
    let mut model = BagSslModel::zeros(cfg, &Device::Cpu).unwrap();
    let params = g["params"].as_object().unwrap();
    assert_eq!(params.len(), model.params().len(), "golden and model have the same parameter list");
    for (name, v) in params {
        let (shape, data) = array(v);
        assert_eq!(model.param(name).unwrap_or_else(|| panic!("no parameter {name}")).value.shape(), &shape[..]);
        model.set_tensor(name, &data.iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap();
    }
    let (xs, xd) = array(&g["x"]);
    let x = Tensor::from_vec(&xs, xd.iter().map(|&v| v as f32).collect());

    let step = common::record_step(&model, x, n, true);
    let mut report = Report::new("model_step.json");
    common::check_forward_golden(&mut report, &step, &g);
    for (name, got) in &step.grads {
        report.check_relative(&format!("grad {name}"), got, &array(&g["grads"][name]).1, 0.1, 1e-4);
    }

    model.update_running_stats(&step.stats, BN_MOMENTUM).unwrap();
    let running = g["bn_running_after_one_step"].as_object().unwrap();
    let mut checked = 0;
    for (key, v) in running.iter().filter(|(k, _)| k.as_str() != "about") {
        // Golden keys are `<prefix>.mean` / `<prefix>.var`; ours `<prefix>.running_mean` / `_var`.
        let (prefix, stat) = key.rsplit_once('.').unwrap();
        let running = model.running_stats();
        let r = running.iter().find(|r| r.prefix == prefix).unwrap_or_else(|| panic!("no BN {prefix}"));
        let got = if stat == "mean" { &r.mean } else { &r.var };
        report.check_relative(&format!("running {key}"), &got.to_vec().unwrap(), &array(v).1, 0.0, 1e-5);
        checked += 1;
    }
    assert!(checked >= 2);
    report.finish();
}
