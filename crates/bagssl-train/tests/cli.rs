//! End-to-end tests of the `bagssl-train` binary: runs, outputs, and bad input.
//! Each bad input must give a non-zero exit, a message naming the file / key / value, no panic,
//! and leave earlier outputs intact.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bagssl-train"));
    // Never touch the user's cache from tests.
    c.env("BAGSSL_CACHE", std::env::temp_dir().join("bagssl-test-cache"));
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A clean failure: exit 1 (not a panic's 101), a message that contains every `needle`.
fn assert_fails_naming(o: &Output, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean failure, got {:?}:\n{t}", o.status);
    assert!(!t.contains("panicked"), "panicked:\n{t}");
    for n in needles {
        assert!(t.contains(n), "message lacks {n:?}:\n{t}");
    }
}

/// A tiny but complete run: small synthetic set, small model, few steps.
const TINY: &[&str] = &[
    "--set",
    "data.synthetic_images=200",
    "--set",
    "model.hidden=32",
    "--set",
    "model.proj=32",
    "--set",
    "train.batch_images=16",
    "--set",
    "train.epochs=1",
    "--set",
    "eval.probe_epochs=3",
    "--set",
    "train.log_every=1",
    "--quiet",
];

fn train_tiny(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    run(&args)
}

fn write_cifar_batch(dir: &Path, name: &str, records: usize) {
    let mut bytes = Vec::new();
    for r in 0..records {
        bytes.push((r % 10) as u8);
        bytes.extend((0..3072).map(|i| ((i * 7 + r * 13) % 256) as u8));
    }
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9 + seed) as u8, (y * 7) as u8, (x ^ y) as u8]));
    img.save(path).unwrap();
}

