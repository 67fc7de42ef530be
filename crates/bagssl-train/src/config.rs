//! The run configuration: TOML on disk, `--set section.key=value` overrides, validation.
//! The key names are a contract (README.md, "Configuration"): scripts read and write them.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
pub use bagssl_autograd::CpuMatmulPrecision;
pub use bagssl_kernels::GemmPrecision;
pub use bagssl_model::OptimizerKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The embedded default (`configs/quickstart.toml`), compiled in.
pub const QUICKSTART: &str = include_str!("../../../configs/quickstart.toml");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub seed: u64,
    /// `cpu` or `cuda`.
    pub device: DeviceKind,
    /// Math of the GEMMs on a GPU: `bf16` (operands rounded to bf16, f32 accumulation, like
    /// PyTorch's bf16 autocast), `tf32` or `f32`.
    pub gpu_precision: GemmPrecision,
    /// Math of the GEMMs on the CPU: `f32`, or `bf16` (operands rounded to bf16, f32
    /// accumulation, on AVX512-BF16 where the CPU has it: about twice the f32 rate).
    pub cpu_precision: CpuMatmulPrecision,
    pub data: DataConfig,
    pub patches: PatchConfig,
    pub model: ModelSection,
    /// bag-VICReg's weights (`invariance`, `variance`, `covariance`), defaults in their type.
    pub loss: bagssl_model::VicregWeights,
    pub train: TrainSection,
    pub eval: EvalSection,
}

/// The `device` a run computes on (`cpu` | `cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Empty: the built-in synthetic set; else a CIFAR-10 binary dir, an ImageFolder tree, a
    /// folder of WebDataset `*.tar` shards or a shard pattern (`train-{000000..000146}.tar`).
    pub path: String,
    /// Test split; empty: hold out `val_fraction` of the training images.
    pub eval_path: String,
    pub val_fraction: f64,
    /// Resize every image to `[height, width]` on load; empty: all images must share one size.
    pub resize: Vec<usize>,
    /// Resize the shorter side to this (antialiased) and centre-crop a square, as torchvision's
    /// `Resize(S)` + `CenterCrop(S)`; for images of any sizes. 0: off. Exclusive with `resize`.
    pub image_size: usize,
    /// Where decoded datasets are cached; empty: `$BAGSSL_CACHE` or `~/.cache/bagssl`; "off": no cache.
    pub cache_dir: String,
    /// CUDA: a store whose pixels take more MiB than this is streamed a batch at a time instead
    /// of uploaded whole; 0: half the device memory free when the store is placed.
    pub gpu_store_budget_mib: usize,
    /// Size of the built-in synthetic set (used when `path` is empty).
    pub synthetic_images: usize,
    pub synthetic_classes: usize,
    pub synthetic_size: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PatchConfig {
    /// Side of a fixed crop (no `scale`).
    pub size: usize,
    pub per_image: usize,
    pub augment: bool,
    /// The model's input side every view is resized to; 0: `size`.
    pub out_size: usize,
    /// `[min, max]` area fraction of a random-resized box (RandomResizedCrop); empty: fixed crops.
    pub scale: Vec<f64>,
    /// `[min, max]` aspect ratio `w / h` of a random-resized box, drawn log-uniformly.
    pub ratio: Vec<f64>,
    /// Probabilities (and strengths) of the augmentations, when `augment`.
    pub flip: f64,
    pub jitter: f64,
    pub jitter_strength: Vec<f64>,
    pub gray: f64,
    pub blur: f64,
    pub blur_sigma: Vec<f64>,
    pub solarize: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// `mlp` | `resnet` (with `widths`, `blocks`) | `resnet18` | `resnet34` | `resnet50`.
    pub arch: bagssl_model::Arch,
    /// The MLP's: Linear-BN-ReLU blocks and their width.
    pub layers: usize,
    pub hidden: usize,
    /// A `resnet`'s stage widths and BasicBlocks per stage (empty: one each).
    pub widths: Vec<usize>,
    pub blocks: Vec<usize>,
    /// A ResNet's first layers: `cifar` (3x3 stride 1) or `imagenet` (7x7 stride 2 + max-pool).
    pub stem: bagssl_model::Stem,
    /// The projector's width (Linear-BN-ReLU-Linear), unless `projector` lists its widths.
    pub proj: usize,
    pub projector: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub batch_images: usize,
    pub epochs: f64,
    /// `adamw` or `lars`.
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Stop the run when the collapse monitor (measured every `log_every` steps) finds the
    /// representation collapsed, leaving the last checkpoint written before it (docs/DEFINITIONS.md §12).
    pub stop_on_collapse: bool,
    /// Also write the metrics as a TensorBoard event file in the run directory.
    pub tensorboard: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    pub stride: usize,
    pub knn_k: usize,
    pub knn_t: f64,
    pub probe_epochs: usize,
    /// Images per batch when embedding the evaluation grid.
    pub batch_images: usize,
    /// Also evaluate the untrained (initial) encoder, so every run shows what training bought.
    pub untrained: bool,
    /// Training images embedded as the kNN bank and the probe's training set: a seeded subset
    /// of this many (the same for every run seed); 0: all. Bounds evaluation memory and time on
    /// a large dataset (the features are N x dim floats, held in memory).
    pub train_images: usize,
    /// The protocols measured (`grid`, `multiscale`, `whole`, `random`, `pyramid`); the first is also `knn` / `linear`.
    pub protocols: Vec<String>,
    /// Patches per image of the `random` protocol.
    pub random_patches: usize,
    /// Patch sides of the `multiscale` protocol's grids (each resized to the input side).
    pub scales: Vec<usize>,
    /// Side of the `grid` / `pyramid` protocols' patches (and the single-patch baseline's), each
    /// resized to the input side when it differs; 0: the input side.
    pub patch: usize,
    /// The representation evaluated and embedded: `encoder` (h) or `projector.{i}`, the output
    /// of the projector's i-th Linear-BN-ReLU block (EMP-SSL reports `projector.0`).
    pub feature: String,
}

