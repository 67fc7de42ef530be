//! Finite-difference checks of every op on the tape, on small random inputs of awkward sizes.
//!
//! Each check reduces the op's output `y` to a scalar `sum(y * W)` with a fixed random `W` (so
//! every output element matters, with a different weight), takes the tape's gradient of it, and
//! compares with central differences `(f(x + eps) - f(x - eps)) / (2 eps)` per input element.
//!
//! Precision: the forward runs in f32 but `f` is reduced in f64 (`ops::dot`), so the noise of a
//! difference quotient is the f32 rounding of the outputs over `2 eps`: for ~40 outputs of size
//! ~1, `40^0.5 * 6e-8 / 2e-2 ~ 2e-5` at eps = 1e-2; a scalar output (bag-VICReg, ~17, stored as
//! f32) gives `17 * 6e-8 / 2e-2 ~ 5e-5`. The truncation error is O(eps^2) times the third
//! derivative: zero for the (bi)linear ops, ~1e-4 of the scale for BatchNorm (checked at
//! eps = 1e-3, where its noise is still ~2e-4) and bag-VICReg. Measured worst case: 3e-4 of the
//! scale. Hence the bound `max |analytic - fd| <= 2e-3 max |fd|`, while a wrong gradient (a
//! missing term, a wrong transpose or scale) is off by >= 1e-1 of the scale.
//! Inputs keep ReLUs and the variance hinge away from their kinks, where differences are wrong.

mod common;

use bagssl_autograd::{ops, BnVars, Tape, Tensor, Var, VicregWeights};
use bagssl_testkit::Report;
use common::{bn_args, host, rand_tensor, rng};
use rand::Rng;

const RTOL: f64 = 2e-3;
/// For gradients that are exactly zero (a bias under a translation-invariant loss): the tape
/// returns f32 rounding noise there, ~1e-7 for these O(1) values.
const ATOL: f64 = 1e-5;

/// Checks the tape's gradients of `sum(build(inputs) * W)` against central differences.
fn gradcheck(name: &str, inputs: &[Tensor], eps: f32, build: impl Fn(&mut Tape, &[Var]) -> Var) {
    gradcheck_atol(name, inputs, eps, ATOL, build)
}

/// [`gradcheck`] with another absolute tolerance, for a zero gradient whose difference quotients
/// are only noise at a small `eps`.
fn gradcheck_atol(name: &str, inputs: &[Tensor], eps: f32, atol: f64, build: impl Fn(&mut Tape, &[Var]) -> Var) {
    let mut r = rng(0xC0FFEE);
    // The tape's gradients.
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.input(t.try_clone().unwrap(), true)).collect();
    let y = build(&mut tape, &vars);
    let w = rand_tensor(&mut r, tape.value(y).shape());
    let loss = tape.dot_const(y, w.try_clone().unwrap()).unwrap();
    let grads = tape.backward(loss).unwrap();

    // f in f64 on a fresh tape without gradients.
    let f = |xs: &[Tensor]| -> f64 {
        let mut tape = Tape::new();
        let vars: Vec<Var> = xs.iter().map(|t| tape.input(t.try_clone().unwrap(), false)).collect();
        let y = build(&mut tape, &vars);
        ops::dot(tape.value(y), &w).unwrap()
    };

    let mut report = Report::new(name);
    for (k, (input, &var)) in inputs.iter().zip(&vars).enumerate() {
        let analytic = host(grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient for input {k}")));
        assert_eq!(grads.get(var).unwrap().shape(), input.shape(), "{name}: gradient shape of input {k}");
        let mut xs: Vec<Tensor> = inputs.iter().map(|t| t.try_clone().unwrap()).collect();
        let base = host(input);
        let mut fd = Vec::with_capacity(base.len());
        for j in 0..base.len() {
            let mut at = |delta: f32| {
                let mut v = base.clone();
                v[j] += delta;
                xs[k] = Tensor::from_vec(input.shape(), v);
                f(&xs)
            };
            fd.push((at(eps) - at(-eps)) / (2.0 * eps as f64));
        }
        report.check(&format!("d/d input {k} {:?}", input.shape()), &analytic, &fd, RTOL, atol);
    }
    report.finish();
}

