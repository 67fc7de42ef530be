//! The BagSSL network: encoder `f` (`layers` x Linear-BN-ReLU, or a torchvision ResNet) and
//! projector `g` (Linear-BN-ReLU blocks, then a Linear), as layer types with PyTorch parameter
//! names, so weights can be exchanged with PyTorch and compared against the golden vectors.
//!
//! The tree, with the names it gives:
//! ```text
//! BagSslModel
//! ├── encoder: Encoder
//! │   ├── Mlp: Sequential<LinearBn>     encoder.{i}.weight, .bias, .bn.gamma, .bn.beta, .bn.running_*
//! │   └── ResNet                        torchvision's: encoder.conv1.weight, encoder.bn1.*,
//! │                                     encoder.layer{s}.{b}.conv1.weight, .downsample.0.weight, ...
//! └── projector: Projector
//!     ├── hidden: [LinearBn]            projector.{i}.weight, .bias, .bn.*
//!     └── out: Linear                   projector.{k}.weight, .bias (k = number of hidden blocks)
//! ```
//! One forward serves training and evaluation: [`BagSslModel::forward_train`] and
//! [`BagSslModel::encode_eval`] run the same layers, in training and in eval mode.

use bagssl_autograd::{ops, Device, PendingLoss, ScalarLoss, Tape, Tensor, Var, VicregParts, VicregWeights};
use bagssl_data::SeededRng;

use crate::config::ModelConfig;
use crate::layers::{
    Forward, Init, Layer, Linear, LinearBn, Param, ResNet, RunningStats, Sequential, Visitor, VisitorMut,
};
use crate::{ModelError, Result};

/// The encoder `f`: patch (rows, patch·patch·3) -> h (rows, embedding width).
#[derive(Debug)]
pub enum Encoder {
    Mlp(Sequential<LinearBn>),
    /// Boxed: its tree of layers is much larger than the MLP's list.
    ResNet(Box<ResNet>),
}

impl Layer for Encoder {
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        match self {
            Encoder::Mlp(l) => l.forward(f, x),
            Encoder::ResNet(l) => l.forward(f, x),
        }
    }
    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        match self {
            Encoder::Mlp(l) => l.visit(v),
            Encoder::ResNet(l) => l.visit(v),
        }
    }
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        match self {
            Encoder::Mlp(l) => l.visit_mut(v),
            Encoder::ResNet(l) => l.visit_mut(v),
        }
    }
}

/// GEMM FLOPs of one patch's forward, by part ([`BagSslModel::forward_flops_per_patch`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardFlops {
    pub encoder: f64,
    pub projector: f64,
    pub first_layer: f64,
}

impl ForwardFlops {
    /// A training step of `patches` patches: the forward, the backward's dW of every layer and
    /// dX of all but the first, and bag-VICReg's two covariance products of width `z`.
    pub fn step(&self, patches: usize, z: usize) -> f64 {
        let n = patches as f64;
        let forward = n * (self.encoder + self.projector);
        forward + 2.0 * forward - n * self.first_layer + 2.0 * 2.0 * n * (z * z) as f64
    }
}

/// The projector `g`: Linear-BN-ReLU blocks, then a Linear.
#[derive(Debug)]
pub struct Projector {
    pub hidden: Sequential<LinearBn>,
    pub out: Linear,
}

