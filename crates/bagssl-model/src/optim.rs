//! Optimizers over the model's parameters (in [`crate::BagSslModel::params`] order): AdamW (PyTorch semantics, one fused op per
//! tensor) and LARS (as in the VICReg code: momentum 0.9, trust coefficient 0.001, built from the
//! `dot` / `axpy_` / `scale_` primitives so it runs on either device).
//!
//! Both exclude biases and BatchNorm parameters from weight decay, and LARS also from the trust
//! ratio ([`ParamKind::is_weight`]).

use bagssl_autograd::ops::AdamWSlot;
use bagssl_autograd::{ops, AdamW, Tensor};

use crate::config::OptimizerKind;
use crate::layers::{Param, ParamKind};
use crate::{ModelError, Result};

pub const ADAM_BETA1: f32 = 0.9;
pub const ADAM_BETA2: f32 = 0.999;
pub const ADAM_EPS: f32 = 1e-8;
pub const LARS_MOMENTUM: f32 = 0.9;
pub const LARS_ETA: f64 = 0.001;

/// Optimizer kind, weight decay and per-parameter state buffers (in parameter order).
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f32,
    /// `state[i][s]` is slot `s` (see [`Optimizer::slot_names`]) of parameter `i`.
    state: Vec<Vec<Tensor>>,
}

impl Optimizer {
    /// Zero state for `params` (on their devices).
    pub fn new(kind: OptimizerKind, weight_decay: f32, params: &[&Param]) -> Result<Self> {
        let slots = Self::slot_names(kind).len();
        let state = params
            .iter()
            .map(|p| (0..slots).map(|_| Tensor::zeros(p.value.shape(), &p.value.device())).collect())
            .collect::<bagssl_autograd::Result<Vec<Vec<Tensor>>>>()?;
        Ok(Optimizer { kind, weight_decay, state })
    }

    /// Names of the per-parameter buffers; checkpoints store them as `optim.{param}.{slot}`.
    pub fn slot_names(kind: OptimizerKind) -> &'static [&'static str] {
        match kind {
            OptimizerKind::AdamW => &["m", "v"],
            OptimizerKind::Lars => &["momentum"],
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }
    pub fn weight_decay(&self) -> f32 {
        self.weight_decay
    }
    pub fn state(&self) -> &[Vec<Tensor>] {
        &self.state
    }
    pub fn state_mut(&mut self) -> &mut [Vec<Tensor>] {
        &mut self.state
    }

    /// Every state buffer with its checkpoint name.
    pub fn named_state<'s>(&'s self, params: &[&Param]) -> Vec<(String, &'s Tensor)> {
        let slots = Self::slot_names(self.kind);
        params
            .iter()
            .zip(&self.state)
            .flat_map(|(p, bufs)| slots.iter().zip(bufs).map(move |(s, t)| (format!("optim.{}.{s}", p.name), t)))
            .collect()
    }

    fn decay_for(&self, kind: ParamKind) -> f32 {
        if kind.is_weight() {
            self.weight_decay
        } else {
            0.0
        }
    }

    /// One update of every parameter with its gradient. `step` is the 1-based update count
    /// (AdamW bias correction).
    pub fn update(&mut self, params: &mut [&mut Param], grads: &[Tensor], lr: f32, step: u64) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.state.len() {
            return Err(ModelError::Config(format!(
                "optimizer: {} parameters, {} gradients, {} state entries",
                params.len(),
                grads.len(),
                self.state.len()
            )));
        }
        match self.kind {
            OptimizerKind::AdamW => {
                // Every tensor in one call: one launch on a GPU (see ops::adamw_multi_).
                let decays: Vec<f32> = params.iter().map(|p| self.decay_for(p.kind)).collect();
                let mut slots = Vec::with_capacity(params.len());
                for (((p, g), bufs), weight_decay) in params.iter_mut().zip(grads).zip(&mut self.state).zip(decays) {
                    let [m, v] = bufs.as_mut_slice() else {
                        return Err(ModelError::Internal("AdamW state is not (m, v)".into()));
                    };
                    slots.push(AdamWSlot { param: &mut p.value, grad: g, m, v, weight_decay });
                }
                let h = AdamW { lr, beta1: ADAM_BETA1, beta2: ADAM_BETA2, eps: ADAM_EPS, weight_decay: 0.0, step };
                ops::adamw_multi_(&mut slots, h)?;
            }
            OptimizerKind::Lars => {
                for i in 0..params.len() {
                    let wd = self.decay_for(params[i].kind);
                    let (p, g, bufs) = (&mut *params[i], &grads[i], &mut self.state[i]);
                    lars_update(&mut p.value, g, &mut bufs[0], lr, wd, p.kind.is_weight())?;
                }
            }
        }
        Ok(())
    }
}