/// Uniform in ±[0.2, 1.2]: away from the ReLU kink by more than any perturbation.
fn away_from_zero(r: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            let m = r.random_range(0.2f32..1.2);
            if r.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::from_vec(shape, v)
}

#[test]
fn grad_linear() {
    let mut r = rng(1);
    let (x, w, b) = (rand_tensor(&mut r, &[7, 5]), rand_tensor(&mut r, &[3, 5]), rand_tensor(&mut r, &[3]));
    gradcheck("linear with bias", &[x, w, b], 1e-2, |t, v| t.linear(v[0], v[1], Some(v[2])).unwrap());
    let (x, w) = (rand_tensor(&mut r, &[13, 3]), rand_tensor(&mut r, &[6, 3]));
    gradcheck("linear without bias", &[x, w], 1e-2, |t, v| t.linear(v[0], v[1], None).unwrap());
}

#[test]
fn grad_matmul_all_transposes() {
    let mut r = rng(2);
    let (m, k, n) = (7, 5, 3);
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            let a = rand_tensor(&mut r, &if trans_a { [k, m] } else { [m, k] });
            let b = rand_tensor(&mut r, &if trans_b { [n, k] } else { [k, n] });
            gradcheck(&format!("matmul trans_a={trans_a} trans_b={trans_b}"), &[a, b], 1e-2, |t, v| {
                t.matmul(v[0], v[1], trans_a, trans_b).unwrap()
            });
        }
    }
}

/// `A^T A` uses one var twice: its gradient must be the sum of both uses.
#[test]
fn grad_matmul_shared_operand() {
    let a = rand_tensor(&mut rng(3), &[13, 3]);
    gradcheck("matmul A^T A", &[a], 1e-2, |t, v| t.matmul(v[0], v[0], true, false).unwrap());
}

#[test]
fn grad_bias_add() {
    let mut r = rng(4);
    let (x, b) = (rand_tensor(&mut r, &[13, 3]), rand_tensor(&mut r, &[3]));
    gradcheck("bias_add", &[x, b], 1e-2, |t, v| t.bias_add(v[0], v[1]).unwrap());
}

#[test]
fn grad_relu() {
    let x = away_from_zero(&mut rng(5), &[7, 5]);
    gradcheck("relu", &[x], 1e-2, |t, v| t.relu(v[0]).unwrap());
}

/// BatchNorm inputs whose pre-activations all stay at least 0.1 away from 0 (ReLU kink).
fn bn_inputs(rows: usize, cols: usize) -> [Tensor; 3] {
    for seed in 0..1000 {
        let mut r = rng(100 + seed);
        let x = rand_tensor(&mut r, &[rows, cols]);
        let gamma = away_from_zero(&mut r, &[cols]);
        let beta = rand_tensor(&mut r, &[cols]);
        let pre = ops::bn_train_fwd(bn_args(&x, None, &gamma, &beta, false)).unwrap().y;
        if host(&pre).iter().all(|v| v.abs() > 0.1) {
            return [x, gamma, beta];
        }
    }
    panic!("no BatchNorm input away from the ReLU kink");
}

#[test]
fn grad_batch_norm() {
    let [x, g, b] = bn_inputs(13, 3);
    gradcheck("batch_norm", &[x, g, b], 1e-3, |t, v| t.batch_norm(bn_vars(v[0], None, v[1], v[2], false)).unwrap());
}

#[test]
fn grad_batch_norm_relu() {
    let [x, g, b] = bn_inputs(7, 5);
    gradcheck("batch_norm + relu", &[x, g, b], 1e-3, |t, v| {
        t.batch_norm(bn_vars(v[0], None, v[1], v[2], true)).unwrap()
    });
}

#[test]
fn grad_group_mean() {
    let x = rand_tensor(&mut rng(6), &[12, 5]);
    gradcheck("group_mean n=3", &[x], 1e-2, |t, v| t.group_mean(v[0], 3).unwrap());
}

