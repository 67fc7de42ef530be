//! BatchNorm over the rows (a feature per column), PyTorch semantics: batch statistics in
//! training (biased variance to normalise, unbiased for the running variance), running
//! statistics in eval mode (docs/DEFINITIONS.md §5).

use bagssl_autograd::{ops, BnEval, BnVars, Tensor, Var};

use super::{child, Forward, Init, Layer, Param, ParamKind, Visitor, VisitorMut};
use crate::Result;

/// BatchNorm epsilon (PyTorch default).
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch default).
pub const BN_MOMENTUM: f32 = 0.1;

/// Running mean / variance of one BatchNorm (eval mode uses them). `prefix` is e.g. `encoder.0.bn`.
#[derive(Debug)]
pub struct RunningStats {
    pub prefix: String,
    pub mean: Tensor,
    pub var: Tensor,
}

impl RunningStats {
    pub fn mean_name(&self) -> String {
        child(&self.prefix, "running_mean")
    }
    pub fn var_name(&self) -> String {
        child(&self.prefix, "running_var")
    }
}

/// What the affine parameters are called under the layer's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnNames {
    /// `gamma`, `beta`: the MLP's names since its first checkpoint format (and its golden file).
    GammaBeta,
    /// `weight`, `bias`: PyTorch's `nn.BatchNorm*d` (torchvision models).
    WeightBias,
}

#[derive(Debug)]
pub struct BatchNorm {
    pub gamma: Param,
    pub beta: Param,
    pub running: RunningStats,
    pub eps: f32,
    /// A ReLU fused after the normalisation.
    pub relu: bool,
}

impl BatchNorm {
    pub fn new(prefix: &str, width: usize, names: BnNames, relu: bool, init: &mut Init<'_>) -> Result<Self> {
        let (g, b) = match names {
            BnNames::GammaBeta => ("gamma", "beta"),
            BnNames::WeightBias => ("weight", "bias"),
        };
        let gamma = init.param(child(prefix, g), ParamKind::BnGamma, &[width], width)?;
        let beta = init.param(child(prefix, b), ParamKind::BnBeta, &[width], width)?;
        // Running mean 0 and variance 1, as PyTorch initialises them.
        let running = RunningStats {
            prefix: prefix.to_string(),
            mean: Tensor::zeros(&[width], init.device())?,
            var: Tensor::full(&[width], 1.0, init.device())?,
        };
        Ok(BatchNorm { gamma, beta, running, eps: BN_EPS, relu })
    }

    /// The training-mode forward of `x + bias` with `bias` folded into the passes (see
    /// `Tape::batch_norm`); in eval mode `bias` must be `None`.
    pub fn forward_biased<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var, bias: Option<Var>) -> Result<Var> {
        if f.train {
            let (g, b) = (f.param(&self.gamma), f.param(&self.beta));
            let y = f.tape.batch_norm(BnVars { x, bias, gamma: g, beta: b, eps: self.eps, relu: self.relu })?;
            f.batch_norm_output(&self.running, y);
            return Ok(y);
        }
        if bias.is_some() {
            return Err(crate::ModelError::Internal("an eval-mode BatchNorm takes no folded bias".into()));
        }
        let eval = self.eval_args();
        Ok(f.tape.eval_op("bn_eval_fwd", &[x], |v| ops::bn_eval_fwd(v[0], eval))?)
    }

    /// The eval-mode BatchNorm: running statistics, affine parameters, eps and the ReLU flag.
    pub fn eval_args(&self) -> BnEval<'_> {
        BnEval {
            running_mean: &self.running.mean,
            running_var: &self.running.var,
            gamma: &self.gamma.value,
            beta: &self.beta.value,
            eps: self.eps,
            relu: self.relu,
        }
    }
}

impl Layer for BatchNorm {
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        self.forward_biased(f, x, None)
    }
    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        v.params.extend([&self.gamma, &self.beta]);
        v.running.push(&self.running);
    }
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        v.params.extend([&mut self.gamma, &mut self.beta]);
        v.running.push(&mut self.running);
    }
}
