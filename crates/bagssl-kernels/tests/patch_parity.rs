//! The patch-embedding kernels against the CPU gathers of bagssl-data (`gather_patches`,
//! `gather_grid`) on random images, every augmentation combination (blur and solarize included),
//! fixed and resized crop boxes, awkward sizes.
//!
//! Tolerance: both sides do the same f32 operations in the same order, except the patch mean of
//! the contrast step (a tree sum on the GPU, sequential on the CPU) and FMA contraction: a few
//! ulps of values of magnitude <= ~3, so `max |gpu - cpu| <= 2e-5`.

use bagssl_data::{gather_grid, gather_patches, grid_len, ImageStore, Jitter, PatchSpec as DataSpec};
use bagssl_kernels::{patch_embed_fwd_f32, patch_grid_fwd_f32, GpuImages, GpuPatchSpecs, PatchSpec};
use bagssl_testkit::gpu_or_skip;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f32 = 2e-5;

fn store(r: &mut ChaCha8Rng, n: usize, h: usize, w: usize) -> ImageStore {
    let pixels: Vec<u8> = (0..n * h * w * 3).map(|_| r.random::<u8>()).collect();
    ImageStore::new(h, w, pixels, vec![0; n], vec!["x".into()], [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
        .expect("valid store")
}

/// The kernels' spec for a bagssl-data spec (what the model crate does too).
fn to_kernel(s: &DataSpec) -> PatchSpec {
    let jitter = s.jitter.map(|j| [j.brightness, j.contrast, j.saturation]);
    PatchSpec::new_box(s.image, [s.oy, s.ox, s.h, s.w], s.flip, jitter, s.gray).with_blur_solarize(s.blur, s.solarize)
}

/// A random spec; bit 3 of `i` resizes a random box, bits 0-2 and 4-5 pick the augmentations.
fn random_spec(r: &mut ChaCha8Rng, i: usize, n_img: usize, h: usize, w: usize, p: usize) -> DataSpec {
    let (bh, bw) = if i & 8 != 0 { (r.random_range(1..=h), r.random_range(1..=w)) } else { (p, p) };
    let mut s = DataSpec::boxed(
        r.random_range(0..n_img as u32),
        r.random_range(0..=(h - bh) as u32),
        r.random_range(0..=(w - bw) as u32),
        bh as u32,
        bw as u32,
    );
    s.flip = i & 1 != 0;
    s.jitter = (i & 2 != 0).then(|| Jitter {
        brightness: r.random_range(0.6..1.4),
        contrast: r.random_range(0.6..1.4),
        saturation: r.random_range(0.6..1.4),
    });
    s.gray = i & 4 != 0;
    s.blur = (i & 16 != 0).then(|| r.random_range(0.1..2.0));
    s.solarize = i & 32 != 0;
    s
}

fn max_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).enumerate().fold((0.0, 0), |(m, at), (i, (x, y))| {
        let d = (x - y).abs();
        if d > m || d.is_nan() {
            (if d.is_nan() { f32::INFINITY } else { d }, i)
        } else {
            (m, at)
        }
    })
}

/// With bf16 GEMMs (the default) the patch kernels install X's bf16 copy themselves: it is there
/// without a cast, and it is the round-to-nearest-even of every value.
fn check_bf16_copy(gpu: &bagssl_kernels::Gpu, x: &bagssl_kernels::GpuBuf, values: &[f32], what: &str) {
    if gpu.gemm_precision() != bagssl_kernels::GemmPrecision::Bf16 {
        return;
    }
    assert!(x.has_bf16(), "{what}: no bf16 copy written beside X");
    let got = gpu.stream().clone_dtoh(x.bf16().unwrap()).unwrap();
    let bad = values.iter().zip(&got).filter(|(v, b)| half::bf16::from_f32(**v).to_bits() != **b).count();
    assert_eq!(bad, 0, "{what}: {bad} of {} bf16 values differ from round-to-nearest-even", values.len());
}