/// z (12, 5), 4 images of 3 patches, columns scaled so some variance hinges are active (std < 1)
/// and some are not, every std at least 0.1 away from the kink at 1.
fn vicreg_input() -> Tensor {
    let scales = [0.5f32, 1.0, 3.0, 0.8, 4.0];
    for seed in 0..1000 {
        let mut r = rng(200 + seed);
        let mut z = host(&rand_tensor(&mut r, &[12, 5]));
        z.iter_mut().enumerate().for_each(|(i, v)| *v *= scales[i % 5]);
        let z = Tensor::from_vec(&[12, 5], z);
        let zv = host(&z);
        let stds: Vec<f64> = (0..5)
            .map(|d| {
                let col: Vec<f64> = (0..12).map(|i| zv[i * 5 + d] as f64).collect();
                let m = col.iter().sum::<f64>() / 12.0;
                (col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 11.0 + 1e-4).sqrt()
            })
            .collect();
        let active = stds.iter().filter(|&&s| s < 1.0).count();
        if stds.iter().all(|s| (s - 1.0).abs() > 0.1) && active > 0 && active < 5 {
            return z;
        }
    }
    panic!("no bag-VICReg input away from the hinge");
}

#[test]
fn grad_bag_vicreg() {
    let z = vicreg_input();
    let w = VicregWeights { invariance: 25.0, variance: 25.0, covariance: 1.0, eps: 1e-4 };
    gradcheck("bag_vicreg", &[z], 1e-2, |t, v| t.bag_vicreg(v[0], None, 3, w).unwrap().0);
    // Unequal weights: each term's gradient must carry its own weight.
    let z = vicreg_input();
    let w = VicregWeights { invariance: 2.0, variance: 7.0, covariance: 0.5, eps: 1e-4 };
    gradcheck("bag_vicreg weights 2/7/0.5", &[z], 1e-2, |t, v| t.bag_vicreg(v[0], None, 3, w).unwrap().0);
}

#[test]
fn grad_dot_const() {
    let x = rand_tensor(&mut rng(7), &[7, 5]);
    let w = rand_tensor(&mut rng(8), &[7, 5]);
    gradcheck("dot_const", &[x], 1e-2, move |t, v| t.dot_const(v[0], w.try_clone().unwrap()).unwrap());
}

/// A training-mode BatchNorm's inputs with PyTorch's eps.
fn bn_vars(x: Var, bias: Option<Var>, gamma: Var, beta: Var, relu: bool) -> BnVars {
    BnVars { x, bias, gamma, beta, eps: 1e-5, relu }
}

/// x (rows, 4), and a Linear layer's W (5, 4) and b (5).
fn linear_inputs(r: &mut rand_chacha::ChaCha8Rng, rows: usize) -> [Tensor; 3] {
    [rand_tensor(r, &[rows, 4]), rand_tensor(r, &[5, 4]), rand_tensor(r, &[5])]
}

/// The model's block: a Linear layer without its bias, the bias folded into the BatchNorm.
/// The bias's true gradient is 0 before a training-mode BatchNorm; at eps = 1e-3 its difference
/// quotients are f32 noise of ~2e-4 (45 outputs of ~1: 45^0.5 * 6e-8 / 2e-3), hence atol 5e-4,
/// while a wrong bias gradient (dbeta's sum of dy, say) is O(1).
#[test]
fn grad_linear_batch_norm_folded_bias() {
    let mut r = rng(11);
    let [x, w, b] = linear_inputs(&mut r, 9);
    let gamma = away_from_zero(&mut r, &[5]);
    let beta = rand_tensor(&mut r, &[5]);
    gradcheck_atol("linear + batch_norm(bias)", &[x, w, b, gamma, beta], 1e-3, 5e-4, |t, v| {
        let y = t.linear(v[0], v[1], None).unwrap();
        t.batch_norm(bn_vars(y, Some(v[2]), v[3], v[4], false)).unwrap()
    });
}

/// The projector's last layer as the model records it: a Linear layer without its bias, the bias
/// given to bag-VICReg, which never adds it (the loss is invariant to a per-column shift) but
/// gives it the column sums of dL/dz. Its true gradient is 0; the loss (~17, stored in f32) makes
/// difference quotients of ~5e-5 noise at eps = 1e-2, hence atol 2e-4.
#[test]
fn grad_linear_bag_vicreg_bias() {
    let mut r = rng(12);
    let [x, w, b] = linear_inputs(&mut r, 12);
    let vw = VicregWeights::default();
    gradcheck_atol("linear + bag_vicreg(bias)", &[x, w, b], 1e-2, 2e-4, |t, v| {
        let z = t.linear(v[0], v[1], None).unwrap();
        t.bag_vicreg(z, Some(v[2]), 3, vw).unwrap().0
    });
}

