//! The tape: reverse-mode automatic differentiation over the primitives of [`crate::ops`].
//!
//! A [`Tape`] is a list of nodes in creation order. Each node holds its value — borrowed for
//! leaves (parameters, so a step never copies weights), owned otherwise — and the op that made
//! it, with whatever its backward needs (BatchNorm statistics, a loss's gradient computed in the
//! forward). Eval-mode computations are recorded too ([`Tape::eval_op`]), without a backward, so
//! one forward serves training and evaluation. [`Tape::backward`] walks the nodes in reverse, so every consumer of a value
//! is processed before its producer, and accumulates gradients only into nodes that require one.
//!
//! Everything goes through [`crate::ops`], never through tensor storage, so the same tape runs
//! on the CPU and on a GPU.

use crate::backend::{BnBackwardArgs, BnTrainArgs, VicregParts, VicregWeights, Window2d};
use crate::loss::{BagVicreg, PendingLoss, ScalarLoss};
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// Records a forward computation. Parameters are borrowed (`'a`), not copied.
pub struct Tape<'a> {
    nodes: Vec<Node<'a>>,
}

/// Gradients of a backward pass, looked up by `Var`.
///
/// Only the vars made by [`Tape::leaf`] and [`Tape::input`] with `requires_grad` have one:
/// the gradients of intermediate values are freed as soon as they have been propagated.
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

enum Value<'a> {
    Borrowed(&'a Tensor),
    Owned(Tensor),
}

struct Node<'a> {
    value: Value<'a>,
    op: Op,
    requires_grad: bool,
}

/// The inputs of [`Tape::batch_norm`], as vars of the tape.
#[derive(Clone, Copy, Debug)]
pub struct BnVars {
    pub x: Var,
    /// The preceding Linear layer's bias, folded in (see [`ops::bn_train_fwd`]).
    pub bias: Option<Var>,
    pub gamma: Var,
    pub beta: Var,
    pub eps: f32,
    pub relu: bool,
}

/// Batch statistics a BatchNorm node keeps for its backward and for [`Tape::bn_stats`].
struct BnStats {
    mean: Tensor,
    invstd: Tensor,
    var_unbiased: Tensor,
}

/// How a node was made, with what its backward needs beyond the input values.
enum Op {
    /// A parameter or an input: gradients stop here and are kept.
    Leaf,
    /// An eval-mode value ([`Tape::eval_op`]): no backward, and no input that needs a gradient.
    Eval,
    Linear {
        x: Var,
        w: Var,
        b: Option<Var>,
    },
    Matmul {
        a: Var,
        b: Var,
        trans_a: bool,
        trans_b: bool,
    },
    BiasAdd {
        x: Var,
        b: Var,
    },
    BatchNorm {
        vars: BnVars,
        /// Boxed: three tensors would triple the size of every node.
        stats: Box<BnStats>,
    },
    Relu {
        x: Var,
    },
    GroupMean {
        x: Var,
        n: usize,
    },
    /// Keeps the weight as the GEMM's matrix (weight-sized, made once a step) but recomputes
    /// the im2col matrix in the backward rather than keep it (kh·kw times x's size).
    Conv2d {
        x: Var,
        w: Var,
        g: Window2d,
        wm: Tensor,
    },
    MaxPool {
        x: Var,
        g: Window2d,
    },
    Add {
        a: Var,
        b: Var,
    },
    /// A [`ScalarLoss`]: `dz` is dL/dz for an upstream gradient of 1; `bias` a per-column shift
    /// of z that the loss does not see (see [`Tape::loss`]), whose gradient is the column sums
    /// of dz.
    Loss {
        z: Var,
        bias: Option<Var>,
        dz: Tensor,
    },
    DotConst {
        x: Var,
        w: Tensor,
    },
}

impl<'a> Tape<'a> {
    pub fn new() -> Self {
        Tape { nodes: Vec::new() }
    }

