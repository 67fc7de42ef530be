//! Helpers shared by the model's integration tests.

#![allow(dead_code)]

use bagssl_model::{OptimizerKind, TrainConfig, VicregWeights};

/// A short AdamW-or-LARS run (4 patches x 8 images, 20 steps, 2 of warm-up, lr 1e-3, weight
/// decay 1e-4, seed 11, augmentation on): tests override what they need.
pub fn train_config(optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        per_image: 4,
        augment: true,
        views: bagssl_data::Views::default(),
        batch_images: 8,
        total_steps: 20,
        warmup_steps: 2,
        lr: 1e-3,
        weight_decay: 1e-4,
        optimizer,
        loss: VicregWeights::default(),
        seed: 11,
    }
}

/// Everything of one hand-run training step (forward, bag-VICReg, backward), on the host.
pub struct StepRecord {
    pub h: Vec<f32>,
    /// z with the projector's last bias.
    pub z: Vec<f32>,
    /// loss, invariance, variance, covariance.
    pub parts: [f64; 4],
    /// dL/dx, when asked for.
    pub grad_x: Option<Vec<f32>>,
    /// Every parameter's name and gradient, in `BagSslModel::params` order.
    pub grads: Vec<(String, Vec<f32>)>,
    /// (batch mean, unbiased batch variance) of every BatchNorm, in running-stats order.
    pub stats: Vec<(bagssl_autograd::Tensor, bagssl_autograd::Tensor)>,
}

/// The step `Trainer::step` takes on `x` (n patches per image, default loss weights), keeping
/// what it throws away.
pub fn record_step(
    model: &bagssl_model::BagSslModel,
    x: bagssl_autograd::Tensor,
    n: usize,
    grad_x: bool,
) -> StepRecord {
    let mut tape = bagssl_autograd::Tape::new();
    let fw = model.forward_train(&mut tape, x, grad_x).unwrap();
    let (loss, p) = fw.loss(&mut tape, n, VicregWeights::default()).unwrap();
    let h = tape.value(fw.h).to_vec().unwrap();
    let z = fw.z_values(&tape).unwrap().to_vec().unwrap();
    let stats = fw.batch_stats(&tape).unwrap();
    let mut g = tape.backward(loss).unwrap();
    let grad_x = grad_x.then(|| g.take(fw.x).expect("dL/dx").to_vec().unwrap());
    let names = model.params().iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let grads =
        names.into_iter().zip(&fw.params).map(|(n, &v)| (n, g.take(v).expect("gradient").to_vec().unwrap())).collect();
    StepRecord { h, z, parts: [p.loss, p.invariance, p.variance, p.covariance], grad_x, grads, stats }
}

/// A golden step file's h, z, loss terms (rtol 1e-5, relative to each tensor's largest value)
/// and dL/dx (1e-4) against `step`: the checks every golden step test makes.
pub fn check_forward_golden(report: &mut bagssl_testkit::Report, step: &StepRecord, g: &serde_json::Value) {
    use bagssl_testkit::array;
    report.check_relative("h", &step.h, &array(&g["h"]).1, 0.0, 1e-5);
    report.check_relative("z", &step.z, &array(&g["z"]).1, 0.0, 1e-5);
    for (key, got) in ["loss", "invariance", "variance", "covariance"].into_iter().zip(step.parts) {
        report.check_scalar(key, got, g[key].as_f64().unwrap(), 1e-5);
    }
    report.check_relative("grad_x", step.grad_x.as_ref().expect("dL/dx"), &array(&g["grad_x"]).1, 0.0, 1e-4);
}
