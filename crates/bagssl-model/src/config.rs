//! Model and training configuration. Both are serde types because a checkpoint stores them as JSON:
//! resuming must rebuild exactly the model and the step that wrote it.

use bagssl_autograd::VicregWeights;
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Shape of the network: `layers` encoder blocks Linear-BN-ReLU of width `hidden` on flattened
/// `patch x patch x 3` inputs, then the projector Linear-BN-ReLU-Linear of width `proj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub patch: usize,
    pub layers: usize,
    pub hidden: usize,
    pub proj: usize,
}

impl ModelConfig {
    /// Length of a patch vector (HWC flatten).
    pub fn input_dim(&self) -> usize {
        self.patch * self.patch * 3
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch == 0 || self.layers == 0 || self.hidden == 0 || self.proj == 0 {
            return Err(ModelError::Config(format!("model sizes must be positive, got {self:?}")));
        }
        Ok(())
    }
}

/// Which optimizer updates the parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    AdamW,
    Lars,
}

impl OptimizerKind {
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Lars => "lars",
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "lars" => Ok(OptimizerKind::Lars),
            _ => Err(ModelError::Config(format!("unknown optimizer `{s}` (expected adamw | lars)"))),
        }
    }
}

/// Everything that determines a training run besides the data and the model shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Patches per image (n); their side is the model's (`ModelConfig::patch`).
    pub per_image: usize,
    /// Flip / colour jitter / grayscale on (docs/DEFINITIONS.md §2-§3); off: only the position is random.
    pub augment: bool,
    /// Images per step (B); a step sees `B * per_image` patches.
    pub batch_images: usize,
    /// Length of the schedule; the learning rate reaches 0 here.
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled (AdamW) or L2 (LARS) weight decay; applied to Linear weights only.
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    /// bag-VICReg's weights (old checkpoints also store a `patch`, now the model's alone).
    pub loss: VicregWeights,
    /// Seeds the initialisation, the epoch permutations and the patch sampler.
    pub seed: u64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.per_image < 2 {
            return Err(ModelError::Config(format!(
                "per_image must be at least 2 (the invariance term compares patches of one image), got {}",
                self.per_image
            )));
        }
        if self.batch_images == 0 {
            return Err(ModelError::Config("batch_images must be positive".into()));
        }
        let usable = |v: f64| v.is_finite() && v >= 0.0;
        if !usable(self.lr) || !usable(self.weight_decay) {
            return Err(ModelError::Config(format!(
                "lr ({}) and weight_decay ({}) must be finite and non-negative",
                self.lr, self.weight_decay
            )));
        }
        Ok(())
    }
}
