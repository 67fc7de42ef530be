//! The BagSSL network: encoder `f` (`layers` x Linear-BN-ReLU) and projector `g`
//! (Linear-BN-ReLU-Linear), with PyTorch parameter names so weights can be exchanged with the
//! reference and compared against the golden vectors.
//!
//! Parameters live in one flat, ordered list (`Param`: name, kind, tensor) rather than in nested
//! layer structs: the optimizer, the checkpoint writer and the golden test all walk "every
//! parameter by name", and the forward addresses them by a fixed index layout.

use bagssl_autograd::{ops, Device, PendingParts, Tape, Tensor, Var, VicregParts, VicregWeights};
use bagssl_data::SeededRng;

use crate::config::ModelConfig;
use crate::{ModelError, Result};

/// BatchNorm epsilon (PyTorch default, DESIGN §3).
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch default, DESIGN §3).
pub const BN_MOMENTUM: f32 = 0.1;

/// What a parameter is; decides weight decay and LARS adaptation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A Linear weight matrix (out, in).
    Weight,
    /// A Linear bias.
    Bias,
    /// BatchNorm scale.
    BnGamma,
    /// BatchNorm shift.
    BnBeta,
}

impl ParamKind {
    /// Only weight matrices get weight decay and the LARS trust ratio: decaying biases or BN
    /// affine parameters only hurts (the usual VICReg/BYOL recipe excludes all 1-D parameters).
    pub fn is_weight(self) -> bool {
        matches!(self, ParamKind::Weight)
    }
}

/// One trainable tensor with its PyTorch-style name (`encoder.0.weight`, `projector.0.bn.gamma`, ..).
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub value: Tensor,
}

/// Running mean / variance of one BatchNorm (eval mode uses them). `prefix` is e.g. `encoder.0.bn`.
#[derive(Debug)]
pub struct RunningStats {
    pub prefix: String,
    pub mean: Tensor,
    pub var: Tensor,
}

impl RunningStats {
    pub fn mean_name(&self) -> String {
        format!("{}.running_mean", self.prefix)
    }
    pub fn var_name(&self) -> String {
        format!("{}.running_var", self.prefix)
    }
}

/// The vars of one training forward on a tape.
#[derive(Clone, Debug)]
pub struct TrainForward {
    /// The patch matrix (B*n, p*p*3).
    pub x: Var,
    /// Encoder output (B*n, hidden): the representation.
    pub h: Var,
    /// Projector output (B*n, proj) without the last Linear's bias `z_bias`: bag-VICReg is
    /// invariant to a per-column shift, so the loss never needs it added ([`TrainForward::loss`];
    /// [`TrainForward::z_values`] adds it).
    pub z: Var,
    /// The bias of the projector's last Linear layer (`projector.1.bias`).
    pub z_bias: Var,
    /// One leaf per parameter, in [`BagSslModel::params`] order.
    pub params: Vec<Var>,
    /// Output of each BatchNorm, in [`BagSslModel::running_stats`] order (for [`Tape::bn_stats`]).
    pub bn_outputs: Vec<Var>,
}

impl TrainForward {
    /// bag-VICReg of the projector output (with its bias, which the loss does not see, getting its
    /// gradient): see [`Tape::bag_vicreg_async`].
    pub fn loss_async(&self, tape: &mut Tape<'_>, per_image: usize, w: VicregWeights) -> Result<(Var, PendingParts)> {
        Ok(tape.bag_vicreg_async(self.z, Some(self.z_bias), per_image, w)?)
    }

    /// [`TrainForward::loss_async`], waiting for the loss terms.
    pub fn loss(&self, tape: &mut Tape<'_>, per_image: usize, w: VicregWeights) -> Result<(Var, VicregParts)> {
        Ok(tape.bag_vicreg(self.z, Some(self.z_bias), per_image, w)?)
    }

    /// The projector output with its bias, `z + z_bias` (B*n, proj), as a new tensor.
    pub fn z_values(&self, tape: &Tape<'_>) -> Result<Tensor> {
        Ok(ops::bias_add(tape.value(self.z), tape.value(self.z_bias))?)
    }

