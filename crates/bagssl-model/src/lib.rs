//! bagssl-model: the BagSSL network (patch encoder `f` + projector `g`), its training step with the
//! bag-VICReg loss, the optimizers (AdamW, LARS), the learning-rate schedule and checkpoints.
//!
//! Layout:
//! - [`config`]: `ModelConfig`, `TrainConfig` (serde, stored in checkpoints as JSON).
//! - [`layers`]: layer types (Linear, BatchNorm, Sequential, ...) with named parameters, PyTorch
//!   names derived from the tree, one forward for training and evaluation.
//! - [`model`]: `BagSslModel` — the encoder and projector as a layer tree.
//! - [`optim`]: AdamW and LARS over the model's parameter list.
//! - [`schedule`]: linear warm-up then cosine decay, per step.
//! - [`source`]: where a step's patch matrix comes from (CPU gather | CUDA).
//! - [`trainer`]: `Trainer` — epoch permutation, sampling, forward/backward, update, BN statistics.
//! - [`monitor`]: the collapse monitor (RankMe of `h` and `z`, smallest standard deviation).
//! - [`checkpoint`]: atomic safetensors checkpoints (weights, BN statistics, optimizer, RNG states).

pub mod checkpoint;
pub mod config;
pub mod layers;
pub mod model;
pub mod monitor;
pub mod optim;
pub mod schedule;
pub mod source;
pub mod trainer;

use std::path::PathBuf;

pub use bagssl_autograd::VicregWeights;
pub use checkpoint::{read_normalization, Normalization};
pub use config::{Arch, BlockKind, ModelConfig, OptimizerKind, ResnetLayout, Stem, TrainConfig};
pub use layers::{Layer, Param, ParamKind, RunningStats, BN_EPS, BN_MOMENTUM};
pub use model::{BagSslModel, ForwardFlops, Representation, TrainForward};
pub use monitor::{rank_floor, CollapseStats, COLLAPSE_STD, MONITOR_ROWS};
pub use optim::Optimizer;
pub use schedule::lr_factor;
pub use source::PatchSource;
pub use trainer::{StepStats, Trainer};

/// Errors of this crate. Checkpoint errors always carry the file they are about.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Autograd(#[from] bagssl_autograd::Error),
    /// The loss of step `step` (1-based) was NaN or infinite; nothing was updated.
    #[error("non-finite loss at step {step}: training diverged (parameters left as they were before this step)")]
    NonFiniteLoss { step: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A broken invariant inside this crate (a bug, not a user error).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error("checkpoint {}: missing tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("checkpoint {}: tensor `{name}` has shape {found:?} (dtype {dtype}), expected {expected:?} (F32)", path.display())]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize>, dtype: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