#[test]
fn tiny_run_writes_the_run_directory_then_eval_and_embed_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = train_tiny(&out, &["--set", "train.tensorboard=true"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("untrained") && t.contains("trained") && t.contains("linear"), "{t}");

    // config.toml round-trips and holds the overrides.
    let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(cfg["model"]["hidden"].as_integer(), Some(32));
    // metrics.jsonl: one JSON object per line, steps then evaluations.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<_> = lines.iter().filter(|l| l["event"] == "step").collect();
    assert!(steps.len() >= 10, "{metrics}");
    assert!(steps.iter().all(|s| s["loss"].as_f64().unwrap().is_finite()));
    // The collapse monitor's keys on every logged step (docs/DEFINITIONS.md §12).
    for k in ["embedding_rank", "projection_rank", "embedding_std_min", "projection_std_min"] {
        assert!(steps.iter().all(|s| s[k].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0)), "{k}: {metrics}");
    }
    assert_eq!(lines.iter().filter(|l| l["event"] == "eval").count(), 2);
    // eval.json: the contract of README.md, "Outputs".
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    for k in ["knn", "linear", "knn_single_patch"] {
        let v = eval["trained"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    assert!(eval["untrained"]["knn"].as_f64().is_some());
    assert!(eval["train_seconds"].as_f64().unwrap() > 0.0);
    assert!(eval["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(eval["device"].as_str().unwrap().starts_with("cpu"));

    // The checkpoint is a safetensors file with PyTorch names.
    let ckpt = out.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("encoder.0.weight").unwrap().shape(), &[32, 8 * 8 * 3]);
    assert!(st.tensor("encoder.1.bn.running_var").is_ok());

    // eval --checkpoint on the official CIFAR binary layout.
    let cifar = cifar_folder(dir.path(), 12, Some(20));
    let report = dir.path().join("report.json");
    let o = eval_cifar(&ckpt, dir.path(), &report, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(r["trained"]["knn"].as_f64().is_some(), "{r}");

    // embed: (N, hidden) embeddings and labels.
    let emb = dir.path().join("emb.safetensors");
    let o = embed_to(&ckpt, &cifar, &emb, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&emb).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("embeddings").unwrap().shape(), &[60, 32]);
    assert_eq!(st.tensor("labels").unwrap().shape(), &[60]);

    // The TensorBoard event file beside metrics.jsonl (its framing: src/tensorboard.rs' tests).
    let events: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(std::fs::metadata(&events[0]).unwrap().len() > 1000);

    // The run's figure, written by train and again by plot.
    assert_png(&out.join("metrics.png"), (1500, 1350));
    let png = dir.path().join("curves.png");
    let o = run(&["plot", out.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_png(&png, (1500, 1350));
}

/// A PNG of `size` with more than a blank page on it.
fn assert_png(path: &Path, size: (u32, u32)) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(inked > 10_000, "{}: {inked} non-white pixels", path.display());
}

#[test]
fn plot_names_a_missing_or_bad_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let o = run(&["plot", run_dir.to_str().unwrap()]);
    assert_fails_naming(&o, &["cannot read", "metrics.jsonl"]);
    std::fs::create_dir(&run_dir).unwrap();
    let metrics = run_dir.join("metrics.jsonl");
    std::fs::write(&metrics, "{\"event\":\"step\",\"step\":1,\"loss\":2.0}\nnot json\n").unwrap();
    assert_fails_naming(&run(&["plot", run_dir.to_str().unwrap()]), &["metrics.jsonl:2", "not a JSON object"]);
    std::fs::write(&metrics, "{\"event\":\"eval\",\"knn\":0.5}\n").unwrap();
    assert_fails_naming(&run(&["plot", run_dir.to_str().unwrap()]), &["metrics.jsonl", "no step lines"]);
    assert!(!run_dir.join("metrics.png").exists(), "no figure from a bad file");
}

#[test]
fn bad_config_keys_and_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(&["train", "--out", out.to_str().unwrap(), "--set", "train.lrr=1"]);
    assert_fails_naming(&o, &["train.lrr", "did you mean `train.lr`"]);
    let o = run(&["train", "--out", out.to_str().unwrap(), "--set", "train.batch_images=0"]);
    assert_fails_naming(&o, &["train.batch_images"]);
    let o = run(&["train", "--out", out.to_str().unwrap(), "--set", "patches.size=64"]);
    assert_fails_naming(&o, &["patches.size", "64"]);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nhidden = \"wide\"\n").unwrap();
    let o = run(&["train", "--config", bad.to_str().unwrap()]);
    assert_fails_naming(&o, &["bad.toml", "hidden"]);
    std::fs::write(&bad, "[train]\nepochs = 1\nbatch_size = 3\n").unwrap();
    let o = run(&["train", "--config", bad.to_str().unwrap()]);
    assert_fails_naming(&o, &["bad.toml", "train.batch_size"]);
    std::fs::write(&bad, "[train\n").unwrap();
    let o = run(&["train", "--config", bad.to_str().unwrap()]);
    assert_fails_naming(&o, &["bad.toml", "TOML"]);
    let o = run(&["train", "--config", dir.path().join("nope.toml").to_str().unwrap()]);
    assert_fails_naming(&o, &["nope.toml"]);
    let o = run(&["train", "--device", "tpu"]);
    assert_fails_naming(&o, &["device", "tpu"]);
}

#[test]
fn bad_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o_str = out.to_str().unwrap();

    let missing = dir.path().join("no-such-dataset");
    let o = run(&["train", "--out", o_str, "--data", missing.to_str().unwrap()]);
    assert_fails_naming(&o, &["no-such-dataset"]);

    // A truncated CIFAR-10 batch.
    let cifar = dir.path().join("cifar");
    std::fs::create_dir(&cifar).unwrap();
    for b in 1..=5 {
        write_cifar_batch(&cifar, &format!("data_batch_{b}.bin"), 10);
    }
    let f = std::fs::OpenOptions::new().append(true).open(cifar.join("data_batch_1.bin")).unwrap();
    f.set_len(3073 * 10 - 100).unwrap();
    let o = run(&["train", "--out", o_str, "--data", cifar.to_str().unwrap()]);
    assert_fails_naming(&o, &["data_batch_1.bin"]);

    // ImageFolder: a non-image file in a class folder.
    let folder = dir.path().join("folder");
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        for i in 0..4 {
            write_png(&folder.join(c).join(format!("{i}.png")), 16, 16, i);
        }
    }
    std::fs::write(folder.join("dog").join("notes.png"), b"this is not an image").unwrap();
    let o = run(&["train", "--out", o_str, "--data", folder.to_str().unwrap(), "--set", "data.cache_dir=\"off\""]);
    assert_fails_naming(&o, &["notes.png"]);
    std::fs::remove_file(folder.join("dog").join("notes.png")).unwrap();

    // Mixed image sizes are refused (naming a file of each size) unless data.resize is set.
    write_png(&folder.join("cat").join("big.png"), 20, 18, 1);
    let o = run(&["train", "--out", o_str, "--data", folder.to_str().unwrap(), "--set", "data.cache_dir=\"off\""]);
    assert_fails_naming(&o, &["big.png", "resize"]);
    std::fs::remove_file(folder.join("cat").join("big.png")).unwrap();

    // An empty class folder.
    std::fs::create_dir_all(folder.join("empty")).unwrap();
    let o = run(&["train", "--out", o_str, "--data", folder.to_str().unwrap(), "--set", "data.cache_dir=\"off\""]);
    assert_fails_naming(&o, &["empty"]);
}