/// The names `eval.protocols` takes.
pub const PROTOCOLS: [&str; 5] = ["grid", "multiscale", "whole", "random", "pyramid"];

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            device: DeviceKind::Cpu,
            gpu_precision: GemmPrecision::Bf16,
            cpu_precision: CpuMatmulPrecision::F32,
            data: DataConfig::default(),
            patches: PatchConfig::default(),
            model: ModelSection::default(),
            loss: bagssl_model::VicregWeights::default(),
            train: TrainSection::default(),
            eval: EvalSection::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: String::new(),
            eval_path: String::new(),
            val_fraction: 0.1,
            resize: Vec::new(),
            image_size: 0,
            gpu_store_budget_mib: 0,
            cache_dir: String::new(),
            synthetic_images: 3000,
            synthetic_classes: 10,
            synthetic_size: 32,
        }
    }
}

impl Default for PatchConfig {
    fn default() -> Self {
        let v = bagssl_data::Views::default();
        let a = v.augment;
        PatchConfig {
            size: 8,
            per_image: 16,
            augment: true,
            out_size: 0,
            scale: Vec::new(),
            ratio: v.ratio.to_vec(),
            flip: f64::from(a.flip),
            jitter: f64::from(a.jitter),
            jitter_strength: a.jitter_strength.map(f64::from).to_vec(),
            gray: f64::from(a.gray),
            blur: f64::from(a.blur),
            blur_sigma: a.blur_sigma.map(f64::from).to_vec(),
            solarize: f64::from(a.solarize),
        }
    }
}

impl PatchConfig {
    /// The model's input side: `out_size`, or `size` when it is 0.
    pub fn input_size(&self) -> usize {
        if self.out_size == 0 {
            self.size
        } else {
            self.out_size
        }
    }

    /// The sampler's views of these keys, checked (errors name the `patches.*` key).
    pub fn views(&self) -> Result<bagssl_data::Views> {
        let scale = match self.scale.as_slice() {
            [] => None,
            _ => Some(pair("patches.scale", &self.scale)?),
        };
        let [a, b, c] = self.jitter_strength[..] else {
            bail!(
                "config key `patches.jitter_strength` must be [brightness, contrast, saturation] (got {:?})",
                self.jitter_strength
            );
        };
        let augment = bagssl_data::Augment {
            flip: self.flip as f32,
            jitter: self.jitter as f32,
            jitter_strength: [a, b, c].map(|v| v as f32),
            gray: self.gray as f32,
            blur: self.blur as f32,
            blur_sigma: pair("patches.blur_sigma", &self.blur_sigma)?.map(|v| v as f32),
            solarize: self.solarize as f32,
        };
        let views =
            bagssl_data::Views { crop: Some(self.size), scale, ratio: pair("patches.ratio", &self.ratio)?, augment };
        views.validate().map_err(|e| anyhow!(e))?;
        Ok(views)
    }
}

