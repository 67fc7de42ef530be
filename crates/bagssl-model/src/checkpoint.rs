//! Checkpoints in safetensors: every tensor by its PyTorch-style name (parameters, BN running
//! statistics, optimizer state `optim.{param}.{m|v|momentum}`) plus a string metadata map
//! (format, configs as JSON, step, epoch cursor, RNG states as JSON, and the training images'
//! normalisation as `normalize_mean` / `normalize_std`, JSON arrays of 3 numbers).
//!
//! Writes are atomic: the file is written and fsynced under a unique temporary name in the
//! target's directory, then renamed over the target, so a crash or a failed write never leaves a truncated
//! checkpoint where a good one was.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bagssl_autograd::{Device, Tensor};
use bagssl_data::{ImageStore, PatchSampler, RngState};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, TrainConfig};
use crate::model::BagSslModel;
use crate::optim::Optimizer;
use crate::trainer::{EpochCursor, Trainer};
use crate::{ModelError, Result};

/// Value of the `format` metadata key; bump when the layout changes incompatibly.
pub const FORMAT: &str = "bagssl-checkpoint/1";

/// Metadata key of [`Normalization::mean`] (a JSON array of 3 numbers).
pub const NORMALIZE_MEAN: &str = "normalize_mean";
/// Metadata key of [`Normalization::std`] (a JSON array of 3 numbers).
pub const NORMALIZE_STD: &str = "normalize_std";

/// The per-channel normalisation of `x / 255` a model was trained with (the training store's
/// `mean`/`std`). Images embedded or evaluated later must be normalised the same way, whatever
/// their own statistics: see [`read_normalization`] and [`Normalization::apply_to`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The normalisation `store` applies.
    pub fn of(store: &ImageStore) -> Normalization {
        Normalization { mean: store.mean, std: store.std }
    }

    /// Makes `store` normalise like this (its pixels are unchanged).
    pub fn apply_to(&self, store: &mut ImageStore) {
        store.mean = self.mean;
        store.std = self.std;
    }

    fn write_meta(&self, meta: &mut HashMap<String, String>) -> Result<()> {
        meta.insert(NORMALIZE_MEAN.into(), to_json(&self.mean)?);
        meta.insert(NORMALIZE_STD.into(), to_json(&self.std)?);
        Ok(())
    }

    /// The normalisation recorded in `meta` (of the file `path`); `None` when neither key is
    /// there (a checkpoint written before they were recorded).
    fn from_meta(path: &Path, meta: &HashMap<String, String>) -> Result<Option<Normalization>> {
        let err = |detail: String| ModelError::Checkpoint { path: path.into(), detail };
        let channels = |key: &str, positive: bool| -> Result<[f32; 3]> {
            let v = &meta[key];
            let bad = |why: String| err(format!("metadata `{key}` = `{v}`: expected a JSON array of 3 {why}"));
            let values: [f32; 3] = serde_json::from_str(v).map_err(|e| bad(format!("numbers ({e})")))?;
            if values.iter().any(|x| !x.is_finite() || positive && *x <= 0.0) {
                return Err(bad(if positive { "positive finite numbers" } else { "finite numbers" }.into()));
            }
            Ok(values)
        };
        match (meta.contains_key(NORMALIZE_MEAN), meta.contains_key(NORMALIZE_STD)) {
            (false, false) => Ok(None),
            (true, true) => {
                Ok(Some(Normalization { mean: channels(NORMALIZE_MEAN, false)?, std: channels(NORMALIZE_STD, true)? }))
            }
            (has_mean, _) => {
                let (missing, present) =
                    if has_mean { (NORMALIZE_STD, NORMALIZE_MEAN) } else { (NORMALIZE_MEAN, NORMALIZE_STD) };
                Err(err(format!("missing metadata `{missing}` (`{present}` is there)")))
            }
        }
    }
}

/// The normalisation a checkpoint ([`Trainer::save`] or [`BagSslModel::save_with_normalization`])
/// records, reading only its header; `Ok(None)` for a checkpoint written before it was recorded.
/// Malformed values are errors naming the file and the key.
pub fn read_normalization(path: impl AsRef<Path>) -> Result<Option<Normalization>> {
    let path = path.as_ref();
    let meta = read_header_metadata(path)?;
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(ModelError::Checkpoint {
                path: path.into(),
                detail: format!("format `{f}`, expected `{FORMAT}`"),
            })
        }
        None => return Err(ModelError::Checkpoint { path: path.into(), detail: "missing metadata `format`".into() }),
    }
    Normalization::from_meta(path, &meta)
}

