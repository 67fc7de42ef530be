//! The bf16 GEMM (`sgemm_bf16`, its fallback, and the `CpuMatmulPrecision` switch) against a
//! float64 reference computed on the bf16-rounded operands: every element must agree to f32
//! summation error, on awkward shapes, all four transposes, overwrite and accumulate, any scale.

mod common;

use bagssl_autograd::cpu::matmul::{gram, sgemm, sgemm_f32, GemmShape, View};
use bagssl_autograd::cpu::matmul_bf16::{
    gemm_views_bf16, gemm_views_bf16_fallback, gemm_views_bf16_mapped, has_avx512_bf16, round_to_bf16, sgemm_bf16,
    sgemm_bf16_fallback, ColumnMap,
};
use bagssl_autograd::{cpu_matmul_precision, ops, set_cpu_matmul_precision, BnEval, CpuMatmulPrecision, Tensor};
use common::{host, rng, uniform};

type Gemm = fn(GemmShape, &[f32], &[f32], &mut [f32], bool, f32);

fn bf16(x: f32) -> f64 {
    half::bf16::from_f32(x).to_f64()
}

/// `scale * bf16(op(a)) @ bf16(op(b))` in f64 (plus `c0` when accumulating), and
/// `|scale| * |op(a)| @ |op(b)|` on the rounded operands for the error bound.
fn reference(s: GemmShape, a: &[f32], b: &[f32], c0: Option<&[f32]>, scale: f32) -> (Vec<f64>, Vec<f64>) {
    let GemmShape { m, k, n, trans_a, trans_b } = s;
    let at = |i: usize, p: usize| bf16(if trans_a { a[p * m + i] } else { a[i * k + p] });
    let bt = |p: usize, j: usize| bf16(if trans_b { b[j * k + p] } else { b[p * n + j] });
    let mut want = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut sa) = (0.0, 0.0);
            for p in 0..k {
                let prod = at(i, p) * bt(p, j);
                sum += prod;
                sa += prod.abs();
            }
            want[i * n + j] = scale as f64 * sum + c0.map_or(0.0, |c| c[i * n + j] as f64);
            abs[i * n + j] = (scale as f64).abs() * sa + c0.map_or(0.0, |c| (c[i * n + j] as f64).abs());
        }
    }
    (want, abs)
}

/// f32 summation error: a few hundred ulps of the absolute sum at k = 512 is far above what the
/// blocked sum reaches, and 2^-9 relative (one bf16 ulp) far below what a missing rounding of
/// the operands would give.
fn check(what: &str, got: &[f32], want: &[f64], abs: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= 1e-5 * a + 1e-30, "{what}: element {i} is {g} vs {w} (err {err:e}, bound {:e})", 1e-5 * a);
    }
}

/// (701, 301, 40) is tall enough that the parallel path splits only rows, so each task packs its
/// own rows of A per k-block (odd m and k, two k-blocks).
const SHAPES: [(usize, usize, usize); 15] = [
    (1, 1, 1),
    (3, 5, 7),
    (13, 31, 33),
    (15, 33, 17),
    (14, 2, 32),
    (29, 257, 65),
    (64, 192, 512),
    (701, 301, 40),
    (100, 1, 100),
    (1, 300, 45),
    (0, 5, 3),
    (4, 0, 6),
    (4, 6, 0),
    (0, 0, 0),
    (512, 512, 512),
];

fn run_all(name: &str, f: Gemm) {
    let mut r = rng(7);
    for (m, k, n) in SHAPES {
        let big = m * k * n > 1 << 24;
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let s = GemmShape { m, k, n, trans_a, trans_b };
                let a = uniform(&mut r, m * k);
                let b = uniform(&mut r, k * n);
                let c0 = uniform(&mut r, m * n);
                // The 512^3 reference is 2^27 f64 multiply-adds: one case per transpose pair.
                let cases: &[(bool, f32)] =
                    if big { &[(true, 0.75)] } else { &[(false, 1.0), (false, -0.3), (true, 2.5)] };
                for &(accumulate, scale) in cases {
                    let mut c = if accumulate { c0.clone() } else { vec![f32::NAN; m * n] };
                    f(s, &a, &b, &mut c, accumulate, scale);
                    let (want, abs) = reference(s, &a, &b, accumulate.then_some(&c0[..]), scale);
                    check(&format!("{name} {s:?} accumulate={accumulate} scale={scale}"), &c, &want, &abs);
                }
            }
        }
    }
}