/// The two values of a `[min, max]` key.
fn pair(key: &str, v: &[f64]) -> Result<[f64; 2]> {
    match *v {
        [lo, hi] => Ok([lo, hi]),
        _ => bail!("config key `{key}` must be [min, max] (got {v:?})"),
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            arch: bagssl_model::Arch::Mlp,
            layers: 2,
            hidden: 2048,
            widths: Vec::new(),
            blocks: Vec::new(),
            stem: bagssl_model::Stem::Cifar,
            proj: 2048,
            projector: Vec::new(),
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            batch_images: 256,
            epochs: 30.0,
            optimizer: OptimizerKind::AdamW,
            lr: 1e-3,
            weight_decay: 1e-5,
            warmup_epochs: 2.0,
            log_every: 10,
            checkpoint_every: 0,
            stop_on_collapse: false,
            tensorboard: false,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            stride: 2,
            knn_k: 20,
            knn_t: 0.1,
            probe_epochs: 50,
            batch_images: 32,
            untrained: true,
            train_images: 0,
            protocols: vec!["grid".into()],
            random_patches: 128,
            scales: Vec::new(),
            patch: 0,
            feature: "encoder".into(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let table: toml::Table = toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        Config::from_table(table, origin)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Config> {
        check_keys(&table, origin)?;
        check_choices(&table, origin)?;
        let cfg: Config = toml::Value::Table(table).try_into().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// Applies `section.key=value` overrides (value in TOML syntax; bare words are strings).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Config> {
        let mut table = toml::Table::try_from(self).context("serializing the config")?;
        for set in sets {
            let (key, raw) = set.split_once('=').ok_or_else(|| anyhow!("--set {set:?}: expected section.key=value"))?;
            let key = key.trim();
            let value = parse_value(raw.trim());
            let path: Vec<&str> = key.split('.').collect();
            let slot = match path.as_slice() {
                [k] => table.get_mut(*k),
                [s, k] => table.get_mut(*s).and_then(|t| t.as_table_mut()).and_then(|t| t.get_mut(*k)),
                _ => None,
            };
            let slot = slot.ok_or_else(|| anyhow!("--set {set:?}: unknown config key `{key}`{}", suggest(key)))?;
            *slot = coerce(slot, value).with_context(|| format!("--set {set:?}: bad value for `{key}`"))?;
        }
        Config::from_table(table, "--set")
    }

    /// Checks values that do not depend on the data; `validate_for_images` checks the rest.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("patches.size", self.patches.size),
            ("patches.per_image", self.patches.per_image),
            ("model.layers", self.model.layers),
            ("model.hidden", self.model.hidden),
            ("model.proj", self.model.proj),
            ("train.batch_images", self.train.batch_images),
            ("train.log_every", self.train.log_every),
            ("eval.stride", self.eval.stride),
            ("eval.knn_k", self.eval.knn_k),
            ("eval.batch_images", self.eval.batch_images),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("config key `{key}` must be at least 1 (got 0)");
            }
        }
        self.patches.views()?;
        self.protocols()?;
        self.eval_feature()?;
        if self.patches.per_image < 2 {
            bail!("config key `patches.per_image` must be at least 2: the invariance term needs co-occurring patches");
        }
        let finite_pos =
            [("train.lr", self.train.lr), ("train.epochs", self.train.epochs), ("eval.knn_t", self.eval.knn_t)];
        for (key, v) in finite_pos {
            if !(v.is_finite() && v > 0.0) {
                bail!("config key `{key}` must be a positive number (got {v})");
            }
        }
        let finite_nonneg = [
            ("train.weight_decay", self.train.weight_decay),
            ("train.warmup_epochs", self.train.warmup_epochs),
            ("loss.invariance", self.loss.invariance as f64),
            ("loss.variance", self.loss.variance as f64),
            ("loss.covariance", self.loss.covariance as f64),
        ];
        for (key, v) in finite_nonneg {
            if !(v.is_finite() && v >= 0.0) {
                bail!("config key `{key}` must be a non-negative number (got {v})");
            }
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            bail!("config key `data.val_fraction` must be in (0, 1) (got {})", self.data.val_fraction);
        }
        if !(self.data.resize.is_empty() || self.data.resize.len() == 2 && self.data.resize.iter().all(|&v| v > 0)) {
            bail!("config key `data.resize` must be empty or [height, width] (got {:?})", self.data.resize);
        }
        if self.data.image_size > 0 && !self.data.resize.is_empty() {
            bail!(
                "config keys `data.resize` ({:?}) and `data.image_size` ({}) exclude each other: set one",
                self.data.resize,
                self.data.image_size
            );
        }
        if self.data.path.is_empty() {
            if self.data.synthetic_images < 20 || self.data.synthetic_classes < 2 {
                bail!("config keys `data.synthetic_images` (>= 20) / `data.synthetic_classes` (>= 2) are too small");
            }
            let n = self.data.synthetic_size;
            for (key, side) in [("patches.size", self.patches.size), ("patches.out_size", self.patches.input_size())] {
                if n < side {
                    bail!("config key `{key}` = {side} is larger than the synthetic images ({n} x {n}, `data.synthetic_size`)");
                }
            }
        }
        Ok(())
    }

    /// Checks the patch size against the loaded images.
    pub fn validate_for_images(&self, height: usize, width: usize, origin: &str) -> Result<()> {
        // The evaluation grid cuts patches of the input side, so it must fit too.
        for (key, side) in [("patches.size", self.patches.size), ("patches.out_size", self.patches.input_size())] {
            if side > height || side > width {
                bail!("config key `{key}` = {side} is larger than the images of {origin} ({height} x {width})");
            }
        }
        let grid = self.eval_patch(self.patches.input_size());
        if grid > height || grid > width {
            bail!("config key `eval.patch` = {grid} is larger than the images of {origin} ({height} x {width})");
        }
        if let Some(&side) = self.eval.scales.iter().find(|&&s| s == 0 || s > height || s > width) {
            bail!("config key `eval.scales` holds {side}, which is no patch side of the images of {origin} ({height} x {width})");
        }
        Ok(())
    }

    /// The evaluation grid's patch side for a model of input side `input`: `eval.patch`, else
    /// `input`.
    pub fn eval_patch(&self, input: usize) -> usize {
        if self.eval.patch == 0 {
            input
        } else {
            self.eval.patch
        }
    }

    /// `eval.feature`, parsed.
    pub fn eval_feature(&self) -> Result<bagssl_model::Representation> {
        bagssl_model::Representation::parse(&self.eval.feature).with_context(|| {
            format!(
                "config key `eval.feature` takes \"encoder\" or \"projector.0\", \"projector.1\", ... (got {:?})",
                self.eval.feature
            )
        })
    }

    /// `eval.protocols` by name, checked; `random` draws the training views' boxes (fixed crops
    /// of `patches.size` without `patches.scale`).
    pub fn protocols(&self) -> Result<Vec<(String, bagssl_eval::Protocol)>> {
        use bagssl_eval::Protocol;
        let e = &self.eval;
        if e.protocols.is_empty() {
            bail!("config key `eval.protocols` must name at least one of {}", PROTOCOLS.join(", "));
        }
        if e.random_patches == 0 {
            bail!("config key `eval.random_patches` must be at least 1 (got 0)");
        }
        let mut out: Vec<(String, Protocol)> = Vec::new();
        for name in &e.protocols {
            let protocol = match name.as_str() {
                "grid" => Protocol::Grid,
                "whole" => Protocol::Whole,
                "pyramid" => Protocol::Pyramid,
                "multiscale" if e.scales.is_empty() => {
                    bail!("config key `eval.scales` must list the patch sides of the `multiscale` protocol")
                }
                "multiscale" => Protocol::Multiscale { sizes: e.scales.clone() },
                "random" => Protocol::Random { views: self.patches.views()?, count: e.random_patches },
                _ => bail!("config key `eval.protocols` takes {} (got {name:?})", PROTOCOLS.join(", ")),
            };
            if out.iter().any(|(n, _)| n == name) {
                bail!("config key `eval.protocols` names {name:?} twice");
            }
            out.push((name.clone(), protocol));
        }
        Ok(out)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes")
    }
}

