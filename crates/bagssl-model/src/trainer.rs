//! The training loop's single step and the state it carries between steps.
//!
//! Randomness comes from three independent ChaCha8 streams of the one configured seed:
//! stream 0 initialises the weights ([`BagSslModel::new`]), stream 1 is the [`PatchSampler`],
//! stream [`PERM_STREAM`] draws the epoch permutations. All three states go into checkpoints, so a
//! resumed run continues bit-identically on the CPU.

use bagssl_autograd::{BagVicreg, Device, LossValues, Tape};
use bagssl_data::{check_patch_size, ImageStore, PatchSampler, PatchSpec, RngState, SeededRng};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::{ModelConfig, TrainConfig};
use crate::layers::BN_MOMENTUM;
use crate::model::BagSslModel;
use crate::monitor::{CollapseStats, MonitorSample};
use crate::optim::Optimizer;
use crate::schedule::lr_factor;
use crate::source::PatchSource;
use crate::{ModelError, Result};

/// ChaCha stream of the epoch permutations (0: weight init, 1: patch sampler).
pub const PERM_STREAM: u64 = 2;

/// What one step reports (for `metrics.jsonl`): serialized as `step`, `epoch`, every scalar of
/// the loss under its own name (`loss`, then bag-VICReg's `invariance`, `variance`,
/// `covariance`), `lr` and, on a monitored step, the collapse monitor's `embedding_rank`,
/// `projection_rank`, `embedding_std_min` and `projection_std_min`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// 1-based number of this step (= steps done after it).
    pub step: u64,
    /// 0-based epoch the batch was drawn from.
    pub epoch: u64,
    /// The loss's scalars by name, the weighted loss first.
    pub terms: LossValues,
    /// Learning rate used by this step's update.
    pub lr: f64,
    /// The collapse monitor's reading ([`Trainer::step_monitored`]), on a monitored step.
    pub collapse: Option<CollapseStats>,
}

impl StepStats {
    /// The weighted loss (the first of [`StepStats::terms`]).
    pub fn loss(&self) -> f64 {
        self.terms.loss()
    }
    /// The loss scalar called `name` (`loss`, `invariance`, ...).
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.get(name)
    }
}

impl Serialize for StepStats {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("step", &self.step)?;
        m.serialize_entry("epoch", &self.epoch)?;
        for (name, v) in self.terms.iter() {
            m.serialize_entry(name, &v)?;
        }
        m.serialize_entry("lr", &self.lr)?;
        if let Some(c) = &self.collapse {
            m.serialize_entry("embedding_rank", &c.embedding_rank)?;
            m.serialize_entry("projection_rank", &c.projection_rank)?;
            m.serialize_entry("embedding_std_min", &c.embedding_std_min)?;
            m.serialize_entry("projection_std_min", &c.projection_std_min)?;
        }
        m.end()
    }
}

/// Position in the current epoch's permutation of the dataset.
///
/// The permutation itself is not stored: the RNG state from just before it was drawn is, and
/// resuming redraws it (a checkpoint stays small however large the dataset).
#[derive(Clone, Debug)]
pub(crate) struct EpochCursor {
    pub rng: SeededRng,
    /// State of `rng` before `perm` was drawn (or now, when no epoch has started).
    pub rng_at_epoch_start: RngState,
    /// Empty until the first step.
    pub perm: Vec<usize>,
    /// Index of `perm`'s epoch (0 for the first).
    pub epoch: u64,
    /// Next unused position in `perm`.
    pub pos: usize,
}

impl EpochCursor {
    pub fn new(seed: u64) -> Self {
        let mut rng = SeededRng::new(seed);
        rng.rng().set_stream(PERM_STREAM);
        let rng_at_epoch_start = rng.state();
        EpochCursor { rng, rng_at_epoch_start, perm: Vec::new(), epoch: 0, pos: 0 }
    }

    /// Rebuilds a cursor from checkpointed fields; `started` says whether `perm` had been drawn.
    pub fn restore(rng_at_epoch_start: RngState, started: bool, epoch: u64, pos: usize, n_images: usize) -> Self {
        let mut rng = SeededRng::from_state(&rng_at_epoch_start);
        let perm = if started { rng.permutation(n_images) } else { Vec::new() };
        EpochCursor { rng, rng_at_epoch_start, perm, epoch, pos }
    }

    pub fn started(&self) -> bool {
        !self.perm.is_empty()
    }

