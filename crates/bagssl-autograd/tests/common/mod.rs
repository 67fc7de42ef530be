//! Helpers shared by the integration tests: seeded random tensors, golden-file loading, and the
//! llm.c-style `OK` / `NOT OK` comparison report.

#![allow(dead_code)]

use std::path::PathBuf;

use bagssl_autograd::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-1, 1).
pub fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, uniform(rng, shape.iter().product()))
}

pub fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec().expect("host copy")
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/golden"))
}

/// Parses a golden JSON file, panicking with the path when it is missing.
pub fn load_golden(name: &str) -> serde_json::Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("golden file {} is missing or unreadable ({e}); it ships in /work/shared/golden", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("golden file {} is not JSON: {e}", path.display()))
}

/// A `{"shape": [...], "data": [...]}` array of a golden file.
pub fn golden_array(v: &serde_json::Value, key: &str) -> (Vec<usize>, Vec<f64>) {
    let a = &v[key];
    let shape = a["shape"].as_array().unwrap_or_else(|| panic!("golden key {key}: no shape"));
    let data = a["data"].as_array().unwrap_or_else(|| panic!("golden key {key}: no data"));
    (
        shape.iter().map(|s| s.as_u64().expect("shape entry") as usize).collect(),
        data.iter().map(|x| x.as_f64().expect("data entry")).collect(),
    )
}

pub fn golden_tensor(v: &serde_json::Value, key: &str) -> Tensor {
    let (shape, data) = golden_array(v, key);
    Tensor::from_vec(&shape, data.iter().map(|&x| x as f32).collect())
}

pub fn golden_f64(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("golden key {key}: not a number"))
}

/// Collects tensor comparisons, prints one line each, and fails at the end if any was off.
pub struct Report {
    failures: Vec<String>,
}

impl Report {
    pub fn new(title: &str) -> Self {
        println!("== {title}");
        Report { failures: Vec::new() }
    }

    /// OK when `max |got - want| <= rtol * max |want| + atol`.
    pub fn check(&mut self, name: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {} elements vs {} expected", got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
        let diff = got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
        let bound = rtol * scale + atol;
        let ok = diff <= bound && diff.is_finite();
        println!("{} {name:<28} max diff {diff:.3e} (bound {bound:.3e}, max |want| {scale:.3e})", verdict(ok));
        if !ok {
            self.failures.push(format!("{name}: max diff {diff:.3e} > {bound:.3e}"));
        }
    }

    pub fn check_scalar(&mut self, name: &str, got: f64, want: f64, rtol: f64) {
        let diff = (got - want).abs();
        let bound = rtol * want.abs();
        let ok = diff <= bound;
        println!("{} {name:<28} {got:.10} vs {want:.10} (rel {:.3e})", verdict(ok), diff / want.abs());
        if !ok {
            self.failures.push(format!("{name}: {got} vs {want}"));
        }
    }

    pub fn finish(self) {
        if self.failures.is_empty() {
            println!("overall: OK");
        } else {
            println!("overall: NOT OK");
            panic!("{} mismatches:\n{}", self.failures.len(), self.failures.join("\n"));
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK    "
    } else {
        "NOT OK"
    }
}