/// Rejects unknown sections and keys with their full dotted name (serde's message lacks the section).
fn check_keys(table: &toml::Table, origin: &str) -> Result<()> {
    let reference = toml::Table::try_from(Config::default()).expect("default config serializes");
    for (k, v) in table {
        let Some(rv) = reference.get(k) else { bail!("{origin}: unknown config key `{k}`{}", suggest(k)) };
        if let (Some(t), Some(rt)) = (v.as_table(), rv.as_table()) {
            for kk in t.keys() {
                if !rt.contains_key(kk) {
                    let full = format!("{k}.{kk}");
                    bail!("{origin}: unknown config key `{full}`{}", suggest(&full));
                }
            }
        } else if rv.is_table() {
            bail!("{origin}: config key `{k}` must be a section ([{k}])");
        }
    }
    Ok(())
}

/// Rejects a value that is not one of its key's names, naming the key and listing the names
/// (serde's message has neither the key nor its section).
fn check_choices(table: &toml::Table, origin: &str) -> Result<()> {
    use CpuMatmulPrecision as Cpu;
    check_choice(table, origin, "device", &[DeviceKind::Cpu, DeviceKind::Cuda])?;
    check_choice(table, origin, "gpu_precision", &GemmPrecision::ALL)?;
    check_choice(table, origin, "cpu_precision", &[Cpu::F32, Cpu::Bf16])?;
    check_choice(table, origin, "train.optimizer", &[OptimizerKind::AdamW, OptimizerKind::Lars])
}

