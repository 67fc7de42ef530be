//! The tape's contracts around eval-mode values and losses: an eval op takes no input that needs
//! a gradient, a bias left out of z needs a shift-invariant loss, and a loss names every scalar.

use bagssl_autograd::backend::{LossGrad, PendingScalars};
use bagssl_autograd::{BagVicreg, ScalarLoss, Tape, Tensor, VicregWeights};

fn t(shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, (0..shape.iter().product()).map(|i| (i as f32 * 0.7).sin()).collect())
}

#[test]
fn eval_ops_take_no_input_that_needs_a_gradient() {
    let x = t(&[4, 3]);
    let mut tape = Tape::new();
    let frozen = tape.leaf(&x, false);
    let y = tape
        .eval_op("double", &[frozen], |v| {
            Ok(Tensor::from_vec(&[4, 3], v[0].to_vec()?.iter().map(|a| 2.0 * a).collect()))
        })
        .unwrap();
    assert_eq!(tape.value(y).to_vec().unwrap()[1], 2.0 * x.to_vec().unwrap()[1]);
    let trained = tape.leaf(&x, true);
    let e = tape.eval_op("double", &[trained], |v| v[0].try_clone()).unwrap_err().to_string();
    assert!(e.contains("double") && e.contains("eval-mode"), "{e}");
}

/// A loss that is not invariant to column shifts: the mean of z.
struct Mean;

impl ScalarLoss for Mean {
    fn terms(&self) -> &'static [&'static str] {
        &["loss", "unused"]
    }
    fn forward_backward(&self, z: &Tensor) -> bagssl_autograd::Result<LossGrad> {
        let v = z.to_vec()?;
        let n = v.len() as f32;
        let loss = v.iter().sum::<f32>() / n;
        Ok(LossGrad {
            // One scalar for two terms: PendingLoss::wait must refuse it.
            scalars: PendingScalars::ready(vec![loss as f64]),
            loss: Tensor::from_vec(&[1], vec![loss]),
            grad: Tensor::from_vec(z.shape(), vec![1.0 / n; v.len()]),
        })
    }
}

#[test]
fn a_bias_left_out_of_z_needs_a_shift_invariant_loss() {
    let (z, b) = (t(&[6, 2]), t(&[2]));
    let mut tape = Tape::new();
    let (zv, bv) = (tape.leaf(&z, true), tape.leaf(&b, true));
    let e = tape.loss(zv, Some(bv), &Mean).unwrap_err().to_string();
    assert!(e.contains("column shifts"), "{e}");
    let vicreg = BagVicreg { per_image: 3, weights: VicregWeights::default() };
    let (loss, pending) = tape.loss(zv, Some(bv), &vicreg).unwrap();
    let terms = pending.wait().unwrap();
    assert_eq!(terms.iter().map(|(k, _)| k).collect::<Vec<_>>(), BagVicreg::TERMS);
    assert_eq!(terms.get("loss"), Some(terms.loss()));
    assert!(tape.backward(loss).unwrap().get(bv).is_some(), "the left-out bias gets its gradient");
}

#[test]
fn a_loss_names_every_scalar_it_returns() {
    let z = t(&[6, 2]);
    let mut tape = Tape::new();
    let zv = tape.leaf(&z, true);
    let (_, pending) = tape.loss(zv, None, &Mean).unwrap();
    let e = pending.wait().unwrap_err().to_string();
    assert!(e.contains("1 scalars"), "{e}");
}