#[test]
fn diverging_run_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A sane run that checkpoints every step...
    let o = train_tiny(&out, &["--set", "train.checkpoint_every=1"]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = out.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    // ...then a run into the same directory with an absurd learning rate: the loss turns NaN.
    let o = train_tiny(&out, &["--set", "train.lr=1e30", "--set", "train.warmup_epochs=0"]);
    assert_fails_naming(&o, &["non-finite loss", "checkpoint"]);
    let after = std::fs::read(&ckpt).unwrap();
    // Checkpoints written before the NaN step are whole safetensors files.
    safetensors::SafeTensors::deserialize(&after).expect("checkpoint still loads");
    assert!(!before.is_empty());
}

/// Without the variance term the projector output contracts to a point: the monitor warns, and
/// with `train.stop_on_collapse` the run stops, keeping the checkpoint written before it.
#[test]
fn a_collapsing_run_is_flagged_and_stops_keeping_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let collapse = [
        "--set",
        "loss.variance=0",
        "--set",
        "train.lr=1e-2",
        "--set",
        "train.epochs=40",
        "--set",
        "train.log_every=10",
        "--set",
        "train.checkpoint_every=20",
        "--set",
        "eval.untrained=false",
    ];
    let o = train_tiny(&out, &collapse);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: step") && text(&o).contains("projection_std_min"), "{}", text(&o));
    let events = |out: &Path| -> Vec<serde_json::Value> {
        let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        m.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let first = events(&out).into_iter().find(|l| l["event"] == "collapse").expect("a collapse event");
    assert_eq!(first["stopped"], false);
    let collapsed_at = first["step"].as_u64().unwrap();

    let out = dir.path().join("stopped");
    let mut args = collapse.to_vec();
    args.extend(["--set", "train.stop_on_collapse=true"]);
    let o = train_tiny(&out, &args);
    assert_fails_naming(&o, &["train.stop_on_collapse", "collapsed", "projection_std_min", "last good checkpoint"]);
    let stop = events(&out).into_iter().find(|l| l["event"] == "collapse").unwrap();
    assert_eq!((stop["step"].as_u64(), stop["stopped"].as_bool()), (Some(collapsed_at), Some(true)));
    assert!(!out.join("eval.json").exists(), "a collapsed run is not evaluated");
    assert_png(&out.join("metrics.png"), (1500, 1350));
    // The checkpoint on disk is the last one before the collapse, from a healthy step.
    let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let step: u64 = meta.metadata().as_ref().unwrap()["step"].parse().unwrap();
    assert_eq!(step, (collapsed_at - 1) / 20 * 20, "collapse at {collapsed_at}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if bagssl_kernels::probe().is_available() {
        println!("skipped: a CUDA GPU is present");
        return;
    }
    let o = run(&["train", "--device", "cuda", "--quiet"]);
    assert_fails_naming(&o, &["cuda"]);
}

