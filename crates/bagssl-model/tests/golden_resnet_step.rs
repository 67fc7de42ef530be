//! Golden check of one ResNet training step against `fixtures/golden/resnet_step.json` (float64
//! PyTorch, torchvision's BasicBlock ResNet with the CIFAR stem, widths 4 and 8): h, z, the loss
//! and its terms, dL/dx, every parameter gradient and every running statistic after the step.
//! The encoder's names are torchvision's, so they are looked up as they are; the projector's are
//! an `nn.Sequential`'s (`projector.0` Linear, `.1` BatchNorm1d, `.3` Linear) and map to ours.
//!
//! Tolerances as in `golden_model_step.rs`: f32 through eight convolution/BN layers on a batch
//! of 12 patches, errors relative to each tensor's largest magnitude (floored at 0.1 for
//! gradients, several of which are exactly zero in exact arithmetic).

mod common;

use bagssl_autograd::{Device, Tensor};
use bagssl_model::{BagSslModel, ModelConfig, BN_MOMENTUM};
use bagssl_testkit::{array, golden, usizes, Report};

/// Our name of a golden tensor.
fn ours(golden: &str) -> String {
    let map = [
        ("projector.0.weight", "projector.0.weight"),
        ("projector.0.bias", "projector.0.bias"),
        ("projector.1.weight", "projector.0.bn.gamma"),
        ("projector.1.bias", "projector.0.bn.beta"),
        ("projector.1.running_mean", "projector.0.bn.running_mean"),
        ("projector.1.running_var", "projector.0.bn.running_var"),
        ("projector.3.weight", "projector.1.weight"),
        ("projector.3.bias", "projector.1.bias"),
    ];
    map.iter().find(|(g, _)| *g == golden).map_or(golden.to_string(), |(_, o)| o.to_string())
}

#[test]
fn resnet_step_matches_golden() {
    let g = golden("resnet_step.json");
    let patch = g["patch"].as_u64().unwrap() as usize;
    let cfg = ModelConfig::resnet(patch, &usizes(&g["widths"]), &[], g["proj"].as_u64().unwrap() as usize);
    let n = g["n_per_image"].as_u64().unwrap() as usize;
    let mut model = BagSslModel::zeros(cfg, &Device::Cpu).unwrap();
    let params = g["params"].as_object().unwrap();
    assert_eq!(params.len(), model.params().len(), "golden and model have the same parameter list");
    for (name, v) in params {
        let (shape, data) = array(v);
        let name = ours(name);
        assert_eq!(model.param(&name).unwrap_or_else(|| panic!("no parameter {name}")).value.shape(), &shape[..]);
        model.set_tensor(&name, &data.iter().map(|&x| x as f32).collect::<Vec<_>>()).unwrap();
    }
    // NHWC (B*n, p, p, 3) is the patch matrix (B*n, p*p*3) as it is.
    let (xs, xd) = array(&g["x"]);
    let x = Tensor::from_vec(&[xs[0], xs[1..].iter().product()], xd.iter().map(|&v| v as f32).collect());

    let step = common::record_step(&model, x, n, true);
    let mut report = Report::new("resnet_step.json");
    common::check_forward_golden(&mut report, &step, &g);
    let golden_grads = g["grads"].as_object().unwrap();
    assert_eq!(golden_grads.len(), step.grads.len());
    for (name, v) in golden_grads {
        let (_, got) =
            step.grads.iter().find(|(n, _)| *n == ours(name)).unwrap_or_else(|| panic!("no parameter {name}"));
        report.check_relative(&format!("grad {name}"), got, &array(v).1, 0.1, 1e-4);
    }

    model.update_running_stats(&step.stats, BN_MOMENTUM).unwrap();
    let running = g["running_after_one_step"].as_object().unwrap();
    let tensors = model.named_tensors();
    assert_eq!(running.len(), 2 * model.running_stats().len(), "every running statistic is in the golden");
    for (key, v) in running {
        let name = ours(key);
        let (_, t) = tensors.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no tensor {name}"));
        report.check_relative(&format!("running {key}"), &t.to_vec().unwrap(), &array(v).1, 0.0, 1e-5);
    }
    report.finish();
}
