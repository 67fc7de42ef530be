//! Training-loop behaviour: bit-identical resume, atomic checkpoints, loading errors, the
//! non-finite-loss guard, the schedule as seen by steps, and that the loss goes down.

mod common;

use std::path::Path;

use bagssl_autograd::Device;
use bagssl_data::{synthetic, Augment, ImageStore, SyntheticSpec, Views};
use bagssl_model::checkpoint::write_atomic;
use bagssl_model::{
    lr_factor, read_normalization, BagSslModel, ModelConfig, ModelError, Normalization, OptimizerKind, TrainConfig,
    Trainer,
};
use common::train_config;

fn store(images: usize, side: usize, seed: u64) -> ImageStore {
    synthetic(&SyntheticSpec { images, classes: 4, height: side, width: side, seed })
}

fn model_config() -> ModelConfig {
    ModelConfig::mlp(4, 2, 32, 16)
}

/// A fresh AdamW trainer, its checkpoint path `ck.safetensors` in a new temporary folder, and a
/// training set of 16 12x12 images drawn with `seed`.
fn trainer_and_checkpoint(seed: u64) -> (Trainer, tempfile::TempDir, std::path::PathBuf, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");
    let t = Trainer::new(model_config(), train_config(OptimizerKind::AdamW), &Device::Cpu).unwrap();
    (t, dir, ck, store(16, 12, seed))
}

/// Every parameter, running statistic and optimizer buffer, by name, as host values.
fn snapshot(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut all = t.model().named_tensors();
    all.extend(t.optimizer().named_state(&t.model().params()));
    all.into_iter().map(|(n, v)| (n, v.to_vec().unwrap())).collect()
}