/// The promise of the quickstart: SSL on the built-in synthetic set clearly beats the untrained
/// encoder (the class is a pair of co-occurring textures; see bagssl-data's synthetic module).
#[test]
fn quickstart_training_beats_the_untrained_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(&["train", "--quiet", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    println!("{}", text(&o));
    for k in ["knn", "linear"] {
        let (t, u) = (eval["trained"][k].as_f64().unwrap(), eval["untrained"][k].as_f64().unwrap());
        assert!(t > u + 0.15, "{k}: trained {t:.3} vs untrained {u:.3}");
    }
    // The bag beats a single patch (each texture alone is shared by several classes).
    let (bag, single) =
        (eval["trained"]["knn"].as_f64().unwrap(), eval["trained"]["knn_single_patch"].as_f64().unwrap());
    assert!(bag > single + 0.15, "bag {bag:.3} vs single patch {single:.3}");
}

/// `--max-steps` then `--resume` ends with the same checkpoint tensors, bit for bit, as one
/// uninterrupted run (the CPU backend is deterministic; the RNG states travel in the checkpoint).
#[test]
fn stopping_and_resuming_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let o = train_tiny(&whole, &["--set", "eval.untrained=false"]);
    assert!(o.status.success(), "{}", text(&o));

    let parts = dir.path().join("parts");
    let o = train_tiny(&parts, &["--set", "eval.untrained=false", "--max-steps", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    assert!(!parts.join("eval.json").exists(), "a stopped run is not evaluated");
    let ckpt = parts.join("checkpoint.safetensors");
    let o = run(&["train", "--quiet", "--resume", ckpt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let a = std::fs::read(whole.join("checkpoint.safetensors")).unwrap();
    let b = std::fs::read(&ckpt).unwrap();
    let (a, b) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut names = a.names();
    names.sort();
    assert!(names.len() > 20, "weights, running stats and optimizer state: {names:?}");
    for name in names {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert!(ta.data() == tb.data(), "`{name}` differs between the resumed and the uninterrupted run");
    }
    let ea: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("eval.json")).unwrap()).unwrap();
    let eb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(parts.join("eval.json")).unwrap()).unwrap();
    assert_eq!(ea["trained"], eb["trained"]);
}

/// `bench` of configs/bench-cpu.toml shrunk to a 32-wide model on 200 images, one warm-up step.
fn bench_small(extra: &[&str]) -> Output {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/bench-cpu.toml");
    let mut args =
        vec!["bench", "--config", cfg, "--warmup", "1", "--set", "model.hidden=32", "--set", "model.proj=32"];
    args.extend(["--set", "data.synthetic_images=200"]);
    args.extend(extra);
    run(&args)
}

/// `bench` ends with one JSON line holding at least `ms_per_step`, `patches_per_s` and `device`
/// (the contract of README.md, "Outputs"), plus what the benchmark scripts read.
#[test]
fn bench_ends_with_the_json_contract() {
    let o = bench_small(&["--steps", "3", "--eval-images", "8"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().expect("output");
    let j: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    for k in ["ms_per_step", "ms_per_step_mean", "patches_per_s", "gflops", "eval_patches_per_s", "peak_rss_mib"] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
    }
    assert!(j["device"].as_str().unwrap().starts_with("cpu"));
    assert_eq!(j["steps"], 3);
    assert_eq!(j["config"]["hidden"], 32);
    assert_eq!(j["precision"], "f32");
    let wait = j["input_wait_ms"].as_f64().expect("input_wait_ms");
    assert!(wait > 0.0 && wait < j["ms_per_step"].as_f64().unwrap(), "input wait {wait} ms in {j}");
}

/// `bench --decode` decodes a folder of variable-size PNGs (with `data.image_size`) on one thread
/// and on every core and reports each; without `--data` it says what it needs.
#[test]
fn bench_decode_times_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    for (c, sizes) in [("a", [(40, 30), (33, 50)]), ("b", [(64, 41), (30, 30)])] {
        std::fs::create_dir_all(tmp.path().join(c)).unwrap();
        for (i, (w, h)) in sizes.into_iter().enumerate() {
            write_png(&tmp.path().join(c).join(format!("{i}.png")), w, h, i as u32);
        }
    }
    let data = tmp.path().to_str().unwrap();
    let o = run(&["bench", "--decode", "--data", data, "--set", "data.image_size=24"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = j["decode"].as_array().expect("decode rows");
    assert_eq!(rows[0]["threads"], 1);
    for r in rows {
        assert_eq!(r["images"], 4, "{j}");
        assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(j["image_size"], 24);
    assert!(stdout.contains("4 images -> 24x24"), "{stdout}");
    assert_fails_naming(&run(&["bench", "--decode"]), &["--decode needs --data"]);
}

/// `cpu_precision = "bf16"` reaches the run (the bench reports it, and the step still runs);
/// `--profile` prints the per-op table of a step before the JSON line.
#[test]
fn bench_runs_with_bf16_gemms_on_the_cpu_and_profiles_the_step() {
    let o = bench_small(&["--steps", "2", "--eval-images", "0", "--set", "cpu_precision=bf16", "--profile"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| bf16 GEMMs"), "{stdout}");
    assert!(stdout.contains("where a step's"), "{stdout}");
    for op in ["linear_fwd", "matmul A^T B", "matmul A B", "vicreg_fwd_bwd", "bn_train_fwd", "adamw_", "outside ops"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(op)), "no {op} row in:\n{stdout}");
    }
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output")).unwrap();
    assert_eq!(j["precision"], "bf16");
    assert!(j["ms_per_step"].as_f64().is_some_and(|v| v > 0.0), "{j}");
}

/// The `embeddings` tensor of an `embed` output file.
fn read_embeddings(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("embeddings").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The checkpoint that 4b64f18 wrote (no `normalize_mean` / `normalize_std` metadata).
const OLD_CHECKPOINT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../bagssl-model/tests/fixtures/checkpoint-4b64f18.safetensors");

/// `dir/cifar-10-batches-bin` in the official binary layout: `per_batch` images in each training
/// batch and, if asked, a test batch.
fn cifar_folder(dir: &Path, per_batch: usize, test_batch: Option<usize>) -> PathBuf {
    let cifar = dir.join("cifar-10-batches-bin");
    std::fs::create_dir(&cifar).unwrap();
    for b in 1..=5 {
        write_cifar_batch(&cifar, &format!("data_batch_{b}.bin"), per_batch);
    }
    if let Some(n) = test_batch {
        write_cifar_batch(&cifar, "test_batch.bin", n);
    }
    cifar
}

/// `embed` of `data` with `ckpt` into `out`.
fn embed_to(ckpt: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let (ckpt, data, out) = (ckpt.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["embed", "--checkpoint", ckpt, "--data", data, "--out", out];
    args.extend(extra);
    run(&args)
}

/// `eval` of `ckpt` on the CIFAR-10 folder under `dir` (both splits), the report in `report`.
fn eval_cifar(ckpt: &Path, dir: &Path, report: &Path, extra: &[&str]) -> Output {
    let (ckpt, dir, report) = (ckpt.to_str().unwrap(), dir.to_str().unwrap(), report.to_str().unwrap());
    let mut args = vec!["eval", "--checkpoint", ckpt, "--data", dir, "--eval-data", dir, "--out", report];
    args.extend(["--set", "eval.probe_epochs=2"]);
    args.extend(extra);
    run(&args)
}

/// A TINY run's checkpoint (no untrained evaluation) and a CIFAR-10 binary folder beside it
/// ([`cifar_folder`]).
fn checkpoint_and_cifar(dir: &Path, per_batch: usize, test_batch: Option<usize>) -> (PathBuf, PathBuf) {
    let out = dir.join("run");
    let o = train_tiny(&out, &["--set", "eval.untrained=false"]);
    assert!(o.status.success(), "{}", text(&o));
    (out.join("checkpoint.safetensors"), cifar_folder(dir, per_batch, test_batch))
}

/// `embed` normalises the images it is given with the training run's statistics (recorded in the
/// checkpoint), not their own; a checkpoint from before they were recorded keeps the old
/// behaviour (the images' own statistics) and says so.
#[test]
fn embed_normalises_like_the_training_run() {
    use bagssl_data::{LoadOptions, Split, SyntheticSpec};
    let dir = tempfile::tempdir().unwrap();
    // Images whose pixel statistics are far from the synthetic training set's.
    let (ckpt, cifar) = checkpoint_and_cifar(dir.path(), 4, None);
    let opts = LoadOptions { split: Split::Train, resize: None, cache_dir: None, progress: false, image_size: None };
    let store = bagssl_data::load(&cifar, &opts).unwrap();
    // TINY's training set: the quickstart's synthetic spec with 200 images; the held-out split
    // keeps the whole set's statistics.
    let train = bagssl_data::synthetic(&SyntheticSpec { images: 200, classes: 10, height: 32, width: 32, seed: 0 });
    assert!(max_abs_diff(&store.mean, &train.mean) > 0.01, "{:?} vs {:?}", store.mean, train.mean);
    let embed = |ckpt: &Path, name: &str| {
        let emb = dir.path().join(name);
        let o = embed_to(ckpt, &cifar, &emb, &["--set", "data.cache_dir=\"off\""]);
        assert!(o.status.success(), "{}", text(&o));
        let bytes = std::fs::read(&emb).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mean: [f32; 3] = serde_json::from_str(&header.metadata().as_ref().unwrap()["normalize_mean"]).unwrap();
        (read_embeddings(&emb), mean, text(&o))
    };
    // The quickstart's [eval]: stride 4, 32 images a batch.
    let in_process = |ckpt: &Path, store: &bagssl_data::ImageStore| {
        let model = bagssl_model::BagSslModel::load(ckpt, &bagssl_autograd::Device::Cpu).unwrap();
        bagssl_eval::embed_bag(&model, store, bagssl_eval::Grid { patch: model.config().patch, stride: 4 }, 32).unwrap()
    };

    let (got, mean, log) = embed(&ckpt, "emb.safetensors");
    assert!(!log.contains("warning"), "{log}");
    assert_eq!(mean, train.mean, "the output records the normalisation used");
    let with_training_stats = in_process(&ckpt, &store.clone().with_stats(train.mean, train.std));
    let self_normalised = in_process(&ckpt, &store);
    assert!(max_abs_diff(&got, &with_training_stats) <= 1e-6, "{}", max_abs_diff(&got, &with_training_stats));
    assert!(max_abs_diff(&got, &self_normalised) > 1e-3, "{}", max_abs_diff(&got, &self_normalised));

    // A checkpoint written before normalize_mean/normalize_std existed: as before, with a warning.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    let old_ckpt = old.join("checkpoint.safetensors");
    std::fs::copy(OLD_CHECKPOINT, &old_ckpt).unwrap();
    let (got, mean, log) = embed(&old_ckpt, "old.safetensors");
    assert_eq!(mean, store.mean);
    assert_eq!(log.lines().filter(|l| l.contains("warning")).count(), 1, "{log}");
    assert!(log.contains("normalisation"), "{log}");
    assert!(max_abs_diff(&got, &in_process(&old_ckpt, &store)) <= 1e-6);
}

/// `embed` exports any protocol and representation: the first of `eval.protocols`, at
/// `eval.feature`, named in the file's metadata; the grid by default, as `embed_bag` computes it.
#[test]
fn embed_exports_the_configured_protocol_and_feature() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, cifar) = checkpoint_and_cifar(dir.path(), 3, None);
    let model = bagssl_model::BagSslModel::load(&ckpt, &bagssl_autograd::Device::Cpu).unwrap();
    let (hidden, proj0) = (model.hidden(), model.projector.hidden.layers[0].linear.weight.value.shape()[0]);
    let embed = |name: &str, set: &[&str]| {
        let emb = dir.path().join(name);
        let mut extra = vec!["--set", "data.cache_dir=\"off\""];
        set.iter().for_each(|s| extra.extend(["--set", s]));
        let o = embed_to(&ckpt, &cifar, &emb, &extra);
        assert!(o.status.success(), "{}", text(&o));
        let bytes = std::fs::read(&emb).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let shape = st.tensor("embeddings").unwrap().shape().to_vec();
        (shape, meta["protocol"].clone(), meta["feature"].clone())
    };
    let n = 15;
    assert_eq!(embed("grid.st", &[]), (vec![n, hidden], "grid".into(), "encoder".into()));
    assert_eq!(
        embed("pyr.st", &["eval.protocols=[\"pyramid\", \"grid\"]"]),
        (vec![n, 5 * hidden], "pyramid".into(), "encoder".into())
    );
    assert_eq!(
        embed("proj.st", &["eval.protocols=[\"whole\"]", "eval.feature=\"projector.0\""]),
        (vec![n, proj0], "whole".into(), "projector.0".into())
    );
    let emb = dir.path().join("bad.st");
    let o = embed_to(&ckpt, &cifar, &emb, &["--set", "eval.feature=\"projector.7\""]);
    assert!(!o.status.success() && text(&o).contains("projector.7"), "{}", text(&o));
    assert!(!emb.exists(), "nothing written on an error");
}

/// `eval` measures the projector's first block too (EMP-SSL's representation), and the protocols
/// listed, not the grid unless listed.
#[test]
fn eval_takes_feature_and_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _cifar) = checkpoint_and_cifar(dir.path(), 12, Some(20));
    let report = dir.path().join("report.json");
    let extra = ["--set", "data.cache_dir=\"off\"", "--set", "eval.feature=\"projector.0\""];
    let extra = [&extra[..], &["--set", "eval.protocols=[\"whole\", \"pyramid\"]"]].concat();
    let o = eval_cifar(&ckpt, dir.path(), &report, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let protocols = r["trained"]["protocols"].as_object().unwrap();
    assert_eq!(protocols.keys().collect::<Vec<_>>(), ["pyramid", "whole"], "{r}");
    assert_eq!(r["trained"]["knn"], r["trained"]["protocols"]["whole"]["knn"], "the first listed");
}

/// `eval` normalises both splits with the training run's statistics too.
#[test]
fn eval_normalises_like_the_training_run() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _cifar) = checkpoint_and_cifar(dir.path(), 12, Some(20));
    let eval = |ckpt: &Path| {
        let o = eval_cifar(ckpt, dir.path(), &dir.path().join("report.json"), &["--set", "data.cache_dir=\"off\""]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    assert!(!eval(&ckpt).contains("warning"));
    let old = dir.path().join("old.safetensors");
    std::fs::copy(OLD_CHECKPOINT, &old).unwrap();
    let log = eval(&old);
    assert_eq!(log.lines().filter(|l| l.contains("warning")).count(), 1, "{log}");
}

/// A ResNet run end to end: train, then eval and embed its checkpoint, whose encoder tensors
/// carry torchvision's names and layouts; `bench` times its step.
#[test]
fn resnet_run_trains_evaluates_embeds_and_benches() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let resnet = [
        "--set",
        "model.arch=\"resnet\"",
        "--set",
        "model.widths=[4, 8]",
        "--set",
        "model.blocks=[1, 2]",
        "--set",
        "model.projector=[16, 12]",
    ];
    let o = train_tiny(&out, &resnet);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = out.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("encoder.conv1.weight").unwrap().shape(), &[4, 3, 3, 3]);
    assert_eq!(st.tensor("encoder.layer2.0.downsample.0.weight").unwrap().shape(), &[8, 4, 1, 1]);
    assert!(st.tensor("encoder.layer2.1.bn2.running_var").is_ok());
    assert_eq!(st.tensor("projector.1.weight").unwrap().shape(), &[12, 16]);
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert!((0.0..=1.0).contains(&eval["trained"]["linear"].as_f64().unwrap()), "{eval}");

    let cifar = cifar_folder(dir.path(), 12, Some(20));
    let emb = dir.path().join("emb.safetensors");
    let o = embed_to(&ckpt, &cifar, &emb, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&emb).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("embeddings").unwrap().shape(), &[60, 8]);

    let o = bench_small(
        &["--steps", "2", "--eval-images", "8", "--set", "patches.size=8"]
            .iter()
            .chain(&resnet)
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("resnet: Basic widths [4, 8]"), "{t}");
    let last: serde_json::Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
    assert!(last["gflops"].as_f64().unwrap() > 0.0, "{last}");
}

