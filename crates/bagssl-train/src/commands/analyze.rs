//! `bagssl-train analyze --checkpoint C [--data D] --out DIR`: the analyses of issue 14 on a
//! checkpoint (without `--data`, its run's dataset): whole image vs bag as the bag grows, patch
//! nearest neighbours in h and z, kNN accuracy by aggregation. Writes `DIR/analysis.json` and
//! one PNG per analysis; the numbers come from `bagssl_eval::analysis`, the figures from
//! `crate::analysis_plot`.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bagssl_eval::analysis::{self, Aggregation, BagCurve, NeighbourOptions};
use bagssl_eval::{EvalConfig, Protocol};
use bagssl_model::BagSslModel;
use serde_json::json;

use crate::cli::AnalyzeArgs;
use crate::commands::eval::config_for_checkpoint;
use crate::commands::train::{device_label, eval_config};
use crate::{analysis_plot, setup};

pub const JSON: &str = "analysis.json";
pub const WHOLE_VS_BAG: &str = "whole_vs_bag.png";
pub const NEIGHBOURS: &str = "neighbours.png";
pub const ACCURACY: &str = "accuracy.png";

/// Queries the locality numbers average over (the figure shows `--queries` of them).
const STAT_QUERIES: usize = 256;

/// One kNN accuracy of the accuracy analysis.
pub struct Accuracy {
    pub name: String,
    pub knn: f64,
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut cfg = config_for_checkpoint(&args.checkpoint, &args.cfg)?;
    let device = setup::resolve_device(&cfg)?;
    let model = BagSslModel::load(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let mut data = setup::load_datasets(&cfg, !args.quiet)?;
    setup::use_checkpoint_normalization(&args.checkpoint, &mut [&mut data.train, &mut data.test])?;
    let (p, stride, seed, bi) = (model.config().patch, cfg.eval.stride, cfg.seed, cfg.eval.batch_images);
    let (height, width) = (data.train.height, data.train.width);
    if p > height.min(width) {
        bail!("{}: patch size {p} is larger than the {height}x{width} images", args.checkpoint.display());
    }
    if args.images == 0 || args.test_images == 0 || args.pool_images < 2 || args.queries == 0 || args.neighbours == 0 {
        bail!("analyze: --images, --test-images, --queries and --neighbours must be positive and --pool-images at least 2");
    }
    let scales =
        if args.scales.is_empty() { analysis::default_scales(p, height, width, stride) } else { args.scales.clone() };
    if let Some(s) = scales.iter().find(|&&s| s == 0 || s > height || s > width) {
        bail!("--scales: patch side {s} does not fit the {height}x{width} images");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    // Seeded samples: distinct seeds so the pool is not simply the first kNN queries.
    let train = analysis::seeded_subset(&data.train, args.images, seed);
    let test = analysis::seeded_subset(&data.test, args.test_images, seed.wrapping_add(1));
    let pool = analysis::seeded_subset(&data.test, args.pool_images, seed.wrapping_add(2));

    // Every protocol of the eval crate (the run's own settings for `random`, which only runs
    // when the run's config asks for it: its many patches per image are slow on a CPU).
    cfg.eval.scales = if cfg.eval.scales.is_empty() { scales.clone() } else { cfg.eval.scales.clone() };
    let wanted: Vec<String> = cfg.eval.protocols.clone();
    cfg.eval.protocols = crate::config::PROTOCOLS.iter().map(|s| s.to_string()).collect();
    let mut aggregations: Vec<(String, Aggregation)> = vec![("single patch".into(), Aggregation::SinglePatch)];
    for (name, protocol) in cfg.protocols()? {
        let label = match &protocol {
            Protocol::Grid => format!("grid bag ({p}px)"),
            Protocol::Whole => "whole image".into(),
            Protocol::Multiscale { sizes } if sizes.len() < 2 => continue,
            Protocol::Multiscale { sizes } => {
                format!("multiscale ({}px)", sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("+"))
            }
            Protocol::Pyramid => "pyramid".into(),
            Protocol::Random { count, .. } if wanted.contains(&name) => format!("random ({count})"),
            Protocol::Random { .. } => continue,
        };
        aggregations.push((label, Aggregation::Protocol(protocol)));
    }

    let steps = 2 + scales.len() + aggregations.len();
    let bar = setup::progress_bar(
        steps as u64,
        args.quiet,
        "{spinner} analyze [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar.set_message("whole-image embeddings");
    let whole = bagssl_eval::embed_whole(&model, &pool, bi)?;
    bar.inc(1);
    let mut curves: Vec<BagCurve> = Vec::new();
    for &side in &scales {
        bar.set_message(format!("whole vs bag, {side}px patches"));
        curves.push(analysis::whole_vs_bag(&model, &pool, &whole, side, stride, seed, bi)?);
        bar.inc(1);
    }
    bar.set_message("patch neighbours in h and z");
    let o = NeighbourOptions {
        stride,
        k: args.neighbours,
        shown: args.queries,
        stat_queries: STAT_QUERIES,
        seed,
        batch_images: bi,
    };
    let neighbours = analysis::patch_neighbours(&model, &pool, &o)?;
    bar.inc(1);
    // The grids at the input side, whatever `eval.patch` says: the figures label them so.
    let ec = EvalConfig { patch: p, ..eval_config(&cfg, &model) };
    let mut accuracies = Vec::new();
    for (name, a) in &aggregations {
        bar.set_message(format!("kNN, {name}"));
        match analysis::aggregation_knn(&model, &train, &test, a, &ec) {
            Ok(knn) => accuracies.push(Accuracy { name: name.clone(), knn }),
            // A pyramid needs a patch centre in every quadrant: not every grid has one.
            Err(e) if matches!(a, Aggregation::Protocol(Protocol::Pyramid)) => {
                bar.println(format!("bagssl: skipping the pyramid: {e}"))
            }
            Err(e) => return Err(e).with_context(|| format!("kNN of the {name} aggregation")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let label = run_label(&args.checkpoint);
    let report = json!({
        "checkpoint": args.checkpoint.display().to_string(),
        "data": data.source,
        "device": device_label(&device),
        "seconds": t0.elapsed().as_secs_f64(),
        "model": {"patch": p, "hidden": model.hidden()},
        "seed": seed,
        "whole_vs_bag": {"images": pool.len(), "stride": stride, "scales": curves},
        "neighbours": neighbours,
        "accuracy": {
            "train_images": train.len(),
            "test_images": test.len(),
            "knn_k": cfg.eval.knn_k,
            "knn_t": cfg.eval.knn_t,
            "stride": stride,
            "knn": accuracies.iter().map(|a| json!({"aggregation": a.name, "knn": a.knn})).collect::<Vec<_>>(),
        },
    });
    let text = serde_json::to_string_pretty(&report)?;
    setup::write_atomic(&args.out.join(JSON), text.as_bytes())?;
    analysis_plot::whole_vs_bag(&curves, &label).save(&args.out.join(WHOLE_VS_BAG))?;
    analysis_plot::save_neighbours(&neighbours, &pool, &label, &args.out.join(NEIGHBOURS))?;
    let (k, n, m) = (cfg.eval.knn_k, train.len(), test.len());
    analysis_plot::accuracy(&accuracies, &format!("{label}: kNN (k = {k}) of {m} held-out images, {n} neighbours"))
        .save(&args.out.join(ACCURACY))?;
    print_summary(&curves, &neighbours, &accuracies);
    println!("wrote {} and 3 figures in {:.0} s", args.out.join(JSON).display(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// The checkpoint's run directory as the figures name it (its last two components).
fn run_label(checkpoint: &Path) -> String {
    let dir = checkpoint.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parts: Vec<_> = dir.components().rev().take(2).collect();
    parts.into_iter().rev().collect::<std::path::PathBuf>().display().to_string()
}

fn print_summary(curves: &[BagCurve], n: &analysis::NeighbourReport, acc: &[Accuracy]) {
    for c in curves {
        let pts: Vec<String> = c.k.iter().zip(&c.cosine_whole).map(|(k, v)| format!("{k}:{v:.3}")).collect();
        println!("whole vs bag, {}px ({} patches): cos(whole, mean of k) {}", c.side, c.grid, pts.join(" "));
    }
    for (name, l) in [("h", &n.h), ("z", &n.z), ("chance", &n.chance)] {
        println!(
            "neighbours {name:<6}: offset {:5.2} px, same position {:5.1}%, same class {:5.1}%",
            l.mean_offset_px,
            100.0 * l.same_position,
            100.0 * l.same_class
        );
    }
    for a in acc {
        println!("kNN {:<24} {:5.1}%", a.name, 100.0 * a.knn);
    }
}
