//! Checkpoints written before the layer types (commit 4b64f18) still load, train on and embed
//! as they did: the fixture holds a checkpoint that commit wrote and its bag and single-patch
//! embeddings of a fixed synthetic set, computed by that commit's code (CPU, f32).

use bagssl_autograd::Device;
use bagssl_data::{synthetic, SyntheticSpec};
use bagssl_eval::embed::{embed_bag, embed_single_patch, Grid};
use bagssl_model::{BagSslModel, Trainer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bagssl-model/tests/fixtures");

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn checkpoint_of_4b64f18_embeds_as_it_did() {
    let path = format!("{FIXTURES}/checkpoint-4b64f18.safetensors");
    let model = BagSslModel::load(&path, &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(format!("{FIXTURES}/embeddings-4b64f18.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    let store = synthetic(&SyntheticSpec { images: 12, classes: 3, height: 12, width: 12, seed: 3 });
    for (key, got) in [
        ("bag", embed_bag(&model, &store, Grid { patch: 4, stride: 4 }, 5).unwrap()),
        ("single", embed_single_patch(&model, &store, Grid { patch: 4, stride: 4 }, 5).unwrap()),
    ] {
        let want = floats(&want[key]);
        assert_eq!(got.len(), want.len(), "{key}");
        let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        println!("{key}: max difference {err:.2e} over {} values", got.len());
        assert!(err <= 1e-6, "{key} embeddings differ from 4b64f18's by {err}");
    }
}

#[test]
fn checkpoint_of_4b64f18_resumes() {
    let path = format!("{FIXTURES}/checkpoint-4b64f18.safetensors");
    // The run that wrote it trained on 64 synthetic 12x12 images (80, 20% held out).
    let store = synthetic(&SyntheticSpec { images: 64, classes: 10, height: 12, width: 12, seed: 0 });
    let mut t = Trainer::resume(&path, &store, &Device::Cpu).unwrap();
    let before = t.steps_done();
    assert!(before > 0);
    let s = t.step(&store).unwrap();
    assert_eq!(s.step, before + 1);
    assert!(s.loss().is_finite() && s.term("invariance").is_some());
}