/// `eval.protocols`: each is in eval.json under `protocols.<name>`, the first also as `knn` /
/// `linear`; a random-resized run's `random` protocol draws its boxes.
#[test]
fn eval_protocols_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let extra = [
        "--set",
        "eval.protocols=[\"whole\", \"grid\", \"random\", \"pyramid\", \"multiscale\"]",
        "--set",
        "eval.scales=[4, 8]",
        "--set",
        "eval.random_patches=4",
        "--set",
        "patches.scale=[0.3, 1.0]",
    ];
    let o = train_tiny(&out, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    for model in ["trained", "untrained"] {
        let p = &eval[model]["protocols"];
        for name in ["grid", "whole", "random", "pyramid", "multiscale"] {
            for k in ["knn", "linear"] {
                let v = p[name][k].as_f64().unwrap_or(-1.0);
                assert!((0.0..=1.0).contains(&v), "{model}.protocols.{name}.{k} = {v}");
            }
        }
        assert_eq!(eval[model]["knn"], p["whole"]["knn"], "the first protocol is {model}.knn");
        assert_eq!(eval[model]["linear"], p["whole"]["linear"]);
    }
    let o = train_tiny(&dir.path().join("bad"), &["--set", "eval.protocols=[\"pyramidal\"]"]);
    assert_fails_naming(&o, &["eval.protocols", "pyramidal"]);
}

