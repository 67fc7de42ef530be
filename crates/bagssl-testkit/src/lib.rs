//! bagssl-testkit: what the tests and examples of the workspace share. Never a normal
//! dependency: every crate takes it under `[dev-dependencies]`, so none of this is in the public
//! API of the libraries.
//!
//! - Golden vectors ([`golden`], [`array`]): the float64 PyTorch reference's JSON files in
//!   `fixtures/golden/` at the repository root (see `fixtures/README.md`).
//! - Skips that say why ([`skip`]): the CIFAR-10 archive ([`cifar10_archive_or_skip`]) and the
//!   GPU ([`gpu_or_skip`], [`at_each_gemm_precision`]).
//! - The llm.c-style comparison report ([`Report`]): one `OK` / `NOT OK` line per tensor, then
//!   one verdict.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bagssl_kernels::{GemmPrecision, Gpu};
use serde_json::Value;

/// Environment variable that turns "no GPU" from a skip into a failure in tests.
pub const REQUIRE_GPU_ENV: &str = "BAGSSL_REQUIRE_GPU";

/// Environment variable naming the CIFAR-10 JPEG archive (`cifar10-train-jpeg.tar.xz`).
pub const CIFAR10_ARCHIVE_ENV: &str = "BAGSSL_CIFAR10_ARCHIVE";

/// Environment variable naming the repository root, for test executables that run away from
/// the build tree (scripts/gpu-check.sh sets it).
pub const REPO_ROOT_ENV: &str = "BAGSSL_REPO_ROOT";

/// The repository root: `$BAGSSL_REPO_ROOT`, else two levels above this crate.
pub fn repo_root() -> PathBuf {
    match std::env::var_os(REPO_ROOT_ENV) {
        Some(r) => PathBuf::from(r),
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            std::fs::canonicalize(&root).unwrap_or(root)
        }
    }
}

/// `fixtures/golden/` of the repository.
pub fn golden_dir() -> PathBuf {
    repo_root().join("fixtures/golden")
}

/// Parses `fixtures/golden/<name>`; panics naming the path when it is missing or not JSON.
pub fn golden(name: &str) -> Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("golden file {} is missing or unreadable ({e}); it is committed under fixtures/golden/", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("golden file {} is not JSON: {e}", path.display()))
}

/// A `{"shape": [...], "data": [...]}` array of a golden file: its shape and its flat, row-major
/// data. Panics when `v` is not such an array or the data length is not the shape's product.
pub fn array(v: &Value) -> (Vec<usize>, Vec<f64>) {
    let (Some(shape), Some(_)) = (v.get("shape"), v.get("data")) else {
        panic!("not a {{\"shape\", \"data\"}} array: {}", abbreviate(v));
    };
    let (shape, data) = (usizes(shape), f64s(&v["data"]));
    assert_eq!(shape.iter().product::<usize>(), data.len(), "array of shape {shape:?} has {} values", data.len());
    (shape, data)
}

/// [`array`] with the data rounded to f32.
pub fn array_f32(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let (shape, data) = array(v);
    (shape, data.iter().map(|&x| x as f32).collect())
}

/// A JSON list of numbers.
pub fn f64s(v: &Value) -> Vec<f64> {
    list(v).iter().map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}"))).collect()
}

/// A JSON list of numbers, rounded to f32.
pub fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

/// A JSON list of non-negative integers.
pub fn usizes(v: &Value) -> Vec<usize> {
    list(v).iter().map(|x| x.as_u64().unwrap_or_else(|| panic!("not a non-negative integer: {x}")) as usize).collect()
}

fn list(v: &Value) -> &[Value] {
    v.as_array().unwrap_or_else(|| panic!("not a JSON list: {}", abbreviate(v)))
}

fn abbreviate(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// Prints `skipped: <test>: <reason>` where `cargo test` shows it: stderr (bypassing the
/// output capture) and stdout (in the test's captured output and under `--nocapture`).
pub fn skip(test: &str, reason: &str) {
    let line = format!("skipped: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    print!("{line}");
}

/// For tests that need the CIFAR-10 training JPEGs: `$BAGSSL_CIFAR10_ARCHIVE`, else
/// `shared/data/cifar10-train-jpeg.tar.xz` beside the checkout (the layout of the development
/// machines); `None` after a [`skip`] line saying what was looked for.
pub fn cifar10_archive_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CIFAR10_ARCHIVE_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        skip(test, &format!("{CIFAR10_ARCHIVE_ENV}={} is not a file", p.display()));
        return None;
    }
    let p = repo_root().join("../shared/data/cifar10-train-jpeg.tar.xz");
    if p.is_file() {
        return Some(p);
    }
    skip(test, &format!("no CIFAR-10 archive: set {CIFAR10_ARCHIVE_ENV} (not found at {})", p.display()));
    None
}

/// For tests that need a GPU: the process-wide device 0, or `None` after a [`skip`] line with
/// the reason. Panics instead of skipping when `BAGSSL_REQUIRE_GPU=1` (set on the GPU machines).
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    let g = GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string()));
    match g {
        Ok(gpu) => Some(gpu.clone()),
        Err(reason) => {
            if std::env::var(REQUIRE_GPU_ENV).as_deref() == Ok("1") {
                panic!("{test}: {REQUIRE_GPU_ENV}=1 but the GPU is unusable: {reason}");
            }
            skip(test, reason);
            None
        }
    }
}

