//! bagssl-eval against the golden kNN vectors and hand-computed embeddings; probe behaviour.

use bagssl_autograd::{Device, Tensor};
use bagssl_data::{gather_patches, grid_positions, synthetic, ImageStore, PatchSpec, SyntheticSpec, Views};
use bagssl_eval::probe::train_probe;
use bagssl_eval::{
    centre_position, embed_bag, embed_multiscale, embed_pyramid, embed_random, embed_single_patch, embed_whole,
    evaluate, knn_predict, linear_probe, EvalConfig, Grid, Labeled, ProbeOptions, Splits,
};
use bagssl_model::{BagSslModel, ModelConfig, Representation};
use bagssl_testkit::{array, golden};
use serde_json::Value;

fn data(v: &Value) -> Vec<f64> {
    array(v).1
}

#[test]
fn knn_matches_golden() {
    let g = golden("knn.json");
    let dim = g["train"]["shape"][1].as_u64().unwrap() as usize;
    let f32s = |v: &Value| data(v).iter().map(|&x| x as f32).collect::<Vec<_>>();
    let labels: Vec<u32> = data(&g["train_labels"]).iter().map(|&x| x as u32).collect();
    let (k, t, classes) =
        (g["k"].as_u64().unwrap() as usize, g["t"].as_f64().unwrap(), g["classes"].as_u64().unwrap() as usize);
    let (pred, votes) = knn_predict(&f32s(&g["train"]), &labels, &f32s(&g["test"]), dim, k, t, classes).unwrap();
    let want_pred: Vec<u32> = data(&g["predictions"]).iter().map(|&x| x as u32).collect();
    let want_votes = data(&g["votes"]);
    println!("{} predictions: {pred:?} vs {want_pred:?}", if pred == want_pred { "OK" } else { "NOT OK" });
    let err = votes.iter().zip(&want_votes).map(|(a, b)| (a - b).abs() / b.abs().max(1e-300)).fold(0f64, f64::max);
    // Zero votes (no neighbour of that class) must be exactly zero.
    let zeros_ok = votes.iter().zip(&want_votes).all(|(a, b)| (*b == 0.0) == (*a == 0.0));
    println!("{} votes: max relative error {err:.2e}", if err <= 1e-6 && zeros_ok { "OK" } else { "NOT OK" });
    assert_eq!(pred, want_pred);
    assert!(err <= 1e-6 && zeros_ok);
}

/// Gaussian blobs around well-separated class centres.
fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = bagssl_data::SeededRng::new(seed);
    let centres: Vec<f32> = (0..classes * dim).map(|_| 4.0 * (rng.uniform() - 0.5)).collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for d in 0..dim {
            // Sum of uniforms: roughly normal noise of std ~0.5, and a large useless offset/scale
            // on odd features so standardization matters.
            let noise: f32 = (0..4).map(|_| rng.uniform() - 0.5).sum::<f32>() * 0.85;
            let v = centres[c * dim + d] + noise;
            x.push(if d % 2 == 1 { 100.0 + 50.0 * v } else { v });
        }
        y.push(c as u32);
    }
    (x, y)
}

#[test]
fn probe_learns_separable_data_and_is_deterministic() {
    let (dim, classes) = (16, 4);
    // One draw split in two, so train and test share the class centres.
    let (x, y) = blobs(2500, dim, classes, 1);
    let (xtr, ytr, xte, yte) = (&x[..2000 * dim], &y[..2000], &x[2000 * dim..], &y[2000..]);
    // 100 epochs of 4 mini-batches: the reference's lr (1e-3) needs a few hundred Adam steps.
    let splits = Splits {
        train: Labeled { features: xtr, labels: ytr },
        test: Labeled { features: xte, labels: yte },
        dim,
        classes,
    };
    let acc = linear_probe(&splits, 100, 0).unwrap();
    println!("probe accuracy {acc}");
    assert!(acc > 0.95, "accuracy {acc}");
    assert_eq!(acc, linear_probe(&splits, 100, 0).unwrap());
    let opts = ProbeOptions { epochs: 5, seed: 3, ..ProbeOptions::default() };
    let a = train_probe(xtr, ytr, dim, classes, &opts).unwrap();
    let b = train_probe(xtr, ytr, dim, classes, &opts).unwrap();
    assert_eq!(a.weight, b.weight, "same seed, same weights");
    assert_eq!(a.bias, b.bias);
    let c = train_probe(xtr, ytr, dim, classes, &ProbeOptions { seed: 4, ..opts }).unwrap();
    assert_ne!(a.weight, c.weight, "the seed matters");
}