fn check_choice<T: Serialize + DeserializeOwned>(
    table: &toml::Table,
    origin: &str,
    key: &str,
    all: &[T],
) -> Result<()> {
    let value = match key.split_once('.') {
        Some((section, k)) => table.get(section).and_then(|t| t.get(k)),
        None => table.get(key),
    };
    match value {
        Some(v) if v.clone().try_into::<T>().is_err() => {
            let names: Vec<String> = all.iter().map(choice_name).collect();
            bail!("{origin}: config key `{key}` must be one of {} (got {v})", names.join(", "))
        }
        _ => Ok(()),
    }
}

/// The config spelling of a choice (`cpu`, `bf16`, `adamw`, ...).
pub fn choice_name<T: Serialize>(choice: &T) -> String {
    match toml::Value::try_from(choice) {
        Ok(toml::Value::String(s)) => s,
        other => panic!("a config choice serializes to a string, not {other:?}"),
    }
}

/// " (did you mean `x`?)" when a known key is close.
fn suggest(key: &str) -> String {
    let reference = toml::Table::try_from(Config::default()).expect("default config serializes");
    let mut known = Vec::new();
    for (k, v) in &reference {
        match v.as_table() {
            Some(t) => known.extend(t.keys().map(|kk| format!("{k}.{kk}"))),
            None => known.push(k.clone()),
        }
    }
    let leaf = key.rsplit('.').next().unwrap_or(key);
    known
        .iter()
        .find(|k| k.rsplit('.').next() == Some(leaf) || edit_distance(k, key) <= 2)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim_matches('"').to_string()))
}

