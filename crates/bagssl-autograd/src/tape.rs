//! The tape: reverse-mode automatic differentiation over the primitives of [`crate::ops`].
//! PLACEHOLDER API (signatures are the contract; the autograd helper writes the bodies).

#![allow(unused_variables, dead_code)]

use crate::ops::{VicregParts, VicregWeights};
use crate::tensor::Tensor;
use crate::Result;

/// A value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// Records a forward computation. Parameters are borrowed (`'a`), not copied.
pub struct Tape<'a> {
    _p: std::marker::PhantomData<&'a Tensor>,
}

/// Gradients of a backward pass, looked up by `Var`.
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }
}

impl<'a> Tape<'a> {
    pub fn new() -> Self {
        unimplemented!()
    }
    /// A borrowed tensor (a parameter); its gradient is computed when `requires_grad`.
    pub fn leaf(&mut self, t: &'a Tensor, requires_grad: bool) -> Var {
        unimplemented!()
    }
    /// An owned input (the patch matrix); `requires_grad` for gradient checks.
    pub fn input(&mut self, t: Tensor, requires_grad: bool) -> Var {
        unimplemented!()
    }
    pub fn value(&self, v: Var) -> &Tensor {
        unimplemented!()
    }
    /// `x W^T + b`, W is (out, in) as in PyTorch.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        unimplemented!()
    }
    pub fn matmul(&mut self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Result<Var> {
        unimplemented!()
    }
    pub fn bias_add(&mut self, x: Var, b: Var) -> Result<Var> {
        unimplemented!()
    }
    /// Training-mode BatchNorm (optionally fused with ReLU). Batch statistics: [`Tape::bn_stats`].
    pub fn batch_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f32, relu: bool) -> Result<Var> {
        unimplemented!()
    }
    /// (batch mean, unbiased batch variance) of the BatchNorm that produced `v`.
    pub fn bn_stats(&self, v: Var) -> Option<(&Tensor, &Tensor)> {
        unimplemented!()
    }
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        unimplemented!()
    }
    pub fn group_mean(&mut self, x: Var, n: usize) -> Result<Var> {
        unimplemented!()
    }
    /// bag-VICReg as one op: a scalar whose backward is the hand-derived dL/dz.
    pub fn bag_vicreg(&mut self, z: Var, n_per_image: usize, w: VicregWeights) -> Result<(Var, VicregParts)> {
        unimplemented!()
    }
    /// `sum(x * w)` for a fixed `w`: a scalar, used by gradient checks.
    pub fn dot_const(&mut self, x: Var, w: Tensor) -> Result<Var> {
        unimplemented!()
    }
    /// Scalar value of a 1-element var, as f64.
    pub fn scalar(&self, v: Var) -> Result<f64> {
        unimplemented!()
    }
    /// Reverse pass from the scalar `loss` (seed 1). Consumes the tape.
    pub fn backward(self, loss: Var) -> Result<Gradients> {
        unimplemented!()
    }
}

impl Default for Tape<'_> {
    fn default() -> Self {
        Self::new()
    }
}