    /// The next `batch` image indices; starts a new epoch (new permutation) when the current one
    /// cannot fill a whole batch — the last partial batch of an epoch is dropped.
    pub fn next_batch(&mut self, n_images: usize, batch: usize, out: &mut Vec<u32>) -> Result<u64> {
        if batch > n_images {
            return Err(ModelError::Config(format!(
                "batch_images ({batch}) is larger than the training set ({n_images} images)"
            )));
        }
        if self.started() && self.perm.len() != n_images {
            return Err(ModelError::Config(format!(
                "the training set changed size during training ({} -> {n_images} images)",
                self.perm.len()
            )));
        }
        if !self.started() || self.pos + batch > self.perm.len() {
            if self.started() {
                self.epoch += 1;
            }
            self.rng_at_epoch_start = self.rng.state();
            self.perm = self.rng.permutation(n_images);
            self.pos = 0;
        }
        out.clear();
        out.extend(self.perm[self.pos..self.pos + batch].iter().map(|&i| i as u32));
        self.pos += batch;
        Ok(self.epoch)
    }
}

/// Owns everything a training run changes: model, optimizer state, sampler, epoch cursor, step.
pub struct Trainer {
    pub(crate) model: BagSslModel,
    pub(crate) optimizer: Optimizer,
    pub(crate) sampler: PatchSampler,
    pub(crate) cursor: EpochCursor,
    pub(crate) config: TrainConfig,
    pub(crate) step: u64,
    /// Normalisation of the store the last step trained on (checkpoints record it).
    pub(crate) normalization: Option<crate::checkpoint::Normalization>,
    source: PatchSource,
    images: Vec<u32>,
    specs: Vec<PatchSpec>,
    /// Host time the last step spent before its input was ready (see [`Trainer::last_input_wait`]).
    input_wait: std::time::Duration,
}

impl Trainer {
    /// A fresh run: model initialised from `config.seed` on `device`.
    pub fn new(model_config: ModelConfig, config: TrainConfig, device: &Device) -> Result<Self> {
        let model = BagSslModel::new(model_config, config.seed, device)?;
        Self::with_model(model, config)
    }

    /// A fresh run (step 0, zero optimizer state) starting from the given weights.
    pub fn with_model(model: BagSslModel, config: TrainConfig) -> Result<Self> {
        let optimizer = Optimizer::new(config.optimizer, config.weight_decay as f32, &model.params())?;
        let sampler = PatchSampler::with_views(config.seed, config.augment, config.views.clone());
        let cursor = EpochCursor::new(config.seed);
        Self::from_parts(model, optimizer, sampler, cursor, config, 0)
    }

    /// Assembles a trainer (used by `new` and by checkpoint resume).
    pub(crate) fn from_parts(
        model: BagSslModel,
        optimizer: Optimizer,
        sampler: PatchSampler,
        cursor: EpochCursor,
        config: TrainConfig,
        step: u64,
    ) -> Result<Self> {
        config.validate()?;
        let source = PatchSource::for_device(model.device());
        let (images, specs, normalization) = (Vec::new(), Vec::new(), None);
        let input_wait = std::time::Duration::ZERO;
        Ok(Trainer {
            model,
            optimizer,
            sampler,
            cursor,
            config,
            step,
            normalization,
            source,
            images,
            specs,
            input_wait,
        })
    }

    pub fn model(&self) -> &BagSslModel {
        &self.model
    }
    /// Mutable model access (tests inject bad weights through it; the CLI should not need it).
    pub fn model_mut(&mut self) -> &mut BagSslModel {
        &mut self.model
    }
    pub fn into_model(self) -> BagSslModel {
        self.model
    }
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// Steps completed so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }
    /// The input wait of the last step: host time from its start until its patch matrix was
    /// ready (batch draw, view sampling, and on the CPU the gather and augmentation out of the
    /// store, which on a mapped store includes reading its pages; on CUDA the spec upload and
    /// gather launch, plus the store's upload on first use, or a streamed store's copy of the
    /// step's images into page-locked memory).
    pub fn last_input_wait(&self) -> std::time::Duration {
        self.input_wait
    }
    /// Epoch of the most recent batch (0 before the first step).
    pub fn epoch(&self) -> u64 {
        self.cursor.epoch
    }
    /// Full batches per epoch for a training set of `n_images`.
    pub fn steps_per_epoch(&self, n_images: usize) -> usize {
        n_images / self.config.batch_images
    }
    /// Swaps the patch source (e.g. back to a fresh [`PatchSource::for_device`]).
    pub fn set_patch_source(&mut self, source: PatchSource) {
        self.source = source;
    }
    /// The patch source (on CUDA it holds the GPU-resident training store).
    pub fn patch_source(&self) -> &PatchSource {
        &self.source
    }
    /// Makes `store` the training store now. On CUDA this uploads its pixels (replacing any
    /// resident copy), which [`Trainer::step`] otherwise does on first use or when it is handed a
    /// different store; call it after editing a store's pixels in place, or to keep the upload
    /// out of a timed loop. A no-op on the CPU.
    pub fn register_store(&mut self, store: &ImageStore) -> Result<()> {
        self.source.register_store(store)
    }

