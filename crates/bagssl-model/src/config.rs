//! Model and training configuration. Both are serde types because a checkpoint stores them as JSON:
//! resuming must rebuild exactly the model and the step that wrote it.

use bagssl_autograd::VicregWeights;
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Which encoder `f` embeds a patch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `layers` blocks Linear-BN-ReLU of width `hidden` on the flattened patch.
    #[default]
    Mlp,
    /// A BasicBlock ResNet of `widths` and `blocks` per stage.
    Resnet,
    /// torchvision's layouts.
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Resnet => "resnet",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }
}

/// A ResNet's first layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 3x3 stride-1 convolution, no max-pool (small images and patches).
    #[default]
    Cifar,
    /// torchvision's: 7x7 stride-2 convolution, then a 3x3 stride-2 max-pool.
    Imagenet,
}

/// The residual block of a ResNet's stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 with 4x expansion (ResNet-50), the stride on the 3x3 as torchvision has it.
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block per unit of its stage width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The stages of a ResNet: block kind, stage widths and blocks per stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResnetLayout {
    pub block: BlockKind,
    pub widths: Vec<usize>,
    pub blocks: Vec<usize>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Shape of the network on `patch x patch x 3` inputs: the encoder `f` (`arch`; the MLP's
/// `layers` x Linear-BN-ReLU of width `hidden`, or a ResNet) and the projector `g`.
///
/// The projector is Linear-BN-ReLU-Linear of width `proj`, or with `projector = [d1, .., dk]`
/// k - 1 Linear-BN-ReLU blocks then a Linear, of those widths (VICReg's `[8192, 8192, 8192]`).
/// Fields at their defaults are not serialized, so an MLP's checkpoint metadata is as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub patch: usize,
    pub layers: usize,
    pub hidden: usize,
    pub proj: usize,
    #[serde(default, skip_serializing_if = "is_default")]
    pub arch: Arch,
    /// Stage widths of `arch = "resnet"`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub widths: Vec<usize>,
    /// BasicBlocks per stage of `arch = "resnet"` (one per stage when empty).
    #[serde(default, skip_serializing_if = "is_default")]
    pub blocks: Vec<usize>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stem: Stem,
    /// The projector's widths; empty: `[proj, proj]`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub projector: Vec<usize>,
}

impl Default for ModelConfig {
    /// The MLP of the shipped configs: 16x16 patches, 2 layers, 2048 wide.
    fn default() -> Self {
        ModelConfig::mlp(16, 2, 2048, 2048)
    }
}

impl ModelConfig {
    /// The MLP encoder with the default projector.
    pub fn mlp(patch: usize, layers: usize, hidden: usize, proj: usize) -> Self {
        ModelConfig {
            patch,
            layers,
            hidden,
            proj,
            arch: Arch::Mlp,
            widths: Vec::new(),
            blocks: Vec::new(),
            stem: Stem::Cifar,
            projector: Vec::new(),
        }
    }

    /// A BasicBlock ResNet (`arch = "resnet"`) with the CIFAR stem and a `[proj, proj]` projector.
    pub fn resnet(patch: usize, widths: &[usize], blocks: &[usize], proj: usize) -> Self {
        ModelConfig {
            arch: Arch::Resnet,
            widths: widths.to_vec(),
            blocks: blocks.to_vec(),
            ..Self::mlp(patch, 0, 0, proj)
        }
    }

    /// Length of a patch vector (HWC flatten).
    pub fn input_dim(&self) -> usize {
        self.patch * self.patch * 3
    }

    /// The ResNet stages of `arch`; `None` for the MLP.
    pub fn resnet_layout(&self) -> Option<ResnetLayout> {
        let preset = |block, blocks: [usize; 4]| ResnetLayout {
            block,
            widths: vec![64, 128, 256, 512],
            blocks: blocks.to_vec(),
        };
        match self.arch {
            Arch::Mlp => None,
            Arch::Resnet => {
                let blocks = if self.blocks.is_empty() { vec![1; self.widths.len()] } else { self.blocks.clone() };
                Some(ResnetLayout { block: BlockKind::Basic, widths: self.widths.clone(), blocks })
            }
            Arch::Resnet18 => Some(preset(BlockKind::Basic, [2, 2, 2, 2])),
            Arch::Resnet34 => Some(preset(BlockKind::Basic, [3, 4, 6, 3])),
            Arch::Resnet50 => Some(preset(BlockKind::Bottleneck, [3, 4, 6, 3])),
        }
    }

    /// Width of the representation h: the MLP's `hidden`, a ResNet's last stage's output.
    pub fn embedding_dim(&self) -> usize {
        match self.resnet_layout() {
            None => self.hidden,
            Some(l) => l.widths.last().copied().unwrap_or(0) * l.block.expansion(),
        }
    }

    /// The projector's widths, the last one z's.
    pub fn projector_widths(&self) -> Vec<usize> {
        if self.projector.is_empty() {
            vec![self.proj, self.proj]
        } else {
            self.projector.clone()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.patch == 0 {
            return bad(format!("model.patch must be positive, got {self:?}"));
        }
        if self.projector_widths().contains(&0) {
            return bad(format!("projector widths must be positive, got {:?}", self.projector_widths()));
        }
        match self.arch {
            Arch::Mlp => {
                if self.layers == 0 || self.hidden == 0 {
                    return bad(format!("model sizes must be positive, got {self:?}"));
                }
                if !self.widths.is_empty() || !self.blocks.is_empty() {
                    return bad("model.widths and model.blocks apply to a ResNet (model.arch = \"resnet\")".into());
                }
            }
            Arch::Resnet => {
                if self.widths.is_empty() || self.widths.contains(&0) {
                    return bad(format!("model.widths must list positive stage widths, got {:?}", self.widths));
                }
                if !self.blocks.is_empty() && (self.blocks.len() != self.widths.len() || self.blocks.contains(&0)) {
                    return bad(format!(
                        "model.blocks {:?} must give a positive count for each of the {} stages of model.widths",
                        self.blocks,
                        self.widths.len()
                    ));
                }
            }
            preset => {
                if !self.widths.is_empty() || !self.blocks.is_empty() {
                    return bad(format!(
                        "model.widths and model.blocks apply to model.arch = \"resnet\", not \"{}\" (a fixed layout)",
                        preset.name()
                    ));
                }
            }
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
    /// How a view is cut (fixed crop side or random-resized box) and which augmentations it
    /// gets when `augment` (docs/DEFINITIONS.md §2); absent from older checkpoints: their fixed crops.
    #[serde(default)]
    pub views: bagssl_data::Views,
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
        self.views.validate().map_err(ModelError::Config)?;
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
