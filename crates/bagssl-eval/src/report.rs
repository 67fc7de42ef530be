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
    /// Side of the grid's patches (each resized to the model's input side when it differs).
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
pub(crate) fn class_count(a: &ImageStore, b: &ImageStore) -> usize {
    let max_label = a.labels.iter().chain(&b.labels).map(|&l| l as usize + 1).max().unwrap_or(0);
    a.classes.len().max(b.classes.len()).max(max_label)
}

/// Embeds `train` and `test` with `model` and measures kNN, linear-probe and single-patch kNN
/// accuracy on `test` (the grid protocol).
pub fn evaluate(model: &BagSslModel, train: &ImageStore, test: &ImageStore, cfg: &EvalConfig) -> Result<EvalReport> {
    let ProtocolReport { knn, linear } = evaluate_protocol(model, train, test, cfg, &Protocol::Grid)?;
    Ok(EvalReport { knn, linear, knn_single_patch: knn_single_patch(model, train, test, cfg)? })
}

/// Weighted kNN accuracy on `test` of the centre grid patch's representation alone (no bag).
pub fn knn_single_patch(model: &BagSslModel, train: &ImageStore, test: &ImageStore, cfg: &EvalConfig) -> Result<f64> {
    let (grid, bi) = (Grid { patch: cfg.patch, stride: cfg.stride }, cfg.batch_images);
    let ftr = embed_single_patch(model, train, grid, bi)?;
    let fte = embed_single_patch(model, test, grid, bi)?;
    let s = splits(train, &ftr, test, &fte, model.representation_dim(), class_count(train, test));
    knn_accuracy(&s, cfg.knn_k, cfg.knn_t)
}

/// The features of both splits with the stores' labels.
pub(crate) fn splits<'a>(
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
    /// The mean over the evaluation grid ([`embed_bag`]), as [`evaluate`].
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

/// Embeds `store` as `protocol` says, (N, [`protocol_dim`]) row-major; `seed` draws the
/// `random` protocol's boxes.
pub fn embed_protocol(
    model: &BagSslModel,
    store: &ImageStore,
    cfg: &EvalConfig,
    protocol: &Protocol,
    seed: u64,
) -> Result<Vec<f32>> {
    let (grid, bi) = (Grid { patch: cfg.patch, stride: cfg.stride }, cfg.batch_images);
    match protocol {
        Protocol::Grid => embed_bag(model, store, grid, bi),
        Protocol::Whole => embed_whole(model, store, bi),
        Protocol::Random { views, count } => embed_random(model, store, views, *count, seed, bi),
        Protocol::Multiscale { sizes } => embed_multiscale(model, store, sizes, cfg.stride, bi),
        Protocol::Pyramid => embed_pyramid(model, store, grid, bi),
    }
}

/// The width of [`embed_protocol`]'s rows.
pub fn protocol_dim(model: &BagSslModel, protocol: &Protocol) -> usize {
    model.representation_dim() * if matches!(protocol, Protocol::Pyramid) { 5 } else { 1 }
}

/// Embeds `train` and `test` as `protocol` says and measures kNN and linear-probe accuracy.
pub fn evaluate_protocol(
    model: &BagSslModel,
    train: &ImageStore,
    test: &ImageStore,
    cfg: &EvalConfig,
    protocol: &Protocol,
) -> Result<ProtocolReport> {
    let ftr = embed_protocol(model, train, cfg, protocol, cfg.seed)?;
    let fte = embed_protocol(model, test, cfg, protocol, cfg.seed.wrapping_add(1))?;
    let s = splits(train, &ftr, test, &fte, protocol_dim(model, protocol), class_count(train, test));
    Ok(ProtocolReport {
        knn: knn_accuracy(&s, cfg.knn_k, cfg.knn_t)?,
        linear: linear_probe(&s, cfg.probe_epochs, cfg.seed)?,
    })
}