    /// One training step on the next batch of `store`: sample patches, forward, bag-VICReg,
    /// backward, optimizer update, BatchNorm running statistics.
    ///
    /// On CUDA the store stays resident on the GPU between steps (uploaded on first use, see
    /// [`Trainer::register_store`]); a step then copies only its patch specs to the device and
    /// reads back only the loss terms (and, with LARS, the norms of its trust ratios).
    ///
    /// A NaN/inf loss returns [`ModelError::NonFiniteLoss`] before anything is updated (weights,
    /// optimizer state, running statistics and the step count stay as they were; the batch and its
    /// random draws are consumed).
    pub fn step(&mut self, store: &ImageStore) -> Result<StepStats> {
        self.step_monitored(store, false)
    }

    /// [`Trainer::step`], and with `monitor` the collapse monitor ([`crate::monitor`]) on this
    /// step's `h` and `z`, reported in [`StepStats::collapse`]. The step itself is the same
    /// either way (same update, same random draws). On CUDA a monitored step waits for its own
    /// end before the host measures the sample, rather than returning with work still queued.
    pub fn step_monitored(&mut self, store: &ImageStore, monitor: bool) -> Result<StepStats> {
        let started = std::time::Instant::now();
        let c = &self.config;
        // The model's input side; a fixed crop of another side is resized to it.
        let patch = self.model.config().patch;
        let crop = c.views.crop.unwrap_or(patch);
        check_patch_size(crop, store.height, store.width).map_err(|e| ModelError::Config(e.to_string()))?;
        let epoch = self.cursor.next_batch(store.len(), c.batch_images, &mut self.images)?;
        self.sampler.sample_into(&self.images, c.per_image, crop, store.height, store.width, &mut self.specs);
        let x = self.source.patches(store, &self.specs, patch)?;
        self.input_wait = started.elapsed();
        let loss_fn = BagVicreg { per_image: c.per_image, weights: c.loss };
        let number = self.step + 1;
        let lr = c.lr * lr_factor(self.step, c.warmup_steps, c.total_steps);

        let (terms, grads, batch_stats, sample) = {
            let mut tape = Tape::new();
            let fw = self.model.forward_train(&mut tape, x, false)?;
            // z without the last bias: the monitor centres every column, so the shift is moot.
            let sample = match monitor {
                true => Some(MonitorSample::take(tape.value(fw.h), tape.value(fw.z), c.batch_images)?),
                false => None,
            };
            // On a GPU the loss terms travel to the host while the backward pass is queued and
            // runs; the step waits for them (not for the backward) before it updates anything.
            let (loss, pending) = fw.loss_async(&mut tape, &loss_fn)?;
            let batch_stats = fw.batch_stats(&tape)?;
            let mut g = tape.backward(loss)?;
            let grads = fw
                .params
                .iter()
                .zip(self.model.params())
                .map(|(&v, p)| g.take(v).ok_or_else(|| ModelError::Internal(format!("no gradient for `{}`", p.name))))
                .collect::<Result<Vec<_>>>()?;
            let terms = pending.wait()?;
            if !terms.loss().is_finite() {
                return Err(ModelError::NonFiniteLoss { step: number });
            }
            (terms, grads, batch_stats, sample)
        };

        self.optimizer.update(&mut self.model.params_mut(), &grads, lr as f32, number)?;
        self.model.update_running_stats(&batch_stats, BN_MOMENTUM)?;
        self.step = number;
        self.normalization = Some(crate::checkpoint::Normalization::of(store));
        let collapse = sample.map(MonitorSample::finish).transpose()?;
        Ok(StepStats { step: number, epoch, terms, lr, collapse })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_drops_partial_batches_and_reshuffles() {
        let mut c = EpochCursor::new(3);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..3 {
            assert_eq!(c.next_batch(10, 3, &mut out).unwrap(), 0);
            seen.extend_from_slice(&out);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9, "one epoch draws without replacement");
        let first_perm = c.perm.clone();
        assert_eq!(c.next_batch(10, 3, &mut out).unwrap(), 1, "10 % 3 leftover is dropped");
        assert_ne!(c.perm, first_perm);
        assert!(c.next_batch(2, 3, &mut out).is_err());
    }

    #[test]
    fn cursor_restores_mid_epoch() {
        let mut a = EpochCursor::new(5);
        let mut out = Vec::new();
        for _ in 0..4 {
            a.next_batch(7, 2, &mut out).unwrap();
        }
        let mut b = EpochCursor::restore(a.rng_at_epoch_start.clone(), a.started(), a.epoch, a.pos, 7);
        let mut out_b = Vec::new();
        for _ in 0..5 {
            let ea = a.next_batch(7, 2, &mut out).unwrap();
            let eb = b.next_batch(7, 2, &mut out_b).unwrap();
            assert_eq!((ea, &out), (eb, &out_b));
        }
    }
}
