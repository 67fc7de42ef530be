//! ImageStore helpers: subsets, hold-out split, statistics, invariants.

use bagssl_data::{synthetic, ImageStore, SyntheticSpec};

fn small() -> ImageStore {
    synthetic(&SyntheticSpec { images: 101, classes: 5, height: 6, width: 9, seed: 4 })
}

#[test]
fn subset_and_image() {
    let s = small();
    let sub = s.subset(&[5, 2, 5]);
    assert_eq!(sub.len(), 3);
    assert_eq!(sub.image(0), s.image(5));
    assert_eq!(sub.image(1), s.image(2));
    assert_eq!(sub.labels, vec![s.labels[5], s.labels[2], s.labels[5]]);
    assert_eq!((sub.mean, sub.std, &sub.classes), (s.mean, s.std, &s.classes));
    assert!(sub.validate().is_ok());
    assert!(s.subset(&[]).is_empty());
}

#[test]
fn holdout_split_is_seeded_and_complete() {
    let s = small();
    let (train, held) = s.split_holdout(0.1, 11);
    assert_eq!((train.len(), held.len()), (91, 10), "round(101 * 0.1) = 10 held out");
    let (train2, held2) = s.split_holdout(0.1, 11);
    assert_eq!(train.pixels, train2.pixels);
    assert_eq!(held.pixels, held2.pixels);
    let (_, held3) = s.split_holdout(0.1, 12);
    assert_ne!(held.pixels, held3.pixels);
    // Every image lands in exactly one part: compare multisets of images.
    let mut all: Vec<&[u8]> =
        (0..train.len()).map(|i| train.image(i)).chain((0..held.len()).map(|i| held.image(i))).collect();
    let mut orig: Vec<&[u8]> = (0..s.len()).map(|i| s.image(i)).collect();
    all.sort();
    orig.sort();
    assert_eq!(all, orig);
    assert_eq!(s.split_holdout(0.0, 1).1.len(), 0);
    assert_eq!(s.split_holdout(1.0, 1).0.len(), 0);
    assert_eq!(s.split_holdout(f64::NAN, 1).1.len(), 0);
}

#[test]
fn channel_stats_match_direct_computation() {
    let s = small();
    let (mean, std) = s.channel_stats();
    for c in 0..3 {
        let v: Vec<f64> = s.pixels.iter().skip(c).step_by(3).map(|&p| f64::from(p) / 255.0).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((f64::from(mean[c]) - m).abs() < 1e-6 && (f64::from(std[c]) - sd).abs() < 1e-6, "{c}");
    }
    let flat = ImageStore::new(1, 1, vec![9, 9, 9], vec![0], vec!["a".into()], [0.0; 3], [1.0; 3]).unwrap();
    assert_eq!(flat.channel_stats().1, [1e-3; 3], "constant channels get a floor, not zero");
}

#[test]
fn new_validates() {
    assert!(ImageStore::new(2, 2, vec![0; 11], vec![0], vec!["a".into()], [0.0; 3], [1.0; 3]).is_err());
    assert!(ImageStore::new(2, 2, vec![0; 12], vec![1], vec!["a".into()], [0.0; 3], [1.0; 3]).is_err());
    assert!(ImageStore::new(2, 2, vec![0; 12], vec![0], vec!["a".into()], [0.0; 3], [0.0; 3]).is_err());
    assert!(ImageStore::new(2, 2, vec![0; 12], vec![0], vec!["a".into()], [0.0; 3], [1.0; 3]).is_ok());
}
