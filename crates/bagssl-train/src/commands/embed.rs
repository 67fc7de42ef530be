//! `bagssl-train embed`: bag-of-patch image embeddings of a dataset, to safetensors.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bagssl_data::{LoadOptions, Split};
use bagssl_model::BagSslModel;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::cli::{ConfigArgs, EmbedArgs};
use crate::commands::eval::config_for_checkpoint;
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
    let model = BagSslModel::load(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let resize = (cfg.data.resize.len() == 2).then(|| (cfg.data.resize[0], cfg.data.resize[1]));
    let mut store = bagssl_data::load(
        &args.data,
        &LoadOptions { split, resize, cache_dir: setup::cache_dir(&cfg), progress: true },
    )?;
    setup::use_checkpoint_normalization(&args.checkpoint, &mut [&mut store])?;
    let patch = model.config().patch;
    cfg.validate_for_images(store.height, store.width, &args.data.display().to_string())?;
    let t = std::time::Instant::now();
    let emb = bagssl_eval::embed_bag(
        &model,
        &store,
        bagssl_eval::Grid { patch, stride: cfg.eval.stride },
        cfg.eval.batch_images,
    )?;
    let dim = model.hidden();
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
        ("patch".to_string(), patch.to_string()),
        ("stride".to_string(), cfg.eval.stride.to_string()),
        // The normalisation the images went through (the training run's, when recorded).
        ("normalize_mean".to_string(), serde_json::to_string(&store.mean)?),
        ("normalize_std".to_string(), serde_json::to_string(&store.std)?),
        ("aggregation".to_string(), "mean of eval-mode encoder outputs over the grid".to_string()),
    ]);
    let bytes = safetensors::serialize(tensors, Some(meta))?;
    setup::write_atomic(&args.out, &bytes)?;
    eprintln!(
        "bagssl: {} embeddings of dim {dim} in {:.1} s -> {}",
        store.len(),
        t.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
