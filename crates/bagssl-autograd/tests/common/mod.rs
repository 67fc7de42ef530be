//! Helpers shared by the integration tests: seeded random tensors and golden tensors. Golden
//! files, the `OK` / `NOT OK` report and the skips come from `bagssl_testkit`.

#![allow(dead_code)]

use bagssl_autograd::{BnTrainArgs, Tensor};
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

/// A `{"shape": [...], "data": [...]}` array of a golden file.
pub fn golden_array(v: &serde_json::Value, key: &str) -> (Vec<usize>, Vec<f64>) {
    if v.get(key).is_none() {
        panic!("golden key {key}: missing");
    }
    bagssl_testkit::array(&v[key])
}

pub fn golden_tensor(v: &serde_json::Value, key: &str) -> Tensor {
    let (shape, data) = golden_array(v, key);
    Tensor::from_vec(&shape, data.iter().map(|&x| x as f32).collect())
}

pub fn golden_f64(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("golden key {key}: not a number"))
}

/// A training-mode BatchNorm's arguments with PyTorch's eps.
pub fn bn_args<'a>(
    x: &'a Tensor,
    bias: Option<&'a Tensor>,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    relu: bool,
) -> BnTrainArgs<'a> {
    BnTrainArgs { x, bias, gamma, beta, eps: 1e-5, relu }
}
