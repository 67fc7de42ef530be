//! A 2-D convolution over NHWC rows and the convolution-BatchNorm pair of every ResNet layer.

use bagssl_autograd::{Var, Window2d};

use super::{BatchNorm, BnNames, Forward, Init, Layer, Param, Visitor, VisitorMut};
use crate::Result;

/// The batch and image size of an activation: it is (n·h·w, channels) rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spatial {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// A square convolution without bias, torchvision's `nn.Conv2d(.., bias=False)`: `prefix.weight`
/// (out, in, k, k).
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Param,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub fn new(
        name: String,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        init: &mut Init<'_>,
    ) -> Result<Self> {
        let weight = init.conv_weight(name, [c_out, c_in, kernel, kernel])?;
        // torchvision's padding: `kernel / 2` (1 for 3x3, 3 for 7x7, 0 for 1x1).
        Ok(Conv2d { weight, kernel, stride, pad: kernel / 2 })
    }

    pub fn c_in(&self) -> usize {
        self.weight.value.shape()[1]
    }

    pub fn c_out(&self) -> usize {
        self.weight.value.shape()[0]
    }

    /// The window over an input of size `s`.
    pub fn window(&self, s: Spatial) -> Window2d {
        let (kernel, stride, pad) = (self.kernel, self.stride, self.pad);
        Window2d { n: s.n, h: s.h, w: s.w, c: self.c_in(), kh: kernel, kw: kernel, stride, pad }
    }

    /// `x` (n·h·w, in) -> (n·h'·w', out) and the output size.
    pub fn forward_spatial<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var, s: Spatial) -> Result<(Var, Spatial)> {
        let g = self.window(s);
        let w = f.param(&self.weight);
        let y = f.tape.conv2d(x, w, g)?;
        Ok((y, Spatial { n: s.n, h: g.out_h(), w: g.out_w() }))
    }

    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        v.params.push(&self.weight);
    }

    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        v.params.push(&mut self.weight);
    }
}

/// A convolution then BatchNorm2d (the column BatchNorm of the NHWC rows), optionally ReLU.
/// The two have torchvision's separate names (`conv1` / `bn1`, `downsample.0` / `downsample.1`).
#[derive(Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// The shape of a [`ConvBn`]: channels in and out, a square `kernel` at `stride` (padding
/// `kernel / 2`), and a ReLU after the BatchNorm or not.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub relu: bool,
}

impl ConvBn {
    /// `conv` and `bn` are the full names of the two modules.
    pub fn new(conv: &str, bn: &str, spec: ConvSpec, init: &mut Init<'_>) -> Result<Self> {
        let ConvSpec { c_in, c_out, kernel, stride, relu } = spec;
        let conv = Conv2d::new(super::child(conv, "weight"), c_in, c_out, kernel, stride, init)?;
        let bn = BatchNorm::new(bn, c_out, BnNames::WeightBias, relu, init)?;
        Ok(ConvBn { conv, bn })
    }

    pub fn forward_spatial<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var, s: Spatial) -> Result<(Var, Spatial)> {
        let (y, s) = self.conv.forward_spatial(f, x, s)?;
        Ok((self.bn.forward(f, y)?, s))
    }

    pub fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        self.conv.visit(v);
        self.bn.visit(v);
    }

    pub fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        self.conv.visit_mut(v);
        self.bn.visit_mut(v);
    }
}
