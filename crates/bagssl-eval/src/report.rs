//! One-call evaluation of an encoder: bag embeddings of both splits, kNN, linear probe, and the
//! single-patch kNN baseline — the numbers of `eval.json` (README.md, "Outputs").

use bagssl_data::{ImageStore, Views};
use bagssl_model::BagSslModel;
use serde::{Deserialize, Serialize};

use crate::embed::{embed_bag, embed_multiscale, embed_pyramid, embed_random, embed_single_patch, embed_whole, Grid};
use crate::knn::knn_accuracy;
use crate::probe::linear_probe;
use crate::Result;
use crate::{Labeled, Splits};

/// Evaluation settings (the `[eval]` config section plus the patch size).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub patch: usize,
    pub stride: usize,
    pub knn_k: usize,
    pub knn_t: f64,
    pub probe_epochs: usize,
    pub seed: u64,
    /// Images per embedding batch (memory: see [`embed_bag`]).
    pub batch_images: usize,
}

impl Default for EvalConfig {
    /// The defaults of docs/DEFINITIONS.md §8-§10 (and of the `[eval]` config section, README.md): patch 8,
    /// stride 2, k 20, t 0.1, 50 probe epochs.
    fn default() -> Self {
        EvalConfig { patch: 8, stride: 2, knn_k: 20, knn_t: 0.1, probe_epochs: 50, seed: 0, batch_images: 64 }
    }
}

/// Test accuracies, as fractions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Weighted kNN on bag embeddings.
    pub knn: f64,
    /// Linear probe on bag embeddings.
    pub linear: f64,
    /// Weighted kNN on the centre patch's embedding alone (no bag).
    pub knn_single_patch: f64,
}

/// Number of classes covering both splits' class lists and labels.
fn class_count(a: &ImageStore, b: &ImageStore) -> usize {
    let max_label = a.labels.iter().chain(&b.labels).map(|&l| l as usize + 1).max().unwrap_or(0);
    a.classes.len().max(b.classes.len()).max(max_label)
}

/// Embeds `train` and `test` with `model` and measures kNN, linear-probe and single-patch kNN
/// accuracy on `test`.
pub fn evaluate(model: &BagSslModel, train: &ImageStore, test: &ImageStore, cfg: &EvalConfig) -> Result<EvalReport> {
    let dim = model.hidden();
    let classes = class_count(train, test);
    let (grid, bi) = (Grid { patch: cfg.patch, stride: cfg.stride }, cfg.batch_images);

    let ftr = embed_bag(model, train, grid, bi)?;
    let fte = embed_bag(model, test, grid, bi)?;
    let bags = splits(train, &ftr, test, &fte, dim, classes);
    let knn = knn_accuracy(&bags, cfg.knn_k, cfg.knn_t)?;
    let linear = linear_probe(&bags, cfg.probe_epochs, cfg.seed)?;
    drop((ftr, fte));

    let single_tr = embed_single_patch(model, train, grid, bi)?;
    let single_te = embed_single_patch(model, test, grid, bi)?;
    let knn_single_patch =
        knn_accuracy(&splits(train, &single_tr, test, &single_te, dim, classes), cfg.knn_k, cfg.knn_t)?;
    Ok(EvalReport { knn, linear, knn_single_patch })
}

/// The features of both splits with the stores' labels.
fn splits<'a>(
    train: &'a ImageStore,
    ftr: &'a [f32],
    test: &'a ImageStore,
    fte: &'a [f32],
    dim: usize,
    classes: usize,
) -> Splits<'a> {
    let train = Labeled { features: ftr, labels: &train.labels };
    Splits { train, test: Labeled { features: fte, labels: &test.labels }, dim, classes }
}

/// An evaluation protocol: how an image becomes one embedding (README.md, `eval.protocols`).
#[derive(Clone, Debug, PartialEq)]
pub enum Protocol {
    /// The mean over the evaluation grid at the input side ([`embed_bag`]), as [`evaluate`].
    Grid,
    /// The whole image resized to the input side, one forward ([`embed_whole`]).
    Whole,
    /// The mean of `count` patches drawn as `views` says ([`embed_random`]); the training split
    /// draws with the seed, the test split with the seed + 1.
    Random { views: Views, count: usize },
    /// The mean over grids of several patch sides (at the evaluation stride), each patch resized
    /// to the input side ([`embed_multiscale`]).
    Multiscale { sizes: Vec<usize> },
    /// The grid mean and its four quadrant means, concatenated (5 x hidden; [`embed_pyramid`]).
    Pyramid,
}

/// Test accuracies of one protocol, as fractions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolReport {
    pub knn: f64,
    pub linear: f64,
}

/// Embeds `train` and `test` as `protocol` says and measures kNN and linear-probe accuracy.
pub fn evaluate_protocol(
    model: &BagSslModel,
    train: &ImageStore,
    test: &ImageStore,
    cfg: &EvalConfig,
    protocol: &Protocol,
) -> Result<ProtocolReport> {
    let bi = cfg.batch_images;
    let embed = |store: &ImageStore, seed: u64| match protocol {
        Protocol::Grid => embed_bag(model, store, Grid { patch: cfg.patch, stride: cfg.stride }, bi),
        Protocol::Whole => embed_whole(model, store, bi),
        Protocol::Random { views, count } => embed_random(model, store, views, *count, seed, bi),
        Protocol::Multiscale { sizes } => embed_multiscale(model, store, sizes, cfg.stride, bi),
        Protocol::Pyramid => embed_pyramid(model, store, Grid { patch: cfg.patch, stride: cfg.stride }, bi),
    };
    let dim = if matches!(protocol, Protocol::Pyramid) { 5 * model.hidden() } else { model.hidden() };
    let ftr = embed(train, cfg.seed)?;
    let fte = embed(test, cfg.seed.wrapping_add(1))?;
    let s = splits(train, &ftr, test, &fte, dim, class_count(train, test));
    Ok(ProtocolReport {
        knn: knn_accuracy(&s, cfg.knn_k, cfg.knn_t)?,
        linear: linear_probe(&s, cfg.probe_epochs, cfg.seed)?,
    })
}