/// For tests that compare the GPU at every GEMM precision: runs `f` at each of
/// [`GemmPrecision::ALL`] on `gpu`, one caller at a time in this process (the precision is a
/// property of the shared [`Gpu`] of [`gpu_or_skip`]), and restores the previous setting
/// afterwards, even when `f` panics.
pub fn at_each_gemm_precision(gpu: &Gpu, mut f: impl FnMut(GemmPrecision)) {
    struct Restore<'a>(&'a Gpu, GemmPrecision);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.set_gemm_precision(self.1);
        }
    }
    static PRECISION: Mutex<()> = Mutex::new(());
    let _lock = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore(gpu, gpu.gemm_precision());
    for p in GemmPrecision::ALL {
        gpu.set_gemm_precision(p);
        f(p);
    }
}

/// Collects comparisons against a reference, prints one `OK` / `NOT OK` line each, and at
/// [`Report::finish`] prints `overall: OK` or panics listing the mismatches.
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
        let diff = max_diff(got, want);
        let bound = rtol * scale + atol;
        let ok = diff <= bound && diff.is_finite();
        println!("{} {name:<28} max diff {diff:.3e} (bound {bound:.3e}, max |want| {scale:.3e})", verdict(ok));
        self.record(ok, || format!("{name}: max diff {diff:.3e} > {bound:.3e}"));
    }

    /// OK when `max |got - want| <= tol * max(floor, max |want|)`: the error relative to the
    /// tensor's largest magnitude, floored for tensors that are (nearly) zero in exact arithmetic.
    pub fn check_relative(&mut self, name: &str, got: &[f32], want: &[f64], floor: f64, tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {} elements vs {} expected", got.len(), want.len());
        let scale = want.iter().fold(floor, |m, w| m.max(w.abs()));
        let err = max_diff(got, want) / scale;
        let ok = err <= tol && err.is_finite();
        println!("{} {name:<28} max error {err:.2e} (relative to {scale:.3e}, bound {tol:.0e})", verdict(ok));
        self.record(ok, || format!("{name}: relative error {err:.2e} > {tol:.0e}"));
    }

    /// OK when `|got - want| <= rtol * |want|`.
    pub fn check_scalar(&mut self, name: &str, got: f64, want: f64, rtol: f64) {
        let diff = (got - want).abs();
        let ok = diff <= rtol * want.abs();
        println!("{} {name:<28} {got:.10} vs {want:.10} (rel {:.3e})", verdict(ok), diff / want.abs());
        self.record(ok, || format!("{name}: {got} vs {want}"));
    }

    /// `|got - want|_2 <= bound` (NaN fails), for errors measured against a norm.
    pub fn check_norm(&mut self, name: &str, got: &[f32], want: &[f32], bound: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {} elements vs {} expected", got.len(), want.len());
        let d = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>().sqrt();
        let ok = d <= bound;
        println!("{} {name:<28} |diff| {d:.3e} (bound {bound:.3e})", verdict(ok));
        self.record(ok, || format!("{name}: |diff| {d:.3e} > {bound:.3e}"));
    }

    /// Whether every check so far passed.
    pub fn all_ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn finish(self) {
        if self.failures.is_empty() {
            println!("overall: OK");
        } else {
            println!("overall: NOT OK");
            panic!("{} mismatches:\n{}", self.failures.len(), self.failures.join("\n"));
        }
    }

    fn record(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }
}

fn max_diff(got: &[f32], want: &[f64]) -> f64 {
    // A NaN anywhere must fail the check, and `f64::max` would drop it.
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0f64, |m, d| {
        if m.is_nan() || d.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    })
}

/// `OK    ` / `NOT OK`, padded so the names line up.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK    "
    } else {
        "NOT OK"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_golden_file_parses() {
        for name in ["grid.json", "knn.json", "model_step.json", "patches.json", "vicreg_bag.json", "conv2d.json"] {
            assert!(golden(name).is_object(), "{name}");
        }
    }

    #[test]
    fn array_decodes_shape_and_data() {
        let v: Value = serde_json::from_str(r#"{"shape": [2, 1], "data": [1.5, -2]}"#).unwrap();
        assert_eq!(array(&v), (vec![2, 1], vec![1.5, -2.0]));
        assert_eq!(array_f32(&v).1, vec![1.5f32, -2.0]);
    }

    #[test]
    #[should_panic(expected = "has 1 values")]
    fn array_rejects_a_wrong_length() {
        array(&serde_json::from_str(r#"{"shape": [2], "data": [1]}"#).unwrap());
    }

    #[test]
    #[should_panic(expected = "fixtures/golden/no-such.json")]
    fn a_missing_golden_file_names_its_path() {
        golden("no-such.json");
    }

    #[test]
    fn report_fails_on_nan() {
        let mut r = Report::new("nan");
        r.check("x", &[f32::NAN, 1.0], &[0.0, 1.0], 1.0, 1.0);
        assert!(!r.all_ok());
    }
}
