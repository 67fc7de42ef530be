//! The ResNet encoders: torchvision's names, shapes and parameter counts, the ImageNet stem, a
//! finite-difference check of the Bottleneck block, checkpoints, the eval-mode forward, and the
//! config's errors. The BasicBlock's values are pinned by `golden_resnet_step.rs`.

use bagssl_autograd::{ops, Device, Tape, Tensor};
use bagssl_data::SeededRng;
use bagssl_model::layers::{Bottleneck, Forward, Init, Spatial};
use bagssl_model::{Arch, BagSslModel, ModelConfig, Stem};
use bagssl_testkit::Report;

fn preset(arch: Arch, stem: Stem, patch: usize) -> ModelConfig {
    ModelConfig { arch, stem, ..ModelConfig::resnet(patch, &[], &[], 16) }
}

fn encoder_params(m: &BagSslModel) -> usize {
    m.params().iter().filter(|p| p.name.starts_with("encoder.")).map(|p| p.value.numel()).sum()
}

/// torchvision's counts without `fc`: ResNet-18 11,176,512 with its 7x7 stem (9,408 weights),
/// 11,168,832 with the CIFAR 3x3 one (1,728); ResNet-34 21,284,672; ResNet-50 23,508,032.
#[test]
fn presets_have_torchvision_names_shapes_and_sizes() {
    let m = BagSslModel::zeros(preset(Arch::Resnet18, Stem::Imagenet, 32), &Device::Cpu).unwrap();
    assert_eq!(encoder_params(&m), 11_176_512);
    assert_eq!(m.hidden(), 512);
    let shape = |m: &BagSslModel, n: &str| m.param(n).unwrap_or_else(|| panic!("no {n}")).value.shape().to_vec();
    assert_eq!(shape(&m, "encoder.conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape(&m, "encoder.layer2.0.downsample.0.weight"), [128, 64, 1, 1]);
    assert_eq!(shape(&m, "encoder.layer4.1.bn2.weight"), [512]);
    assert!(m.param("encoder.layer1.0.downsample.0.weight").is_none(), "no shortcut conv where sizes match");
    let names: Vec<String> = m.named_tensors().into_iter().map(|(n, _)| n).collect();
    for n in ["encoder.bn1.running_mean", "encoder.layer3.0.downsample.1.running_var", "projector.1.bias"] {
        assert!(names.iter().any(|x| x == n), "{n} missing");
    }

    let m = BagSslModel::zeros(preset(Arch::Resnet18, Stem::Cifar, 32), &Device::Cpu).unwrap();
    assert_eq!(encoder_params(&m), 11_168_832);
    let m = BagSslModel::zeros(preset(Arch::Resnet34, Stem::Imagenet, 32), &Device::Cpu).unwrap();
    assert_eq!(encoder_params(&m), 21_284_672);
    let m = BagSslModel::zeros(preset(Arch::Resnet50, Stem::Imagenet, 32), &Device::Cpu).unwrap();
    assert_eq!(encoder_params(&m), 23_508_032);
    assert_eq!(m.hidden(), 2048);
    assert_eq!(shape(&m, "encoder.layer1.0.conv3.weight"), [256, 64, 1, 1]);
    assert_eq!(shape(&m, "encoder.layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape(&m, "projector.0.weight"), [16, 2048]);
}

/// torchvision's init: conv weights N(0, 2 / fan_out), BatchNorm 1 and 0.
#[test]
fn convolutions_get_kaiming_normal_fan_out() {
    let m = BagSslModel::new(ModelConfig::resnet(8, &[16, 32], &[], 8), 3, &Device::Cpu).unwrap();
    let w = m.param("encoder.layer2.0.conv2.weight").unwrap().value.to_vec().unwrap();
    let var = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    let want = 2.0 / (32.0 * 9.0);
    assert!((var / want - 1.0).abs() < 0.1, "variance {var} vs {want} over {} weights", w.len());
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    assert!(mean.abs() < 3.0 * (want / w.len() as f64).sqrt());
    assert!(m.param("encoder.layer2.0.bn2.weight").unwrap().value.to_vec().unwrap().iter().all(|&v| v == 1.0));
}

/// The ImageNet stem (7x7 stride 2, max-pool) on 32x32 patches: 16x16, 8x8, then the stages
/// 8, 4, 2, 1; h has the last stage's width, in training and in eval mode.
#[test]
fn imagenet_stem_forward_shapes() {
    let cfg = ModelConfig { stem: Stem::Imagenet, ..ModelConfig::resnet(32, &[8, 8, 16, 16], &[1, 2, 1, 1], 12) };
    let m = BagSslModel::new(cfg, 1, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(&[6, 32 * 32 * 3], (0..6 * 3072).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect());
    let h = m.encode_eval(&x).unwrap();
    assert_eq!(h.shape(), [6, 16]);
    let mut tape = Tape::new();
    let fw = m.forward_train(&mut tape, x, false).unwrap();
    assert_eq!(tape.value(fw.h).shape(), [6, 16]);
    assert_eq!(tape.value(fw.z).shape(), [6, 12]);
    let (flops, stem) = match &m.encoder {
        bagssl_model::model::Encoder::ResNet(r) => r.forward_flops_per_patch(),
        _ => unreachable!(),
    };
    assert_eq!(stem, 2.0 * (16 * 16 * 8 * 7 * 7 * 3) as f64);
    assert!(flops > stem);
}

/// The Bottleneck (1x1, 3x3 stride 2, 1x1 to 4x, downsample shortcut), training mode: the tape's
/// gradients of `sum(y * W)` against central differences, for the input and every weight.
#[test]
fn bottleneck_gradients_match_finite_differences() {
    let s = Spatial { n: 3, h: 5, w: 5 };
    let mut rng = SeededRng::new(11);
    let block = Bottleneck::new("b", 3, 2, 2, &mut Init::seeded(&mut rng, &Device::Cpu)).unwrap();
    let block = bagssl_model::layers::Block::Bottleneck(Box::new(block));
    let len = s.n * s.h * s.w * 3;
    let x0: Vec<f32> = (0..len).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let wts: Vec<f32> = (0..s.n * 3 * 3 * 8).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let f = |x: &[f32], grads: bool| {
        let mut tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(&[s.n * s.h * s.w, 3], x.to_vec()), grads);
        let mut fw = Forward::new(&mut tape, true);
        let (y, out) = block.forward_spatial(&mut fw, xv, s).unwrap();
        assert_eq!(out, Spatial { n: 3, h: 3, w: 3 });
        let value = ops::dot(tape.value(y), &Tensor::from_slice(&[27, 8], &wts)).unwrap();
        let grad = grads.then(|| {
            let loss = tape.dot_const(y, Tensor::from_slice(&[27, 8], &wts)).unwrap();
            tape.backward(loss).unwrap().get(xv).unwrap().to_vec().unwrap()
        });
        (value, grad)
    };
    let analytic = f(&x0, true).1.unwrap();
    let eps = 1e-3;
    let fd: Vec<f64> = (0..len)
        .map(|j| {
            let mut x = x0.clone();
            x[j] += eps;
            let up = f(&x, false).0;
            x[j] -= 2.0 * eps;
            (up - f(&x, false).0) / (2.0 * eps as f64)
        })
        .collect();
    let mut r = Report::new("bottleneck dL/dx");
    r.check_relative("dx", &analytic, &fd, 0.0, 5e-3);
    r.finish();
}

/// A ResNet's checkpoint loads back into the same embeddings, with its arch in the metadata.
#[test]
fn resnet_checkpoint_round_trip() {
    let cfg = ModelConfig::resnet(8, &[4, 8], &[2, 1], 6);
    let m = BagSslModel::new(cfg, 5, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    m.save(&path).unwrap();
    let back = BagSslModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.config(), m.config());
    let x = Tensor::from_vec(&[4, 192], (0..768).map(|i| (i as f32 * 0.01).sin()).collect());
    assert_eq!(back.encode_eval(&x).unwrap().to_vec().unwrap(), m.encode_eval(&x).unwrap().to_vec().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["arch"], "resnet");
    assert_eq!(header["__metadata__"]["patch_size"], "8");
    assert_eq!(header["encoder.layer1.1.conv2.weight"]["shape"], serde_json::json!([4, 4, 3, 3]));
}

/// A list-form projector: k - 1 Linear-BN-ReLU blocks, then a Linear.
#[test]
fn deep_projector_from_a_list() {
    let cfg = ModelConfig { projector: vec![24, 20, 16], ..ModelConfig::resnet(8, &[4], &[], 0) };
    let m = BagSslModel::zeros(cfg, &Device::Cpu).unwrap();
    let shape = |n: &str| m.param(n).unwrap_or_else(|| panic!("no {n}")).value.shape().to_vec();
    assert_eq!(shape("projector.0.weight"), [24, 4]);
    assert_eq!(shape("projector.1.weight"), [20, 24]);
    assert_eq!(shape("projector.1.bn.gamma"), [20]);
    assert_eq!(shape("projector.2.weight"), [16, 20]);
    assert!(m.param("projector.2.bn.gamma").is_none());
}

#[test]
fn config_errors_name_the_key() {
    let bad = |c: ModelConfig| BagSslModel::zeros(c, &Device::Cpu).unwrap_err().to_string();
    let e = bad(ModelConfig { widths: vec![8], ..preset(Arch::Resnet18, Stem::Cifar, 8) });
    assert!(e.contains("model.widths") && e.contains("resnet18"), "{e}");
    let e = bad(ModelConfig::resnet(8, &[8, 16], &[1], 4));
    assert!(e.contains("model.blocks"), "{e}");
    let e = bad(ModelConfig::resnet(8, &[], &[], 4));
    assert!(e.contains("model.widths"), "{e}");
}
