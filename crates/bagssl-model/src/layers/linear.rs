//! Linear (`y = x W^T + b`, W (out, in) as in PyTorch) and the MLP's Linear-BatchNorm block.

use bagssl_autograd::{ops, Var};

use super::{child, BatchNorm, BnNames, Forward, Init, Layer, Param, ParamKind, Visitor, VisitorMut};
use crate::Result;

/// A fully connected layer: `prefix.weight` (out, in) and `prefix.bias` (out).
#[derive(Debug)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    pub fn new(prefix: &str, fan_in: usize, out: usize, bias: bool, init: &mut Init<'_>) -> Result<Self> {
        let weight = init.param(child(prefix, "weight"), ParamKind::Weight, &[out, fan_in], fan_in)?;
        let bias = match bias {
            true => Some(init.param(child(prefix, "bias"), ParamKind::Bias, &[out], fan_in)?),
            false => None,
        };
        Ok(Linear { weight, bias })
    }

    /// `x W^T` and the bias as a separate var, for a consumer that takes the bias itself (a
    /// BatchNorm folds it into its passes; a shift-invariant loss never adds it).
    pub fn forward_split<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<(Var, Option<Var>)> {
        let w = f.param(&self.weight);
        let b = self.bias.as_ref().map(|b| f.param(b));
        Ok((f.tape.linear(x, w, None)?, b))
    }
}

impl Layer for Linear {
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        let w = f.param(&self.weight);
        let b = self.bias.as_ref().map(|b| f.param(b));
        Ok(f.tape.linear(x, w, b)?)
    }
    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        v.params.push(&self.weight);
        v.params.extend(&self.bias);
    }
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        v.params.push(&mut self.weight);
        v.params.extend(&mut self.bias);
    }
}

/// Linear -> BatchNorm -> ReLU, the MLP's block: `prefix.weight`, `prefix.bias`, `prefix.bn.*`.
///
/// The Linear bias never gets a pass of its own: in training the BatchNorm adds it as it reads
/// x (and sums its gradient); in eval mode it folds into the running mean and the BatchNorm runs
/// in the GEMM's store where the backend can (`ops::linear_bn_eval`).
#[derive(Debug)]
pub struct LinearBn {
    pub linear: Linear,
    pub bn: BatchNorm,
}

impl LinearBn {
    pub fn new(prefix: &str, fan_in: usize, width: usize, init: &mut Init<'_>) -> Result<Self> {
        let linear = Linear::new(prefix, fan_in, width, true, init)?;
        let bn = BatchNorm::new(&child(prefix, "bn"), width, BnNames::GammaBeta, true, init)?;
        Ok(LinearBn { linear, bn })
    }
}

impl Layer for LinearBn {
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        if f.train {
            let (y, bias) = self.linear.forward_split(f, x)?;
            return self.bn.forward_biased(f, y, bias);
        }
        let (w, b, eval) =
            (&self.linear.weight.value, self.linear.bias.as_ref().map(|b| &b.value), self.bn.eval_args());
        Ok(f.tape.eval_op("linear_bn_eval", &[x], |v| ops::linear_bn_eval(v[0], w, b, eval))?)
    }
    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        self.linear.visit(v);
        self.bn.visit(v);
    }
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        self.linear.visit_mut(v);
        self.bn.visit_mut(v);
    }
}
