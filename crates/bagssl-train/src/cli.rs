//! Command-line arguments (clap). The subcommands map one to one onto `commands/*`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bagssl-train",
    version,
    about = "BagSSL: self-supervised bag-of-patch-embedding training on CPU or CUDA",
    long_about = "BagSSL: learn embeddings of fixed-size image patches with bag-VICReg over co-occurring \
                  patches; an image is the mean of its patch embeddings.\n\nWith no subcommand, trains the \
                  embedded default (configs/quickstart.toml: synthetic data, small model)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train an encoder, evaluate it (and the untrained one), write a run directory.
    Train(TrainArgs),
    /// Evaluate a checkpoint: kNN and linear probe of bag embeddings.
    Eval(EvalArgs),
    /// Write image embeddings of a dataset to a safetensors file (the first of `eval.protocols`, `eval.feature`).
    Embed(EmbedArgs),
    /// Time training steps and evaluation throughput; ends with one JSON line.
    Bench(BenchArgs),
    /// Draw a run's training curves (loss, its terms, lr, collapse monitor, accuracies) as a PNG.
    Plot(PlotArgs),
    /// Analyses of a checkpoint: whole image vs bag, patch nearest neighbours in h and z, kNN by
    /// aggregation; analysis.json and a PNG each.
    Analyze(AnalyzeArgs),
}

/// Options shared by everything that builds a config.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (default: the embedded configs/quickstart.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Training data: CIFAR-10 binary dir or ImageFolder tree (= --set data.path=...).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Test split (= --set data.eval_path=...).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// cpu | cuda (= --set device=...).
    #[arg(long)]
    pub device: Option<String>,
    /// Override any config key, e.g. --set train.lr=5e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Run directory (default: runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run whose checkpoint this is (same config, same data; bit-identical on the CPU).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop once this many steps (of the whole run) are done, after writing the checkpoint; the
    /// schedule stays that of the full run, so `--resume` later finishes it as if never stopped.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No progress bar (logs still go to metrics.jsonl).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint written by `train`; its run's config.toml (beside it) is the base config
    /// unless --config names another. --data is the training split (kNN neighbours, probe
    /// training set); without --eval-data, `data.val_fraction` of it is held out.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Also write the report here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images to embed (CIFAR-10 binary dir or ImageFolder tree).
    #[arg(long)]
    pub data: PathBuf,
    /// Output safetensors file: `embeddings` (N, dim) f32 and `labels` (N) i64; the metadata
    /// names the protocol, feature and geometry.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu | cuda (= --set device=...).
    #[arg(long)]
    pub device: Option<String>,
    /// Which split of an ImageFolder with train/ and test/ (or CIFAR binary): train | test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Override any config key of the checkpoint's run, e.g. --set 'eval.protocols=["random"]'
    /// --set eval.feature=projector.0 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A run directory written by `train` (its metrics.jsonl).
    pub run_dir: PathBuf,
    /// The PNG to write (default: RUN_DIR/metrics.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// A checkpoint written by `train`; its run's config.toml (beside it) is the base config, and
    /// without --data its dataset and held-out split are analysed.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Output directory: analysis.json, whole_vs_bag.png, neighbours.png, accuracy.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Training-split images (seeded sample) that are the kNN neighbours.
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// Held-out images (seeded sample) whose kNN accuracy is measured.
    #[arg(long, default_value_t = 1000)]
    pub test_images: usize,
    /// Held-out images of the whole-vs-bag curves and of the patch-neighbour pool.
    #[arg(long, default_value_t = 500)]
    pub pool_images: usize,
    /// Query patches shown in neighbours.png (the locality numbers use up to 256).
    #[arg(long, default_value_t = 6)]
    pub queries: usize,
    /// Nearest patches per query, in h and in z.
    #[arg(long, default_value_t = 8)]
    pub neighbours: usize,
    /// Patch sides compared, comma-separated (default: the input side, 1.5x and 2x where they fit).
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Without --config: the reference configuration (docs/DEFINITIONS.md §11) on synthetic CIFAR-sized data, on the CPU.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Timed training steps (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Images embedded for the evaluation-throughput measurement (0: skip).
    #[arg(long, default_value_t = 512)]
    pub eval_images: usize,
    /// After the timed steps, run as many again with per-op timing and print where a step's time
    /// goes (on CUDA: host-side launch costs only).
    #[arg(long)]
    pub profile: bool,
    /// Instead of steps: time decoding the training data (--data, with data.image_size or
    /// data.resize as configured) into memory on 1 thread and on every core, and print images/s
    /// and images/s per core. The cache is neither read nor written.
    #[arg(long)]
    pub decode: bool,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}
