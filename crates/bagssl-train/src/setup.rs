//! Turning a config into the things a command needs: the device, the datasets, the run directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bagssl_autograd::{set_cpu_matmul_precision, Device};
use bagssl_data::{ImageStore, LoadOptions, Split, SyntheticSpec};

use crate::cli::ConfigArgs;
use crate::config::{choice_name, Config, DeviceKind, QUICKSTART};

/// Config file (or the embedded quickstart) + shorthands + `--set`, validated.
pub fn resolve_config(args: &ConfigArgs) -> Result<Config> {
    resolve_config_or(args, QUICKSTART, "configs/quickstart.toml (embedded)", &[])
}

/// Like [`resolve_config`], but without `--config` the base is `default` (TOML text named
/// `origin`) with `preset` overrides applied before the user's shorthands and `--set`.
pub fn resolve_config_or(args: &ConfigArgs, default: &str, origin: &str, preset: &[&str]) -> Result<Config> {
    let mut sets: Vec<String> = Vec::new();
    let base = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => {
            sets.extend(preset.iter().map(|s| s.to_string()));
            Config::from_toml(default, origin)?
        }
    };
    if let Some(d) = &args.data {
        sets.push(format!("data.path={}", toml_str(&d.display().to_string())));
    }
    if let Some(d) = &args.eval_data {
        sets.push(format!("data.eval_path={}", toml_str(&d.display().to_string())));
    }
    if let Some(d) = &args.device {
        sets.push(format!("device={}", toml_str(d)));
    }
    sets.extend(args.set.iter().cloned());
    let cfg = base.with_overrides(&sets)?;
    cfg.validate()?;
    Ok(cfg)
}

/// A TOML string literal (paths may hold spaces or quotes).
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `cpu` (GEMMs at `cpu_precision`), or the first CUDA GPU (GEMMs at `gpu_precision`) with a
/// clear error when there is none.
pub fn resolve_device(cfg: &Config) -> Result<Device> {
    match cfg.device {
        DeviceKind::Cpu => {
            set_cpu_matmul_precision(cfg.cpu_precision);
            Ok(Device::Cpu)
        }
        DeviceKind::Cuda => {
            let gpu = bagssl_kernels::Gpu::new(0).context("--device cuda: no usable CUDA GPU")?;
            gpu.set_gemm_precision(cfg.gpu_precision);
            gpu.set_store_budget(cfg.data.gpu_store_budget_mib.saturating_mul(1 << 20));
            Ok(Device::Cuda(gpu))
        }
    }
}

/// The GEMM math the run uses on its device: `cpu_precision` or `gpu_precision`, by name.
pub fn precision_label(cfg: &Config) -> String {
    match cfg.device {
        DeviceKind::Cuda => choice_name(&cfg.gpu_precision),
        DeviceKind::Cpu => choice_name(&cfg.cpu_precision),
    }
}

/// The decoded-dataset cache folder: `data.cache_dir`, else `$BAGSSL_CACHE`, else `~/.cache/bagssl`.
pub fn cache_dir(cfg: &Config) -> Option<PathBuf> {
    match cfg.data.cache_dir.as_str() {
        "off" => None,
        "" => std::env::var_os("BAGSSL_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bagssl")))
            .map(|p| p.join("datasets")),
        dir => Some(PathBuf::from(dir)),
    }
}

pub struct Datasets {
    pub train: ImageStore,
    pub test: ImageStore,
    /// Human-readable description for logs.
    pub source: String,
}

/// Seed of the permutation that holds `data.val_fraction` of the training images out for
/// evaluation when there is no `data.eval_path`, for real and synthetic data alike. Fixed, not
/// derived from `seed`: runs of different seeds on one dataset are evaluated on the same images,
/// and `eval` of an older real-data checkpoint holds out what its run held out (12345 is what
/// real data always used; the synthetic set used `seed ^ 0x5eed` before).
pub const HOLDOUT_SEED: u64 = 12345;

/// How `cfg` asks a dataset split to be loaded (`data.resize`, `data.image_size`, the cache).
pub fn load_options(cfg: &Config, split: Split, progress: bool) -> LoadOptions {
    LoadOptions {
        split,
        resize: (cfg.data.resize.len() == 2).then(|| (cfg.data.resize[0], cfg.data.resize[1])),
        image_size: (cfg.data.image_size > 0).then_some(cfg.data.image_size),
        cache_dir: cache_dir(cfg),
        progress,
    }
}

/// Loads (or synthesizes) the training split and the evaluation split.
pub fn load_datasets(cfg: &Config, progress: bool) -> Result<Datasets> {
    let opts = |split| load_options(cfg, split, progress);
    let (train, test, source) = if cfg.data.path.is_empty() {
        let all = bagssl_data::synthetic(&SyntheticSpec {
            images: cfg.data.synthetic_images,
            classes: cfg.data.synthetic_classes,
            height: cfg.data.synthetic_size,
            width: cfg.data.synthetic_size,
            seed: cfg.seed,
        });
        let (train, test) = all.split_holdout(cfg.data.val_fraction, HOLDOUT_SEED);
        (train, test, format!("synthetic ({} images, {} classes)", all.len(), cfg.data.synthetic_classes))
    } else {
        let path = Path::new(&cfg.data.path);
        let train = bagssl_data::load(path, &opts(Split::Train))?;
        if cfg.data.eval_path.is_empty() {
            let (tr, te) = train.split_holdout(cfg.data.val_fraction, HOLDOUT_SEED);
            let src = format!("{} ({} train, {} held out)", path.display(), tr.len(), te.len());
            (tr, te, src)
        } else {
            let epath = Path::new(&cfg.data.eval_path);
            let mut test = bagssl_data::load(epath, &opts(Split::Test))?;
            if (test.height, test.width) != (train.height, train.width) {
                bail!(
                    "{}: images are {}x{} but the training images ({}) are {}x{}; set data.resize or data.image_size",
                    epath.display(),
                    test.height,
                    test.width,
                    path.display(),
                    train.height,
                    train.width
                );
            }
            // The test split is normalized like the training split.
            test.mean = train.mean;
            test.std = train.std;
            let src = format!("{} ({} train) / {} ({} test)", path.display(), train.len(), epath.display(), test.len());
            (train, test, src)
        }
    };
    if train.is_empty() || test.is_empty() {
        bail!("data: {source} leaves an empty training or evaluation split");
    }
    cfg.validate_for_images(train.height, train.width, &source)?;
    Ok(Datasets { train, test, source })
}

