//! bag-VICReg with two views per image (`per_image = 2`, configs/vicreg-image.toml) against a
//! direct two-view VICReg written here in f64: the invariance term is a quarter of VICReg's
//! `mean (z_a - z_b)^2` (each view sits half the pair's distance from the bag mean), and its
//! gradient too; the variance and covariance terms are those of the 2B embeddings of both views
//! pooled, the same rows whatever their grouping. (VICReg's reference code takes those two terms
//! per branch instead; pooled statistics differ from them by the spread between the branches'
//! means, so only the invariance relation is exact there.)

use bagssl_autograd::backend::VicregWeights;
use bagssl_autograd::ops::vicreg_fwd_bwd;
use bagssl_autograd::Tensor;

const B: usize = 12;
const D: usize = 6;

/// Two views of B images, rows `2b` (view a) and `2b + 1` (view b), from a fixed LCG.
fn views() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..2 * B * D)
        .map(|i| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            // Some dimensions narrow, so the variance hinge is active for them.
            u * if i % D < 2 { 0.5 } else { 3.0 }
        })
        .collect()
}

/// VICReg's invariance: `mean_{b,d} (z_a - z_b)^2`.
fn mse(z: &[f32]) -> f64 {
    let pairs = z.chunks(2 * D);
    pairs.map(|p| (0..D).map(|d| (f64::from(p[d]) - f64::from(p[D + d])).powi(2)).sum::<f64>()).sum::<f64>()
        / (B * D) as f64
}

/// VICReg's variance and covariance terms (docs/DEFINITIONS.md §7) of `rows` embeddings.
fn variance_covariance(z: &[f32], rows: usize, eps: f64) -> (f64, f64) {
    let mu: Vec<f64> = (0..D).map(|d| (0..rows).map(|r| f64::from(z[r * D + d])).sum::<f64>() / rows as f64).collect();
    let cov = |a: usize, b: usize| {
        (0..rows).map(|r| (f64::from(z[r * D + a]) - mu[a]) * (f64::from(z[r * D + b]) - mu[b])).sum::<f64>()
            / (rows - 1) as f64
    };
    let var = (0..D).map(|d| (1.0 - (cov(d, d) + eps).sqrt()).max(0.0)).sum::<f64>() / D as f64;
    let off = (0..D).flat_map(|a| (0..D).filter(move |&b| b != a).map(move |b| (a, b)));
    let covariance = off.map(|(a, b)| cov(a, b).powi(2)).sum::<f64>() / D as f64;
    (var, covariance)
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: bag {got} vs two-view {want}");
}

#[test]
fn bag_vicreg_of_two_views_is_two_view_vicreg() {
    let z = views();
    let vicreg = VicregWeights::default();
    // The bag's invariance weight is 4x VICReg's, so the weighted losses agree.
    let bag = VicregWeights { invariance: 4.0 * vicreg.invariance, ..vicreg };
    let (parts, _) = vicreg_fwd_bwd(&Tensor::from_vec(&[2 * B, D], z.clone()), 2, bag).unwrap();
    let (var, cov) = variance_covariance(&z, 2 * B, f64::from(vicreg.eps));
    assert!(var > 0.0, "the variance hinge is active");
    close(parts.invariance, mse(&z) / 4.0, "invariance");
    close(parts.variance, var, "variance");
    close(parts.covariance, cov, "covariance");
    let direct =
        f64::from(vicreg.invariance) * mse(&z) + f64::from(vicreg.variance) * var + f64::from(vicreg.covariance) * cov;
    close(parts.loss, direct, "weighted loss");
}

/// The invariance gradient is a quarter of `d mse / dz`: `(z_a - z_b) / (2 B D)` on view a.
#[test]
fn bag_invariance_gradient_is_a_quarter_of_vicregs() {
    let z = views();
    let w = VicregWeights { invariance: 1.0, variance: 0.0, covariance: 0.0, ..VicregWeights::default() };
    let (_, dz) = vicreg_fwd_bwd(&Tensor::from_vec(&[2 * B, D], z.clone()), 2, w).unwrap();
    let dz = dz.to_vec().unwrap();
    for (r, row) in dz.chunks(D).enumerate() {
        let other = if r % 2 == 0 { r + 1 } else { r - 1 };
        for d in 0..D {
            let dmse = 2.0 * (f64::from(z[r * D + d]) - f64::from(z[other * D + d])) / (B * D) as f64;
            let got = f64::from(row[d]);
            assert!((got - dmse / 4.0).abs() <= 1e-7, "row {r} dim {d}: {got} vs {}", dmse / 4.0);
        }
    }
}
