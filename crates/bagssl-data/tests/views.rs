//! Random-resized views and the new augmentations against a float64 reference written from
//! docs/DEFINITIONS.md §3 (crop, bilinear resize, flip, jitter, gray, blur, solarize, normalise),
//! on awkward sizes.

use bagssl_data::{blur_radius, gather_patches, synthetic, Augment, PatchSampler, PatchSpec, SyntheticSpec, Views};
use bagssl_testkit::verdict;

const W: [f64; 3] = [0.299, 0.587, 0.114];

fn luma(px: &[f64]) -> f64 {
    px[0] * W[0] + px[1] * W[1] + px[2] * W[2]
}

/// One patch vector of `spec` at output side `p`, in f64.
fn reference(store: &bagssl_data::ImageStore, s: &PatchSpec, p: usize) -> Vec<f64> {
    let img = store.image(s.image as usize);
    let (h, w) = (s.h as usize, s.w as usize);
    let px = |y: usize, x: usize, c: usize| {
        f64::from(img[((s.oy as usize + y) * store.width + s.ox as usize + x) * 3 + c]) / 255.0
    };
    // Bilinear, align_corners = False: source (i + 0.5) * in / out - 0.5, clamped at 0.
    let tap = |i: usize, len: usize| {
        let src = ((i as f64 + 0.5) * len as f64 / p as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        (i0, i1, src - i0 as f64)
    };
    let mut x = vec![0f64; p * p * 3];
    for y in 0..p {
        let (y0, y1, ly) = tap(y, h);
        for xx in 0..p {
            let (x0, x1, lx) = tap(if s.flip { p - 1 - xx } else { xx }, w);
            for c in 0..3 {
                let top = (1.0 - lx) * px(y0, x0, c) + lx * px(y0, x1, c);
                let bottom = (1.0 - lx) * px(y1, x0, c) + lx * px(y1, x1, c);
                x[(y * p + xx) * 3 + c] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
    if let Some(j) = s.jitter {
        let (b, ct, sat) = (f64::from(j.brightness), f64::from(j.contrast), f64::from(j.saturation));
        x.iter_mut().for_each(|v| *v *= b);
        let m = x.chunks(3).map(luma).sum::<f64>() / (p * p) as f64;
        for px in x.chunks_mut(3) {
            px.iter_mut().for_each(|v| *v = (*v - m) * ct + m);
            let g = luma(px);
            px.iter_mut().for_each(|v| *v = ((*v - g) * sat + g).clamp(0.0, 1.0));
        }
    }
    if s.gray {
        for px in x.chunks_mut(3) {
            let g = luma(px);
            px.fill(g);
        }
    }
    if let Some(sigma) = s.blur {
        let sigma = f64::from(sigma);
        let k = blur_radius(sigma as f32, p) as isize;
        let g: Vec<f64> = (-k..=k).map(|t| (-0.5 * (t as f64 / sigma).powi(2)).exp()).collect();
        let total: f64 = g.iter().sum();
        let refl = |i: isize| -> usize {
            let n = p as isize;
            (if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            }) as usize
        };
        let mut rows = vec![0f64; x.len()];
        for y in 0..p {
            for xx in 0..p {
                for c in 0..3 {
                    rows[(y * p + xx) * 3 + c] = (-k..=k)
                        .map(|t| g[(t + k) as usize] / total * x[(y * p + refl(xx as isize + t)) * 3 + c])
                        .sum();
                }
            }
        }
        for y in 0..p {
            for xx in 0..p {
                for c in 0..3 {
                    x[(y * p + xx) * 3 + c] = (-k..=k)
                        .map(|t| g[(t + k) as usize] / total * rows[(refl(y as isize + t) * p + xx) * 3 + c])
                        .sum();
                }
            }
        }
    }
    for (i, v) in x.iter_mut().enumerate() {
        let c = i % 3;
        if s.solarize && *v >= 0.5 {
            *v = 1.0 - *v;
        }
        *v = (*v - f64::from(store.mean[c])) / f64::from(store.std[c]);
    }
    x
}

fn check_views(name: &str, views: Views, h: usize, w: usize, crop: usize, out: usize, tol: f64) {
    let store = synthetic(&SyntheticSpec { images: 5, classes: 2, height: h, width: w, seed: 9 });
    let specs = PatchSampler::with_views(3, true, views).sample(&[0, 4, 2], 40, crop, h, w);
    let d = out * out * 3;
    let mut got = vec![f32::NAN; specs.len() * d];
    gather_patches(&store, &specs, out, &mut got);
    let mut worst = 0f64;
    for (i, s) in specs.iter().enumerate() {
        let want = reference(&store, s, out);
        let diff = (0..d).map(|k| (f64::from(got[i * d + k]) - want[k]).abs()).fold(0.0, f64::max);
        assert!(diff < tol, "{name}: spec {i} {s:?}: max abs diff {diff:.3e}");
        worst = worst.max(diff);
    }
    println!("{} {name}: {} patches, max abs diff {worst:.3e}", verdict(true), specs.len());
}

/// Random-resized boxes (up- and down-sampled), with the default augmentations.
#[test]
fn resized_views_match_the_f64_reference() {
    let views = Views { scale: Some([0.08, 1.0]), ..Views::default() };
    check_views("rrc 13x17 -> 7", views.clone(), 13, 17, 4, 7, 2e-5);
    check_views("rrc 9x11 -> 16", views, 9, 11, 4, 16, 2e-5);
    // A fixed crop resized to another side.
    check_views("fixed 6 -> 5", Views::default(), 13, 17, 6, 5, 2e-5);
}

/// Gaussian blur and solarize (EMP-SSL's augmentations), each on half the patches, on fixed
/// and random-resized views, including sigmas whose kernel is cut to the patch.
#[test]
fn blur_and_solarize_match_the_f64_reference() {
    let augment = Augment { blur: 0.5, blur_sigma: [0.1, 2.5], solarize: 0.5, ..Augment::default() };
    check_views("blur+solarize fixed 5", Views { augment, ..Views::default() }, 13, 17, 5, 5, 2e-5);
    let views = Views { scale: Some([0.25, 1.0]), augment, ..Views::default() };
    check_views("blur+solarize rrc -> 9", views, 13, 17, 5, 9, 2e-5);
    let store = synthetic(&SyntheticSpec { images: 2, classes: 2, height: 8, width: 8, seed: 1 });
    // Solarize alone: v >= 0.5 -> 1 - v, before normalising.
    let s = PatchSpec { solarize: true, ..PatchSpec::crop(1, 0, 0, 8) };
    let mut got = vec![0f32; 192];
    gather_patches(&store, &[s], 8, &mut got);
    for (k, v) in got.iter().enumerate() {
        let raw = f32::from(store.image(1)[k]) / 255.0;
        let sol = if raw >= 0.5 { 1.0 - raw } else { raw };
        let want = (sol - store.mean[k % 3]) / store.std[k % 3];
        assert!((v - want).abs() < 1e-6, "element {k}: {v} vs {want}");
    }
}

/// A blur keeps a constant patch constant (the weights sum to 1, reflection stays inside).
#[test]
fn blur_keeps_constant_patches() {
    let mut store = synthetic(&SyntheticSpec { images: 1, classes: 1, height: 6, width: 6, seed: 1 });
    store.pixels.iter_mut().for_each(|b| *b = 200);
    for sigma in [0.1f32, 0.7, 3.0, 40.0] {
        let s = PatchSpec { blur: Some(sigma), ..PatchSpec::crop(0, 0, 0, 6) };
        let mut got = vec![0f32; 108];
        gather_patches(&store, &[s], 6, &mut got);
        let mut plain = vec![0f32; 108];
        gather_patches(&store, &[PatchSpec::crop(0, 0, 0, 6)], 6, &mut plain);
        for (a, b) in got.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-5, "sigma {sigma}: {a} vs {b}");
        }
    }
}