impl Projector {
    fn new(fan_in: usize, widths: &[usize], init: &mut Init<'_>) -> Result<Self> {
        let (&out, hidden_widths) =
            widths.split_last().ok_or_else(|| ModelError::Config("an empty projector".into()))?;
        let mut fan_in = fan_in;
        let mut hidden = Vec::with_capacity(hidden_widths.len());
        for (i, &w) in hidden_widths.iter().enumerate() {
            hidden.push(LinearBn::new(&format!("projector.{i}"), fan_in, w, init)?);
            fan_in = w;
        }
        let out = Linear::new(&format!("projector.{}", hidden_widths.len()), fan_in, out, true, init)?;
        Ok(Projector { hidden: Sequential { layers: hidden }, out })
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
    /// A shift-invariant loss (bag-VICReg) of the projector output, with its bias, which the loss
    /// does not see, getting its gradient: see [`Tape::loss`]. The scalars are not waited for.
    pub fn loss_async(&self, tape: &mut Tape<'_>, loss: &dyn ScalarLoss) -> Result<(Var, PendingLoss)> {
        Ok(tape.loss(self.z, Some(self.z_bias), loss)?)
    }

    /// bag-VICReg of the projector output, waiting for its terms.
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

/// Which eval-mode output evaluation and `embed` take as a patch's representation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Representation {
    /// The encoder output h: BagSSL's representation.
    #[default]
    Encoder,
    /// The output of the projector's i-th Linear-BN-ReLU block (`projector.{i}`); EMP-SSL
    /// reports `projector.0`.
    ProjectorHidden(usize),
}

impl Representation {
    /// `"encoder"` or `"projector.{i}"`.
    pub fn parse(name: &str) -> Option<Representation> {
        if name == "encoder" {
            return Some(Representation::Encoder);
        }
        let i = name.strip_prefix("projector.")?;
        // Digits only: "projector.+1" is no layer name.
        (!i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .then(|| i.parse().ok().map(Representation::ProjectorHidden))
            .flatten()
    }
    pub fn name(&self) -> String {
        match self {
            Representation::Encoder => "encoder".into(),
            Representation::ProjectorHidden(i) => format!("projector.{i}"),
        }
    }
}

/// Encoder + projector, on one device.
#[derive(Debug)]
pub struct BagSslModel {
    config: ModelConfig,
    device: Device,
    pub encoder: Encoder,
    pub projector: Projector,
    /// What [`BagSslModel::represent_eval`] returns (the encoder output unless set).
    representation: Representation,
}

impl BagSslModel {
    /// A freshly initialised model (PyTorch's default init, drawn from `SeededRng::new(seed)`
    /// in parameter order).
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SeededRng::new(seed);
        Self::build(config, &mut Init::seeded(&mut rng, device))
    }

    /// A model with every parameter zero (filled by a checkpoint loader or a test).
    pub fn zeros(config: ModelConfig, device: &Device) -> Result<Self> {
        Self::build(config, &mut Init::zeros(device))
    }

    fn build(config: ModelConfig, init: &mut Init<'_>) -> Result<Self> {
        config.validate()?;
        let encoder = match config.resnet_layout() {
            Some(layout) => {
                Encoder::ResNet(Box::new(ResNet::new("encoder", &layout, config.stem, config.patch, init)?))
            }
            None => {
                let mut fan_in = config.input_dim();
                let mut blocks = Vec::with_capacity(config.layers);
                for i in 0..config.layers {
                    blocks.push(LinearBn::new(&format!("encoder.{i}"), fan_in, config.hidden, init)?);
                    fan_in = config.hidden;
                }
                Encoder::Mlp(Sequential { layers: blocks })
            }
        };
        let projector = Projector::new(config.embedding_dim(), &config.projector_widths(), init)?;
        Ok(BagSslModel {
            config,
            device: init.device().clone(),
            encoder,
            projector,
            representation: Representation::Encoder,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Width of the representation `h`.
    pub fn hidden(&self) -> usize {
        self.config.embedding_dim()
    }

    /// Makes [`BagSslModel::represent_eval`] return `r`; an error names a projector block that
    /// does not exist.
    pub fn set_representation(&mut self, r: Representation) -> Result<()> {
        if let Representation::ProjectorHidden(i) = r {
            let blocks = self.projector.hidden.layers.len();
            if i >= blocks {
                return Err(ModelError::Config(format!(
                    "representation projector.{i}: the projector has {blocks} Linear-BN-ReLU block(s) (projector.0 .. projector.{})",
                    blocks.saturating_sub(1)
                )));
            }
        }
        self.representation = r;
        Ok(())
    }
    pub fn representation(&self) -> Representation {
        self.representation
    }
    /// Width of [`BagSslModel::represent_eval`]'s output.
    pub fn representation_dim(&self) -> usize {
        match self.representation {
            Representation::Encoder => self.hidden(),
            Representation::ProjectorHidden(i) => self.projector.hidden.layers[i].linear.weight.value.shape()[0],
        }
    }

    /// Multiply-add FLOPs (2 per multiply-add) of the forward of one patch: the encoder's, the
    /// projector's, and the first layer's (whose input needs no gradient in training).
    pub fn forward_flops_per_patch(&self) -> ForwardFlops {
        let linear = |l: &Linear| 2.0 * l.weight.value.numel() as f64;
        let projector =
            self.projector.hidden.layers.iter().map(|l| linear(&l.linear)).sum::<f64>() + linear(&self.projector.out);
        match &self.encoder {
            Encoder::Mlp(s) => {
                let per_layer: Vec<f64> = s.layers.iter().map(|l| linear(&l.linear)).collect();
                ForwardFlops { encoder: per_layer.iter().sum(), projector, first_layer: per_layer[0] }
            }
            Encoder::ResNet(r) => {
                let (encoder, first_layer) = r.forward_flops_per_patch();
                ForwardFlops { encoder, projector, first_layer }
            }
        }
    }

    fn visit(&self) -> Visitor<'_> {
        let mut v = Visitor::default();
        self.encoder.visit(&mut v);
        self.projector.hidden.visit(&mut v);
        self.projector.out.visit(&mut v);
        v
    }

    fn visit_mut(&mut self) -> VisitorMut<'_> {
        let mut v = VisitorMut::default();
        self.encoder.visit_mut(&mut v);
        self.projector.hidden.visit_mut(&mut v);
        self.projector.out.visit_mut(&mut v);
        v
    }

    /// Every parameter, in tree order (the optimizer's and the checkpoint's order).
    pub fn params(&self) -> Vec<&Param> {
        self.visit().params
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.visit_mut().params
    }
    /// Every BatchNorm's running statistics, in tree order.
    pub fn running_stats(&self) -> Vec<&RunningStats> {
        self.visit().running
    }
    pub fn running_stats_mut(&mut self) -> Vec<&mut RunningStats> {
        self.visit_mut().running
    }
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params().into_iter().find(|p| p.name == name)
    }