/// A tiny model whose BN running statistics are not the identity, so eval-mode BN is exercised.
fn tiny_model(patch: usize) -> BagSslModel {
    let cfg = ModelConfig::mlp(patch, 2, 8, 6);
    let mut m = BagSslModel::new(cfg, 5, &Device::Cpu).unwrap();
    let mut rng = bagssl_data::SeededRng::new(9);
    for i in 0..2 {
        let mean: Vec<f32> = (0..8).map(|_| rng.uniform() - 0.5).collect();
        let var: Vec<f32> = (0..8).map(|_| 0.5 + rng.uniform()).collect();
        m.set_tensor(&format!("encoder.{i}.bn.running_mean"), &mean).unwrap();
        m.set_tensor(&format!("encoder.{i}.bn.running_var"), &var).unwrap();
    }
    m
}

fn small_store(images: usize, h: usize, w: usize) -> ImageStore {
    synthetic(&SyntheticSpec { images, classes: 3, height: h, width: w, seed: 4 })
}

/// Eval-mode embedding of one patch at (oy, ox) of image `i`, computed alone.
fn patch_embedding(m: &BagSslModel, s: &ImageStore, i: usize, oy: usize, ox: usize, p: usize) -> Vec<f32> {
    let spec = PatchSpec::crop(i as u32, oy as u32, ox as u32, p as u32);
    let mut x = vec![0f32; p * p * 3];
    gather_patches(s, &[spec], p, &mut x);
    m.encode_eval(&Tensor::from_vec(&[1, p * p * 3], x)).unwrap().to_vec().unwrap()
}

#[test]
fn embed_bag_is_the_mean_of_patch_embeddings() {
    let (p, stride) = (4, 3);
    let m = tiny_model(p);
    let s = small_store(5, 10, 12);
    let positions = grid_positions(10, 12, p, stride);
    assert_eq!(positions.len(), 9);
    let bag = embed_bag(&m, &s, Grid { patch: p, stride }, 2).unwrap(); // batches of 2, 2, 1
    assert_eq!(bag.len(), 5 * 8);
    for i in 0..5 {
        let mut mean = vec![0f64; 8];
        for &(oy, ox) in &positions {
            for (acc, v) in mean.iter_mut().zip(patch_embedding(&m, &s, i, oy, ox, p)) {
                *acc += v as f64 / positions.len() as f64;
            }
        }
        for (d, (&got, want)) in bag[i * 8..(i + 1) * 8].iter().zip(&mean).enumerate() {
            assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "image {i} dim {d}: {got} vs {want}");
        }
    }
    // Batching changes only the GEMM's rounding.
    let other = embed_bag(&m, &s, Grid { patch: p, stride }, 5).unwrap();
    assert!(bag.iter().zip(&other).all(|(a, b)| (a - b).abs() <= 1e-6), "{bag:?} vs {other:?}");
}

#[test]
fn single_patch_uses_the_centre_position() {
    let g = golden("grid.json");
    let (h, w) = (g["height"].as_u64().unwrap() as usize, g["width"].as_u64().unwrap() as usize);
    let (p, stride) = (g["patch"].as_u64().unwrap() as usize, g["stride"].as_u64().unwrap() as usize);
    assert_eq!(centre_position(h, w, p, stride), Some((3, 3))); // middle of the 3 x 3 golden grid
    assert_eq!(centre_position(32, 32, 8, 2), Some((12, 12))); // 13 x 13 grid -> index 6
    assert_eq!(centre_position(10, 12, 4, 4), Some((4, 4))); // 2 x 3 grid -> row 1, column 1
    assert_eq!(centre_position(3, 3, 4, 1), None);

    let m = tiny_model(p);
    let s = small_store(3, h, w);
    let single = embed_single_patch(&m, &s, Grid { patch: p, stride }, 2).unwrap();
    for i in 0..3 {
        let want = patch_embedding(&m, &s, i, 3, 3, p);
        let got = &single[i * 8..(i + 1) * 8];
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6), "image {i}: {got:?} vs {want:?}");
    }
}