/// LARS on one tensor: `d = g + wd p`; for weight matrices `d *= eta |p| / |d|` (when both norms
/// are positive); `mu = 0.9 mu + d`; `p -= lr mu`.
///
/// `|d|^2` is expanded as `|g|^2 + 2 wd g.p + wd^2 |p|^2` (three reductions, in f64) so that `d`
/// never has to be materialised; the trust ratio is a scalar, so the mild cancellation risk of the
/// expansion only perturbs a step size.
fn lars_update(p: &mut Tensor, g: &Tensor, mu: &mut Tensor, lr: f32, wd: f32, adapt: bool) -> Result<()> {
    let mut q = 1.0f64;
    if adapt {
        let (pp, gp, gg) = (ops::dot(p, p)?, ops::dot(g, p)?, ops::dot(g, g)?);
        let wd = wd as f64;
        let pn = pp.sqrt();
        let un = (gg + 2.0 * wd * gp + wd * wd * pp).max(0.0).sqrt();
        if pn > 0.0 && un > 0.0 {
            q = LARS_ETA * pn / un;
        }
    }
    ops::scale_(mu, LARS_MOMENTUM)?;
    ops::axpy_(mu, q as f32, g)?;
    if wd != 0.0 {
        ops::axpy_(mu, (q * wd as f64) as f32, p)?;
    }
    ops::axpy_(p, -lr, mu)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, kind: ParamKind, v: Vec<f32>) -> Param {
        let n = v.len();
        Param { name: name.into(), kind, value: Tensor::from_vec(&[n], v) }
    }

    /// torch.optim.AdamW, one step from zero state, written out by hand.
    fn adamw_by_hand(p: f32, g: f32, lr: f32, wd: f32) -> f32 {
        let p = p * (1.0 - lr * wd);
        let m = (1.0 - ADAM_BETA1) * g;
        let v = (1.0 - ADAM_BETA2) * g * g;
        let mhat = m / (1.0 - ADAM_BETA1);
        let vhat = v / (1.0 - ADAM_BETA2);
        p - lr * mhat / (vhat.sqrt() + ADAM_EPS)
    }

    #[test]
    fn adamw_one_step_matches_hand_computation_and_skips_decay_on_bias() {
        let w0 = vec![0.5, -1.0, 2.0];
        let b0 = vec![0.5, -1.0, 2.0];
        let g = vec![0.1, -0.3, 4.0];
        let mut params = [param("w", ParamKind::Weight, w0.clone()), param("b", ParamKind::Bias, b0.clone())];
        let mut opt = Optimizer::new(OptimizerKind::AdamW, 0.1, &params.iter().collect::<Vec<_>>()).unwrap();
        let grads = vec![Tensor::from_vec(&[3], g.clone()), Tensor::from_vec(&[3], g.clone())];
        opt.update(&mut params.iter_mut().collect::<Vec<_>>(), &grads, 0.01, 1).unwrap();
        let w = params[0].value.to_vec().unwrap();
        let b = params[1].value.to_vec().unwrap();
        for i in 0..3 {
            let ew = adamw_by_hand(w0[i], g[i], 0.01, 0.1);
            let eb = adamw_by_hand(b0[i], g[i], 0.01, 0.0);
            assert!((w[i] - ew).abs() < 1e-6, "weight {i}: {} vs {ew}", w[i]);
            assert!((b[i] - eb).abs() < 1e-6, "bias {i}: {} vs {eb}", b[i]);
        }
        // First Adam step moves each coordinate by ~lr (sign of g); decay only shrinks the weight.
        assert!((b[0] - (0.5 - 0.01)).abs() < 1e-5);
        assert!((w[0] - (0.5 * (1.0 - 0.001) - 0.01)).abs() < 1e-5);
        let m = opt.state()[0][0].to_vec().unwrap();
        assert!((m[2] - 0.4).abs() < 1e-6);
        let names: Vec<_> = opt.named_state(&params.iter().collect::<Vec<_>>()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["optim.w.m", "optim.w.v", "optim.b.m", "optim.b.v"]);
    }

    #[test]
    fn lars_trust_ratio_on_weights_only() {
        let p0 = vec![3.0, 4.0]; // |p| = 5
        let g = vec![0.6, 0.8]; // |g| = 1
        let mut params = [
            param("w", ParamKind::Weight, p0.clone()),
            param("g", ParamKind::BnGamma, p0.clone()),
            param("b", ParamKind::Bias, p0.clone()),
        ];
        let wd = 0.5f32;
        let mut opt = Optimizer::new(OptimizerKind::Lars, wd, &params.iter().collect::<Vec<_>>()).unwrap();
        let grads: Vec<_> = (0..3).map(|_| Tensor::from_vec(&[2], g.clone())).collect();
        let lr = 0.1f32;
        opt.update(&mut params.iter_mut().collect::<Vec<_>>(), &grads, lr, 1).unwrap();
        // Weight: d = g + wd p = (2.1, 2.8), |d| = 3.5; q = 0.001 * 5 / 3.5; mu = q d; p -= lr mu.
        let q = 0.001 * 5.0 / 3.5;
        let w = params[0].value.to_vec().unwrap();
        assert!((w[0] - (3.0 - lr * q * 2.1)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (4.0 - lr * q * 2.8)).abs() < 1e-6, "{w:?}");
        // Gamma and bias: plain momentum SGD, no decay: p -= lr g.
        for i in [1, 2] {
            let v = params[i].value.to_vec().unwrap();
            assert!((v[0] - (3.0 - lr * 0.6)).abs() < 1e-6, "{v:?}");
            assert!((v[1] - (4.0 - lr * 0.8)).abs() < 1e-6, "{v:?}");
        }
        // Second step: momentum 0.9 accumulates.
        opt.update(&mut params.iter_mut().collect::<Vec<_>>(), &grads, lr, 2).unwrap();
        let b = params[2].value.to_vec().unwrap();
        assert!((b[0] - (3.0 - lr * 0.6 - lr * (0.9 * 0.6 + 0.6))).abs() < 1e-5, "{b:?}");
    }
}
