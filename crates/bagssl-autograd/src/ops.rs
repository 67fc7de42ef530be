//! The primitives, for any device: each checks shapes and devices once, then calls the
//! [`Backend`] of its tensors' device (`backend::of_tensors`). No op branches on the device:
//! what differs between CPU and CUDA lives in the two `Backend` implementations, and the fused
//! forms one of them specialises have composite defaults in the trait.
//!
//! All matrices are row-major 2-D tensors; vectors are 1-D. A shape mismatch is an
//! [`Error::Shape`] naming the op, never a panic; tensors on different devices are an
//! [`Error::DeviceMismatch`].

use crate::backend::{self, Backend, BnBackward, BnBackwardArgs, BnEval, BnForward, BnTrainArgs, LossGrad, Transpose};
pub use crate::backend::{AdamW, AdamWSlot, VicregParts, VicregWeights, Window2d};
use crate::tensor::Tensor;
use crate::{Error, Result};

fn shape_err(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

/// `(m, k, n)` of `op(a) @ op(b)`; an error when the inner dimensions differ.
pub fn matmul_dims(a: &Tensor, b: &Tensor, t: Transpose) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.dims2();
    let (br, bc) = b.dims2();
    let (m, k) = if t.a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if t.b { (bc, br) } else { (br, bc) };
    if k != k2 {
        let detail = format!(
            "op(a) {m}x{k} (a {:?}, trans {}) @ op(b) {k2}x{n} (b {:?}, trans {})",
            a.shape(),
            t.a,
            b.shape(),
            t.b
        );
        return Err(shape_err("matmul", detail));
    }
    Ok((m, k, n))
}

/// Every named vector has one element per column of `x`.
fn per_column(op: &'static str, x: &Tensor, vs: &[(&str, &Tensor)]) -> Result<()> {
    let cols = x.dims2().1;
    match vs.iter().find(|(_, v)| v.numel() != cols) {
        Some((name, v)) => Err(shape_err(op, format!("{name} {:?} vs {cols} columns of x {:?}", v.shape(), x.shape()))),
        None => Ok(()),
    }
}

/// Every named tensor has the first one's shape (`numel_only`: its element count).
fn same_size(op: &'static str, ts: &[(&str, &Tensor)], numel_only: bool) -> Result<()> {
    let (first, t0) = ts[0];
    let differs = |t: &Tensor| if numel_only { t.numel() != t0.numel() } else { t.shape() != t0.shape() };
    match ts.iter().find(|(_, t)| differs(t)) {
        Some((name, t)) => Err(shape_err(op, format!("{name} {:?} vs {first} {:?}", t.shape(), t0.shape()))),
        None => Ok(()),
    }
}

/// The backend of the tensors of `ts`, which must share a device.
fn on(op: &'static str, ts: &[&Tensor]) -> Result<&'static dyn Backend> {
    backend::of_tensors(op, ts)
}

/// `op(a) @ op(b)` where `op` transposes when asked. Shapes: op(a) (m, k), op(b) (k, n).
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    const NAMES: [&str; 4] = ["matmul A B", "matmul A B^T", "matmul A^T B", "matmul A^T B^T"];
    let _p = crate::profile::op(NAMES[2 * trans_a as usize + trans_b as usize]);
    let t = Transpose { a: trans_a, b: trans_b };
    matmul_dims(a, b, t)?;
    on("matmul", &[a, b])?.matmul(a, b, t)
}

/// `x + b` with `b` (cols) broadcast over the rows of `x` (rows, cols).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("bias_add");
    per_column("bias_add", x, &[("b", b)])?;
    on("bias_add", &[x, b])?.bias_add(x, b)
}

/// `(rows, out)` of `x W^T` with W (out, in); a bias, if any, has `out` elements.
fn linear_dims(op: &'static str, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize)> {
    let (rows, _, out) = matmul_dims(x, w, Transpose::NT)?;
    match b {
        Some(b) if b.numel() != out => Err(shape_err(op, format!("bias {:?} vs weight {:?}", b.shape(), w.shape()))),
        _ => Ok((rows, out)),
    }
}

/// `x W^T + b` with `W` (out, in) as in PyTorch.
pub fn linear_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let _p = crate::profile::op("linear_fwd");
    linear_dims("linear_fwd", x, w, b)?;
    let mut ts = vec![x, w];
    ts.extend(b);
    on("linear_fwd", &ts)?.linear_fwd(x, w, b)
}

/// Column sums of a 2-D tensor: (rows, cols) -> (cols).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("sum_rows");
    on("sum_rows", &[x])?.sum_rows(x)
}