#[test]
fn evaluate_reports_accuracies() {
    let p = 4;
    let m = BagSslModel::new(ModelConfig::mlp(p, 1, 32, 8), 1, &Device::Cpu).unwrap();
    let train = synthetic(&SyntheticSpec { images: 120, classes: 4, height: 16, width: 16, seed: 1 });
    let test = synthetic(&SyntheticSpec { images: 40, classes: 4, height: 16, width: 16, seed: 2 });
    let cfg = EvalConfig { patch: p, stride: 4, knn_k: 5, probe_epochs: 5, ..EvalConfig::default() };
    let r = evaluate(&m, &train, &test, &cfg).unwrap();
    println!("{r:?}");
    for v in [r.knn, r.linear, r.knn_single_patch] {
        assert!((0.0..=1.0).contains(&v));
    }
    assert_eq!(r, evaluate(&m, &train, &test, &cfg).unwrap(), "deterministic");
    assert!(evaluate(&m, &train, &test, &EvalConfig { patch: 17, ..cfg }).is_err(), "the grid's patch must fit");
    // A grid of 8x8 patches resized to the model's 4x4 input: a valid, different protocol.
    let r8 = evaluate(&m, &train, &test, &EvalConfig { patch: 8, ..cfg }).unwrap();
    assert!((0.0..=1.0).contains(&r8.knn));
}

#[test]
fn a_grid_of_another_side_is_resized_to_the_input() {
    // Patches of 6 every 3 pixels on 11x13 images, each resized to the model's 4: the grid, the
    // one-scale multiscale bag and the pyramid's first block agree, and the single patch is the
    // centre box's resized embedding.
    let (p, side, stride) = (4, 6, 3);
    let m = tiny_model(p);
    let s = small_store(5, 11, 13);
    let grid = Grid { patch: side, stride };
    let bag = embed_bag(&m, &s, grid, 2).unwrap();
    let one_scale = embed_multiscale(&m, &s, &[side], stride, 3).unwrap();
    assert_eq!(bag, one_scale, "grid at {side} = multiscale [{side}]");
    let pyramid = embed_pyramid(&m, &s, grid, 2).unwrap();
    for i in 0..5 {
        assert_eq!(&pyramid[i * 40..i * 40 + 8], &bag[i * 8..(i + 1) * 8], "image {i}: the pyramid's global block");
    }
    let (oy, ox) = centre_position(11, 13, side, stride).unwrap();
    let single = embed_single_patch(&m, &s, grid, 2).unwrap();
    for i in 0..5u32 {
        let spec = PatchSpec::boxed(i, oy as u32, ox as u32, side as u32, side as u32);
        let mut x = vec![0f32; p * p * 3];
        gather_patches(&s, &[spec], p, &mut x);
        let want = m.encode_eval(&Tensor::from_vec(&[1, p * p * 3], x)).unwrap().to_vec().unwrap();
        let i = i as usize;
        assert_close(&single[i * 8..(i + 1) * 8], &want, 1e-6, &format!("image {i} centre patch"));
    }
    // A bag of resized patches is not the bag of native ones.
    assert_ne!(bag, embed_bag(&m, &s, Grid { patch: p, stride }, 2).unwrap());
}

