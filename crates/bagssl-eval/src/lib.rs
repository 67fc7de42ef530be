//! bagssl-eval: how good is a BagSSL encoder? Image embeddings are the mean of the eval-mode
//! encoder over every grid patch (the "bag of patch embeddings", docs/DEFINITIONS.md §8); their quality is
//! measured with a weighted cosine kNN and a linear probe, as the PyTorch reference does.
//!
//! - [`embed`]: grid / multi-scale / single-patch / whole-image / random-patch / pyramid embeddings of a whole
//!   [`bagssl_data::ImageStore`].
//! - [`knn`]: weighted kNN (GEMM similarities in blocks).
//! - [`probe`]: multinomial logistic regression on standardized features (GEMM batches, AdamW).
//! - [`report`]: `EvalConfig` -> `EvalReport` in one call.
//! - [`analysis`]: whole image vs bag, patch nearest neighbours in h and z, kNN by aggregation.

pub mod analysis;
pub mod embed;
pub mod knn;
pub mod probe;
pub mod report;

pub use embed::{
    centre_position, embed_bag, embed_multiscale, embed_patches, embed_pyramid, embed_random, embed_single_patch,
    embed_whole, Grid,
};
pub use knn::{knn_accuracy, knn_predict};
pub use probe::{linear_probe, ProbeOptions};
pub use report::{
    embed_protocol, evaluate, evaluate_protocol, knn_single_patch, protocol_dim, EvalConfig, EvalReport, Protocol,
    ProtocolReport,
};

/// Row-major features (one row per image) and their class labels.
#[derive(Clone, Copy, Debug)]
pub struct Labeled<'a> {
    pub features: &'a [f32],
    pub labels: &'a [u32],
}

/// What kNN and the linear probe evaluate: labelled features of both splits, their width and the
/// number of classes.
#[derive(Clone, Copy, Debug)]
pub struct Splits<'a> {
    pub train: Labeled<'a>,
    pub test: Labeled<'a>,
    pub dim: usize,
    pub classes: usize,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] bagssl_model::ModelError),
    #[error(transparent)]
    Autograd(#[from] bagssl_autograd::Error),
    #[error("evaluation: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Number of rows of a flat `(rows, dim)` matrix, checking that it is whole.
pub(crate) fn rows_of(what: &str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(EvalError::Invalid(format!("{what}: {} values are not rows of dimension {dim}", data.len())));
    }
    Ok(data.len() / dim)
}

/// Checks that there is one label per row and every label is a class.
pub(crate) fn check_labels(what: &str, labels: &[u32], rows: usize, classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(EvalError::Invalid(format!("{what}: {} labels for {rows} rows", labels.len())));
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(EvalError::Invalid(format!("{what}: label {l} but only {classes} classes")));
    }
    Ok(())
}