#[test]
fn sgemm_bf16_matches_f64_on_rounded_operands() {
    if !has_avx512_bf16() {
        eprintln!("no AVX512-BF16 on this CPU: sgemm_bf16 runs the fallback (tested below)");
    }
    run_all("sgemm_bf16", sgemm_bf16);
}

#[test]
fn fallback_matches_f64_on_rounded_operands() {
    run_all("sgemm_bf16_fallback", sgemm_bf16_fallback);
}

/// Views with no unit stride (the scalar packer), single- and multi-threaded.
#[test]
fn strided_views_match_f64() {
    let mut r = rng(5);
    for (m, k, n, par) in [(19, 37, 45, false), (70, 100, 66, true)] {
        // op(A)(i, p) = a[1 + 3 k i + 2 p] (strides (3k, 2)), op(B)(p, j) = b[2 p + 2 k j].
        let a = uniform(&mut r, 3 * m * k + 2);
        let b = uniform(&mut r, 2 * k * n + 2 * n + 2);
        let av = View::new(&a[1..], m, k, 3 * k, 2);
        let bv = View::new(&b, k, n, 2, 2 * k);
        let dense_a: Vec<f32> = (0..m * k).map(|e| a[1 + (e / k) * 3 * k + (e % k) * 2]).collect();
        let dense_b: Vec<f32> = (0..k * n).map(|e| b[(e / n) * 2 + (e % n) * 2 * k]).collect();
        let s = GemmShape { m, k, n, trans_a: false, trans_b: false };
        let (want, abs) = reference(s, &dense_a, &dense_b, None, -1.5);
        for (name, f) in [
            ("gemm_views_bf16", gemm_views_bf16 as fn(View<'_>, View<'_>, &mut [f32], bool, f32, bool)),
            ("gemm_views_bf16_fallback", gemm_views_bf16_fallback),
        ] {
            let mut c = vec![f32::NAN; m * n];
            f(av, bv, &mut c, false, -1.5, par);
            check(&format!("{name} strided {m}x{k}x{n} par={par}"), &c, &want, &abs);
        }
    }
}

/// The operands really are rounded: a product with an exact f32 answer that bf16 cannot hold.
#[test]
fn operands_are_rounded_to_bf16() {
    let x = 1.0 + 5.0 * 2f32.powi(-9); // bf16 keeps 8 significant bits: 1.25 ulps, rounds to 1 + 2^-7
    for f in [sgemm_bf16 as Gemm, sgemm_bf16_fallback] {
        let mut c = [0f32];
        f(GemmShape { m: 1, k: 1, n: 1, trans_a: false, trans_b: false }, &[x], &[1.0], &mut c, false, 1.0);
        assert_eq!(c[0], 1.0 + 2f32.powi(-7));
    }
}

/// The packer's branch-free rounding against `half` on every special value and many others.
#[test]
fn round_to_bf16_matches_half() {
    let mut bits: Vec<u32> = vec![
        0,
        0x8000_0000,
        0x0000_0001,
        0x0000_8000,
        0x0001_8000,
        0x007F_FFFF,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0xFF80_0001,
        0x7FC0_0000,
        0x7FFF_FFFF,
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_8001,
        0x3F80_7FFF,
    ];
    let mut s = 0x9E37_79B9u32;
    bits.extend((0..1 << 20).map(|_| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    }));
    for b in bits {
        let x = f32::from_bits(b);
        let (got, want) = (round_to_bf16(x), half::bf16::from_f32(x).to_f32());
        assert_eq!(got.to_bits(), want.to_bits(), "bits {b:#010x}");
    }
}

/// NaN and infinity propagate through the packed path.
#[test]
fn non_finite_operands_propagate() {
    let s = GemmShape { m: 20, k: 40, n: 40, trans_a: false, trans_b: false };
    let mut a = vec![0.5f32; 20 * 40];
    let b = vec![0.25f32; 40 * 40];
    a[3 * 40 + 7] = f32::NAN;
    a[17 * 40 + 39] = f32::INFINITY;
    for f in [sgemm_bf16 as Gemm, sgemm_bf16_fallback] {
        let mut c = vec![0f32; 20 * 40];
        f(s, &a, &b, &mut c, false, 1.0);
        for i in 0..20 {
            for j in 0..40 {
                let v = c[i * 40 + j];
                match i {
                    3 => assert!(v.is_nan()),
                    17 => assert_eq!(v, f32::INFINITY),
                    _ => assert_eq!(v, 0.5 * 0.25 * 40.0),
                }
            }
        }
    }
}