/// Makes `--set train.lr=1` (an integer) fit a float key, and refuses type changes clearly.
fn coerce(old: &toml::Value, new: toml::Value) -> Result<toml::Value> {
    use toml::Value::*;
    Ok(match (old, new) {
        (Float(_), Integer(i)) => Float(i as f64),
        (String(_), v @ String(_)) => v,
        (String(_), v) => String(v.to_string()),
        (Integer(_), v @ Integer(_)) | (Float(_), v @ Float(_)) | (Boolean(_), v @ Boolean(_)) => v,
        (Array(_), v @ Array(_)) => v,
        (old, new) => bail!("expected {} but got {new:?}", old.type_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_parses_and_validates() {
        let c = Config::from_toml(QUICKSTART, "quickstart.toml").unwrap();
        c.validate().unwrap();
        assert!(c.data.path.is_empty());
    }

    #[test]
    fn all_shipped_configs_parse() {
        for name in [
            "quickstart",
            "cifar10",
            "reference",
            "cifar10-resnet-cpu",
            "cifar10-resnet18",
            "bench-cpu",
            "vicreg-image",
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(format!("{name}.toml"));
            Config::from_file(&p).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn overrides_apply_and_coerce() {
        let c = Config::default()
            .with_overrides(&["train.lr=1".into(), "model.hidden=64".into(), "device=cuda".into()])
            .unwrap();
        assert_eq!(c.train.lr, 1.0);
        assert_eq!(c.model.hidden, 64);
        assert_eq!(c.device, DeviceKind::Cuda);
        let c = Config::default().with_overrides(&["data.path=/tmp/x y".into()]).unwrap();
        assert_eq!(c.data.path, "/tmp/x y");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::default().with_overrides(&["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("train.lrr") && e.contains("train.lr"), "{e}");
        let e = Config::from_toml("[model]\nwidth = 3\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("model.width") && e.contains("x.toml"), "{e}");
        let e = Config::from_toml("bogus = 1\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("`bogus`"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("[model]\nhidden = \"big\"\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("hidden"), "{e}");
        let e = Config::default().with_overrides(&["model.hidden=abc".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("model.hidden"), "{e:#}");
        for (set, key) in [
            ("train.batch_images=0", "train.batch_images"),
            ("train.lr=-1", "train.lr"),
            ("data.val_fraction=1.5", "data.val_fraction"),
            ("patches.size=40", "patches.size"),
        ] {
            let c = Config::default().with_overrides(&[set.into()]).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        // Choices fail as the config is read, naming the key and the valid names.
        for (set, message) in [
            ("device=tpu", "config key `device` must be one of cpu, cuda (got \"tpu\")"),
            ("gpu_precision=fp8", "config key `gpu_precision` must be one of bf16, tf32, f32 (got \"fp8\")"),
            ("cpu_precision=tf32", "config key `cpu_precision` must be one of f32, bf16 (got \"tf32\")"),
            ("train.optimizer=sgd", "config key `train.optimizer` must be one of adamw, lars (got \"sgd\")"),
            ("device=3", "config key `device` must be one of cpu, cuda (got \"3\")"),
        ] {
            let e = Config::default().with_overrides(&[set.into()]).unwrap_err().to_string();
            assert!(e.contains(message), "{set}: {e}");
        }
        let e = Config::from_toml("device = \"gpu\"\n", "x.toml").unwrap_err().to_string();
        assert_eq!(e, "x.toml: config key `device` must be one of cpu, cuda (got \"gpu\")");
        let e = Config::from_toml("[train]\noptimizer = 1\n", "x.toml").unwrap_err().to_string();
        assert_eq!(e, "x.toml: config key `train.optimizer` must be one of adamw, lars (got 1)");
        let c = Config::default();
        let e = c.validate_for_images(6, 6, "data/x").unwrap_err().to_string();
        assert!(e.contains("patches.size") && e.contains("6 x 6"), "{e}");
    }

    /// Without `patches.scale` the views are the fixed crops of `patches.size` with the
    /// sampler's default augmentations; `out_size` 0 is `size`.
    #[test]
    fn view_keys_default_to_fixed_crops() {
        let p = Config::default().patches;
        let views = p.views().unwrap();
        assert_eq!(views, bagssl_data::Views { crop: Some(8), ..bagssl_data::Views::default() });
        assert_eq!(p.input_size(), 8);
        let c = Config::default()
            .with_overrides(&[
                "patches.scale=[0.2, 1]".into(),
                "patches.out_size=16".into(),
                "patches.blur=0.1".into(),
                "patches.solarize=0.1".into(),
            ])
            .unwrap();
        let v = c.patches.views().unwrap();
        assert_eq!((v.scale, c.patches.input_size()), (Some([0.2, 1.0]), 16));
        assert_eq!((v.augment.blur, v.augment.solarize), (0.1, 0.1));
        assert_eq!(Config::from_toml(&c.to_toml(), "rt").unwrap(), c);
    }

    #[test]
    fn bad_view_values_are_named() {
        for (set, key) in [
            ("patches.scale=[0.5, 0.1]", "patches.scale"),
            ("patches.scale=[0, 1]", "patches.scale"),
            ("patches.scale=[0.5]", "patches.scale"),
            ("patches.ratio=[2, 1]", "patches.ratio"),
            ("patches.flip=1.5", "patches.flip"),
            ("patches.blur=-0.1", "patches.blur"),
            ("patches.blur_sigma=[0, 1]", "patches.blur_sigma"),
            ("patches.jitter_strength=[0.4, 0.4]", "patches.jitter_strength"),
            ("patches.out_size=64", "patches.out_size"),
        ] {
            let c = Config::default().with_overrides(&[set.into()]).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{set}: {e}");
        }
        let c = Config::default().with_overrides(&["patches.out_size=12".into()]).unwrap();
        let e = c.validate_for_images(10, 10, "data/x").unwrap_err().to_string();
        assert!(e.contains("patches.out_size") && e.contains("10 x 10"), "{e}");
    }

    #[test]
    fn protocols_are_checked_by_name() {
        let names = |c: &Config| c.protocols().unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(&Config::default()), ["grid"]);
        let c =
            Config::default().with_overrides(&["eval.protocols=[\"random\", \"whole\", \"pyramid\"]".into()]).unwrap();
        assert_eq!(names(&c), ["random", "whole", "pyramid"]);
        let c = Config::default().with_overrides(&["eval.feature=\"projector.0\"".into()]).unwrap();
        assert_eq!(c.eval_feature().unwrap(), bagssl_model::Representation::ProjectorHidden(0));
        assert_eq!(Config::default().eval_patch(12), 12);
        assert_eq!(Config::default().with_overrides(&["eval.patch=6".into()]).unwrap().eval_patch(12), 6);
        for (set, needle) in [
            ("eval.protocols=[]", "at least one"),
            ("eval.protocols=[\"grid\", \"grid\"]", "twice"),
            ("eval.protocols=[\"pyramids\"]", "grid, multiscale, whole, random, pyramid"),
            ("eval.protocols=[\"multiscale\"]", "eval.scales"),
            ("eval.random_patches=0", "eval.random_patches"),
            ("eval.feature=\"projector\"", "eval.feature"),
            ("eval.feature=\"projector.-1\"", "eval.feature"),
            ("eval.feature=\"h\"", "eval.feature"),
        ] {
            let e = Config::default().with_overrides(&[set.into()]).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{set}: {e}");
        }
    }

    /// The resolved config.toml spells the choices as they always were.
    #[test]
    fn choices_are_written_by_name() {
        let c = Config::default()
            .with_overrides(&["device=cuda".into(), "gpu_precision=tf32".into(), "train.optimizer=lars".into()])
            .unwrap();
        let text = c.to_toml();
        for line in ["device = \"cuda\"", "gpu_precision = \"tf32\"", "cpu_precision = \"f32\"", "optimizer = \"lars\""]
        {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(Config::from_toml(&text, "rt").unwrap(), c);
        assert_eq!(choice_name(&CpuMatmulPrecision::Bf16), "bf16");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::from_toml(QUICKSTART, "q").unwrap();
        assert_eq!(Config::from_toml(&c.to_toml(), "rt").unwrap(), c);
    }

    /// `[loss]` is bag-VICReg's weight type itself: its defaults, its values written as typed
    /// (0.3, not 0.30000001192092896), its epsilon fixed (not a key).
    #[test]
    fn loss_weights_are_the_kernels_type() {
        let d = Config::default();
        assert_eq!(d.loss, bagssl_model::VicregWeights::default());
        let c = d.with_overrides(&["loss.invariance=0.3".into()]).unwrap();
        assert_eq!(c.loss.invariance, 0.3f32);
        assert_eq!(c.loss.eps, 1e-4, "eps keeps the definition's value");
        let text = c.to_toml();
        assert!(text.lines().any(|l| l == "invariance = 0.3"), "{text}");
        assert!(!text.contains("eps"), "{text}");
        assert_eq!(Config::from_toml(&text, "rt").unwrap(), c);
        let e = d.with_overrides(&["loss.eps=0.1".into()]).unwrap_err().to_string();
        assert!(e.contains("loss.eps"), "{e}");
    }
}