/// The loss with the bias handed to bag-VICReg is the loss of `z + bias` (to f32 rounding), and
/// so are dL/dz; the bias's gradient is the column sums of dL/dz.
#[test]
fn bag_vicreg_bias_is_the_loss_of_the_shifted_z() {
    let mut r = rng(13);
    let z0 = rand_tensor(&mut r, &[24, 6]);
    let b = Tensor::from_vec(&[6], host(&rand_tensor(&mut r, &[6])).iter().map(|v| 5.0 * v).collect());
    let w = VicregWeights::default();
    let mut t1 = Tape::new();
    let (zv, bv) = (t1.input(z0.try_clone().unwrap(), true), t1.input(b.try_clone().unwrap(), true));
    let (l1, p1) = t1.bag_vicreg(zv, Some(bv), 4, w).unwrap();
    let mut g1 = t1.backward(l1).unwrap();
    let mut t2 = Tape::new();
    let zs = t2.input(ops::bias_add(&z0, &b).unwrap(), true);
    let (l2, p2) = t2.bag_vicreg(zs, None, 4, w).unwrap();
    let mut g2 = t2.backward(l2).unwrap();
    assert!((p1.loss - p2.loss).abs() <= 1e-5 * p2.loss.abs(), "loss {} vs {}", p1.loss, p2.loss);
    let (dz1, dz2) = (host(&g1.take(zv).unwrap()), host(&g2.take(zs).unwrap()));
    let scale = dz2.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = dz1.iter().zip(&dz2).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4 * scale, "dL/dz differs by {diff} (scale {scale})");
    let db = host(&g1.take(bv).unwrap());
    let want = host(&ops::sum_rows(&Tensor::from_vec(&[24, 6], dz1)).unwrap());
    assert_eq!(db, want, "the bias's gradient is sum_rows(dL/dz)");
}

/// A small chain of every op, so gradients flow through op-to-op boundaries.
#[test]
fn grad_chain() {
    let mut r = rng(9);
    let x = rand_tensor(&mut r, &[12, 4]);
    let w1 = rand_tensor(&mut r, &[6, 4]);
    let b1 = rand_tensor(&mut r, &[6]);
    let w2 = rand_tensor(&mut r, &[6, 5]);
    let b2 = rand_tensor(&mut r, &[5]);
    let w = VicregWeights::default();
    gradcheck("linear-bn-matmul-bias-relu-group_mean-vicreg", &[x, w1, b1, w2, b2], 1e-2, |t, v| {
        let g1 = t.linear(v[0], v[1], Some(v[2])).unwrap();
        // b1 doubles as gamma and beta: three uses of one var, so accumulation is checked too.
        let h = t.batch_norm(bn_vars(g1, None, v[2], v[2], false)).unwrap();
        let m = t.matmul(h, v[3], false, false).unwrap();
        let z = t.bias_add(m, v[4]).unwrap();
        let p = t.group_mean(z, 2).unwrap();
        t.bag_vicreg(p, None, 3, w).unwrap().0
    });
}

#[test]
fn no_gradient_without_requires_grad() {
    let mut r = rng(10);
    let (x, w) = (rand_tensor(&mut r, &[7, 5]), rand_tensor(&mut r, &[3, 5]));
    let mut tape = Tape::new();
    let xv = tape.input(x, false);
    let wv = tape.leaf(&w, true);
    let frozen = tape.leaf(&w, false);
    let y = tape.linear(xv, wv, None).unwrap();
    let y2 = tape.linear(xv, frozen, None).unwrap();
    let s = tape.dot_const(y, Tensor::full(&[7, 3], 1.0, &bagssl_autograd::Device::Cpu).unwrap()).unwrap();
    let _ = y2;
    let grads = tape.backward(s).unwrap();
    assert!(grads.get(xv).is_none(), "an input without requires_grad got a gradient");
    assert!(grads.get(frozen).is_none(), "a frozen leaf got a gradient");
    assert_eq!(grads.get(wv).unwrap().shape(), &[3, 5]);
}