#[test]
fn projector_representation_is_its_first_block_in_eval_mode() {
    // eval.feature = "projector.0": Linear, BatchNorm with running statistics, ReLU on top of h,
    // checked in f64 against the parameters.
    let p = 4;
    let mut m = tiny_model(p);
    let mut rng = bagssl_data::SeededRng::new(12);
    let width = m.projector.hidden.layers[0].linear.weight.value.shape()[0];
    let mean: Vec<f32> = (0..width).map(|_| rng.uniform() - 0.5).collect();
    let var: Vec<f32> = (0..width).map(|_| 0.5 + rng.uniform()).collect();
    m.set_tensor("projector.0.bn.running_mean", &mean).unwrap();
    m.set_tensor("projector.0.bn.running_var", &var).unwrap();
    let gamma: Vec<f32> = (0..width).map(|_| 0.5 + rng.uniform()).collect();
    let beta: Vec<f32> = (0..width).map(|_| rng.uniform() - 0.5).collect();
    m.set_tensor("projector.0.bn.gamma", &gamma).unwrap();
    m.set_tensor("projector.0.bn.beta", &beta).unwrap();
    let s = small_store(3, 9, 7);
    let grid = Grid { patch: p, stride: 2 };
    let h = embed_bag(&m, &s, grid, 2).unwrap();
    assert!(m.set_representation(Representation::ProjectorHidden(1)).is_err(), "one hidden block only");
    m.set_representation(Representation::ProjectorHidden(0)).unwrap();
    assert_eq!(m.representation_dim(), width);
    let g = embed_bag(&m, &s, grid, 2).unwrap();
    assert_eq!(g.len(), 3 * width);

    let t = |name: &str| -> Vec<f64> {
        let (_, v) = m.named_tensors().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}"));
        v.to_vec().unwrap().into_iter().map(f64::from).collect()
    };
    let (w, b, gamma, beta) =
        (t("projector.0.weight"), t("projector.0.bias"), t("projector.0.bn.gamma"), t("projector.0.bn.beta"));
    let (rm, rv) = (t("projector.0.bn.running_mean"), t("projector.0.bn.running_var"));
    let positions = grid_positions(9, 7, p, 2);
    for i in 0..3 {
        let mut want = vec![0f64; width];
        for &(oy, ox) in &positions {
            let hp = patch_embedding(&m, &s, i, oy, ox, p);
            for j in 0..width {
                let lin: f64 = b[j] + (0..8).map(|k| w[j * 8 + k] * f64::from(hp[k])).sum::<f64>();
                let y = gamma[j] * (lin - rm[j]) / (rv[j] + f64::from(bagssl_model::BN_EPS)).sqrt() + beta[j];
                want[j] += y.max(0.0) / positions.len() as f64;
            }
        }
        let got: Vec<f32> = g[i * width..(i + 1) * width].to_vec();
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_close(&got, &want, 1e-5, &format!("image {i}"));
        assert_ne!(&h[i * 8..(i + 1) * 8], &got[..8.min(width)], "not h");
    }
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(d <= tol, "{what}: max diff {d}");
}

/// Images of one flat colour each (12x12).
fn flat_store(images: usize) -> ImageStore {
    let pixels: Vec<u8> =
        (0..images).flat_map(|i| (0..144).flat_map(move |_| [40 * i as u8, 200 - 30 * i as u8, 90])).collect();
    ImageStore::new(12, 12, pixels, vec![0; images], vec!["x".into()], [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]).unwrap()
}

/// The whole image at the input side is the one grid patch; a flat image resized is any patch.
#[test]
fn whole_image_embeddings_have_known_answers() {
    let m = tiny_model(8);
    let s = small_store(5, 8, 8);
    let whole = embed_whole(&m, &s, 2).unwrap();
    assert_close(&whole, &embed_bag(&m, &s, Grid { patch: 8, stride: 1 }, 2).unwrap(), 1e-6, "8x8 images");
    let m = tiny_model(4);
    let flat = flat_store(4);
    let single = embed_single_patch(&m, &flat, Grid { patch: 4, stride: 2 }, 3).unwrap();
    assert_close(&embed_whole(&m, &flat, 3).unwrap(), &single, 1e-5, "flat images");
}

/// Multi-scale: one side at the input side is the grid; two sides are the mean over both grids of
/// resized-box embeddings computed one at a time (12x12 images, sides 4 and 8 at stride 4:
/// 9 + 2x2 patches, each weighing the same).
#[test]
fn multiscale_is_the_mean_over_every_grid() {
    let (p, hidden) = (4, 8);
    let m = tiny_model(p);
    let s = small_store(3, 12, 12);
    let one = embed_multiscale(&m, &s, &[p], 4, 2).unwrap();
    assert_close(&one, &embed_bag(&m, &s, Grid { patch: p, stride: 4 }, 2).unwrap(), 1e-6, "one scale");
    let got = embed_multiscale(&m, &s, &[4, 8], 4, 2).unwrap();
    for i in 0..3 {
        let mut want = vec![0f64; hidden];
        let boxes: Vec<_> = [4, 8]
            .into_iter()
            .flat_map(|side| grid_positions(12, 12, side, 4).into_iter().map(move |(oy, ox)| (oy, ox, side)))
            .collect();
        assert_eq!(boxes.len(), 13);
        for &(oy, ox, side) in &boxes {
            let spec = PatchSpec::boxed(i as u32, oy as u32, ox as u32, side as u32, side as u32);
            let mut x = vec![0f32; p * p * 3];
            gather_patches(&s, &[spec], p, &mut x);
            let h = m.encode_eval(&Tensor::from_vec(&[1, p * p * 3], x)).unwrap().to_vec().unwrap();
            want.iter_mut().zip(h).for_each(|(w, v)| *w += f64::from(v) / boxes.len() as f64);
        }
        for (d, (&g, w)) in got[i * hidden..(i + 1) * hidden].iter().zip(&want).enumerate() {
            assert!((f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()), "image {i} dim {d}: {g} vs {w}");
        }
    }
    for bad in [&[][..], &[0], &[13]] {
        let err = embed_multiscale(&m, &s, bad, 4, 2).unwrap_err().to_string();
        assert!(err.contains("multiscale") && err.contains("12x12"), "{bad:?}: {err}");
    }
}