    /// Copies of (batch mean, unbiased batch variance) of every BatchNorm, in running-stats order.
    /// Copied because the tape (which borrows the model) is consumed by the backward pass before
    /// the running statistics may be updated; the vectors are only `hidden` long.
    pub fn batch_stats(&self, tape: &Tape<'_>) -> Result<Vec<(Tensor, Tensor)>> {
        self.bn_outputs
            .iter()
            .map(|&v| {
                let (mean, var) = tape.bn_stats(v).ok_or_else(|| {
                    ModelError::Internal("a BatchNorm output has no batch statistics on the tape".into())
                })?;
                Ok((mean.try_clone()?, var.try_clone()?))
            })
            .collect()
    }
}

/// Encoder + projector parameters and BatchNorm running statistics, on one device.
#[derive(Debug)]
pub struct BagSslModel {
    config: ModelConfig,
    device: Device,
    params: Vec<Param>,
    running: Vec<RunningStats>,
}

/// Name, kind and shape of every parameter, in the fixed order the forward relies on:
/// encoder block i at `4i..4i+4` (weight, bias, gamma, beta), projector.0 at `4L..4L+4`,
/// projector.1 weight and bias at `4L+4`, `4L+5`.
fn param_layout(c: &ModelConfig) -> Vec<(String, ParamKind, Vec<usize>)> {
    let mut out = Vec::with_capacity(4 * c.layers + 6);
    let block = |out: &mut Vec<_>, prefix: &str, fan_in: usize, width: usize| {
        out.push((format!("{prefix}.weight"), ParamKind::Weight, vec![width, fan_in]));
        out.push((format!("{prefix}.bias"), ParamKind::Bias, vec![width]));
        out.push((format!("{prefix}.bn.gamma"), ParamKind::BnGamma, vec![width]));
        out.push((format!("{prefix}.bn.beta"), ParamKind::BnBeta, vec![width]));
    };
    let mut fan_in = c.input_dim();
    for i in 0..c.layers {
        block(&mut out, &format!("encoder.{i}"), fan_in, c.hidden);
        fan_in = c.hidden;
    }
    block(&mut out, "projector.0", c.hidden, c.proj);
    out.push(("projector.1.weight".into(), ParamKind::Weight, vec![c.proj, c.proj]));
    out.push(("projector.1.bias".into(), ParamKind::Bias, vec![c.proj]));
    out
}

/// Prefix and width of every BatchNorm, in forward order.
fn bn_layout(c: &ModelConfig) -> Vec<(String, usize)> {
    let mut out: Vec<_> = (0..c.layers).map(|i| (format!("encoder.{i}.bn"), c.hidden)).collect();
    out.push(("projector.0.bn".into(), c.proj));
    out
}

/// Host values of a freshly initialised parameter, like PyTorch: `nn.Linear` draws weight and bias
/// from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)); BN gamma 1, beta 0.
fn init_values(kind: ParamKind, shape: &[usize], fan_in: usize, rng: &mut SeededRng) -> Vec<f32> {
    let n = shape.iter().product();
    match kind {
        ParamKind::Weight | ParamKind::Bias => {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| (2.0 * rng.uniform() - 1.0) * bound).collect()
        }
        ParamKind::BnGamma => vec![1.0; n],
        ParamKind::BnBeta => vec![0.0; n],
    }
}

