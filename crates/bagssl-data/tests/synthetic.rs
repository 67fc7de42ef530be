//! The synthetic set: deterministic, balanced, fast, and not separable by colour alone.

use std::time::Instant;

use bagssl_data::{synthetic, SyntheticSpec};

#[test]
fn deterministic_and_seed_dependent() {
    let spec = SyntheticSpec { images: 300, ..Default::default() };
    let a = synthetic(&spec);
    let b = synthetic(&spec);
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.labels, b.labels);
    let c = synthetic(&SyntheticSpec { seed: 1, ..spec.clone() });
    assert_ne!(a.pixels, c.pixels);
    assert_eq!((a.height, a.width, a.len(), a.classes.len()), (32, 32, 300, 10));
    assert!(a.validate().is_ok());
    // A prefix of a bigger set is the smaller set: image i depends only on (seed, i).
    let big = synthetic(&SyntheticSpec { images: 400, ..spec });
    assert_eq!(&big.pixels[..a.pixels.len()], &a.pixels[..]);
}

#[test]
fn balanced_labels_and_stats() {
    let s = synthetic(&SyntheticSpec { images: 1003, classes: 10, ..Default::default() });
    let counts = s.class_counts();
    assert!(counts.iter().all(|&c| c == 100 || c == 101), "{counts:?}");
    assert_eq!((s.mean, s.std), s.channel_stats());
    assert!(s.std.iter().all(|&v| v > 0.1), "images have real contrast: {:?}", s.std);
    // Every class is a distinct pair of textures; each texture is shared by several classes.
    assert_eq!(s.classes[0], "m0+m1");
    let mut uniq = s.classes.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 10);
}

#[test]
fn any_size_and_odd_specs() {
    for (h, w, classes) in [(24, 40, 3), (5, 7, 30), (1, 1, 2), (64, 16, 1), (0, 4, 2)] {
        let s = synthetic(&SyntheticSpec { images: 17, classes, height: h, width: w, seed: 2 });
        assert_eq!((s.height, s.width, s.pixels.len()), (h, w, 17 * h * w * 3));
        assert_eq!(s.classes.len(), classes);
        assert!(s.validate().is_ok());
    }
    let s = synthetic(&SyntheticSpec { images: 0, classes: 0, ..Default::default() });
    assert!(s.is_empty() && s.classes.len() == 1);
}

#[test]
fn generation_is_fast() {
    let t = Instant::now();
    let s = synthetic(&SyntheticSpec { images: 5000, ..Default::default() });
    let dt = t.elapsed();
    println!("5000 32x32 images in {dt:?}");
    assert_eq!(s.len(), 5000);
    assert!(dt.as_secs_f64() < 2.0, "generation too slow: {dt:?}");
}

/// Nearest-centroid on the per-image mean colour must be near chance: colour carries no class.
#[test]
fn mean_colour_does_not_reveal_the_class() {
    let s = synthetic(&SyntheticSpec { images: 4000, classes: 10, ..Default::default() });
    let feats: Vec<[f64; 3]> = (0..s.len())
        .map(|i| {
            let img = s.image(i);
            let mut m = [0f64; 3];
            for px in img.chunks_exact(3) {
                for c in 0..3 {
                    m[c] += f64::from(px[c]);
                }
            }
            m.map(|v| v / (img.len() / 3) as f64)
        })
        .collect();
    let (train, test) = (0..2000, 2000..4000);
    let mut cent = vec![[0f64; 3]; 10];
    let mut n = [0f64; 10];
    for i in train {
        let l = s.labels[i] as usize;
        n[l] += 1.0;
        for c in 0..3 {
            cent[l][c] += feats[i][c];
        }
    }
    for (c, k) in cent.iter_mut().zip(n) {
        *c = c.map(|v| v / k);
    }
    let correct = test
        .clone()
        .filter(|&i| {
            let d = |c: &[f64; 3]| (0..3).map(|k| (feats[i][k] - c[k]).powi(2)).sum::<f64>();
            let best = (0..10).min_by(|&a, &b| d(&cent[a]).total_cmp(&d(&cent[b]))).unwrap();
            best == s.labels[i] as usize
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    println!("mean-colour nearest-centroid accuracy {acc:.3} (chance 0.100)");
    assert!(acc < 0.16, "mean colour separates the classes too well: {acc}");
}
