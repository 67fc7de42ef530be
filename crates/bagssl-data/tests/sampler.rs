//! Seeded sampling: determinism, exact resumption, ranges and augmentation rates.

use bagssl_data::{check_patch_size, PatchSampler, PatchSpec, RngState, SeededRng, JITTER_RANGE};

fn images(n: u32) -> Vec<u32> {
    (0..n).map(|i| (i * 7) % 50).collect()
}

#[test]
fn same_seed_same_specs_other_seed_other_specs() {
    for augment in [false, true] {
        let a = PatchSampler::new(42, augment).sample(&images(8), 16, 8, 32, 32);
        let b = PatchSampler::new(42, augment).sample(&images(8), 16, 8, 32, 32);
        let c = PatchSampler::new(43, augment).sample(&images(8), 16, 8, 32, 32);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

#[test]
fn state_resumes_bit_identically() {
    let mut s = PatchSampler::new(7, true);
    s.sample(&images(3), 5, 4, 10, 12); // odd number of words consumed before the checkpoint
    let state = s.state();
    let json = serde_json::to_string(&state).unwrap();
    let restored: RngState = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, state);
    let mut r = PatchSampler::from_state(&restored, true, bagssl_data::Views::default());
    for _ in 0..3 {
        assert_eq!(s.sample(&images(4), 16, 8, 32, 40), r.sample(&images(4), 16, 8, 32, 40));
    }

    let mut g = SeededRng::new(1);
    g.uniform();
    g.permutation(13);
    let mut h = SeededRng::from_state(&serde_json::from_str(&serde_json::to_string(&g.state()).unwrap()).unwrap());
    assert_eq!(g.permutation(100), h.permutation(100));
    assert_eq!(g.uniform(), h.uniform());
}

#[test]
fn word_pos_serializes_as_string() {
    let s = RngState { seed: [3; 32], stream: 1, word_pos: u128::from(u64::MAX) * 16 + 5 };
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"295147905179352825845\""), "{json}");
    assert_eq!(serde_json::from_str::<RngState>(&json).unwrap(), s);
}

#[test]
fn positions_in_range_and_image_major() {
    let mut s = PatchSampler::new(0, true);
    for (h, w, p) in [(32, 32, 8), (10, 12, 4), (7, 30, 7), (40, 9, 1), (5, 5, 5)] {
        let imgs = images(6);
        let specs = s.sample(&imgs, 9, p, h, w);
        assert_eq!(specs.len(), 6 * 9);
        for (i, sp) in specs.iter().enumerate() {
            assert_eq!(sp.image, imgs[i / 9], "rows b*n..b*n+n-1 belong to images[b]");
            assert!(sp.oy as usize + p <= h && sp.ox as usize + p <= w, "{sp:?} for {h}x{w} p={p}");
        }
    }
    // Every position is reachable, including both extremes.
    let specs = PatchSampler::new(1, false).sample(&[0], 2000, 4, 10, 12);
    let max = specs.iter().fold((0, 0), |m, s| (m.0.max(s.oy), m.1.max(s.ox)));
    let min = specs.iter().fold((99, 99), |m, s| (m.0.min(s.oy), m.1.min(s.ox)));
    assert_eq!((min, max), ((0, 0), (6, 8)));
}

#[test]
fn augment_off_only_moves_the_crop() {
    let specs = PatchSampler::new(5, false).sample(&images(20), 16, 8, 32, 32);
    assert!(specs.iter().all(|s| !s.flip && s.jitter.is_none() && !s.gray));
}

#[test]
fn augment_rates_and_ranges() {
    let specs: Vec<PatchSpec> = PatchSampler::new(9, true).sample(&images(100), 100, 8, 32, 32);
    let n = specs.len() as f64;
    let rate = |f: &dyn Fn(&PatchSpec) -> bool| specs.iter().filter(|s| f(s)).count() as f64 / n;
    let (flip, jit, gray) = (rate(&|s| s.flip), rate(&|s| s.jitter.is_some()), rate(&|s| s.gray));
    println!("flip {flip:.3} jitter {jit:.3} gray {gray:.3} over {n} patches");
    assert!((flip - 0.5).abs() < 0.02 && (jit - 0.8).abs() < 0.02 && (gray - 0.2).abs() < 0.02);
    let (lo, hi) = JITTER_RANGE;
    let mut mean = 0.0;
    for j in specs.iter().filter_map(|s| s.jitter) {
        for v in [j.brightness, j.contrast, j.saturation] {
            assert!((lo..hi).contains(&v), "{j:?}");
            mean += f64::from(v);
        }
    }
    mean /= 3.0 * specs.iter().filter(|s| s.jitter.is_some()).count() as f64;
    assert!((mean - 1.0).abs() < 0.01, "jitter factors centred on 1, got {mean}");
}

#[test]
fn seeded_rng_permutation_and_uniform() {
    let mut r = SeededRng::new(3);
    let p = r.permutation(1000);
    let mut sorted = p.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(p, (0..1000).collect::<Vec<_>>());
    assert_eq!(SeededRng::new(3).permutation(1000), p);
    assert!(r.permutation(0).is_empty() && r.permutation(1) == vec![0]);
    let u: Vec<f32> = (0..10_000).map(|_| r.uniform()).collect();
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().sum::<f32>() / u.len() as f32;
    assert!((mean - 0.5).abs() < 0.01, "{mean}");
    // Sampler and training RNG of the same seed are independent streams.
    let a = PatchSampler::new(3, false).state();
    assert_eq!(a.seed, SeededRng::new(3).state().seed);
    assert_ne!(a.stream, SeededRng::new(3).state().stream);
}

#[test]
fn patch_size_validation() {
    assert!(check_patch_size(8, 32, 32).is_ok());
    assert!(check_patch_size(12, 12, 40).is_ok());
    for (p, h, w) in [(0, 32, 32), (33, 32, 64), (9, 64, 8)] {
        let msg = check_patch_size(p, h, w).unwrap_err().to_string();
        assert!(msg.contains(&p.to_string()) && msg.contains(&format!("{h}x{w}")), "{msg}");
    }
}

#[test]
#[should_panic(expected = "patch size 9")]
fn sampler_rejects_oversized_patch() {
    PatchSampler::new(0, false).sample(&[0], 1, 9, 8, 8);
}