/// The fused store map (eval-mode BatchNorm + ReLU) equals the plain bf16 GEMM followed by the
/// same arithmetic, bit for bit: edge tiles, one and several k-blocks, odd k, the parallel path,
/// NaN and negative zero through the ReLU.
#[test]
fn mapped_gemm_equals_gemm_then_map() {
    if !has_avx512_bf16() {
        eprintln!("skipped: no AVX512-BF16 (the mapped GEMM reports None and callers run two passes)");
        return;
    }
    let mut r = rng(21);
    for (m, k, n) in
        [(1, 1, 1), (15, 3, 33), (37, 193, 45), (70, 530, 100), (300, 512, 512), (512, 192, 512), (5, 0, 7)]
    {
        let a = uniform(&mut r, m * k);
        let b = uniform(&mut r, n * k); // stored (n, k): the linear layer's weight
        let sub = uniform(&mut r, n);
        let mul: Vec<f32> = uniform(&mut r, n).iter().map(|x| x * 3.0).collect();
        let mut add = uniform(&mut r, n);
        if n > 2 {
            add[1] = f32::NAN; // NaN must pass through the ReLU
            add[2] = -0.0;
        }
        for relu in [false, true] {
            let (av, bv) = (View::row_major(&a, m, k), View::row_major(&b, n, k).t());
            let mut plain = vec![0f32; m * n];
            gemm_views_bf16(av, bv, &mut plain, false, 1.0, m * n * k >= 1 << 20);
            let want: Vec<u32> = plain
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let j = i % n;
                    let y = (v - sub[j]) * mul[j] + add[j];
                    (if relu && y < 0.0 { 0.0 } else { y }).to_bits()
                })
                .collect();
            for par in [false, true] {
                let mut got = vec![f32::NAN; m * n];
                let map = ColumnMap { sub: &sub, mul: &mul, add: &add, relu };
                assert!(gemm_views_bf16_mapped(av, bv, &mut got, map, par).is_some());
                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{m}x{k}x{n} relu {relu} par {par}");
            }
        }
    }
}