/// The `__metadata__` map of a safetensors file, from its header alone (not the tensor data).
fn read_header_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let invalid = |detail: String| ModelError::Checkpoint {
        path: path.into(),
        detail: format!("not a valid safetensors file: {detail}"),
    };
    let io = |source| ModelError::Io { path: path.into(), source };
    let mut f = fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| invalid(format!("no header length ({e})")))?;
    // safetensors' own limit on the header size.
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(invalid(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| invalid(format!("truncated header ({e})")))?;
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: Option<HashMap<String, String>>,
    }
    let h: Header = serde_json::from_slice(&header).map_err(|e| invalid(format!("header: {e}")))?;
    Ok(h.metadata.unwrap_or_default())
}

impl Trainer {
    /// Writes a full checkpoint (weights, running statistics, optimizer state, step, epoch cursor,
    /// RNG states, configs) atomically to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tensors = self.model.named_tensors();
        tensors.extend(self.optimizer.named_state(&self.model.params()));
        let mut meta = model_meta(self.model.config())?;
        meta.insert("train_config".into(), to_json(&self.config)?);
        meta.insert("step".into(), self.step.to_string());
        meta.insert("epoch".into(), self.cursor.epoch.to_string());
        meta.insert("epoch_pos".into(), self.cursor.pos.to_string());
        meta.insert("epoch_started".into(), self.cursor.started().to_string());
        meta.insert("n_images".into(), self.cursor.perm.len().to_string());
        meta.insert("perm_rng".into(), to_json(&self.cursor.rng_at_epoch_start)?);
        meta.insert("sampler_rng".into(), to_json(&self.sampler.state())?);
        if let Some(n) = &self.normalization {
            n.write_meta(&mut meta)?;
        }
        write_checkpoint(path, &tensors, meta)
    }

    /// The normalisation of the store the last step trained on (or, before the first step of a
    /// resumed run, the one its checkpoint recorded); [`Trainer::save`] writes it.
    pub fn normalization(&self) -> Option<Normalization> {
        self.normalization
    }

    /// Continues the run saved at `path` on `device`; `store` must be the training set it was
    /// saved with (its size is checked, and the current epoch's permutation is redrawn from it).
    pub fn resume(path: impl AsRef<Path>, store: &ImageStore, device: &Device) -> Result<Trainer> {
        let file = CheckpointFile::read(path.as_ref())?;
        let st = file.parse()?;
        let config: TrainConfig = st.meta_json("train_config")?;
        let model = st.model(device)?;
        let mut optimizer = Optimizer::new(config.optimizer, config.weight_decay as f32, &model.params())?;
        let slots = Optimizer::slot_names(config.optimizer);
        for (i, p) in model.params().iter().enumerate() {
            for (s, slot) in slots.iter().enumerate() {
                let name = format!("optim.{}.{slot}", p.name);
                optimizer.state_mut()[i][s] = st.tensor(&name, p.value.shape())?.to_device(device)?;
            }
        }
        let step: u64 = st.meta_parse("step")?;
        let started: bool = st.meta_parse("epoch_started")?;
        let n_images: usize = st.meta_parse("n_images")?;
        if started && n_images != store.len() {
            return Err(st.error(format!(
                "written for a training set of {n_images} images, resumed with {} images",
                store.len()
            )));
        }
        let cursor = EpochCursor::restore(
            st.meta_json::<RngState>("perm_rng")?,
            started,
            st.meta_parse("epoch")?,
            st.meta_parse("epoch_pos")?,
            store.len(),
        );
        let sampler =
            PatchSampler::from_state(&st.meta_json::<RngState>("sampler_rng")?, config.augment, config.views.clone());
        let mut trainer = Trainer::from_parts(model, optimizer, sampler, cursor, config, step)?;
        trainer.normalization = Normalization::from_meta(st.path, &st.meta)?;
        Ok(trainer)
    }
}

impl BagSslModel {
    /// Loads the weights and BN running statistics of a checkpoint (a [`Trainer::save`] or
    /// [`BagSslModel::save`] file) onto `device`, for evaluation or as a starting point.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<BagSslModel> {
        let file = CheckpointFile::read(path.as_ref())?;
        file.parse()?.model(device)
    }

    /// Writes only the weights, running statistics and model config (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with_normalization(path, None)
    }

    /// Like [`BagSslModel::save`], also recording the normalisation the model was trained with
    /// (what [`read_normalization`] returns).
    pub fn save_with_normalization(&self, path: impl AsRef<Path>, normalization: Option<&Normalization>) -> Result<()> {
        let mut meta = model_meta(self.config())?;
        if let Some(n) = normalization {
            n.write_meta(&mut meta)?;
        }
        write_checkpoint(path.as_ref(), &self.named_tensors(), meta)
    }
}