/// Bitwise equality (NaN-safe).
fn same_bits(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, va), (nb, vb))| {
            na == nb && va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

fn resume_roundtrip(optimizer: OptimizerKind) {
    resume_roundtrip_with(train_config(optimizer));
}

fn resume_roundtrip_with(config: TrainConfig) {
    let data = store(20, 12, 1); // batch 8 -> 2 steps per epoch, 4 images dropped each epoch
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");

    let mut a = Trainer::new(model_config(), config, &Device::Cpu).unwrap();
    for _ in 0..3 {
        a.step(&data).unwrap();
    }
    a.save(&ck).unwrap();
    let losses_a: Vec<_> = (0..4).map(|_| a.step(&data).unwrap()).collect();

    let mut b = Trainer::resume(&ck, &data, &Device::Cpu).unwrap();
    assert_eq!(b.steps_done(), 3);
    assert_eq!(b.config(), a.config());
    let losses_b: Vec<_> = (0..4).map(|_| b.step(&data).unwrap()).collect();

    assert_eq!(losses_a, losses_b, "resumed steps report the same stats (loss, lr, epoch)");
    assert!(same_bits(&snapshot(&a), &snapshot(&b)), "resumed run has bit-identical state");
    assert_eq!(losses_a.iter().map(|s| s.epoch).collect::<Vec<_>>(), [1, 2, 2, 3]);
}

#[test]
fn resume_is_bit_identical_adamw() {
    resume_roundtrip(OptimizerKind::AdamW);
}

#[test]
fn resume_is_bit_identical_lars() {
    resume_roundtrip(OptimizerKind::Lars);
}

/// Random-resized views with every augmentation: 6x6-or-larger boxes resized to the model's 4x4.
fn resized_views() -> Views {
    let augment = Augment { blur: 0.5, solarize: 0.5, ..Augment::default() };
    Views { crop: Some(6), scale: Some([0.2, 1.0]), augment, ..Views::default() }
}

/// The views (and the sampler's place in their draws) survive a checkpoint.
#[test]
fn resume_is_bit_identical_with_resized_views() {
    resume_roundtrip_with(TrainConfig { views: resized_views(), ..train_config(OptimizerKind::AdamW) });
}

/// A fixed crop at the model's side, named, is the default view: the same steps bit for bit.
#[test]
fn explicit_fixed_crops_are_the_default_views() {
    let data = store(16, 12, 2);
    let run = |views: Views| {
        let mut t =
            Trainer::new(model_config(), TrainConfig { views, ..train_config(OptimizerKind::AdamW) }, &Device::Cpu)
                .unwrap();
        let stats: Vec<_> = (0..2).map(|_| t.step(&data).unwrap()).collect();
        (stats, snapshot(&t))
    };
    let (stats_a, a) = run(Views::default());
    let (stats_b, b) = run(Views { crop: Some(model_config().patch), ..Views::default() });
    assert_eq!(stats_a, stats_b);
    assert!(same_bits(&a, &b));
    let (stats_c, _) = run(resized_views());
    assert!(stats_c.iter().all(|s| s.loss().is_finite()) && stats_c != stats_a, "resized views train, differently");
}

/// Bad view values are config errors naming their key.
#[test]
fn bad_views_name_their_key() {
    let bad = [
        (Views { scale: Some([0.5, 0.1]), ..Views::default() }, "patches.scale"),
        (Views { ratio: [2.0, 1.0], ..Views::default() }, "patches.ratio"),
        (Views { augment: Augment { solarize: 1.5, ..Augment::default() }, ..Views::default() }, "patches.solarize"),
    ];
    for (views, key) in bad {
        let cfg = TrainConfig { views, ..train_config(OptimizerKind::AdamW) };
        let msg = Trainer::new(model_config(), cfg, &Device::Cpu).err().expect("rejected").to_string();
        assert!(msg.contains(key), "{key}: {msg}");
    }
    let crop =
        TrainConfig { views: Views { crop: Some(13), ..Views::default() }, ..train_config(OptimizerKind::AdamW) };
    let mut t = Trainer::new(model_config(), crop, &Device::Cpu).unwrap();
    let msg = t.step(&store(16, 12, 0)).unwrap_err().to_string();
    assert!(msg.contains("13"), "{msg}");
}

#[test]
fn model_load_reads_trainer_checkpoint() {
    let (mut t, dir, ck, data) = trainer_and_checkpoint(2);
    t.step(&data).unwrap();
    t.save(&ck).unwrap();
    let m = BagSslModel::load(&ck, &Device::Cpu).unwrap();
    assert_eq!(m.config(), t.model().config());
    for ((na, ta), (nb, tb)) in m.named_tensors().into_iter().zip(t.model().named_tensors()) {
        assert_eq!(na, nb);
        assert_eq!(ta.to_vec().unwrap(), tb.to_vec().unwrap(), "{na}");
    }
    // A weights-only file loads the same way.
    let weights = dir.path().join("weights.safetensors");
    m.save(&weights).unwrap();
    let m2 = BagSslModel::load(&weights, &Device::Cpu).unwrap();
    assert_eq!(
        m2.param("projector.1.weight").unwrap().value.to_vec().unwrap(),
        m.param("projector.1.weight").unwrap().value.to_vec().unwrap()
    );
}

#[test]
fn checkpoint_write_is_atomic() {
    let (mut t, dir, ck, data) = trainer_and_checkpoint(3);
    t.step(&data).unwrap();
    t.save(&ck).unwrap();
    let saved = snapshot(&t);
    t.step(&data).unwrap();

    // Make a write fail at the rename: a non-empty directory squats on the target's name. (The
    // temporary names are unique, so nothing can squat on them; permissions would not stop root,
    // which runs these tests on CI machines.)
    let blocked = dir.path().join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let err = t.save(&blocked).unwrap_err();
    assert!(err.to_string().contains("blocked.safetensors"), "error names the file: {err}");
    assert_eq!(std::fs::read(blocked.join("keep")).unwrap(), b"x", "the existing target is untouched");
    let mut leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    leftovers.sort();
    assert_eq!(leftovers, ["blocked.safetensors", "ck.safetensors"], "no temporary file left behind");
    let old = Trainer::resume(&ck, &data, &Device::Cpu).expect("previous checkpoint still loads");
    assert_eq!(old.steps_done(), 1);
    assert!(same_bits(&snapshot(&old), &saved), "previous checkpoint intact");
    std::fs::remove_dir_all(&blocked).unwrap();

    // Overwriting a checkpoint replaces it whole.
    t.save(&ck).unwrap();
    assert_eq!(Trainer::resume(&ck, &data, &Device::Cpu).unwrap().steps_done(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["ck.safetensors"], "no temporary file left behind");

    // A target whose parent is a file: an error naming the path, nothing created.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = t.save(file.join("ck.safetensors")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(err.to_string().contains("plain/ck.safetensors"), "{err}");
}

/// Two writers of one path in one process (e.g. a periodic checkpoint and an export): every
/// version a reader sees is one writer's whole file, and no temporary file is left behind.
#[test]
fn concurrent_atomic_writes_never_tear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    // Each payload: 64 KiB of one byte value, so a mix of two writes or a short file shows.
    let payload = |b: u8| vec![b; 64 << 10];
    write_atomic(&path, &payload(0)).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let got = std::fs::read(&path).unwrap();
                assert_eq!(got.len(), 64 << 10, "a whole file");
                assert!(got.iter().all(|&v| v == got[0]), "one writer's bytes");
                reads += 1;
            }
            reads
        });
        let writers: Vec<_> = [1u8, 2]
            .map(|b| {
                let (path, payload) = (&path, payload(b));
                s.spawn(move || (0..200).try_for_each(|_| write_atomic(path, &payload)))
            })
            .into_iter()
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["out.bin"], "no temporary file left behind");
}