/// Training-mode BatchNorm of `a.x + a.bias` (see [`BnTrainArgs`]).
pub fn bn_train_fwd(a: BnTrainArgs<'_>) -> Result<BnForward> {
    let op = "bn_train_fwd";
    let _p = crate::profile::op(op);
    per_column(op, a.x, &[("gamma", a.gamma), ("beta", a.beta)])?;
    if let Some(b) = a.bias {
        per_column(op, a.x, &[("bias", b)])?;
    }
    if a.x.dims2().0 < 2 {
        return Err(shape_err(op, format!("needs at least 2 rows for batch statistics, got {:?}", a.x.shape())));
    }
    let mut ts = vec![a.x, a.gamma, a.beta];
    ts.extend(a.bias);
    on(op, &ts)?.bn_train_fwd(a)
}

/// Backward of [`bn_train_fwd`] (see [`BnBackwardArgs`]).
pub fn bn_train_bwd(a: BnBackwardArgs<'_>) -> Result<BnBackward> {
    let op = "bn_train_bwd";
    let _p = crate::profile::op(op);
    let f = a.fwd;
    same_size(op, &[("dy", a.dy), ("x", f.x), ("y", a.y)], false)?;
    per_column(op, f.x, &[("gamma", f.gamma), ("beta", f.beta), ("mean", a.mean), ("invstd", a.invstd)])?;
    if let Some(b) = f.bias {
        per_column(op, f.x, &[("bias", b)])?;
    }
    let mut ts = vec![a.dy, f.x, a.y, f.gamma, f.beta, a.mean, a.invstd];
    ts.extend(f.bias);
    on(op, &ts)?.bn_train_bwd(a)
}

/// Eval-mode BatchNorm with running statistics, optionally fused with ReLU.
pub fn bn_eval_fwd(x: &Tensor, bn: BnEval<'_>) -> Result<Tensor> {
    let op = "bn_eval_fwd";
    let _p = crate::profile::op(op);
    per_column(op, x, &bn.vectors())?;
    let [a, b, c, d] = bn.vectors().map(|(_, t)| t);
    on(op, &[x, a, b, c, d])?.bn_eval_fwd(x, bn)
}

/// Eval-mode `act(BN(x W^T + b))`. The bias folds into the running mean (`BN(y + b)` with mean
/// m is `BN(y)` with mean `m - b`), so no pass adds it; the backend may fuse the BatchNorm into
/// the GEMM (the CPU's bf16 GEMM does, bit-identical to the two passes).
pub fn linear_bn_eval(x: &Tensor, w: &Tensor, b: Option<&Tensor>, bn: BnEval<'_>) -> Result<Tensor> {
    let op = "linear_bn_eval";
    let _p = crate::profile::op(op);
    let (_, out) = linear_dims(op, x, w, b)?;
    if let Some((name, v)) = bn.vectors().into_iter().find(|(_, v)| v.numel() != out) {
        return Err(shape_err(op, format!("{name} {:?} vs weight {:?}", v.shape(), w.shape())));
    }
    let [m, v, g, be] = bn.vectors().map(|(_, t)| t);
    let mut ts = vec![x, w, m, v, g, be];
    ts.extend(b);
    let backend = on(op, &ts)?;
    match b {
        Some(b) => {
            let mut shifted = bn.running_mean.try_clone()?;
            backend.axpy_(&mut shifted, -1.0, b)?;
            backend.linear_bn_eval(x, w, BnEval { running_mean: &shifted, ..bn })
        }
        None => backend.linear_bn_eval(x, w, bn),
    }
}

/// In-place running-statistics update: `r = (1 - momentum) r + momentum batch`.
pub fn ema_(running: &mut Tensor, batch: &Tensor, momentum: f32) -> Result<()> {
    let _p = crate::profile::op("ema_");
    same_size("ema_", &[("running", running), ("batch", batch)], true)?;
    on("ema_", &[running, batch])?.ema_(running, batch, momentum)
}

/// [`ema_`] on every `(running, batch)` pair: the same values; on a GPU one launch for up to 16.
pub fn ema_multi_(pairs: &mut [(&mut Tensor, &Tensor)], momentum: f32) -> Result<()> {
    let _p = crate::profile::op("ema_");
    let mut all = Vec::with_capacity(2 * pairs.len());
    for (r, b) in pairs.iter() {
        same_size("ema_", &[("running", r), ("batch", b)], true)?;
        all.extend([&**r, *b]);
    }
    if all.is_empty() {
        return Ok(());
    }
    on("ema_", &all)?.ema_multi_(pairs, momentum)
}