/// Makes `stores` normalise like the images `checkpoint`'s model was trained on (whatever their own
/// statistics), as every command that reads a checkpoint and a dataset must. A checkpoint written
/// before the normalisation was recorded keeps the stores' own statistics, with a warning.
pub fn use_checkpoint_normalization(checkpoint: &Path, stores: &mut [&mut ImageStore]) -> Result<()> {
    match bagssl_model::read_normalization(checkpoint)? {
        Some(n) => stores.iter_mut().for_each(|s| n.apply_to(s)),
        None => eprintln!(
            "bagssl: warning: {} does not record the training images' normalisation (an older checkpoint); \
             normalising with the statistics of the given images",
            checkpoint.display()
        ),
    }
    Ok(())
}

/// Appends JSON lines to `metrics.jsonl`, flushing each one so a crash loses nothing.
pub struct MetricsLog {
    file: std::fs::File,
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

impl MetricsLog {
    pub fn open(path: &Path) -> Result<MetricsLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { file, tensorboard: None })
    }

    /// Every later line also goes to a new TensorBoard event file in `dir`.
    pub fn add_tensorboard(&mut self, dir: &Path) -> Result<()> {
        self.tensorboard = Some(crate::tensorboard::EventWriter::create(dir)?);
        Ok(())
    }

    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").context("writing metrics.jsonl")?;
        self.file.flush().context("writing metrics.jsonl")?;
        match &mut self.tensorboard {
            Some(tb) => tb.metrics_line(value),
            None => Ok(()),
        }
    }
}

/// A progress bar of `total` steps drawn with `template` (hidden when `quiet`).
pub fn progress_bar(total: u64, quiet: bool, template: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    pb
}

/// Writes `contents` to `path` atomically (a unique temporary file, fsync, rename), so a failure
/// leaves the old file: [`bagssl_model::checkpoint::write_atomic`].
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(bagssl_model::checkpoint::write_atomic(path, contents)?)
}

/// Default run directory: `runs/<UTC timestamp>`.
pub fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    PathBuf::from("runs").join(format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Howard Hinnant's days-to-civil: a date without a time crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Peak resident memory of this process (VmHWM), in MiB; None where /proc is absent.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The model shape and the training schedule a config asks for, given the training-set size.
pub fn model_and_train_config(
    cfg: &Config,
    train_images: usize,
) -> Result<(bagssl_model::ModelConfig, bagssl_model::TrainConfig)> {
    use bagssl_model::{ModelConfig, TrainConfig};
    if cfg.train.batch_images > train_images {
        bail!(
            "config key `train.batch_images` = {} is larger than the training set ({train_images} images)",
            cfg.train.batch_images
        );
    }
    let steps_per_epoch = (train_images / cfg.train.batch_images) as f64;
    let total_steps = (cfg.train.epochs * steps_per_epoch).round().max(1.0) as u64;
    let warmup_steps = ((cfg.train.warmup_epochs * steps_per_epoch).round() as u64).min(total_steps);
    let m = &cfg.model;
    // A ResNet's width comes from its stages: the MLP's keys do not describe it.
    let mlp = m.arch == bagssl_model::Arch::Mlp;
    let model = ModelConfig {
        patch: cfg.patches.input_size(),
        layers: if mlp { m.layers } else { 0 },
        hidden: if mlp { m.hidden } else { 0 },
        proj: m.proj,
        arch: m.arch,
        widths: m.widths.clone(),
        blocks: m.blocks.clone(),
        stem: m.stem,
        projector: m.projector.clone(),
    };
    model.validate().context("config section [model]")?;
    let train = TrainConfig {
        per_image: cfg.patches.per_image,
        augment: cfg.patches.augment,
        views: cfg.patches.views()?,
        batch_images: cfg.train.batch_images,
        total_steps,
        warmup_steps,
        lr: cfg.train.lr,
        weight_decay: cfg.train.weight_decay,
        optimizer: cfg.train.optimizer,
        loss: cfg.loss,
        seed: cfg.seed,
    };
    Ok((model, train))
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_418), (2025, 11, 26));
    }

    /// `cpu_precision` sets the CPU backend's GEMM switch (the only unit test of this binary
    /// that touches it, so no other test sees it flipped).
    #[test]
    fn cpu_precision_sets_the_cpu_gemm_switch() {
        use super::*;
        use bagssl_autograd::CpuMatmulPrecision;
        let mut cfg = Config { cpu_precision: CpuMatmulPrecision::Bf16, ..Config::default() };
        assert!(matches!(resolve_device(&cfg).unwrap(), Device::Cpu));
        assert_eq!(bagssl_autograd::cpu_matmul_precision(), CpuMatmulPrecision::Bf16);
        assert_eq!(precision_label(&cfg), "bf16");
        cfg.cpu_precision = CpuMatmulPrecision::F32;
        resolve_device(&cfg).unwrap();
        assert_eq!(bagssl_autograd::cpu_matmul_precision(), CpuMatmulPrecision::F32);
    }
}