#[test]
fn patch_embed_matches_cpu_gather() {
    let Some(gpu) = gpu_or_skip("patch_embed_matches_cpu_gather") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(7);
    for &(n_img, h, w, p, n_specs) in
        &[(5, 13, 17, 5, 211), (3, 32, 32, 8, 4096), (2, 40, 33, 19, 64), (1, 4, 4, 4, 64)]
    {
        let st = store(&mut r, n_img, h, w);
        let specs: Vec<DataSpec> = (0..n_specs).map(|i| random_spec(&mut r, i, n_img, h, w, p)).collect();
        let mut want = vec![0f32; n_specs * p * p * 3];
        gather_patches(&st, &specs, p, &mut want);
        let images = GpuImages::upload(&gpu, &st.contiguous_pixels(), h, w, st.mean, st.std).unwrap();
        let kspecs: Vec<PatchSpec> = specs.iter().map(to_kernel).collect();
        let mut dspecs = GpuPatchSpecs::upload(&gpu, &kspecs).unwrap();
        let x = patch_embed_fwd_f32(&images, &mut dspecs, p).unwrap();
        let got = x.to_host().unwrap();
        check_bf16_copy(&gpu, &x, &got, "patch_embed");
        let (d, at) = max_diff(&got, &want);
        let ok = d <= TOL;
        println!(
            "{} patch_embed {n_img}x{h}x{w} p={p} specs={n_specs}: max diff {d:.3e} at {at} (spec {:?})",
            if ok { "OK    " } else { "NOT OK" },
            specs[at / (p * p * 3)]
        );
        assert!(ok, "patch_embed_fwd_f32 differs from gather_patches by {d} at {at}: gpu {} cpu {}", got[at], want[at]);
    }
}

#[test]
fn patch_grid_matches_cpu_gather() {
    let Some(gpu) = gpu_or_skip("patch_grid_matches_cpu_gather") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(8);
    for &(n_img, h, w, p, s, first, count) in &[(4, 10, 12, 4, 3, 1, 3), (3, 32, 32, 8, 2, 0, 3), (2, 9, 7, 7, 5, 1, 1)]
    {
        let st = store(&mut r, n_img, h, w);
        let per = grid_len(h, w, p, s);
        assert_eq!(per, bagssl_kernels::grid_len(h, w, p, s));
        let mut want = vec![0f32; count * per * p * p * 3];
        gather_grid(&st, first..first + count, p, s, &mut want);
        let images = GpuImages::upload(&gpu, &st.contiguous_pixels(), h, w, st.mean, st.std).unwrap();
        let x = patch_grid_fwd_f32(&images, first, count, p, s).unwrap();
        let got = x.to_host().unwrap();
        check_bf16_copy(&gpu, &x, &got, "patch_grid");
        let (d, at) = max_diff(&got, &want);
        println!(
            "{} patch_grid {n_img}x{h}x{w} p={p} s={s}: max diff {d:.3e} at {at}",
            if d <= TOL { "OK    " } else { "NOT OK" }
        );
        assert!(d <= TOL, "patch_grid_fwd_f32 differs from gather_grid by {d} at {at}");
    }
}

#[test]
fn bad_specs_are_rejected_before_launch() {
    let Some(gpu) = gpu_or_skip("bad_specs_are_rejected_before_launch") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(9);
    let st = store(&mut r, 2, 8, 8);
    let images = GpuImages::upload(&gpu, &st.contiguous_pixels(), 8, 8, st.mean, st.std).unwrap();
    let bad_box = PatchSpec::new_box(0, [2, 0, 7, 3], false, None, false);
    for bad in [PatchSpec::new(2, 0, 0, 4, false, None, false), PatchSpec::new(0, 5, 0, 4, false, None, false), bad_box]
    {
        let mut specs = GpuPatchSpecs::upload(&gpu, &[bad]).unwrap();
        assert!(patch_embed_fwd_f32(&images, &mut specs, 4).is_err(), "{bad:?} must be rejected");
    }
    assert!(patch_grid_fwd_f32(&images, 1, 2, 4, 2).is_err());
    assert!(patch_grid_fwd_f32(&images, 0, 1, 9, 2).is_err());
}