pub fn relu_fwd(x: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("relu_fwd");
    on("relu_fwd", &[x])?.relu_fwd(x)
}

/// `dy * (y > 0)`.
pub fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("relu_bwd");
    same_size("relu_bwd", &[("dy", dy), ("y", y)], false)?;
    on("relu_bwd", &[dy, y])?.relu_bwd(dy, y)
}

fn check_vicreg(z: &Tensor, n_per_image: usize) -> Result<()> {
    let (rows, d) = z.dims2();
    if z.shape().len() != 2 || d == 0 || rows < 2 || n_per_image == 0 || !rows.is_multiple_of(n_per_image) {
        return Err(shape_err(
            "vicreg_fwd_bwd",
            format!("z {:?} must be (B*n, D) with D >= 1, B*n >= 2, n = {n_per_image} >= 1 dividing B*n", z.shape()),
        ));
    }
    Ok(())
}

/// bag-VICReg on `z` (B*n, D): the loss parts and dL/dz of the weighted loss
/// (docs/DEFINITIONS.md §7).
pub fn vicreg_fwd_bwd(z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<(VicregParts, Tensor)> {
    let _p = crate::profile::op("vicreg_fwd_bwd");
    check_vicreg(z, n_per_image)?;
    on("vicreg_fwd_bwd", &[z])?.vicreg_fwd_bwd(z, n_per_image, w)
}

/// [`vicreg_fwd_bwd`] without waiting for the scalars on a GPU: the scalars (loss, invariance,
/// variance, covariance; pending there), the weighted loss as a 1-element tensor on `z`'s device
/// (computed there), and dL/dz.
pub fn vicreg_fwd_bwd_async(z: &Tensor, n_per_image: usize, w: VicregWeights) -> Result<LossGrad> {
    let _p = crate::profile::op("vicreg_fwd_bwd");
    check_vicreg(z, n_per_image)?;
    on("vicreg_fwd_bwd", &[z])?.vicreg_fwd_bwd_async(z, n_per_image, w)
}

/// Mean over consecutive groups of `n` rows: (B*n, D) -> (B, D).
pub fn group_mean(x: &Tensor, n: usize) -> Result<Tensor> {
    let _p = crate::profile::op("group_mean");
    if n == 0 || !x.dims2().0.is_multiple_of(n) {
        return Err(shape_err("group_mean", format!("{:?} rows are not groups of n = {n}", x.shape())));
    }
    on("group_mean", &[x])?.group_mean(x, n)
}

/// Backward of [`group_mean`]: (B, D) -> (B*n, D), each row `dy[b] / n`.
pub fn group_mean_bwd(dy: &Tensor, n: usize) -> Result<Tensor> {
    let _p = crate::profile::op("group_mean_bwd");
    if n == 0 {
        return Err(shape_err("group_mean_bwd", "n = 0".to_string()));
    }
    on("group_mean_bwd", &[dy])?.group_mean_bwd(dy, n)
}

/// Sum of the elementwise product, as f64 (`sum(x * w)`).
pub fn dot(x: &Tensor, w: &Tensor) -> Result<f64> {
    let _p = crate::profile::op("dot");
    same_size("dot", &[("x", x), ("w", w)], true)?;
    on("dot", &[x, w])?.dot(x, w)
}

/// `y += alpha * x`, in place.
pub fn axpy_(y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    let _p = crate::profile::op("axpy_");
    same_size("axpy_", &[("y", y), ("x", x)], true)?;
    on("axpy_", &[y, x])?.axpy_(y, alpha, x)
}

/// `x *= s`, in place.
pub fn scale_(x: &mut Tensor, s: f32) -> Result<()> {
    let _p = crate::profile::op("scale_");
    on("scale_", &[x])?.scale_(x, s)
}

fn check_slot<'s>(s: &'s AdamWSlot<'_>) -> Result<[&'s Tensor; 4]> {
    same_size("adamw_", &[("param", s.param), ("grad", s.grad), ("m", s.m), ("v", s.v)], true)?;
    Ok([&*s.param, s.grad, &*s.m, &*s.v])
}

/// One AdamW update of `param` in place, with moment buffers `m`, `v` (weight decay
/// `h.weight_decay`).
pub fn adamw_(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, h: AdamW) -> Result<()> {
    let _p = crate::profile::op("adamw_");
    let slot = AdamWSlot { param, grad, m, v, weight_decay: h.weight_decay };
    let backend = on("adamw_", &check_slot(&slot)?)?;
    backend.adamw_(slot, h)
}

