//! Helpers shared by the model's integration tests.

#![allow(dead_code)]

use bagssl_model::{OptimizerKind, TrainConfig, VicregWeights};

/// A short AdamW-or-LARS run (4 patches x 8 images, 20 steps, 2 of warm-up, lr 1e-3, weight
/// decay 1e-4, seed 11, augmentation on): tests override what they need.
pub fn train_config(optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        per_image: 4,
        augment: true,
        batch_images: 8,
        total_steps: 20,
        warmup_steps: 2,
        lr: 1e-3,
        weight_decay: 1e-4,
        optimizer,
        loss: VicregWeights::default(),
        seed: 11,
    }
}
