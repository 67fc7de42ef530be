//! The CPU convolutions (image chunks through L2, `cpu::conv_gemm`) against a direct float64
//! convolution from the definition, in f32 and in bf16 (then the reference rounds the operands
//! to bf16 first), on shapes that cut into many chunks with a short last one, more chunks than
//! dW tasks, every window the encoders use (3×3 s1/s2, 7×7 s2 p3, 1×1 s2) and an odd padding.

mod common;

use bagssl_autograd::cpu::conv_gemm::{images_per_chunk, DW_TASKS};
use bagssl_autograd::{ops, set_cpu_matmul_precision, CpuMatmulPrecision, Tensor, Window2d};
use common::{host, rng, uniform};

/// How a precision rounds an operand before the f64 reference uses it.
type Rounding = fn(f32) -> f64;

fn geom(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Window2d {
    Window2d { n, h, w, c, kh: k, kw: k, stride, pad }
}

/// y, dx, dw of the convolution by definition (x NHWC, w (out, c, kh, kw)), each with the sum
/// of the absolute values of its terms (for the error bound). `round` maps every operand first.
struct Reference {
    y: (Vec<f64>, Vec<f64>),
    dx: (Vec<f64>, Vec<f64>),
    dw: (Vec<f64>, Vec<f64>),
}

fn reference(g: &Window2d, out: usize, x: &[f32], w: &[f32], dy: &[f32], round: fn(f32) -> f64) -> Reference {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c);
    let mut r = Reference {
        y: (vec![0.0; g.out_rows() * out], vec![0.0; g.out_rows() * out]),
        dx: (vec![0.0; g.in_rows() * c], vec![0.0; g.in_rows() * c]),
        dw: (vec![0.0; w.len()], vec![0.0; w.len()]),
    };
    let add = |t: &mut (Vec<f64>, Vec<f64>), i: usize, v: f64| {
        t.0[i] += v;
        t.1[i] += v.abs();
    };
    for img in 0..g.n {
        for oy in 0..oh {
            for ox in 0..ow {
                let orow = (img * oh + oy) * ow + ox;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let (iy, ix) = (
                            (oy * g.stride + ki) as isize - g.pad as isize,
                            (ox * g.stride + kj) as isize - g.pad as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let irow = (img * g.h + iy as usize) * g.w + ix as usize;
                        for o in 0..out {
                            let d = round(dy[orow * out + o]);
                            for ch in 0..c {
                                let wi = ((o * c + ch) * g.kh + ki) * g.kw + kj;
                                let (xv, wv) = (round(x[irow * c + ch]), round(w[wi]));
                                add(&mut r.y, orow * out + o, xv * wv);
                                add(&mut r.dx, irow * c + ch, d * wv);
                                add(&mut r.dw, wi, d * xv);
                            }
                        }
                    }
                }
            }
        }
    }
    r
}

/// f32 summation error: far above what the blocked sums reach, far below one bf16 ulp (2^-9) of
/// the absolute sum, which a missed or extra rounding would cost.
fn check(what: &str, got: &Tensor, (want, abs): &(Vec<f64>, Vec<f64>)) {
    let got = host(got);
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= 2e-5 * a + 1e-30, "{what}: element {i} is {g} vs {w} (err {err:e}, bound {:e})", 2e-5 * a);
    }
}

fn bf16(x: f32) -> f64 {
    half::bf16::from_f32(x).to_f64()
}

/// The global precision switch is flipped only here: the tests of a binary share it.
#[test]
fn chunked_convolutions_match_f64() {
    let cases = [
        (geom(53, 13, 11, 16, 3, 1, 1), 7), // 9 chunks of 6 images, the last of 5
        (geom(300, 8, 8, 32, 3, 1, 1), 5),  // 43 chunks: dW tasks of 3 chunks
        (geom(40, 15, 9, 40, 3, 2, 0), 10), // stride 2, no padding, odd sizes
        (geom(30, 20, 20, 3, 7, 2, 3), 8),  // the ImageNet stem's window
        (geom(70, 9, 9, 24, 1, 2, 0), 16),  // a strided 1×1 shortcut
        (geom(3, 6, 9, 5, 3, 1, 3), 4),     // padding wider than the window reaches
    ];
    let mut seen_multi = (false, false);
    for (i, &(g, out)) in cases.iter().enumerate() {
        let chunks = g.n.div_ceil(images_per_chunk(&g));
        seen_multi.0 |= chunks > 1 && g.n % images_per_chunk(&g) != 0;
        seen_multi.1 |= chunks > DW_TASKS;
        let mut r = rng(40 + i as u64);
        let x = uniform(&mut r, g.in_rows() * g.c);
        let w = uniform(&mut r, out * g.patch_len());
        let dy = uniform(&mut r, g.out_rows() * out);
        let (xt, wt, dyt) = (
            Tensor::from_vec(&[g.in_rows(), g.c], x.clone()),
            Tensor::from_vec(&[out, g.c, g.kh, g.kw], w.clone()),
            Tensor::from_vec(&[g.out_rows(), out], dy.clone()),
        );
        // bf16 rounds the operands on every CPU (vdpbf16ps, or rounded copies without it).
        let precisions: [(CpuMatmulPrecision, &str, Rounding); 2] =
            [(CpuMatmulPrecision::F32, "f32", |v| v as f64), (CpuMatmulPrecision::Bf16, "bf16", bf16)];
        for (p, name, round) in precisions {
            set_cpu_matmul_precision(p);
            let want = reference(&g, out, &x, &w, &dy, round);
            let what = |t: &str| format!("{t} {name} {g:?} -> {out}");
            check(&what("conv2d_fwd"), &ops::conv2d_fwd(&xt, &wt, g).unwrap(), &want.y);
            check(&what("conv2d_bwd_input"), &ops::conv2d_bwd_input(&wt, &dyt, g).unwrap(), &want.dx);
            check(&what("conv2d_bwd_weight"), &ops::conv2d_bwd_weight(&xt, &wt, &dyt, g).unwrap(), &want.dw);
        }
        set_cpu_matmul_precision(CpuMatmulPrecision::F32);
    }
    assert_eq!(seen_multi, (true, true), "the cases must cover a short last chunk and more chunks than dW tasks");
}