    /// Number of recorded values.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn push(&mut self, value: Value<'a>, op: Op, requires_grad: bool) -> Var {
        self.nodes.push(Node { value, op, requires_grad });
        Var(self.nodes.len() - 1)
    }

    fn push_op(&mut self, value: Tensor, op: Op, inputs: &[Var]) -> Var {
        let requires_grad = inputs.iter().any(|v| self.nodes[v.0].requires_grad);
        self.push(Value::Owned(value), op, requires_grad)
    }

    /// A borrowed tensor (a parameter); its gradient is computed when `requires_grad`.
    pub fn leaf(&mut self, t: &'a Tensor, requires_grad: bool) -> Var {
        self.push(Value::Borrowed(t), Op::Leaf, requires_grad)
    }

    /// An owned input (the patch matrix); `requires_grad` for gradient checks.
    pub fn input(&mut self, t: Tensor, requires_grad: bool) -> Var {
        self.push(Value::Owned(t), Op::Leaf, requires_grad)
    }

    /// The value of `v`. Panics when `v` comes from another tape (a programming error).
    pub fn value(&self, v: Var) -> &Tensor {
        match &self.nodes[v.0].value {
            Value::Borrowed(t) => t,
            Value::Owned(t) => t,
        }
    }

    /// The value of `v`, moved out of the tape (copied when it is a borrowed leaf).
    pub fn into_value(mut self, v: Var) -> Result<Tensor> {
        let node = self.nodes.swap_remove(v.0);
        match node.value {
            Value::Borrowed(t) => t.try_clone(),
            Value::Owned(t) => Ok(t),
        }
    }

    /// Records `f(values of inputs)` as an eval-mode value: it has no backward, so no input may
    /// need a gradient (an error naming `op` otherwise). Eval-mode layers compute through it.
    pub fn eval_op(
        &mut self,
        op: &'static str,
        inputs: &[Var],
        f: impl FnOnce(&[&Tensor]) -> Result<Tensor>,
    ) -> Result<Var> {
        if inputs.iter().any(|v| self.nodes[v.0].requires_grad) {
            let detail = "an eval-mode op has no backward; its inputs must not need gradients".to_string();
            return Err(Error::Shape { op, detail });
        }
        let values: Vec<&Tensor> = inputs.iter().map(|&v| self.value(v)).collect();
        let y = f(&values)?;
        Ok(self.push(Value::Owned(y), Op::Eval, false))
    }

    /// `x W^T + b`, W is (out, in) as in PyTorch.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let y = ops::linear_fwd(self.value(x), self.value(w), b.map(|b| self.value(b)))?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(self.push_op(y, Op::Linear { x, w, b }, &inputs))
    }

    /// `op(a) @ op(b)`, see [`ops::matmul`].
    pub fn matmul(&mut self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Result<Var> {
        let y = ops::matmul(self.value(a), self.value(b), trans_a, trans_b)?;
        Ok(self.push_op(y, Op::Matmul { a, b, trans_a, trans_b }, &[a, b]))
    }

    /// `x + b`, `b` broadcast over the rows of `x`.
    pub fn bias_add(&mut self, x: Var, b: Var) -> Result<Var> {
        let y = ops::bias_add(self.value(x), self.value(b))?;
        Ok(self.push_op(y, Op::BiasAdd { x, b }, &[x, b]))
    }

    /// Training-mode BatchNorm of `x + bias` (optionally fused with ReLU). `bias`: the bias of
    /// the Linear layer that made `x` (record that one without it), folded into the BatchNorm's
    /// passes: the same values as `linear` with the bias, one pass over the (rows, cols) matrix
    /// fewer each way. Batch statistics: [`Tape::bn_stats`].
    pub fn batch_norm(&mut self, v: BnVars) -> Result<Var> {
        let f = ops::bn_train_fwd(self.bn_args(v))?;
        let stats = Box::new(BnStats { mean: f.mean, invstd: f.invstd, var_unbiased: f.var_unbiased });
        let mut inputs = vec![v.x, v.gamma, v.beta];
        inputs.extend(v.bias);
        Ok(self.push_op(f.y, Op::BatchNorm { vars: v, stats }, &inputs))
    }

    /// The BatchNorm forward's arguments: the vars' values.
    fn bn_args(&self, v: BnVars) -> BnTrainArgs<'_> {
        BnTrainArgs {
            x: self.value(v.x),
            bias: v.bias.map(|b| self.value(b)),
            gamma: self.value(v.gamma),
            beta: self.value(v.beta),
            eps: v.eps,
            relu: v.relu,
        }
    }

    /// (batch mean, unbiased batch variance) of the BatchNorm that produced `v`.
    pub fn bn_stats(&self, v: Var) -> Option<(&Tensor, &Tensor)> {
        match &self.nodes.get(v.0)?.op {
            Op::BatchNorm { stats, .. } => Some((&stats.mean, &stats.var_unbiased)),
            _ => None,
        }
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let y = ops::relu_fwd(self.value(x))?;
        Ok(self.push_op(y, Op::Relu { x }, &[x]))
    }

    /// Mean over consecutive groups of `n` rows: (B*n, D) -> (B, D).
    pub fn group_mean(&mut self, x: Var, n: usize) -> Result<Var> {
        let y = ops::group_mean(self.value(x), n)?;
        Ok(self.push_op(y, Op::GroupMean { x, n }, &[x]))
    }

    /// A 2-D convolution of `x` (n·h·w, c) by `w` (out, c, kh, kw) over `g`, see
    /// [`ops::conv2d_fwd`]: (n·out_h·out_w, out).
    pub fn conv2d(&mut self, x: Var, w: Var, g: Window2d) -> Result<Var> {
        let wm = ops::conv2d_weight_matrix(self.value(w), g)?;
        let y = ops::conv2d_fwd_matrix(self.value(x), &wm, g)?;
        Ok(self.push_op(y, Op::Conv2d { x, w, g, wm }, &[x, w]))
    }

    /// Max-pooling of `x` (n·h·w, c) over `g`: (n·out_h·out_w, c).
    pub fn max_pool(&mut self, x: Var, g: Window2d) -> Result<Var> {
        let y = ops::max_pool_fwd(self.value(x), g)?;
        Ok(self.push_op(y, Op::MaxPool { x, g }, &[x]))
    }

    /// `a + b`, same shapes (a residual connection).
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = ops::add(self.value(a), self.value(b))?;
        Ok(self.push_op(y, Op::Add { a, b }, &[a, b]))
    }

    /// bag-VICReg as one op, waiting for its terms: [`Tape::loss`] with [`BagVicreg`].
    pub fn bag_vicreg(
        &mut self,
        z: Var,
        bias: Option<Var>,
        n_per_image: usize,
        w: VicregWeights,
    ) -> Result<(Var, VicregParts)> {
        let (loss, pending) = self.loss(z, bias, &BagVicreg { per_image: n_per_image, weights: w })?;
        let values = pending.wait()?;
        let parts = VicregParts {
            loss: values.loss(),
            invariance: values.get("invariance").unwrap_or_default(),
            variance: values.get("variance").unwrap_or_default(),
            covariance: values.get("covariance").unwrap_or_default(),
        };
        Ok((loss, parts))
    }

    /// A [`ScalarLoss`] of `z` as one op: a scalar whose backward is the gradient the loss
    /// computed in its forward. The scalars are not waited for on a GPU: queue the backward pass
    /// first, then [`PendingLoss::wait`], and the wait overlaps the GPU's work.
    ///
    /// `bias`: the bias of the Linear layer that made `z` (record that one without it), for a
    /// [`ScalarLoss::shift_invariant`] loss only. The loss of `z + bias` is then the loss of `z`,
    /// so the bias is never added (no pass over z), and its gradient is what the tape of
    /// `z + bias` would give it, the column sums of dL/dz (0 up to rounding).
    pub fn loss(&mut self, z: Var, bias: Option<Var>, loss: &dyn ScalarLoss) -> Result<(Var, PendingLoss)> {
        let zt = self.value(z);
        if let Some(b) = bias {
            let (bt, cols) = (self.value(b), zt.dims2().1);
            if !loss.shift_invariant() {
                let detail = "a bias left out of z needs a loss invariant to column shifts".to_string();
                return Err(Error::Shape { op: "loss", detail });
            }
            if bt.numel() != cols {
                let detail = format!("bias {:?} for z {:?}", bt.shape(), zt.shape());
                return Err(Error::Shape { op: "loss", detail });
            }
        }
        let out = loss.forward_backward(zt)?;
        let mut inputs = vec![z];
        inputs.extend(bias);
        let var = self.push_op(out.loss, Op::Loss { z, bias, dz: out.grad }, &inputs);
        Ok((var, PendingLoss::new(loss.terms(), out.scalars)))
    }

    /// `sum(x * w)` for a fixed `w`: a scalar, used by gradient checks.
    pub fn dot_const(&mut self, x: Var, w: Tensor) -> Result<Var> {
        let xt = self.value(x);
        let s = ops::dot(xt, &w)?;
        let y = Tensor::full(&[1], s as f32, &xt.device())?;
        Ok(self.push_op(y, Op::DotConst { x, w }, &[x]))
    }

    /// Scalar value of a 1-element var, as f64.
    pub fn scalar(&self, v: Var) -> Result<f64> {
        Ok(host_scalar(self.value(v), "scalar")? as f64)
    }

    /// Reverse pass from the scalar `loss` (seed 1). Consumes the tape.
    ///
    /// The seed is never materialized for a scalar op (bag-VICReg, `dot_const`) at the root, so
    /// the usual backward needs no host round trip on a GPU.
    pub fn backward(mut self, loss: Var) -> Result<Gradients> {
        let root = self.value(loss);
        if root.numel() != 1 {
            let detail = format!("the loss must have one element, got {:?}", root.shape());
            return Err(Error::Shape { op: "backward", detail });
        }
        let mut grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
        // Nodes after the loss cannot contribute to it.
        self.nodes.truncate(loss.0 + 1);
        while let Some(node) = self.nodes.pop() {
            let i = self.nodes.len();
            if !node.requires_grad {
                continue;
            }
            let y = match &node.value {
                Value::Borrowed(t) => *t,
                Value::Owned(t) => t,
            };
            let dy = if i == loss.0 {
                Upstream::One
            } else {
                match grads[i].take() {
                    Some(g) => Upstream::Grad(g),
                    None => continue,
                }
            };
            if let Op::Leaf = node.op {
                grads[i] = Some(dy.into_tensor(y)?); // kept: leaves are what callers ask for
                continue;
            }
            self.backward_node(node.op, y, dy, &mut grads)?;
        }
        Ok(Gradients { grads })
    }

    /// Propagates `dy`, the gradient of a node with value `y` made by `op`, to its inputs.
    fn backward_node(&self, op: Op, y: &Tensor, dy: Upstream, grads: &mut [Option<Tensor>]) -> Result<()> {
        match op {
            // Scalar-output ops scale the gradient they stored in the forward.
            Op::Loss { z, bias, dz } => {
                let needs_bias = bias.filter(|b| self.nodes[b.0].requires_grad);
                match needs_bias {
                    Some(b) => {
                        let dz = self.scale_by(dz, dy)?;
                        self.accumulate(grads, b, ops::sum_rows(&dz)?)?;
                        self.accumulate(grads, z, dz)
                    }
                    None => self.scaled(grads, z, dz, dy),
                }
            }
            Op::DotConst { x, w } => self.scaled(grads, x, w, dy),
            op => self.backward_tensor_op(op, y, dy.into_tensor(y)?, grads),
        }
    }

    /// Backward of the ops whose upstream gradient is a full tensor `dy` shaped like `y`.
    fn backward_tensor_op(&self, op: Op, y: &Tensor, dy: Tensor, grads: &mut [Option<Tensor>]) -> Result<()> {
        let needs = |v: Var| self.nodes[v.0].requires_grad;
        match op {
            Op::Leaf | Op::Loss { .. } | Op::DotConst { .. } => {}
            Op::Eval => {
                let detail = "an eval-mode value has no backward".to_string();
                return Err(Error::Shape { op: "backward", detail });
            }
            Op::Linear { x, w, b } => {
                if needs(w) {
                    let dw = ops::matmul(&dy, self.value(x), true, false)?;
                    self.accumulate(grads, w, dw)?;
                }
                if let Some(b) = b.filter(|&b| needs(b)) {
                    self.accumulate(grads, b, ops::sum_rows(&dy)?)?;
                }
                if needs(x) {
                    let dx = ops::matmul(&dy, self.value(w), false, false)?;
                    self.accumulate(grads, x, dx)?;
                }
            }
            Op::Matmul { a, b, trans_a, trans_b } => {
                let (at, bt) = (self.value(a), self.value(b));
                if needs(a) {
                    // d op(A) = dC op(B)^T, transposed back when A is stored transposed.
                    let da = if trans_a {
                        ops::matmul(bt, &dy, trans_b, true)?
                    } else {
                        ops::matmul(&dy, bt, false, !trans_b)?
                    };
                    self.accumulate(grads, a, da)?;
                }
                if needs(b) {
                    // d op(B) = op(A)^T dC, likewise.
                    let db = if trans_b {
                        ops::matmul(&dy, at, true, trans_a)?
                    } else {
                        ops::matmul(at, &dy, !trans_a, false)?
                    };
                    self.accumulate(grads, b, db)?;
                }
            }
            Op::BiasAdd { x, b } => {
                if needs(b) {
                    self.accumulate(grads, b, ops::sum_rows(&dy)?)?;
                }
                if needs(x) {
                    self.accumulate(grads, x, dy)?;
                }
            }
            Op::BatchNorm { vars, stats } => {
                let BnVars { x, bias, gamma, beta, .. } = vars;
                let fwd = self.bn_args(vars);
                let g =
                    ops::bn_train_bwd(BnBackwardArgs { fwd, dy: &dy, y, mean: &stats.mean, invstd: &stats.invstd })?;
                if needs(gamma) {
                    self.accumulate(grads, gamma, g.dgamma)?;
                }
                if needs(beta) {
                    self.accumulate(grads, beta, g.dbeta)?;
                }
                if let (Some(b), Some(db)) = (bias.filter(|&b| needs(b)), g.dbias) {
                    self.accumulate(grads, b, db)?;
                }
                if needs(x) {
                    self.accumulate(grads, x, g.dx)?;
                }
            }
            Op::Relu { x } => {
                let dx = ops::relu_bwd(&dy, y)?;
                self.accumulate(grads, x, dx)?;
            }
            Op::GroupMean { x, n } => {
                let dx = ops::group_mean_bwd(&dy, n)?;
                self.accumulate(grads, x, dx)?;
            }
            Op::Conv2d { x, w, g, wm } => {
                if needs(w) {
                    self.accumulate(grads, w, ops::conv2d_bwd_weight(self.value(x), self.value(w), &dy, g)?)?;
                }
                if needs(x) {
                    self.accumulate(grads, x, ops::conv2d_bwd_input_matrix(&wm, &dy, g)?)?;
                }
            }
            Op::MaxPool { x, g } => {
                let dx = ops::max_pool_bwd(self.value(x), y, &dy, g)?;
                self.accumulate(grads, x, dx)?;
            }
            Op::Add { a, b } => match (needs(a), needs(b)) {
                (true, true) => {
                    self.accumulate(grads, a, dy.try_clone()?)?;
                    self.accumulate(grads, b, dy)?;
                }
                (true, false) => self.accumulate(grads, a, dy)?,
                (false, true) => self.accumulate(grads, b, dy)?,
                (false, false) => {}
            },
        }
        Ok(())
    }

    /// Adds `upstream * g` into the gradient of `v`, for an op with a scalar output whose
    /// gradient for an upstream of 1 is the stored `g`.
    fn scaled(&self, grads: &mut [Option<Tensor>], v: Var, g: Tensor, upstream: Upstream) -> Result<()> {
        let g = self.scale_by(g, upstream)?;
        self.accumulate(grads, v, g)
    }

    /// `upstream * g` for the stored gradient `g` of a scalar op (no work for the usual 1).
    fn scale_by(&self, mut g: Tensor, upstream: Upstream) -> Result<Tensor> {
        if let Upstream::Grad(t) = upstream {
            let s = host_scalar(&t, "backward of a scalar op")?;
            if s != 1.0 {
                ops::scale_(&mut g, s)?;
            }
        }
        Ok(g)
    }

    /// Adds `g` into the gradient of `v`, reshaped to `v`'s shape (a matmul of a 1-D operand
    /// returns a 2-D gradient with the same elements).
    fn accumulate(&self, grads: &mut [Option<Tensor>], v: Var, g: Tensor) -> Result<()> {
        let shape = self.value(v).shape();
        if g.numel() != self.value(v).numel() {
            return Err(Error::Shape {
                op: "backward",
                detail: format!("gradient {:?} for a value of shape {shape:?}", g.shape()),
            });
        }
        let g = if g.shape() == shape { g } else { g.reshape(shape) };
        match &mut grads[v.0] {
            Some(acc) => ops::axpy_(acc, 1.0, &g),
            slot => {
                *slot = Some(g);
                Ok(())
            }
        }
    }
}

/// The gradient flowing into a node: exactly 1 at the root, else a tensor.
enum Upstream {
    One,
    Grad(Tensor),
}

impl Upstream {
    /// As a tensor shaped like the node's value `y` (the root's is a 1-element tensor of ones).
    fn into_tensor(self, y: &Tensor) -> Result<Tensor> {
        match self {
            Upstream::One => Tensor::full(y.shape(), 1.0, &y.device()),
            Upstream::Grad(g) => Ok(g),
        }
    }
}

/// The single element of a 1-element tensor (copied to the host).
fn host_scalar(t: &Tensor, op: &'static str) -> Result<f32> {
    if t.numel() != 1 {
        return Err(Error::Shape { op, detail: format!("expected a 1-element tensor, got {:?}", t.shape()) });
    }
    Ok(t.to_vec()?[0])
}

impl Default for Tape<'_> {
    fn default() -> Self {
        Self::new()
    }
}