/// Writes a safetensors file with the given tensors and a valid model header.
fn write_raw(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bufs: Vec<Vec<u8>> = tensors.iter().map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()]).collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, s), b)| (n.to_string(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), bagssl_model::checkpoint::FORMAT.to_string());
    meta.insert("model_config".to_string(), serde_json::to_string(&model_config()).unwrap());
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn load_errors_name_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = BagSslModel::new(model_config(), 0, &Device::Cpu).unwrap();
    let shapes: Vec<(String, Vec<usize>)> =
        model.named_tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();

    let missing = dir.path().join("missing.safetensors");
    let without: Vec<_> =
        shapes.iter().filter(|(n, _)| n != "encoder.1.bn.running_var").map(|(n, s)| (n.as_str(), s.clone())).collect();
    write_raw(&missing, &without);
    let err = BagSslModel::load(&missing, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("missing.safetensors") && msg.contains("encoder.1.bn.running_var"), "{msg}");

    let bad = dir.path().join("bad.safetensors");
    let reshaped: Vec<_> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), if n == "encoder.0.weight" { vec![32, 47] } else { s.clone() }))
        .collect();
    write_raw(&bad, &reshaped);
    let msg = BagSslModel::load(&bad, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("bad.safetensors") && msg.contains("encoder.0.weight") && msg.contains("[32, 47]"), "{msg}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let msg = BagSslModel::load(&garbage, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("garbage.safetensors"), "{msg}");
    let msg = BagSslModel::load(dir.path().join("absent.safetensors"), &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
}

/// A checkpoint records the normalisation of the store it was trained on (`normalize_mean`,
/// `normalize_std`); resume and the header-only reader give it back; a weights-only file can carry
/// it too; a checkpoint written before it was recorded reads as `None`.
#[test]
fn checkpoints_record_the_training_normalization() {
    let (mut t, dir, ck, data) = trainer_and_checkpoint(3);
    assert_eq!(t.normalization(), None, "nothing trained on yet");
    t.step(&data).unwrap();
    let expected = Normalization { mean: data.mean, std: data.std };
    assert_eq!(t.normalization(), Some(expected));
    t.save(&ck).unwrap();
    assert_eq!(read_normalization(&ck).unwrap(), Some(expected), "bit-exact through JSON");
    let bytes = std::fs::read(&ck).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let mean: Vec<f32> = serde_json::from_str(&meta["normalize_mean"]).unwrap();
    assert_eq!(mean, data.mean, "a JSON array of 3 numbers");
    assert_eq!(Trainer::resume(&ck, &data, &Device::Cpu).unwrap().normalization(), Some(expected));

    let weights = dir.path().join("weights.safetensors");
    t.model().save(&weights).unwrap();
    assert_eq!(read_normalization(&weights).unwrap(), None);
    t.model().save_with_normalization(&weights, Some(&expected)).unwrap();
    assert_eq!(read_normalization(&weights).unwrap(), Some(expected));

    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint-4b64f18.safetensors");
    assert_eq!(read_normalization(&old).unwrap(), None, "written before normalisation was recorded");
    assert_eq!(Trainer::resume(&old, &store(64, 12, 0), &Device::Cpu).unwrap().normalization(), None);
}

#[test]
fn malformed_normalization_metadata_names_file_and_key() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.safetensors");
    let write = |entries: &[(&str, &str)]| {
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), bagssl_model::checkpoint::FORMAT.to_string());
        meta.insert("model_config".to_string(), serde_json::to_string(&model_config()).unwrap());
        for (k, v) in entries {
            meta.insert(k.to_string(), v.to_string());
        }
        let b = [0u8; 4];
        let views = [("x", TensorView::new(Dtype::F32, vec![1], &b).unwrap())];
        std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    };
    let good = "[0.5, 0.5, 0.5]";
    for (entries, key) in [
        (vec![("normalize_mean", "[0.5, 0.5]"), ("normalize_std", good)], "normalize_mean"),
        (vec![("normalize_mean", good), ("normalize_std", "\"wide\"")], "normalize_std"),
        (vec![("normalize_mean", good), ("normalize_std", "[0.2, 0, 0.2]")], "normalize_std"),
        (vec![("normalize_mean", good)], "normalize_std"),
        (vec![("normalize_std", good)], "normalize_mean"),
    ] {
        write(&entries);
        let e = read_normalization(&path).unwrap_err().to_string();
        assert!(e.contains("odd.safetensors") && e.contains(&format!("`{key}`")), "{entries:?}: {e}");
    }
    write(&[("normalize_mean", good), ("normalize_std", good)]);
    assert_eq!(read_normalization(&path).unwrap(), Some(Normalization { mean: [0.5; 3], std: [0.5; 3] }));
    std::fs::write(&path, b"abc").unwrap();
    let e = read_normalization(&path).unwrap_err().to_string();
    assert!(e.contains("odd.safetensors") && e.contains("safetensors"), "{e}");
}

