//! A diverged step must show in the loss: NaN passes through ReLU and BatchNorm (as in PyTorch)
//! instead of being clamped to zero, so the trainer's non-finite-loss check can fire.

mod common;

use bagssl_autograd::{ops, Tensor};
use common::bn_args;

#[test]
fn relu_and_batch_norm_propagate_nan() {
    let x = Tensor::from_vec(&[2, 3], vec![f32::NAN, -1.0, 2.0, 0.5, -3.0, 1.0]);
    let y = ops::relu_fwd(&x).unwrap().to_vec().unwrap();
    assert!(y[0].is_nan(), "{y:?}");
    assert_eq!(&y[1..], &[0.0, 2.0, 0.5, 0.0, 1.0]);

    let gamma = Tensor::from_vec(&[3], vec![1.0; 3]);
    let beta = Tensor::from_vec(&[3], vec![0.0; 3]);
    let bn = ops::bn_train_fwd(bn_args(&x, None, &gamma, &beta, true)).unwrap();
    let y = bn.y.to_vec().unwrap();
    assert!(y[0].is_nan() && y[3].is_nan(), "the NaN column stays NaN: {y:?}");
    assert!(y[1].is_finite() && y[2].is_finite());
}