/// The root's seed of 1 reaches any op (not only the scalar ones); a root that is not a scalar
/// is an error.
#[test]
fn backward_roots() {
    let x = Tensor::from_vec(&[1, 3], vec![1.0, -2.0, 0.5]);
    let w = Tensor::from_vec(&[1, 3], vec![0.25, 4.0, -1.0]);
    let mut tape = Tape::new();
    let (xv, wv) = (tape.leaf(&x, true), tape.leaf(&w, true));
    let y = tape.linear(xv, wv, None).unwrap(); // (1, 1)
    let grads = tape.backward(y).unwrap();
    assert_eq!(host(grads.get(wv).unwrap()), host(&x));
    assert_eq!(host(grads.get(xv).unwrap()), host(&w));

    let mut tape = Tape::new();
    let xv = tape.leaf(&x, true);
    assert!(matches!(tape.backward(xv), Err(bagssl_autograd::Error::Shape { .. })));

    let one = Tensor::from_vec(&[1], vec![3.0]);
    let mut tape = Tape::new();
    let v = tape.leaf(&one, true);
    let grads = tape.backward(v).unwrap();
    assert_eq!(host(grads.get(v).unwrap()), vec![1.0]);
}

fn window(n: usize, h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> bagssl_autograd::Window2d {
    bagssl_autograd::Window2d { n, h, w, c, kh: k, kw: k, stride, pad }
}

/// Convolutions at awkward sizes: odd H and W, strides 1 and 2, padding 0, 1 and 3 (a 3×3
/// window at padding 3 sees only padding at the corners), 1×1 pointwise and strided, 7×7.
#[test]
fn grad_conv2d() {
    let mut r = rng(21);
    let cases = [
        window(2, 5, 7, 3, 3, 1, 1),
        window(1, 7, 5, 2, 3, 2, 0),
        window(2, 5, 3, 2, 3, 2, 3),
        window(1, 9, 7, 2, 7, 2, 3),
        window(2, 3, 5, 4, 1, 1, 0),
        window(2, 5, 5, 3, 1, 2, 0),
    ];
    for g in cases {
        let out = 3;
        let x = rand_tensor(&mut r, &[g.in_rows(), g.c]);
        let w = rand_tensor(&mut r, &[out, g.c, g.kh, g.kw]);
        gradcheck(&format!("conv2d {g:?}"), &[x, w], 1e-2, |t, v| t.conv2d(v[0], v[1], g).unwrap());
    }
}

/// Max-pooling 3×3 stride 2 padding 1 (the ImageNet stem's) on odd sizes, and 2×2 stride 2;
/// distinct inputs spaced further apart than the perturbation, so no window's max changes.
#[test]
fn grad_max_pool() {
    let mut r = rng(22);
    for g in [window(2, 7, 5, 3, 3, 2, 1), window(1, 6, 4, 2, 2, 2, 0), window(1, 5, 5, 2, 3, 1, 1)] {
        let len = g.in_rows() * g.c;
        let mut v: Vec<f32> = (0..len).map(|i| i as f32 * 0.1).collect();
        for i in (1..len).rev() {
            v.swap(i, r.random_range(0..=i));
        }
        let x = Tensor::from_vec(&[g.in_rows(), g.c], v);
        gradcheck(&format!("max_pool {g:?}"), &[x], 1e-2, |t, v| t.max_pool(v[0], g).unwrap());
    }
}

/// A residual connection: both summands get the gradient, also when one var is used twice.
#[test]
fn grad_residual_add() {
    let mut r = rng(23);
    let (a, b) = (rand_tensor(&mut r, &[7, 5]), rand_tensor(&mut r, &[7, 5]));
    gradcheck("add", &[a, b], 1e-2, |t, v| t.add(v[0], v[1]).unwrap());
    let a = away_from_zero(&mut r, &[5, 3]);
    gradcheck("relu(a) + a", &[a], 1e-2, |t, v| {
        let y = t.relu(v[0]).unwrap();
        t.add(y, v[0]).unwrap()
    });
}