    /// Every stored tensor with its checkpoint name: parameters, then running mean / var.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let v = self.visit();
        let mut out: Vec<(String, &Tensor)> = v.params.iter().map(|p| (p.name.clone(), &p.value)).collect();
        for r in v.running {
            out.push((r.mean_name(), &r.mean));
            out.push((r.var_name(), &r.var));
        }
        out
    }

    /// Mutable access to a parameter or running statistic by its checkpoint name.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        let v = self.visit_mut();
        if let Some(p) = v.params.into_iter().find(|p| p.name == name) {
            return Some(&mut p.value);
        }
        v.running.into_iter().find_map(|r| {
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
        let mut copy = BagSslModel::zeros(self.config.clone(), device)?;
        for (name, t) in self.named_tensors() {
            let slot = copy.tensor_mut(&name).ok_or_else(|| ModelError::Internal(format!("no tensor `{name}`")))?;
            *slot = t.to_device(device)?;
        }
        copy.representation = self.representation;
        Ok(copy)
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
        let xv = tape.input(x, x_requires_grad);
        let mut f = Forward::new(tape, true);
        let h = self.encoder.forward(&mut f, xv)?;
        let g = self.projector.hidden.forward(&mut f, h)?;
        // Without its bias: the loss is invariant to it (TrainForward::z).
        let (z, z_bias) = self.projector.out.forward_split(&mut f, g)?;
        let z_bias = z_bias.ok_or_else(|| ModelError::Internal("the projector's last Linear has no bias".into()))?;
        let all = self.visit();
        let params = f.leaves_of(&all.params)?;
        let bn_outputs = f.bn_outputs_of(&all.running)?;
        Ok(TrainForward { x: xv, h, z, z_bias, params, bn_outputs })
    }

    /// The eval-mode encoder (BatchNorm with the running statistics, so a patch's embedding does
    /// not depend on the rest of the batch): the same layers as [`BagSslModel::forward_train`]'s,
    /// in eval mode. Returns h (rows, hidden).
    pub fn encode_eval(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut tape = Tape::new();
        let xv = tape.leaf(x, false);
        let h = self.encoder.forward(&mut Forward::new(&mut tape, false), xv)?;
        Ok(tape.into_value(h)?)
    }

    /// The eval-mode representation chosen by [`BagSslModel::set_representation`]: h, or h
    /// through the projector's first blocks (rows, [`BagSslModel::representation_dim`]).
    pub fn represent_eval(&self, x: &Tensor) -> Result<Tensor> {
        let blocks = match self.representation {
            Representation::Encoder => return self.encode_eval(x),
            Representation::ProjectorHidden(i) => &self.projector.hidden.layers[..=i],
        };
        self.check_input(x)?;
        let mut tape = Tape::new();
        let xv = tape.leaf(x, false);
        let mut f = Forward::new(&mut tape, false);
        let h = self.encoder.forward(&mut f, xv)?;
        let g = blocks.iter().try_fold(h, |g, block| block.forward(&mut f, g))?;
        Ok(tape.into_value(g)?)
    }

    /// The eval-mode projector on encoder outputs `h` (rows, hidden): z (rows, proj), bias
    /// included, BatchNorm with the running statistics (so, like [`BagSslModel::encode_eval`],
    /// a row's z does not depend on the rest of the batch).
    pub fn project_eval(&self, h: &Tensor) -> Result<Tensor> {
        match h.shape() {
            [_, c] if *c == self.hidden() => {}
            s => return Err(ModelError::Config(format!("h has shape {s:?}, expected (rows, {})", self.hidden()))),
        }
        let mut tape = Tape::new();
        let hv = tape.leaf(h, false);
        let mut f = Forward::new(&mut tape, false);
        let g = self.projector.hidden.forward(&mut f, hv)?;
        let z = self.projector.out.forward(&mut f, g)?;
        Ok(tape.into_value(z)?)
    }

    /// Moves every running statistic towards this step's batch statistics:
    /// `r = (1 - momentum) r + momentum batch`, variance from the unbiased batch variance (PyTorch).
    pub fn update_running_stats(&mut self, batch: &[(Tensor, Tensor)], momentum: f32) -> Result<()> {
        let mut running = self.running_stats_mut();
        if batch.len() != running.len() {
            return Err(ModelError::Config(format!(
                "{} batch statistics for {} BatchNorms",
                batch.len(),
                running.len()
            )));
        }
        // Every vector in one call (one launch on a GPU).
        let mut pairs: Vec<(&mut Tensor, &Tensor)> = Vec::with_capacity(2 * batch.len());
        for (r, (mean, var)) in running.iter_mut().zip(batch) {
            let r = &mut **r;
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
        let c = ModelConfig::mlp(4, 2, 32, 24);
        let m = BagSslModel::new(c, 0, &Device::Cpu).unwrap();
        let names: Vec<_> = m.params().iter().map(|p| p.name.clone()).collect();
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
        let c = ModelConfig::mlp(4, 1, 64, 16);
        let a = BagSslModel::new(c.clone(), 7, &Device::Cpu).unwrap();
        let b = BagSslModel::new(c.clone(), 7, &Device::Cpu).unwrap();
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

    #[test]
    fn eval_forward_is_the_training_layers_in_eval_mode() {
        // With fresh running statistics (mean 0, var 1) the eval forward of one block is
        // relu(gamma (x W^T + b) / sqrt(1 + eps) + beta); check it against that formula.
        let c = ModelConfig::mlp(2, 1, 5, 3);
        let m = BagSslModel::new(c, 3, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(&[4, 12], (0..48).map(|i| (i as f32 * 0.37).sin()).collect());
        let h = m.encode_eval(&x).unwrap().to_vec().unwrap();
        let w = m.param("encoder.0.weight").unwrap().value.to_vec().unwrap();
        let b = m.param("encoder.0.bias").unwrap().value.to_vec().unwrap();
        let xs = x.to_vec().unwrap();
        for r in 0..4 {
            for o in 0..5 {
                let y: f64 = (0..12).map(|k| xs[r * 12 + k] as f64 * w[o * 12 + k] as f64).sum::<f64>() + b[o] as f64;
                let want = (y / (1.0 + crate::BN_EPS as f64).sqrt()).max(0.0);
                assert!((h[r * 5 + o] as f64 - want).abs() < 1e-5, "row {r} col {o}: {} vs {want}", h[r * 5 + o]);
            }
        }
    }
}
