//! Losses computed with their gradient in one op: a [`ScalarLoss`] maps the last activation z to
//! N scalars (first the weighted loss, then its terms) and dL/dz, all in one pass on the device,
//! so the tape's backward only scales the stored gradient. The scalars may still be on their way
//! from the GPU ([`PendingLoss`]): a training step queues its backward pass before it waits.
//!
//! The names of the scalars ([`ScalarLoss::terms`]) are the step statistics and the metrics keys:
//! a second loss is one implementation of this trait plus its kernel.

use crate::backend::{PendingScalars, VicregWeights};
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A scalar loss whose forward also computes dL/dz (for an upstream gradient of 1).
pub trait ScalarLoss {
    /// The names of the scalars it reports, the weighted loss first.
    fn terms(&self) -> &'static [&'static str];
    /// True when adding any per-column constant to z leaves the loss unchanged: the tape may then
    /// be handed the bias of the Linear layer that made z without adding it.
    fn shift_invariant(&self) -> bool {
        false
    }
    /// The scalars (in [`ScalarLoss::terms`] order, possibly pending), the weighted loss as a
    /// 1-element tensor on z's device, and dL/dz.
    fn forward_backward(&self, z: &Tensor) -> Result<crate::backend::LossGrad>;
}

/// The scalars of one loss evaluation, possibly still on their way from the GPU.
#[derive(Debug)]
pub struct PendingLoss {
    terms: &'static [&'static str],
    scalars: PendingScalars,
}

impl PendingLoss {
    pub(crate) fn new(terms: &'static [&'static str], scalars: PendingScalars) -> Self {
        PendingLoss { terms, scalars }
    }

    /// Waits (on a GPU: for the scalars' copy only) and names them.
    pub fn wait(&self) -> Result<LossValues> {
        let values = self.scalars.wait()?;
        if values.len() != self.terms.len() {
            let detail = format!("{} scalars for the terms {:?}", values.len(), self.terms);
            return Err(Error::Shape { op: "loss", detail });
        }
        Ok(LossValues { terms: self.terms, values })
    }
}

/// The named scalars of a loss: the weighted loss first, then its terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LossValues {
    terms: &'static [&'static str],
    values: Vec<f64>,
}

impl LossValues {
    /// The weighted loss (the first scalar).
    pub fn loss(&self) -> f64 {
        self.values[0]
    }
    /// The scalar called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.terms.iter().position(|t| *t == name).map(|i| self.values[i])
    }
    /// `(name, value)` in the loss's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.terms.iter().copied().zip(self.values.iter().copied())
    }
}

/// bag-VICReg (docs/DEFINITIONS.md §7) over groups of `per_image` consecutive rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BagVicreg {
    pub per_image: usize,
    pub weights: VicregWeights,
}

impl BagVicreg {
    pub const TERMS: &'static [&'static str] = &["loss", "invariance", "variance", "covariance"];
}

impl ScalarLoss for BagVicreg {
    fn terms(&self) -> &'static [&'static str] {
        Self::TERMS
    }

    /// The invariance term compares each row with its group's mean and the variance and
    /// covariance terms centre the columns, so a per-column shift cancels exactly.
    fn shift_invariant(&self) -> bool {
        true
    }

    fn forward_backward(&self, z: &Tensor) -> Result<crate::backend::LossGrad> {
        ops::vicreg_fwd_bwd_async(z, self.per_image, self.weights)
    }
}
