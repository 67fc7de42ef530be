//! `cast_bf16_f32` (the operand copies of the bf16 GEMMs) against `half::bf16::from_f32`
//! (round to nearest even) on random values of every magnitude, specials and awkward lengths:
//! bit-exact, NaN stays NaN. Also checks that `GpuBuf::bf16` is that copy and that a write to
//! the buffer drops it.

use bagssl_kernels::cast_bf16_f32;
use bagssl_testkit::gpu_or_skip;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn want(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn agrees(got: u16, x: f32) -> bool {
    if x.is_nan() {
        half::bf16::from_bits(got).is_nan()
    } else {
        got == want(x)
    }
}

#[test]
fn cast_bf16_rounds_to_nearest_even() {
    let Some(gpu) = gpu_or_skip("cast_bf16_rounds_to_nearest_even") else { return };
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let specials =
        [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::MAX, f32::MIN_POSITIVE, 1.0039062];
    for n in [1usize, 3, 4, 5, 1000, 4099, 1 << 20] {
        let mut x: Vec<f32> = (0..n).map(|i| r.random_range(-1.0f32..1.0) * 10f32.powi((i % 61) as i32 - 30)).collect();
        for (i, s) in specials.iter().enumerate().take(n) {
            x[i * 7 % n] = *s;
        }
        // Exact ties of the rounding: bf16 values plus half an ulp.
        for i in (11..n).step_by(97) {
            x[i] = f32::from_bits((x[i].to_bits() & 0xffff_0000) | 0x8000);
        }
        let buf = gpu.upload(&x).unwrap();
        let got = gpu.stream().clone_dtoh(&cast_bf16_f32(&buf).unwrap()).unwrap();
        gpu.synchronize().unwrap();
        let bad = (0..n).filter(|&i| !agrees(got[i], x[i])).count();
        println!(
            "{} cast_bf16 n={n}: {bad} of {n} differ from half::bf16::from_f32",
            if bad == 0 { "OK    " } else { "NOT OK" }
        );
        assert_eq!(bad, 0, "n = {n}");
    }
}

#[test]
fn cached_bf16_copy_follows_writes() {
    let Some(gpu) = gpu_or_skip("cached_bf16_copy_follows_writes") else { return };
    let a: Vec<f32> = (0..1001).map(|i| i as f32 * 0.37 - 100.0).collect();
    let mut buf = gpu.upload(&a).unwrap();
    let first = gpu.stream().clone_dtoh(buf.bf16().unwrap()).unwrap();
    gpu.synchronize().unwrap();
    assert!(a.iter().zip(&first).all(|(&x, &g)| g == want(x)));
    let b: Vec<f32> = a.iter().map(|x| -2.0 * x).collect();
    buf.write(&b).unwrap();
    let second = gpu.stream().clone_dtoh(buf.bf16().unwrap()).unwrap();
    gpu.synchronize().unwrap();
    assert!(b.iter().zip(&second).all(|(&x, &g)| g == want(x)), "the copy was not refreshed after write");
    println!("OK     cached bf16 copy follows GpuBuf::write");
}

/// `sum_rows_f32` writes the bf16 copy of its input as it reads it (when the GEMMs are bf16 and
/// the input has none): installed, exactly the cast's bits, and the sums are unchanged by it.
#[test]
fn sum_rows_leaves_the_bf16_copy() {
    let Some(gpu) = gpu_or_skip("sum_rows_leaves_the_bf16_copy") else { return };
    if gpu.gemm_precision() != bagssl_kernels::GemmPrecision::Bf16 {
        println!("skipped: sum_rows_leaves_the_bf16_copy: GEMMs not in bf16 (Gpu::set_gemm_precision)");
        return;
    }
    let mut r = ChaCha8Rng::seed_from_u64(9);
    for (rows, cols) in [(37, 45), (4096, 2048), (300, 7)] {
        let x: Vec<f32> = (0..rows * cols).map(|_| r.random_range(-3.0f32..3.0)).collect();
        let a = gpu.upload(&x).unwrap();
        let b = gpu.upload(&x).unwrap();
        b.bf16().unwrap(); // b's copy made by the cast: sum_rows must not write another
        let (sa, sb) = (
            bagssl_kernels::sum_rows_f32(&a, rows, cols).unwrap(),
            bagssl_kernels::sum_rows_f32(&b, rows, cols).unwrap(),
        );
        assert!(a.has_bf16(), "{rows}x{cols}: no copy left by sum_rows");
        let got = gpu.stream().clone_dtoh(a.bf16().unwrap()).unwrap();
        let bad = (0..x.len()).filter(|&i| !agrees(got[i], x[i])).count();
        assert_eq!(bad, 0, "{rows}x{cols}: {bad} bf16 values differ from round-to-nearest-even");
        let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(sa.to_host().unwrap()), bits(sb.to_host().unwrap()), "{rows}x{cols}: sums");
    }
    println!("OK     sum_rows_f32 leaves its input's bf16 copy (round-to-nearest-even, sums unchanged)");
}