/// The global switch. Everything that flips it lives in this one test: the tests of a binary run
/// on parallel threads.
#[test]
fn precision_switch_routes_every_cpu_gemm() {
    assert_eq!(cpu_matmul_precision(), CpuMatmulPrecision::F32, "default precision");
    let mut r = rng(11);
    let (m, k, n) = (70, 130, 90);
    let a = Tensor::from_vec(&[m, k], uniform(&mut r, m * k));
    let bt = Tensor::from_vec(&[n, k], uniform(&mut r, n * k));
    let s = GemmShape { m, k, n, trans_a: false, trans_b: true };
    let f32_run = || host(&ops::matmul(&a, &bt, false, true).unwrap());
    let before = f32_run();

    set_cpu_matmul_precision(CpuMatmulPrecision::Bf16);
    assert_eq!(cpu_matmul_precision(), CpuMatmulPrecision::Bf16);
    let got = host(&ops::matmul(&a, &bt, false, true).unwrap());
    let (want, abs) = reference(s, &host(&a), &host(&bt), None, 1.0);
    check("ops::matmul under Bf16", &got, &want, &abs);
    // sgemm itself, accumulating.
    let mut c = vec![1.0f32; m * n];
    sgemm(s, &host(&a), &host(&bt), &mut c, true, 0.5);
    let ones = vec![1.0f32; m * n];
    let (want, abs) = reference(s, &host(&a), &host(&bt), Some(&ones), 0.5);
    check("sgemm under Bf16", &c, &want, &abs);
    // The linear layer (bias + GEMM) and the bag-VICReg loss take the bf16 path too: their results
    // move away from f32 by about bf16 rounding.
    let bias = Tensor::from_vec(&[n], uniform(&mut r, n));
    let lin16 = host(&ops::linear_fwd(&a, &bt, Some(&bias)).unwrap());
    let z = Tensor::from_vec(&[64, 300], uniform(&mut r, 64 * 300)); // D > 128: gram's blocks
    let (parts16, dz16) = ops::vicreg_fwd_bwd(&z, 8, Default::default()).unwrap();
    // The eval-mode layer: fused under Bf16, and still equal to its two-op composition.
    let col = |r: &mut _, lo: f32| Tensor::from_vec(&[n], uniform(r, n).iter().map(|x| x.abs() + lo).collect());
    let (rmean, rvar, gamma) = (col(&mut r, -0.5), col(&mut r, 0.1), col(&mut r, 0.5));
    let eval_pair = || {
        let fused = host(
            &ops::linear_bn_eval(
                &a,
                &bt,
                None,
                BnEval { running_mean: &rmean, running_var: &rvar, gamma: &gamma, beta: &bias, eps: 1e-5, relu: true },
            )
            .unwrap(),
        );
        let y = ops::matmul(&a, &bt, false, true).unwrap();
        let two = host(
            &ops::bn_eval_fwd(
                &y,
                BnEval { running_mean: &rmean, running_var: &rvar, gamma: &gamma, beta: &bias, eps: 1e-5, relu: true },
            )
            .unwrap(),
        );
        (fused, two)
    };
    let (fused16, two16) = eval_pair();
    assert_eq!(fused16, two16, "linear_bn_eval under Bf16 vs matmul + bn_eval_fwd");
    // bag-VICReg's Gram matrix: the upper-triangle product, mirrored (parallel and not, edges).
    for (rows, d) in [(70, 300), (10, 20), (33, 14), (129, 45)] {
        let zz = uniform(&mut r, rows * d);
        let g = gram(&zz, rows, d, 0.5);
        let gs = GemmShape { m: d, k: rows, n: d, trans_a: true, trans_b: false };
        let (want, abs) = reference(gs, &zz, &zz, None, 0.5);
        check(&format!("gram {rows}x{d} under Bf16"), &g, &want, &abs);
        for i in 0..d {
            for j in 0..i {
                assert_eq!(g[i * d + j].to_bits(), g[j * d + i].to_bits(), "gram {rows}x{d} symmetric at ({i}, {j})");
            }
        }
    }
    let (lin_ref, _) = reference(s, &host(&a), &host(&bt), None, 1.0);
    for i in 0..m {
        for j in 0..n {
            let w = lin_ref[i * n + j] + host(&bias)[j] as f64;
            assert!((lin16[i * n + j] as f64 - w).abs() < 1e-4, "linear_fwd under Bf16 at ({i}, {j})");
        }
    }

    set_cpu_matmul_precision(CpuMatmulPrecision::F32);
    assert_eq!(cpu_matmul_precision(), CpuMatmulPrecision::F32);
    let after = f32_run();
    assert_eq!(
        before.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        after.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "F32 after Bf16 must be bit-identical"
    );
    // And the F32 path is the f32 GEMM, not bf16.
    let mut c32 = vec![0f32; m * n];
    sgemm_f32(s, &host(&a), &host(&bt), &mut c32, false, 1.0);
    assert_eq!(c32, after);
    assert_ne!(got, after, "bf16 results should differ from f32 ones");
    let lin32 = host(&ops::linear_fwd(&a, &bt, Some(&bias)).unwrap());
    let (fused32, two32) = eval_pair();
    assert_eq!(fused32, two32, "linear_bn_eval under F32 vs matmul + bn_eval_fwd");
    assert_ne!(fused16, fused32, "linear_bn_eval must go through the switch");
    assert_ne!(lin16, lin32, "linear_fwd must go through the switch");
    let (parts32, dz32) = ops::vicreg_fwd_bwd(&z, 8, Default::default()).unwrap();
    assert_ne!(host(&dz16), host(&dz32), "vicreg_fwd_bwd must go through the switch");
    let rel = (parts16.loss - parts32.loss).abs() / parts32.loss.abs();
    assert!(rel < 1e-2, "vicreg loss under Bf16 {} vs F32 {}", parts16.loss, parts32.loss);
    let max_dz = host(&dz32).iter().fold(0f32, |m, x| m.max(x.abs()));
    for (x, y) in host(&dz16).iter().zip(host(&dz32)) {
        assert!((x - y).abs() <= 2e-2 * max_dz, "vicreg dz under Bf16 {x} vs F32 {y}");
    }
    // The rounding helper agrees with the packed path at a single element.
    assert_eq!(round_to_bf16(1.0 + 2f32.powi(-9)), 1.0);
}
