//! Layer types: named parameters in fields, PyTorch names derived from the layer tree, and one
//! forward for training and evaluation ([`Forward::train`] is the flag).
//!
//! A layer is built under a name prefix (`encoder.0`), and each of its parameters gets its full
//! PyTorch name at construction (`encoder.0.weight`), so the optimizer, the checkpoints and the
//! golden tests all walk the same names ([`Layer::visit`], in tree order). A forward records onto
//! a [`Tape`]: in training mode every parameter is a leaf that needs a gradient and every
//! BatchNorm reports its batch statistics; in eval mode BatchNorm uses its running statistics
//! and nothing needs a gradient. How a layer computes (folding a Linear bias into the BatchNorm
//! after it, fusing the eval-mode BatchNorm into the GEMM) is the layer's business.

mod batchnorm;
mod conv;
mod linear;
mod resnet;
mod sequential;

pub use batchnorm::{BatchNorm, BnNames, RunningStats, BN_EPS, BN_MOMENTUM};
pub use conv::{Conv2d, ConvBn, ConvSpec, Spatial};
pub use linear::{Linear, LinearBn};
pub use resnet::{BasicBlock, Block, Bottleneck, ResNet};
pub use sequential::Sequential;

use bagssl_autograd::{Device, Tape, Tensor, Var};
use bagssl_data::SeededRng;

use crate::Result;

/// What a parameter is; decides weight decay and LARS adaptation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A weight matrix (a Linear's (out, in), a convolution's kernel).
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

/// One trainable tensor with its full PyTorch-style name (`encoder.0.weight`, ...).
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub value: Tensor,
}

/// Where new parameters go and how they are filled.
pub struct Init<'r> {
    fill: Fill<'r>,
    device: Device,
}

enum Fill<'r> {
    Seeded(&'r mut SeededRng),
    Zeros,
}

impl<'r> Init<'r> {
    /// PyTorch's defaults, drawn from `rng` in construction order: `nn.Linear` weight and bias
    /// from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)); BN gamma 1,
    /// beta 0.
    pub fn seeded(rng: &'r mut SeededRng, device: &Device) -> Self {
        Init { fill: Fill::Seeded(rng), device: device.clone() }
    }

    /// Every parameter zero (filled by a checkpoint loader or a test).
    pub fn zeros(device: &Device) -> Self {
        Init { fill: Fill::Zeros, device: device.clone() }
    }

    /// The device the parameters are made on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A parameter of `shape`; `fan_in` bounds the uniform draws of weights and biases.
    pub fn param(&mut self, name: String, kind: ParamKind, shape: &[usize], fan_in: usize) -> Result<Param> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let value = self.filled(shape, |rng| match kind {
            ParamKind::Weight | ParamKind::Bias => (2.0 * rng.uniform() - 1.0) * bound,
            ParamKind::BnGamma => 1.0,
            ParamKind::BnBeta => 0.0,
        })?;
        Ok(Param { name, kind, value })
    }

    /// A convolution's weight (out, in, kh, kw) as torchvision initialises it:
    /// `kaiming_normal_(mode = "fan_out", nonlinearity = "relu")`, N(0, 2 / (out·kh·kw)).
    pub fn conv_weight(&mut self, name: String, shape: [usize; 4]) -> Result<Param> {
        let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f64).sqrt();
        let value = self.filled(&shape, |rng| (std * standard_normal(rng)) as f32)?;
        Ok(Param { name, kind: ParamKind::Weight, value })
    }

    /// A tensor of `shape` on the device: zeros, or `draw` per element in order.
    fn filled(&mut self, shape: &[usize], mut draw: impl FnMut(&mut SeededRng) -> f32) -> Result<Tensor> {
        Ok(match &mut self.fill {
            Fill::Zeros => Tensor::zeros(shape, &self.device)?,
            Fill::Seeded(rng) => {
                let host: Vec<f32> = (0..shape.iter().product()).map(|_| draw(rng)).collect();
                Tensor::from_vec(shape, host).to_device(&self.device)?
            }
        })
    }
}

/// One N(0, 1) draw (Box-Muller on two uniforms; 1 - u keeps the logarithm finite).
fn standard_normal(rng: &mut SeededRng) -> f64 {
    let (u1, u2) = (1.0 - rng.uniform() as f64, rng.uniform() as f64);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `prefix.name`, or `name` at the root.
pub fn child(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// One forward pass through layers on a tape, in training or eval mode.
pub struct Forward<'t, 'a> {
    pub tape: &'t mut Tape<'a>,
    /// Training mode: batch statistics, parameters that need gradients. Eval: running statistics.
    pub train: bool,
    leaves: Vec<(&'a Param, Var)>,
    batch_stats: Vec<(&'a RunningStats, Var)>,
}

impl<'t, 'a> Forward<'t, 'a> {
    pub fn new(tape: &'t mut Tape<'a>, train: bool) -> Self {
        Forward { tape, train, leaves: Vec::new(), batch_stats: Vec::new() }
    }

    /// `p` as a leaf of the tape (needing a gradient in training mode).
    pub fn param(&mut self, p: &'a Param) -> Var {
        let v = self.tape.leaf(&p.value, self.train);
        self.leaves.push((p, v));
        v
    }

    /// Records that the training-mode BatchNorm owning `running` produced `output`.
    pub fn batch_norm_output(&mut self, running: &'a RunningStats, output: Var) {
        self.batch_stats.push((running, output));
    }

    /// The leaf of each of `params` (in that order); an error for one this forward did not use.
    pub fn leaves_of(&self, params: &[&Param]) -> Result<Vec<Var>> {
        params.iter().map(|p| find(&self.leaves, p, &p.name)).collect()
    }

    /// The BatchNorm output of each of `running` (in that order).
    pub fn bn_outputs_of(&self, running: &[&RunningStats]) -> Result<Vec<Var>> {
        running.iter().map(|r| find(&self.batch_stats, r, &r.prefix)).collect()
    }
}

fn find<T>(pairs: &[(&T, Var)], want: &T, name: &str) -> Result<Var> {
    pairs
        .iter()
        .find(|(t, _)| std::ptr::eq(*t, want))
        .map(|(_, v)| *v)
        .ok_or_else(|| crate::ModelError::Internal(format!("`{name}` was not used by the forward")))
}

/// Everything a layer holds, in tree order.
#[derive(Default)]
pub struct Visitor<'s> {
    pub params: Vec<&'s Param>,
    pub running: Vec<&'s RunningStats>,
}

/// [`Visitor`] with mutable access.
#[derive(Default)]
pub struct VisitorMut<'s> {
    pub params: Vec<&'s mut Param>,
    pub running: Vec<&'s mut RunningStats>,
}

/// A layer: a forward on the tape and its parameters and running statistics.
pub trait Layer {
    /// `x` through the layer, in [`Forward::train`] mode.
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var>;
    /// Adds the parameters and running statistics, in tree order.
    fn visit<'s>(&'s self, v: &mut Visitor<'s>);
    /// [`Layer::visit`], mutably (same order).
    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>);
}