impl BagSslModel {
    /// A freshly initialised model (PyTorch's default init, drawn from `SeededRng::new(seed)`).
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = SeededRng::new(seed);
        let mut params = Vec::new();
        let mut fan_in = 0;
        for (name, kind, shape) in param_layout(&config) {
            if kind == ParamKind::Weight {
                fan_in = shape[1]; // the bias that follows shares its weight's fan-in
            }
            let host = init_values(kind, &shape, fan_in, &mut rng);
            params.push(Param { name, kind, value: Tensor::from_vec(&shape, host).to_device(device)? });
        }
        let running = Self::fresh_running(&config, device)?;
        Ok(BagSslModel { config, device: device.clone(), params, running })
    }

    /// A model with every parameter zero (filled by a checkpoint loader or a test).
    pub fn zeros(config: ModelConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let params = param_layout(&config)
            .into_iter()
            .map(|(name, kind, shape)| Ok(Param { name, kind, value: Tensor::zeros(&shape, device)? }))
            .collect::<Result<Vec<_>>>()?;
        let running = Self::fresh_running(&config, device)?;
        Ok(BagSslModel { config, device: device.clone(), params, running })
    }

    /// Running mean 0 and variance 1, as PyTorch initialises them.
    fn fresh_running(config: &ModelConfig, device: &Device) -> Result<Vec<RunningStats>> {
        bn_layout(config)
            .into_iter()
            .map(|(prefix, width)| {
                Ok(RunningStats {
                    prefix,
                    mean: Tensor::zeros(&[width], device)?,
                    var: Tensor::full(&[width], 1.0, device)?,
                })
            })
            .collect()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Width of the representation `h`.
    pub fn hidden(&self) -> usize {
        self.config.hidden
    }
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
    pub fn running_stats(&self) -> &[RunningStats] {
        &self.running
    }
    pub fn running_stats_mut(&mut self) -> &mut [RunningStats] {
        &mut self.running
    }
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Every stored tensor with its checkpoint name: parameters, then running mean / var.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = self.params.iter().map(|p| (p.name.clone(), &p.value)).collect();
        for r in &self.running {
            out.push((r.mean_name(), &r.mean));
            out.push((r.var_name(), &r.var));
        }
        out
    }

    /// Mutable access to a parameter or running statistic by its checkpoint name.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        if let Some(p) = self.params.iter_mut().find(|p| p.name == name) {
            return Some(&mut p.value);
        }
        self.running.iter_mut().find_map(|r| {
            if name == r.mean_name() {
                Some(&mut r.mean)
            } else if name == r.var_name() {
                Some(&mut r.var)
            } else {
                None
            }
        })
    }

    /// Overwrites a named tensor with host values (same element count; uploaded to the model's device).
    pub fn set_tensor(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let device = self.device.clone();
        let t = self.tensor_mut(name).ok_or_else(|| ModelError::Config(format!("no tensor named `{name}`")))?;
        if t.numel() != values.len() {
            return Err(ModelError::Config(format!(
                "tensor `{name}` has {} elements, got {}",
                t.numel(),
                values.len()
            )));
        }
        *t = Tensor::from_vec(t.shape(), values.to_vec()).to_device(&device)?;
        Ok(())
    }

    /// A copy of the whole model on `device` (e.g. train on the CPU, evaluate on a GPU).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let params = self
            .params
            .iter()
            .map(|p| Ok(Param { name: p.name.clone(), kind: p.kind, value: p.value.to_device(device)? }))
            .collect::<Result<Vec<_>>>()?;
        let running = self
            .running
            .iter()
            .map(|r| {
                Ok(RunningStats {
                    prefix: r.prefix.clone(),
                    mean: r.mean.to_device(device)?,
                    var: r.var.to_device(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BagSslModel { config: self.config, device: device.clone(), params, running })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = self.config.input_dim();
        match x.shape() {
            [_, c] if *c == d => Ok(()),
            s => Err(ModelError::Config(format!("patch matrix has shape {s:?}, expected (rows, {d})"))),
        }
    }

    /// Training forward (BatchNorm with batch statistics) on `tape`: records x -> h -> z.
    /// `x_requires_grad` is for gradient checks (dL/dx); training passes false.
    pub fn forward_train<'a>(&'a self, tape: &mut Tape<'a>, x: Tensor, x_requires_grad: bool) -> Result<TrainForward> {
        self.check_input(&x)?;
        let pv: Vec<Var> = self.params.iter().map(|p| tape.leaf(&p.value, true)).collect();
        let xv = tape.input(x, x_requires_grad);
        let mut bn_outputs = Vec::with_capacity(self.running.len());
        let mut block = |tape: &mut Tape<'a>, input: Var, base: usize| -> Result<Var> {
            // The Linear bias goes into the BatchNorm's passes (same values as adding it here,
            // without a pass over the (rows, width) matrix each way).
            let y = tape.linear(input, pv[base], None)?;
            let out = tape.batch_norm(y, Some(pv[base + 1]), pv[base + 2], pv[base + 3], BN_EPS, true)?;
            bn_outputs.push(out);
            Ok(out)
        };
        let mut cur = xv;
        for i in 0..self.config.layers {
            cur = block(tape, cur, 4 * i)?;
        }
        let h = cur;
        let base = 4 * self.config.layers;
        let g = block(tape, h, base)?;
        // Without its bias: the loss is invariant to it (TrainForward::z).
        let z = tape.linear(g, pv[base + 4], None)?;
        Ok(TrainForward { x: xv, h, z, z_bias: pv[base + 5], params: pv, bn_outputs })
    }

    /// Eval-mode encoder without a tape: BatchNorm uses the running statistics, so a patch's
    /// embedding does not depend on the rest of the batch. Returns h (rows, hidden).
    pub fn encode_eval(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut cur: Option<Tensor> = None;
        for i in 0..self.config.layers {
            let p = &self.params[4 * i..4 * i + 4];
            let r = &self.running[i];
            let input = cur.as_ref().unwrap_or(x);
            // BN(x W^T + b) with running mean m is BN(x W^T) with running mean m - b: the bias
            // folds into a per-column shift instead of a pass over the (rows, hidden) output.
            let mut shift = r.mean.try_clone()?;
            ops::axpy_(&mut shift, -1.0, &p[1].value)?;
            cur =
                Some(ops::linear_bn_eval(input, &p[0].value, &shift, &r.var, &p[2].value, &p[3].value, BN_EPS, true)?);
        }
        Ok(cur.expect("ModelConfig::validate guarantees at least one encoder layer"))
    }

    /// Moves every running statistic towards this step's batch statistics:
    /// `r = (1 - momentum) r + momentum batch`, variance from the unbiased batch variance (PyTorch).
    pub fn update_running_stats(&mut self, batch: &[(Tensor, Tensor)], momentum: f32) -> Result<()> {
        if batch.len() != self.running.len() {
            return Err(ModelError::Config(format!(
                "{} batch statistics for {} BatchNorms",
                batch.len(),
                self.running.len()
            )));
        }
        // Every vector in one call (one launch on a GPU).
        let mut pairs: Vec<(&mut Tensor, &Tensor)> = Vec::with_capacity(2 * batch.len());
        for (r, (mean, var)) in self.running.iter_mut().zip(batch) {
            pairs.push((&mut r.mean, mean));
            pairs.push((&mut r.var, var));
        }
        Ok(ops::ema_multi_(&mut pairs, momentum)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_and_shapes() {
        let c = ModelConfig { patch: 4, layers: 2, hidden: 32, proj: 24 };
        let m = BagSslModel::new(c, 0, &Device::Cpu).unwrap();
        let names: Vec<_> = m.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 14);
        assert_eq!(names[0], "encoder.0.weight");
        assert_eq!(names[7], "encoder.1.bn.beta");
        assert_eq!(names[13], "projector.1.bias");
        assert_eq!(m.param("encoder.0.weight").unwrap().value.shape(), &[32, 48]);
        assert_eq!(m.param("projector.1.weight").unwrap().value.shape(), &[24, 24]);
        let tensors = m.named_tensors();
        assert!(tensors.iter().any(|(n, _)| n == "projector.0.bn.running_var"));
    }

    #[test]
    fn init_is_pytorch_like_and_seeded() {
        let c = ModelConfig { patch: 4, layers: 1, hidden: 64, proj: 16 };
        let a = BagSslModel::new(c, 7, &Device::Cpu).unwrap();
        let b = BagSslModel::new(c, 7, &Device::Cpu).unwrap();
        let other = BagSslModel::new(c, 8, &Device::Cpu).unwrap();
        let w = a.param("encoder.0.weight").unwrap().value.to_vec().unwrap();
        let bound = 1.0 / (48f32).sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.9 * bound, "weights should fill U(-b, b), max {max} vs {bound}");
        assert_eq!(w, b.param("encoder.0.weight").unwrap().value.to_vec().unwrap());
        assert_ne!(w, other.param("encoder.0.weight").unwrap().value.to_vec().unwrap());
        let pb = a.param("projector.0.bias").unwrap().value.to_vec().unwrap();
        assert!(pb.iter().all(|v| v.abs() <= 1.0 / 8.0));
        assert!(a.param("encoder.0.bn.gamma").unwrap().value.to_vec().unwrap().iter().all(|&v| v == 1.0));
        assert!(a.param("encoder.0.bn.beta").unwrap().value.to_vec().unwrap().iter().all(|&v| v == 0.0));
        let r = &a.running_stats()[0];
        assert!(r.mean.to_vec().unwrap().iter().all(|&v| v == 0.0));
        assert!(r.var.to_vec().unwrap().iter().all(|&v| v == 1.0));
    }
}