/// `n` PNG images of varying sizes (short side 16 to 28, either orientation), label `i % 3`.
fn varied_images(n: u32) -> Vec<(u32, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let (a, b) = (16 + (i * 5) % 13, 20 + (i * 7) % 17);
            let (w, h) = if i % 2 == 0 { (a, b) } else { (b, a) };
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 9 + i * 11) as u8, (y * 7 + (i % 3) * 60) as u8, ((x ^ y) + i) as u8])
            });
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).unwrap();
            (i % 3, png.into_inner())
        })
        .collect()
}

#[test]
fn trains_on_webdataset_shards_and_variable_size_folders() {
    let dir = tempfile::tempdir().unwrap();
    let images = varied_images(120);
    let shards = dir.path().join("shards");
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&shards).unwrap();
    for (s, chunk) in images.chunks(40).enumerate() {
        let mut b = tar::Builder::new(std::fs::File::create(shards.join(format!("train-{s:06}.tar"))).unwrap());
        for (j, (label, png)) in chunk.iter().enumerate() {
            let key = format!("{s:02}{j:04}");
            for (name, bytes) in
                [(format!("{key}.png"), png.clone()), (format!("{key}.cls"), label.to_string().into_bytes())]
            {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, &name, bytes.as_slice()).unwrap();
            }
            let class_dir = folder.join(format!("class{label}"));
            std::fs::create_dir_all(&class_dir).unwrap();
            std::fs::write(class_dir.join(format!("{key}.png")), png).unwrap();
        }
        b.finish().unwrap();
    }
    let pattern = shards.join("train-{000000..000002}.tar");
    let small = ["--set", "data.image_size=16", "--set", "patches.size=8", "--set", "eval.probe_epochs=2"];
    for (what, data) in [("shards", pattern.to_str().unwrap()), ("folder", folder.to_str().unwrap())] {
        let out = dir.path().join(what);
        let set = format!("data.path={data}");
        let mut extra = vec!["--set", set.as_str()];
        extra.extend_from_slice(&small);
        let o = train_tiny(&out, &extra);
        assert!(o.status.success(), "{what}: {}", text(&o));
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        assert!(eval["trained"]["linear"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{what}: {eval}");
    }

    // Without data.image_size the sizes clash and the message says what to set.
    let set = format!("data.path={}", folder.display());
    let o = train_tiny(&dir.path().join("mixed"), &["--set", &set, "--set", "patches.size=8"]);
    assert_fails_naming(&o, &["different sizes", "image_size"]);
    // A pattern that matches no shard names the pattern; both fits at once name both keys.
    let set = format!("data.path={}", shards.join("val-{0..3}.tar").display());
    assert_fails_naming(
        &train_tiny(&dir.path().join("none"), &["--set", &set]),
        &["val-{0..3}.tar", "matches no shard"],
    );
    let o = train_tiny(&dir.path().join("both"), &["--set", "data.image_size=16", "--set", "data.resize=[16, 16]"]);
    assert_fails_naming(&o, &["data.resize", "data.image_size"]);
}