/// The pyramid is the grid mean and the four quadrant means, from patch embeddings computed
/// one at a time; a centre on a midline goes to the bottom / right (10x12 images, 4x4 patches at
/// stride 3: the row-3 centres lie on the midline, so only row 0 is top; columns 0 and 3 are left).
#[test]
fn pyramid_is_the_grid_mean_and_quadrant_means() {
    let (p, stride, hidden) = (4, 3, 8);
    let m = tiny_model(p);
    let s = small_store(5, 10, 12);
    let got = embed_pyramid(&m, &s, Grid { patch: p, stride }, 2).unwrap();
    assert_eq!(got.len(), 5 * 5 * hidden);
    let bag = embed_bag(&m, &s, Grid { patch: p, stride }, 2).unwrap();
    for i in 0..5 {
        let mut want = vec![0f64; 5 * hidden];
        let mut counts = [0f64; 5];
        for (oy, ox) in grid_positions(10, 12, p, stride) {
            // Centres at 2, 5, 8 against H/2 = 5 (rows) and W/2 = 6 (columns).
            let q = 2 * usize::from(oy + 2 >= 5) + usize::from(ox + 2 >= 6);
            for block in [0, 1 + q] {
                counts[block] += 1.0;
                for (d, v) in patch_embedding(&m, &s, i, oy, ox, p).into_iter().enumerate() {
                    want[block * hidden + d] += f64::from(v);
                }
            }
        }
        assert_eq!(counts, [9.0, 2.0, 1.0, 4.0, 2.0], "the hand-counted quadrants");
        let image = &got[i * 5 * hidden..(i + 1) * 5 * hidden];
        for (j, (&g, w)) in image.iter().zip(&want).enumerate() {
            let w = w / counts[j / hidden];
            assert!((f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()), "image {i} feature {j}: {g} vs {w}");
        }
        assert_close(&image[..hidden], &bag[i * hidden..(i + 1) * hidden], 1e-5, "global block = grid mean");
    }
    // One 8x8 patch of an 8x8 image: its centre is on both midlines, three quadrants are empty.
    let m8 = tiny_model(8);
    let err = embed_pyramid(&m8, &small_store(2, 8, 8), Grid { patch: 8, stride: 1 }, 2).unwrap_err().to_string();
    assert!(err.contains("quadrant") && err.contains("8x8"), "{err}");
}

/// Boxes of the whole area and ratio 1 are the whole image; other draws are the seed's.
#[test]
fn random_patch_embeddings_are_seeded_means() {
    let m = tiny_model(4);
    let s = small_store(5, 12, 12);
    let all = Views { scale: Some([1.0, 1.0]), ratio: [1.0, 1.0], ..Views::default() };
    let whole = embed_whole(&m, &s, 2).unwrap();
    assert_close(&embed_random(&m, &s, &all, 3, 1, 2).unwrap(), &whole, 1e-5, "whole boxes");
    let views = Views { scale: Some([0.2, 1.0]), ..Views::default() };
    let a = embed_random(&m, &s, &views, 6, 1, 2).unwrap();
    assert_eq!(a, embed_random(&m, &s, &views, 6, 1, 2).unwrap(), "same seed, same embeddings");
    assert_ne!(a, embed_random(&m, &s, &views, 6, 2, 2).unwrap(), "another seed, other boxes");
    assert_eq!(a.len(), 5 * m.hidden());
    assert!(embed_random(&m, &s, &views, 0, 1, 2).is_err());
    let bad = Views { scale: Some([0.5, 0.1]), ..Views::default() };
    assert!(embed_random(&m, &s, &bad, 2, 1, 2).unwrap_err().to_string().contains("patches.scale"));
}