/// [`adamw_`] on many tensors at once, each with its own weight decay: the same values as one
/// call per tensor. On a GPU one launch updates up to 16 tensors (a training step's parameters
/// in one) and rewrites the bf16 GEMM copies of the weights beside them.
pub fn adamw_multi_(slots: &mut [AdamWSlot<'_>], h: AdamW) -> Result<()> {
    let _p = crate::profile::op("adamw_");
    let mut all = Vec::with_capacity(4 * slots.len());
    for s in slots.iter() {
        all.extend(check_slot(s)?);
    }
    if all.is_empty() {
        return Ok(());
    }
    on("adamw_", &all)?.adamw_multi_(slots, h)
}

/// `x` holds the (rows, cols) matrix of the geometry `g`, and `g` is usable.
fn check_window(op: &'static str, x: &Tensor, g: &Window2d, rows: usize, cols: usize) -> Result<()> {
    g.check().map_err(|d| shape_err(op, d))?;
    if x.dims2() != (rows, cols) {
        return Err(shape_err(op, format!("{:?} vs ({rows}, {cols}) for {g:?}", x.shape())));
    }
    Ok(())
}

/// `x` holds the n·h·w·c elements of the geometry's input in any shape (a patch matrix
/// (n, h·w·c) is already NHWC), and `g` is usable.
fn check_input(op: &'static str, x: &Tensor, g: &Window2d) -> Result<()> {
    g.check().map_err(|d| shape_err(op, d))?;
    let (rows, cols) = (g.in_rows(), g.c);
    if x.numel() != rows * cols {
        return Err(shape_err(op, format!("{:?} vs ({rows}, {cols}) for {g:?}", x.shape())));
    }
    Ok(())
}

/// The windows of `x` (n·h·w, c) as rows (n·out_h·out_w, kh·kw·c), columns (ki, kj, channel).
pub fn im2col(x: &Tensor, g: Window2d) -> Result<Tensor> {
    let _p = crate::profile::op("im2col");
    check_input("im2col", x, &g)?;
    on("im2col", &[x])?.im2col(x, g)
}

/// The adjoint of [`im2col`]: (n·out_h·out_w, kh·kw·c) -> (n·h·w, c).
pub fn col2im(cols: &Tensor, g: Window2d) -> Result<Tensor> {
    let _p = crate::profile::op("col2im");
    check_window("col2im", cols, &g, g.out_rows(), g.patch_len())?;
    on("col2im", &[cols])?.col2im(cols, g)
}

/// (outer, a, b) -> (outer, b, a), as an (outer, b·a) matrix; `x` may have any shape with
/// `outer·a·b` elements.
pub fn transpose_last2(x: &Tensor, outer: usize, a: usize, b: usize) -> Result<Tensor> {
    let _p = crate::profile::op("transpose_last2");
    if x.numel() != outer * a * b {
        return Err(shape_err("transpose_last2", format!("{:?} is not ({outer}, {a}, {b})", x.shape())));
    }
    on("transpose_last2", &[x])?.transpose_last2(x, outer, a, b)
}

/// The usable window of a max-pool: PyTorch's rule, padding at most half the window, so that
/// every window holds at least one pixel.
fn check_pool(op: &'static str, x: &Tensor, g: &Window2d) -> Result<()> {
    check_window(op, x, g, g.in_rows(), g.c)?;
    if 2 * g.pad > g.kh || 2 * g.pad > g.kw {
        return Err(shape_err(op, format!("padding {} larger than half the {}x{} window", g.pad, g.kh, g.kw)));
    }
    Ok(())
}

/// Max over each window of `x` (n·h·w, c), padding excluded: (n·out_h·out_w, c).
pub fn max_pool_fwd(x: &Tensor, g: Window2d) -> Result<Tensor> {
    let _p = crate::profile::op("max_pool_fwd");
    check_pool("max_pool_fwd", x, &g)?;
    on("max_pool_fwd", &[x])?.max_pool_fwd(x, g)
}

/// Backward of [`max_pool_fwd`] with its input `x`, output `y` and dL/dy.
pub fn max_pool_bwd(x: &Tensor, y: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
    let op = "max_pool_bwd";
    let _p = crate::profile::op(op);
    check_pool(op, x, &g)?;
    same_size(op, &[("dy", dy), ("y", y)], false)?;
    check_window(op, y, &g, g.out_rows(), g.c)?;
    on(op, &[x, y, dy])?.max_pool_bwd(x, y, dy, g)
}

/// `a + b`, same shapes (a residual connection).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _p = crate::profile::op("add");
    same_size("add", &[("a", a), ("b", b)], false)?;
    on("add", &[a, b])?.add(a, b)
}

