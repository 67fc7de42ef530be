//! `bagssl-train train`: train an encoder on a dataset, evaluate it beside the untrained one,
//! and leave a run directory (config.toml, metrics.jsonl, checkpoint.safetensors, eval.json).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bagssl_autograd::Device;
use bagssl_data::ImageStore;
use bagssl_eval::{EvalReport, ProtocolReport};
use bagssl_model::{BagSslModel, Trainer};
use serde_json::json;

use crate::cli::TrainArgs;
use crate::config::Config;
use crate::setup::{self, Datasets, MetricsLog};

pub const CHECKPOINT: &str = "checkpoint.safetensors";

pub fn run(args: TrainArgs) -> Result<()> {
    let mut cfg_args = args.cfg.clone();
    // A resumed run keeps the config it was started with (written beside its checkpoint).
    if let (Some(ckpt), None) = (&args.resume, &cfg_args.config) {
        let beside = ckpt.parent().unwrap_or(Path::new(".")).join("config.toml");
        if !beside.exists() {
            bail!("--resume {}: no config.toml beside the checkpoint; pass the run's --config", ckpt.display());
        }
        cfg_args.config = Some(beside);
    }
    let cfg = setup::resolve_config(&cfg_args)?;
    let device = setup::resolve_device(&cfg)?;
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(ckpt)) => ckpt.parent().unwrap_or(Path::new(".")).to_path_buf(),
        (None, None) => setup::default_run_dir(),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create run directory {}", out.display()))?;

    let mut data = setup::load_datasets(&cfg, !args.quiet)?;
    if let Some(ckpt) = &args.resume {
        // A resumed run goes on normalising as it started.
        setup::use_checkpoint_normalization(ckpt, &mut [&mut data.train, &mut data.test])?;
    }
    eprintln!(
        "bagssl: data {} | {}x{} images | device {}",
        data.source,
        data.train.height,
        data.train.width,
        device.name()
    );
    setup::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
    if cfg.train.tensorboard {
        metrics.add_tensorboard(&out)?;
    }

    let (model_cfg, train_cfg) = crate::setup::model_and_train_config(&cfg, data.train.len())?;
    let mut trainer = match &args.resume {
        Some(ckpt) => {
            let t = Trainer::resume(ckpt, &data.train, &device)
                .with_context(|| format!("cannot resume from {}", ckpt.display()))?;
            if t.model().config() != &model_cfg || t.config() != &train_cfg {
                bail!("--resume {}: the checkpoint was written with another model or training config", ckpt.display());
            }
            eprintln!("bagssl: resumed {} at step {}", ckpt.display(), t.steps_done());
            t
        }
        None => Trainer::new(model_cfg.clone(), train_cfg.clone(), &device)?,
    };

    let total = train_cfg.total_steps;
    let progress = setup::progress_bar(
        total,
        args.quiet,
        "{spinner} train [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
    );
    progress.set_position(trainer.steps_done());
    let ckpt_path = out.join(CHECKPOINT);
    let started = Instant::now();
    let steps_at_start = trainer.steps_done();
    let stop_at = args.max_steps.map_or(total, |m| m.min(total));
    let (log_every, checkpoint_every) = (cfg.train.log_every as u64, cfg.train.checkpoint_every as u64);
    let last_checkpoint = args.resume.as_ref().map(|_| trainer.steps_done());
    let mut monitor = Monitor { warned: false, last: None, last_checkpoint };
    while trainer.steps_done() < stop_at {
        let next = trainer.steps_done() + 1;
        let logged = next % log_every == 0 || next == total;
        let checkpointing = checkpoint_every > 0 && next % checkpoint_every == 0;
        // A checkpoint must not keep a collapsed model when collapses stop the run: measure it too.
        let measure = logged || (cfg.train.stop_on_collapse && checkpointing);
        let s = trainer.step_monitored(&data.train, measure).map_err(|e| {
            progress.abandon();
            anyhow::Error::new(e)
                .context(format!("training stopped; the last checkpoint in {} (if any) is intact", out.display()))
        })?;
        progress.set_position(s.step);
        if s.collapse.is_some() {
            monitor.last = s.collapse;
        }
        progress.set_message(match &monitor.last {
            Some(c) => format!("loss {:.4} | rank h {:.1} z {:.1}", s.loss(), c.embedding_rank, c.projection_rank),
            None => format!("loss {:.4}", s.loss()),
        });
        if logged {
            // step, epoch, lr, the loss's own scalars and the monitor's (StepStats' serialization), plus these.
            let mut line = serde_json::to_value(&s)?;
            line["event"] = json!("step");
            line["elapsed_s"] = json!(started.elapsed().as_secs_f64());
            metrics.write(&line)?;
        }
        if let Some(reason) = s.collapse.as_ref().and_then(|c| c.collapse()) {
            if cfg.train.stop_on_collapse {
                progress.abandon();
                metrics.write(&json!({"event": "collapse", "step": s.step, "reason": reason, "stopped": true}))?;
                write_figure(&out);
                bail!(
                    "training stopped at step {} (train.stop_on_collapse): the representation collapsed ({reason}); {}",
                    s.step,
                    monitor.kept(&ckpt_path)
                );
            }
            if !monitor.warned {
                metrics.write(&json!({"event": "collapse", "step": s.step, "reason": reason, "stopped": false}))?;
                progress.suspend(|| {
                    eprintln!(
                        "bagssl: warning: step {}: the representation looks collapsed ({reason}); see docs/DEFINITIONS.md §12",
                        s.step
                    )
                });
                monitor.warned = true;
            }
        } else if s.collapse.is_some() {
            monitor.warned = false;
        }
        if checkpointing {
            trainer.save(&ckpt_path)?;
            monitor.last_checkpoint = Some(s.step);
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    trainer.save(&ckpt_path)?;
    let steps_run = trainer.steps_done() - steps_at_start;
    let images_per_second = steps_run as f64 * cfg.train.batch_images as f64 / train_seconds.max(1e-9);
    eprintln!(
        "bagssl: {steps_run} steps in {train_seconds:.1} s ({images_per_second:.0} images/s); checkpoint {}",
        ckpt_path.display()
    );

    if trainer.steps_done() < total {
        write_figure(&out);
        println!(
            "stopped at step {} of {total} (--max-steps); continue with: bagssl-train train --resume {}",
            trainer.steps_done(),
            ckpt_path.display()
        );
        return Ok(());
    }

    let trained = evaluate(&cfg, trainer.model(), &data, "trained", trainer.steps_done(), &mut metrics)?;
    let untrained = if cfg.eval.untrained {
        let init = BagSslModel::new(model_cfg, cfg.seed, &device)?;
        Some(evaluate(&cfg, &init, &data, "untrained", 0, &mut metrics)?)
    } else {
        None
    };
    let report = json!({
        "trained": report_json(&trained),
        "untrained": untrained.as_ref().map(report_json),
        "train_seconds": train_seconds,
        "images_per_second": images_per_second,
        "device": device_label(&device),
        "precision": setup::precision_label(&cfg),
        "steps": trainer.steps_done(),
        "data": data.source,
    });
    setup::write_atomic(&out.join("eval.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    write_figure(&out);
    print_table(&trained.report, untrained.as_ref().map(|u| &u.report));
    println!("run directory: {}", out.display());
    Ok(())
}

/// What the collapse monitor remembers between steps.
struct Monitor {
    /// Whether the last reading was a collapse already warned about (warn once per episode).
    warned: bool,
    /// The latest reading (shown in the progress bar).
    last: Option<bagssl_model::CollapseStats>,
    /// Step of the checkpoint on disk, when this run wrote it or resumed from it.
    last_checkpoint: Option<u64>,
}

impl Monitor {
    fn kept(&self, path: &Path) -> String {
        match self.last_checkpoint {
            Some(step) => format!("the last good checkpoint, {} (step {step}), is kept", path.display()),
            None => format!(
                "no checkpoint was written before it (set train.checkpoint_every to keep one in {})",
                path.display()
            ),
        }
    }
}

/// The run's figure (`plot`'s), `metrics.png` in the run directory. A figure that cannot be drawn
/// is a warning: the run's results are written already.
fn write_figure(out: &Path) {
    let png = out.join(crate::commands::plot::FIGURE);
    if let Err(e) = crate::commands::plot::write(out, &png) {
        eprintln!("bagssl: warning: no figure: {e:#}");
    }
}

pub fn device_label(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(g) => g.name().to_string(),
    }
}

/// kNN, linear probe and single-patch kNN of `model` (trained for `step` steps) on the run's
/// splits, and each protocol's.
pub fn evaluate(
    cfg: &Config,
    model: &BagSslModel,
    data: &Datasets,
    label: &str,
    step: u64,
    metrics: &mut MetricsLog,
) -> Result<Evaluation> {
    let t = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("evaluating the {label} encoder"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let r = evaluate_stores(cfg, model, &data.train, &data.test)?;
    spinner.finish_and_clear();
    metrics.write(&json!({
        "event": "eval", "model": label, "step": step, "knn": r.report.knn, "linear": r.report.linear,
        "knn_single_patch": r.report.knn_single_patch, "protocols": protocols_json(&r),
        "eval_s": t.elapsed().as_secs_f64(),
    }))?;
    Ok(r)
}

/// An evaluation: today's report (its `knn` / `linear` those of the first protocol) and every
/// protocol's accuracies, in `eval.protocols` order.
pub struct Evaluation {
    pub report: EvalReport,
    pub protocols: Vec<(String, ProtocolReport)>,
}

/// Seed of the `eval.train_images` subset: fixed, so runs of every seed are evaluated alike.
const EVAL_BANK_SEED: u64 = 54321;

pub fn evaluate_stores(cfg: &Config, model: &BagSslModel, train: &ImageStore, test: &ImageStore) -> Result<Evaluation> {
    let ec = eval_config(cfg, model);
    let bank;
    let train = match cfg.eval.train_images {
        n if n > 0 && n < train.len() => {
            bank = bagssl_eval::analysis::seeded_subset(train, n, EVAL_BANK_SEED);
            &bank
        }
        _ => train,
    };
    let featured;
    let model = match cfg.eval_feature()? {
        bagssl_model::Representation::Encoder => model,
        r => {
            featured = with_representation(model, r)?;
            &featured
        }
    };
    let mut protocols = Vec::new();
    for (name, protocol) in cfg.protocols()? {
        protocols.push((name, bagssl_eval::evaluate_protocol(model, train, test, &ec, &protocol)?));
    }
    let first = protocols.first().map(|(_, r)| *r).context("no evaluation protocol")?;
    let knn_single_patch = bagssl_eval::knn_single_patch(model, train, test, &ec)?;
    let report = EvalReport { knn: first.knn, linear: first.linear, knn_single_patch };
    Ok(Evaluation { report, protocols })
}

/// The `[eval]` section as the evaluation crate takes it, for `model`.
pub fn eval_config(cfg: &Config, model: &BagSslModel) -> bagssl_eval::EvalConfig {
    bagssl_eval::EvalConfig {
        patch: cfg.eval_patch(model.config().patch),
        stride: cfg.eval.stride,
        knn_k: cfg.eval.knn_k,
        knn_t: cfg.eval.knn_t,
        probe_epochs: cfg.eval.probe_epochs,
        batch_images: cfg.eval.batch_images,
        seed: cfg.seed,
    }
}

/// A copy of `model` whose eval-mode representation is `r` (a projector layer's output).
pub fn with_representation(model: &BagSslModel, r: bagssl_model::Representation) -> Result<BagSslModel> {
    let mut copy = model.to_device(model.device())?;
    copy.set_representation(r)?;
    Ok(copy)
}

fn protocols_json(e: &Evaluation) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> =
        e.protocols.iter().map(|(n, r)| (n.clone(), json!({"knn": r.knn, "linear": r.linear}))).collect();
    serde_json::Value::Object(m)
}

pub fn report_json(e: &Evaluation) -> serde_json::Value {
    let r = &e.report;
    json!({"knn": r.knn, "linear": r.linear, "knn_single_patch": r.knn_single_patch, "protocols": protocols_json(e)})
}

fn print_table(trained: &EvalReport, untrained: Option<&EvalReport>) {
    println!();
    println!("{:<12} {:>8} {:>8} {:>20}", "encoder", "kNN", "linear", "kNN (single patch)");
    let row = |name: &str, r: &EvalReport| {
        println!(
            "{:<12} {:>7.1}% {:>7.1}% {:>19.1}%",
            name,
            100.0 * r.knn,
            100.0 * r.linear,
            100.0 * r.knn_single_patch
        )
    };
    if let Some(u) = untrained {
        row("untrained", u);
    }
    row("trained", trained);
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use bagssl_data::{synthetic, SyntheticSpec};
    use bagssl_model::ModelConfig;

    /// `eval.train_images` evaluates against a fixed seeded subset of the training split (the
    /// same whatever the run seed), and at or above the split's size against all of it.
    #[test]
    fn eval_train_images_takes_a_fixed_seeded_subset() {
        let all = synthetic(&SyntheticSpec { images: 90, classes: 3, height: 12, width: 12, seed: 2 });
        let (train, test) = all.split_holdout(0.2, 1);
        let model = BagSslModel::new(ModelConfig::mlp(8, 1, 16, 16), 0, &Device::Cpu).unwrap();
        let mut cfg = Config::default();
        cfg.eval.probe_epochs = 3;
        cfg.eval.stride = 4;
        let knn = |cfg: &Config, train: &ImageStore| evaluate_stores(cfg, &model, train, &test).unwrap().report;
        let full = knn(&cfg, &train);
        cfg.eval.train_images = 30;
        let sub = knn(&cfg, &train);
        let bank = bagssl_eval::analysis::seeded_subset(&train, 30, EVAL_BANK_SEED);
        cfg.eval.train_images = 0;
        assert_eq!(sub, knn(&cfg, &bank), "the subset is the seeded one");
        cfg.seed = 7;
        cfg.eval.train_images = 30;
        let other_seed = evaluate_stores(&cfg, &model, &train, &test).unwrap().report.knn;
        cfg.seed = 0;
        assert_eq!(other_seed, knn(&cfg, &bank).knn, "kNN does not depend on the run seed");
        cfg.eval.train_images = train.len();
        assert_eq!(knn(&cfg, &train), full, "a bound at the split's size changes nothing");
    }
}