fn model_meta(config: &ModelConfig) -> Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("model_config".to_string(), to_json(config)?);
    // For readers without our config type: what the encoder is and what it takes (a patch of
    // patch_size x patch_size x 3, NHWC, normalised by `normalize_mean` / `normalize_std`).
    meta.insert("arch".to_string(), config.arch.name().to_string());
    meta.insert("patch_size".to_string(), config.patch.to_string());
    Ok(meta)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ModelError::Config(format!("serializing checkpoint metadata: {e}")))
}

/// Serializes `tensors` (copied to the host, little-endian f32) with `meta` and writes atomically.
fn write_checkpoint(path: &Path, tensors: &[(String, &Tensor)], meta: HashMap<String, String>) -> Result<()> {
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), t.shape().to_vec(), bytes))
        })
        .collect::<Result<_>>()?;
    let views = host
        .iter()
        .map(|(name, shape, bytes)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<std::result::Result<Vec<_>, SafeTensorError>>()
        .map_err(|e| ModelError::Checkpoint { path: path.into(), detail: e.to_string() })?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| ModelError::Checkpoint { path: path.into(), detail: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically: a uniquely named temporary file in the same directory (so
/// the rename cannot cross file systems, and concurrent writers never share one), fsync, rename
/// over `path`, fsync of the directory. On any failure the temporary file is removed and an
/// existing `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(ModelError::Checkpoint { path: path.into(), detail: "not a file path".into() });
    };
    let io = |source| ModelError::Io { path: path.into(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // What `File::create` would give (0o666 less the umask), not tempfile's private 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    // Dropping `tmp` on an early return deletes the temporary file.
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Persist the rename itself; best effort (not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A checkpoint's bytes, read once.
struct CheckpointFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl CheckpointFile {
    fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        Ok(CheckpointFile { path: path.into(), bytes })
    }

    fn parse(&self) -> Result<Parsed<'_>> {
        let err = |e: SafeTensorError| ModelError::Checkpoint {
            path: self.path.clone(),
            detail: format!("not a valid safetensors file: {e}"),
        };
        let (_, header) = SafeTensors::read_metadata(&self.bytes).map_err(err)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(&self.bytes).map_err(err)?;
        let parsed = Parsed { path: &self.path, tensors, meta };
        let format = parsed.meta("format")?;
        if format != FORMAT {
            return Err(parsed.error(format!("format `{format}`, expected `{FORMAT}`")));
        }
        Ok(parsed)
    }
}

/// A parsed checkpoint: typed access to tensors and metadata, errors naming the file.
struct Parsed<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    meta: HashMap<String, String>,
}

impl Parsed<'_> {
    fn error(&self, detail: String) -> ModelError {
        ModelError::Checkpoint { path: self.path.into(), detail }
    }

    fn meta(&self, key: &str) -> Result<&str> {
        self.meta.get(key).map(String::as_str).ok_or_else(|| self.error(format!("missing metadata `{key}`")))
    }

    fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.meta(key)?;
        v.parse().map_err(|e| self.error(format!("metadata `{key}` = `{v}`: {e}")))
    }

    fn meta_json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        serde_json::from_str(self.meta(key)?).map_err(|e| self.error(format!("metadata `{key}`: {e}")))
    }

    /// The f32 tensor `name`, which must have exactly `shape`, as a CPU tensor.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| ModelError::MissingTensor { path: self.path.into(), name: name.into() })?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(ModelError::TensorShape {
                path: self.path.into(),
                name: name.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        // The data of a safetensors view need not be 4-byte aligned: decode, don't cast.
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Tensor::from_vec(shape, data))
    }

    /// The model described by `model_config`, with every parameter and running statistic loaded.
    fn model(&self, device: &Device) -> Result<BagSslModel> {
        let config: ModelConfig = self.meta_json("model_config")?;
        let mut model = BagSslModel::zeros(config, device)?;
        let wanted: Vec<(String, Vec<usize>)> =
            model.named_tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        for (name, shape) in wanted {
            let t = self.tensor(&name, &shape)?.to_device(device)?;
            *model.tensor_mut(&name).expect("name comes from the model's own list") = t;
        }
        Ok(model)
    }
}