#[test]
fn resume_rejects_a_different_training_set() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");
    let mut t = Trainer::new(model_config(), train_config(OptimizerKind::AdamW), &Device::Cpu).unwrap();
    t.step(&store(16, 12, 4)).unwrap();
    t.save(&ck).unwrap();
    let msg = Trainer::resume(&ck, &store(24, 12, 4), &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("16 images") && msg.contains("24"), "{msg}");
}

#[test]
fn non_finite_loss_is_an_error_and_changes_nothing() {
    let data = store(16, 12, 5);
    let mut t = Trainer::new(model_config(), train_config(OptimizerKind::AdamW), &Device::Cpu).unwrap();
    t.step(&data).unwrap();
    let mut w = t.model().param("projector.1.weight").unwrap().value.to_vec().unwrap();
    w[3] = f32::INFINITY;
    t.model_mut().set_tensor("projector.1.weight", &w).unwrap();
    let before = snapshot(&t);
    let err = t.step(&data).unwrap_err();
    assert!(matches!(err, ModelError::NonFiniteLoss { step: 2 }), "{err}");
    assert!(err.to_string().contains("step 2"), "{err}");
    assert!(same_bits(&snapshot(&t), &before), "weights, running stats and optimizer state untouched");
    assert_eq!(t.steps_done(), 1);
}

#[test]
fn steps_follow_the_schedule() {
    let data = store(16, 12, 6);
    let cfg = TrainConfig { total_steps: 6, warmup_steps: 2, lr: 0.5e-3, ..train_config(OptimizerKind::AdamW) };
    let mut t = Trainer::new(model_config(), cfg, &Device::Cpu).unwrap();
    for s in 0..6u64 {
        let st = t.step(&data).unwrap();
        assert_eq!(st.step, s + 1);
        assert_eq!(st.epoch, s / 2);
        assert_eq!(st.lr, 0.5e-3 * lr_factor(s, 2, 6));
        assert!(
            st.loss().is_finite()
                && ["invariance", "variance", "covariance"].iter().all(|k| st.term(k).unwrap() >= 0.0)
        );
    }
}

#[test]
fn invalid_configs_are_errors() {
    let one_patch = TrainConfig { per_image: 1, ..train_config(OptimizerKind::AdamW) };
    assert!(Trainer::new(model_config(), one_patch, &Device::Cpu).is_err());
    let mut t = Trainer::new(model_config(), train_config(OptimizerKind::AdamW), &Device::Cpu).unwrap();
    let msg = t.step(&store(4, 12, 0)).unwrap_err().to_string();
    assert!(msg.contains("batch_images"), "{msg}");
    let msg = t.step(&store(16, 3, 0)).unwrap_err().to_string();
    assert!(msg.contains('4'), "{msg}");
}

#[test]
fn loss_decreases_on_synthetic_data() {
    let data = store(128, 16, 7);
    let model = ModelConfig::mlp(4, 2, 64, 64);
    let cfg = TrainConfig {
        per_image: 8,
        batch_images: 16,
        total_steps: 50,
        warmup_steps: 5,
        lr: 3e-3,
        ..train_config(OptimizerKind::AdamW)
    };
    let mut t = Trainer::new(model, cfg, &Device::Cpu).unwrap();
    let losses: Vec<f64> = (0..50).map(|_| t.step(&data).unwrap().loss()).collect();
    // Step losses are noisy (augmented patches, 16-image batches): compare 10-step means.
    let head = losses[..10].iter().sum::<f64>() / 10.0;
    let tail = losses[40..].iter().sum::<f64>() / 10.0;
    println!("losses: {losses:.3?}");
    println!("loss: first 10 steps {head:.4}, last 10 steps {tail:.4}");
    assert!(tail < 0.92 * head, "loss should drop by 8% or more: {head} -> {tail}");
}

/// A step's statistics carry the loss's own scalars by name (what `metrics.jsonl` writes).
#[test]
fn step_stats_are_named_by_the_loss() {
    let mut t = Trainer::new(model_config(), train_config(OptimizerKind::AdamW), &Device::Cpu).unwrap();
    let s = t.step(&store(16, 12, 8)).unwrap();
    let j = serde_json::to_value(&s).unwrap();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["covariance", "epoch", "invariance", "loss", "lr", "step", "variance"]);
    assert_eq!(j["loss"].as_f64(), Some(s.loss()));
    assert_eq!(s.term("invariance"), j["invariance"].as_f64());
    assert_eq!(s.term("no such term"), None);
}