/// The weight `w` of a convolution over `g`, torchvision's (out, c, kh, kw), as the GEMM's
/// (out, kh·kw·c) matrix: re-laid out, or only reshaped for a 1×1 window. A training step makes
/// it once per convolution (`Tape::conv2d` keeps it for the backward).
pub fn conv2d_weight_matrix(w: &Tensor, g: Window2d) -> Result<Tensor> {
    let op = "conv2d_weight_matrix";
    let out = w.shape().first().copied().unwrap_or(0);
    if w.shape() != [out, g.c, g.kh, g.kw] || out == 0 {
        return Err(shape_err(op, format!("weight {:?} vs (out, {}, {}, {})", w.shape(), g.c, g.kh, g.kw)));
    }
    if g.kh * g.kw == 1 {
        return Ok(w.try_clone()?.reshape(&[out, g.c]));
    }
    transpose_last2(w, out, g.c, g.kh * g.kw)
}

/// `x` as the (n·h·w, c) matrix a pointwise convolution multiplies: `None` when it is one
/// already, else a reshaped copy.
fn as_rows(x: &Tensor, g: &Window2d) -> Result<Option<Tensor>> {
    Ok(if x.dims2() == (g.in_rows(), g.c) { None } else { Some(x.try_clone()?.reshape(&[g.in_rows(), g.c])) })
}

/// `wm` is a weight matrix of [`conv2d_weight_matrix`] for `g`.
fn check_weight_matrix(op: &'static str, wm: &Tensor, g: &Window2d) -> Result<usize> {
    match wm.shape() {
        [out, k] if *k == g.patch_len() && *out > 0 => Ok(*out),
        s => Err(shape_err(op, format!("weight matrix {s:?} vs (out, {}) for {g:?}", g.patch_len()))),
    }
}

/// A 2-D convolution (no bias, groups or dilation) of `x` (n·h·w, c) by `w` (out, c, kh, kw):
/// (n·out_h·out_w, out), as im2col then one GEMM (none for a pointwise 1×1 at stride 1).
pub fn conv2d_fwd(x: &Tensor, w: &Tensor, g: Window2d) -> Result<Tensor> {
    conv2d_fwd_matrix(x, &conv2d_weight_matrix(w, g)?, g)
}

/// [`conv2d_fwd`] with the weight already a [`conv2d_weight_matrix`].
pub fn conv2d_fwd_matrix(x: &Tensor, wm: &Tensor, g: Window2d) -> Result<Tensor> {
    let op = "conv2d_fwd";
    let _p = crate::profile::op(op);
    check_input(op, x, &g)?;
    check_weight_matrix(op, wm, &g)?;
    if g.is_pointwise() {
        let rows = as_rows(x, &g)?;
        return matmul(rows.as_ref().unwrap_or(x), wm, false, true);
    }
    on(op, &[x, wm])?.conv2d_fwd(x, wm, g)
}

/// dL/dw of [`conv2d_fwd`], torchvision's (out, c, kh, kw) layout: `dyᵀ · im2col(x)`, re-laid.
pub fn conv2d_bwd_weight(x: &Tensor, w: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
    let op = "conv2d_bwd_weight";
    let _p = crate::profile::op(op);
    let out = w.shape().first().copied().unwrap_or(0);
    check_window(op, dy, &g, g.out_rows(), out)?;
    check_input(op, x, &g)?;
    let dwm = if g.is_pointwise() {
        let rows = as_rows(x, &g)?;
        matmul(dy, rows.as_ref().unwrap_or(x), true, false)?
    } else {
        on(op, &[x, dy])?.conv2d_bwd_weight(x, dy, g)?
    };
    let dw = if g.kh * g.kw == 1 { dwm } else { transpose_last2(&dwm, out, g.kh * g.kw, g.c)? };
    Ok(dw.reshape(w.shape()))
}

/// dL/dx of [`conv2d_fwd`]: `col2im(dy · W)`, (n·h·w, c).
pub fn conv2d_bwd_input(w: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
    conv2d_bwd_input_matrix(&conv2d_weight_matrix(w, g)?, dy, g)
}

/// [`conv2d_bwd_input`] with the weight already a [`conv2d_weight_matrix`].
pub fn conv2d_bwd_input_matrix(wm: &Tensor, dy: &Tensor, g: Window2d) -> Result<Tensor> {
    let op = "conv2d_bwd_input";
    let _p = crate::profile::op(op);
    let out = check_weight_matrix(op, wm, &g)?;
    check_window(op, dy, &g, g.out_rows(), out)?;
    if g.is_pointwise() {
        return matmul(dy, wm, false, false);
    }
    on(op, &[wm, dy])?.conv2d_bwd_input(wm, dy, g)
}
