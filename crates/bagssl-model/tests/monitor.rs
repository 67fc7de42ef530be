//! The collapse monitor (docs/DEFINITIONS.md §12) on real training steps: runs that leave out a
//! term of bag-VICReg collapse and the monitor says so, the default weights stay healthy, the
//! monitor changes nothing about the step, and on a GPU it reads what the CPU reads.
//!
//! The runs: 64 synthetic 12x12 images, 16 images x 8 patches of 4x4 a step (128 monitored rows),
//! an MLP 2 x 64 with a 32-wide projector, AdamW at lr 1e-2, 300 steps (about 0.1 s each).

mod common;

use bagssl_autograd::Device;
use bagssl_data::{synthetic, ImageStore, SyntheticSpec};
use bagssl_model::{CollapseStats, ModelConfig, OptimizerKind, TrainConfig, Trainer, VicregWeights};

fn data() -> ImageStore {
    synthetic(&SyntheticSpec { images: 64, classes: 4, height: 12, width: 12, seed: 3 })
}

fn config(loss: VicregWeights, steps: u64) -> TrainConfig {
    let mut cfg = common::train_config(OptimizerKind::AdamW);
    cfg.batch_images = 16;
    cfg.per_image = 8;
    cfg.total_steps = steps;
    cfg.lr = 1e-2;
    cfg.loss = loss;
    cfg
}

/// The monitor's readings every 10th step of a run with these loss weights.
fn readings(loss: VicregWeights) -> Vec<CollapseStats> {
    let (data, steps) = (data(), 300);
    let mut t = Trainer::new(ModelConfig::mlp(4, 2, 64, 32), config(loss, steps), &Device::Cpu).unwrap();
    let mut out = Vec::new();
    for s in 1..=steps {
        let stats = t.step_monitored(&data, s % 10 == 0).unwrap();
        assert_eq!(stats.collapse.is_some(), s % 10 == 0, "a reading exactly when asked for");
        out.extend(stats.collapse);
    }
    let last = out.last().unwrap();
    println!(
        "{loss:?}: last reading h rank {:.2} z rank {:.2}, h std_min {:.3e} z std_min {:.3e} ({} rows)",
        last.embedding_rank, last.projection_rank, last.embedding_std_min, last.projection_std_min, last.rows
    );
    out
}

#[test]
fn default_weights_stay_healthy() {
    let r = readings(VicregWeights::default());
    assert_eq!(r[0].rows, 128);
    assert_eq!((r[0].embedding_dim, r[0].projection_dim), (64, 32));
    for (i, c) in r.iter().enumerate() {
        assert_eq!(c.collapse(), None, "reading {i}: {c:?}");
    }
}

/// Without the variance hinge nothing holds z's scale up: invariance and covariance both shrink
/// it, the whole batch contracts towards a point. The spectrum keeps its shape (RankMe is blind to
/// scale), the smallest standard deviation is what catches it.
#[test]
fn variance_weight_zero_collapses_and_the_monitor_flags_it() {
    let r = readings(VicregWeights { variance: 0.0, ..VicregWeights::default() });
    assert_eq!(r[0].collapse(), None, "healthy at first: {:?}", r[0]);
    let last = r.last().unwrap();
    let reason = last.collapse().unwrap_or_else(|| panic!("not flagged: {last:?}"));
    assert!(reason.starts_with("projection_std_min"), "{reason}");
    // Flagged for good: every one of the last 10 readings.
    assert!(r[r.len() - 10..].iter().all(|c| c.collapse().is_some()), "{r:?}");
}

/// Without the covariance term every dimension of z may carry the same direction (each keeps its
/// standard deviation of 1): dimensional collapse, which the rank catches.
#[test]
fn covariance_weight_zero_collapses_the_rank() {
    let r = readings(VicregWeights { covariance: 0.0, ..VicregWeights::default() });
    assert_eq!(r[0].collapse(), None, "healthy at first: {:?}", r[0]);
    let last = r.last().unwrap();
    let reason = last.collapse().unwrap_or_else(|| panic!("not flagged: {last:?}"));
    assert!(reason.starts_with("projection_rank"), "{reason}");
    assert!(last.projection_std_min > 0.5, "the scale is held: {last:?}");
}

/// A measured step is the same step: identical stats (but the reading) and bit-identical state.
#[test]
fn monitoring_changes_nothing() {
    let data = data();
    let cfg = config(VicregWeights::default(), 20);
    let mut a = Trainer::new(ModelConfig::mlp(4, 2, 64, 32), cfg.clone(), &Device::Cpu).unwrap();
    let mut b = Trainer::new(ModelConfig::mlp(4, 2, 64, 32), cfg, &Device::Cpu).unwrap();
    for _ in 0..5 {
        let sa = a.step(&data).unwrap();
        let mut sb = b.step_monitored(&data, true).unwrap();
        assert!(sb.collapse.take().is_some());
        assert_eq!(sa, sb);
    }
    for ((na, ta), (nb, tb)) in a.model().named_tensors().into_iter().zip(b.model().named_tensors()) {
        assert_eq!(na, nb);
        let (va, vb) = (ta.to_vec().unwrap(), tb.to_vec().unwrap());
        assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs");
    }
}

/// On a GPU the sample goes through a transpose and a partial download: the readings of the first
/// step (same weights, same patches) agree with the CPU's, to 1e-3 in f32 and to 10% with the
/// rounded GEMMs (whose forward values differ by a few e, docs of cpu_gpu_step.rs).
#[test]
fn gpu_readings_match_the_cpu() {
    let Some(gpu) = bagssl_testkit::gpu_or_skip("gpu_readings_match_the_cpu") else { return };
    let data = data();
    let cfg = config(VicregWeights::default(), 20);
    let mut cpu = Trainer::new(ModelConfig::mlp(4, 2, 64, 32), cfg.clone(), &Device::Cpu).unwrap();
    let c = cpu.step_monitored(&data, true).unwrap().collapse.unwrap();
    bagssl_testkit::at_each_gemm_precision(&gpu, |precision| {
        let mut dev = Trainer::new(ModelConfig::mlp(4, 2, 64, 32), cfg.clone(), &Device::Cuda(gpu.clone())).unwrap();
        let g = dev.step_monitored(&data, true).unwrap().collapse.unwrap();
        let rtol = if precision == bagssl_kernels::GemmPrecision::F32 { 1e-3 } else { 0.1 };
        let mut report = bagssl_testkit::Report::new(&format!("collapse monitor, GPU ({precision:?}) vs CPU"));
        report.check_scalar("embedding_rank", g.embedding_rank, c.embedding_rank, rtol);
        report.check_scalar("projection_rank", g.projection_rank, c.projection_rank, rtol);
        report.check_scalar("embedding_std_min", g.embedding_std_min, c.embedding_std_min, rtol);
        report.check_scalar("projection_std_min", g.projection_std_min, c.projection_std_min, rtol);
        assert_eq!((g.rows, g.embedding_dim, g.projection_dim), (c.rows, c.embedding_dim, c.projection_dim));
        report.finish();
    });
}
