//! `bagssl-train eval`: kNN, linear probe and single-patch kNN of a checkpoint's encoder.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bagssl_model::BagSslModel;
use serde_json::json;

use crate::cli::{ConfigArgs, EvalArgs};
use crate::commands::train::{device_label, evaluate_stores, report_json};
use crate::setup;

pub fn run(args: EvalArgs) -> Result<()> {
    let cfg = config_for_checkpoint(&args.checkpoint, &args.cfg)?;
    if cfg.data.path.is_empty() {
        bail!("eval: --data is required (the training split: kNN neighbours and the probe's training set)");
    }
    let device = setup::resolve_device(&cfg)?;
    let model = BagSslModel::load(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let mut data = setup::load_datasets(&cfg, true)?;
    setup::use_checkpoint_normalization(&args.checkpoint, &mut [&mut data.train, &mut data.test])?;
    if model.config().patch > data.train.height.min(data.train.width) {
        bail!("{}: patch size {} is larger than the images", args.checkpoint.display(), model.config().patch);
    }
    let t = std::time::Instant::now();
    let report = evaluate_stores(&cfg, &model, &data.train, &data.test)?;
    let out = json!({
        "checkpoint": args.checkpoint.display().to_string(),
        "data": data.source,
        "trained": report_json(&report),
        "eval_seconds": t.elapsed().as_secs_f64(),
        "device": device_label(&device),
    });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(path) = &args.out {
        setup::write_atomic(path, text.as_bytes())?;
    }
    println!("{text}");
    Ok(())
}

/// The config a checkpoint was trained with (its run's config.toml, else the defaults, unless
/// `--config` names one), with the shorthands and `--set` on top.
pub fn config_for_checkpoint(checkpoint: &Path, args: &ConfigArgs) -> Result<crate::config::Config> {
    if !checkpoint.is_file() {
        bail!("checkpoint {} does not exist", checkpoint.display());
    }
    let mut args = args.clone();
    if args.config.is_none() {
        let beside = checkpoint.parent().unwrap_or(Path::new(".")).join("config.toml");
        args.config = beside.is_file().then_some(beside);
    }
    let mut cfg = setup::resolve_config(&args)?;
    // New training data without a test split: hold out of it, not the run's old eval_path.
    if args.eval_data.is_none() && args.data.is_some() {
        cfg.data.eval_path.clear();
    }
    Ok(cfg)
}
