//! `bagssl-train embed`: image embeddings of a dataset by the first of `eval.protocols` (the
//! grid's bag of patches by default) and `eval.feature`, to safetensors.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bagssl_data::Split;
use bagssl_model::BagSslModel;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::cli::{ConfigArgs, EmbedArgs};
use crate::commands::eval::config_for_checkpoint;
use crate::commands::train::eval_config;
use crate::setup;

pub fn run(args: EmbedArgs) -> Result<()> {
    let cfg_args = ConfigArgs {
        data: Some(args.data.clone()),
        device: args.device.clone(),
        set: args.set.clone(),
        ..ConfigArgs::default()
    };
    let cfg = config_for_checkpoint(&args.checkpoint, &cfg_args)?;
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        s => bail!("--split {s:?}: expected train or test"),
    };
    let device = setup::resolve_device(&cfg)?;
    let mut model = BagSslModel::load(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    model.set_representation(cfg.eval_feature()?).context("config key `eval.feature`")?;
    let (protocol_name, protocol) = cfg.protocols()?.into_iter().next().context("no evaluation protocol")?;
    let mut store = bagssl_data::load(&args.data, &setup::load_options(&cfg, split, true))?;
    setup::use_checkpoint_normalization(&args.checkpoint, &mut [&mut store])?;
    let patch = model.config().patch;
    cfg.validate_for_images(store.height, store.width, &args.data.display().to_string())?;
    let t = std::time::Instant::now();
    let emb = bagssl_eval::embed_protocol(&model, &store, &eval_config(&cfg, &model), &protocol, cfg.seed)?;
    let dim = bagssl_eval::protocol_dim(&model, &protocol);
    let labels: Vec<i64> = store.labels.iter().map(|&l| i64::from(l)).collect();
    let emb_bytes: &[u8] = bytemuck::cast_slice(&emb);
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let tensors = [
        ("embeddings", TensorView::new(Dtype::F32, vec![store.len(), dim], emb_bytes)?),
        ("labels", TensorView::new(Dtype::I64, vec![store.len()], &label_bytes)?),
    ];
    let meta: HashMap<String, String> = HashMap::from([
        ("classes".to_string(), serde_json::to_string(&store.classes)?),
        ("checkpoint".to_string(), args.checkpoint.display().to_string()),
        ("input_size".to_string(), patch.to_string()),
        ("protocol".to_string(), protocol_name.clone()),
        ("feature".to_string(), model.representation().name()),
        ("patch".to_string(), cfg.eval_patch(patch).to_string()),
        ("stride".to_string(), cfg.eval.stride.to_string()),
        ("scales".to_string(), serde_json::to_string(&cfg.eval.scales)?),
        ("random_patches".to_string(), cfg.eval.random_patches.to_string()),
        // The normalisation the images went through (the training run's, when recorded).
        ("normalize_mean".to_string(), serde_json::to_string(&store.mean)?),
        ("normalize_std".to_string(), serde_json::to_string(&store.std)?),
        ("aggregation".to_string(), aggregation(&protocol_name).to_string()),
    ]);
    let bytes = safetensors::serialize(tensors, Some(meta))?;
    setup::write_atomic(&args.out, &bytes)?;
    eprintln!(
        "bagssl: {} {protocol_name} embeddings ({}) of dim {dim} in {:.1} s -> {}",
        store.len(),
        model.representation().name(),
        t.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// What an embedding of `protocol` is, in words, for the file's metadata.
fn aggregation(protocol: &str) -> &'static str {
    match protocol {
        "grid" => "mean over the evaluation grid (eval.patch every eval.stride pixels) of eval-mode representations",
        "multiscale" => "mean over the grids of every eval.scales side, each patch resized to input_size",
        "whole" => "the whole image resized to input_size, one eval-mode forward",
        "random" => "mean over eval.random_patches random-resized patches (the training views, not augmented)",
        "pyramid" => "the grid mean, then the means of the four quadrants' grid patches, concatenated",
        _ => "see the protocol",
    }
}
