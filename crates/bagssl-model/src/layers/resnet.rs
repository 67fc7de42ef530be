//! torchvision's ResNets over NHWC rows, with torchvision's module names under the prefix, so
//! that the tensors load into `torchvision.models.resnet*` with `load_state_dict`:
//!
//! ```text
//! ResNet                       conv1.weight, bn1.{weight, bias, running_mean, running_var}
//! ├── [maxpool]                (ImageNet stem only)
//! └── layer{s}.{b}: Block      conv1, bn1, conv2, bn2, [conv3, bn3], [downsample.0, downsample.1]
//! h = mean over the last stage's pixels (torchvision's avgpool; its fc is left out)
//! ```

use bagssl_autograd::{Var, Window2d};

use super::{child, ConvBn, ConvSpec, Forward, Init, Layer, Spatial, Visitor, VisitorMut};
use crate::config::{BlockKind, ResnetLayout, Stem};
use crate::{ModelError, Result};

/// The 1x1 convolution + BatchNorm shortcut of a block that changes the size or the width.
fn downsample(prefix: &str, c_in: usize, c_out: usize, stride: usize, init: &mut Init<'_>) -> Result<Option<ConvBn>> {
    if stride == 1 && c_in == c_out {
        return Ok(None);
    }
    let (conv, bn) = (child(prefix, "downsample.0"), child(prefix, "downsample.1"));
    Ok(Some(ConvBn::new(&conv, &bn, ConvSpec { c_in, c_out, kernel: 1, stride, relu: false }, init)?))
}

/// `relu(main + shortcut)`, the shortcut being `x` itself or its downsampling.
fn residual<'a>(f: &mut Forward<'_, 'a>, main: Var, x: Var, s: Spatial, shortcut: &'a Option<ConvBn>) -> Result<Var> {
    let identity = match shortcut {
        Some(d) => d.forward_spatial(f, x, s)?.0,
        None => x,
    };
    let sum = f.tape.add(main, identity)?;
    Ok(f.tape.relu(sum)?)
}

/// Two 3x3 convolutions (torchvision's `BasicBlock`), the stride on the first.
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub downsample: Option<ConvBn>,
}

impl BasicBlock {
    pub fn new(prefix: &str, c_in: usize, width: usize, stride: usize, init: &mut Init<'_>) -> Result<Self> {
        let name = |m: &str| child(prefix, m);
        let conv1 = ConvBn::new(
            &name("conv1"),
            &name("bn1"),
            ConvSpec { c_in, c_out: width, kernel: 3, stride, relu: true },
            init,
        )?;
        let conv2 = ConvBn::new(
            &name("conv2"),
            &name("bn2"),
            ConvSpec { c_in: width, c_out: width, kernel: 3, stride: 1, relu: false },
            init,
        )?;
        Ok(BasicBlock { conv1, conv2, downsample: downsample(prefix, c_in, width, stride, init)? })
    }
}

/// 1x1, 3x3 (with the stride), 1x1 to 4x the width (torchvision's `Bottleneck`, "ResNet v1.5").
#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub conv3: ConvBn,
    pub downsample: Option<ConvBn>,
}

impl Bottleneck {
    pub fn new(prefix: &str, c_in: usize, width: usize, stride: usize, init: &mut Init<'_>) -> Result<Self> {
        let name = |m: &str| child(prefix, m);
        let c_out = width * BlockKind::Bottleneck.expansion();
        let conv1 = ConvBn::new(
            &name("conv1"),
            &name("bn1"),
            ConvSpec { c_in, c_out: width, kernel: 1, stride: 1, relu: true },
            init,
        )?;
        let conv2 = ConvBn::new(
            &name("conv2"),
            &name("bn2"),
            ConvSpec { c_in: width, c_out: width, kernel: 3, stride, relu: true },
            init,
        )?;
        let conv3 = ConvBn::new(
            &name("conv3"),
            &name("bn3"),
            ConvSpec { c_in: width, c_out, kernel: 1, stride: 1, relu: false },
            init,
        )?;
        Ok(Bottleneck { conv1, conv2, conv3, downsample: downsample(prefix, c_in, c_out, stride, init)? })
    }
}

/// A residual block of either kind.
#[derive(Debug)]
pub enum Block {
    // Boxed: the two differ in size by a convolution, and a stage is a Vec of them.
    Basic(Box<BasicBlock>),
    Bottleneck(Box<Bottleneck>),
}

impl Block {
    /// `x` (n·h·w, in) of size `s` through the block: the output and its size.
    pub fn forward_spatial<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var, s: Spatial) -> Result<(Var, Spatial)> {
        match self {
            Block::Basic(b) => {
                let (y, s2) = b.conv1.forward_spatial(f, x, s)?;
                let (y, _) = b.conv2.forward_spatial(f, y, s2)?;
                Ok((residual(f, y, x, s, &b.downsample)?, s2))
            }
            Block::Bottleneck(b) => {
                let (y, _) = b.conv1.forward_spatial(f, x, s)?;
                let (y, s2) = b.conv2.forward_spatial(f, y, s)?;
                let (y, _) = b.conv3.forward_spatial(f, y, s2)?;
                Ok((residual(f, y, x, s, &b.downsample)?, s2))
            }
        }
    }

    /// FLOPs of the block's forward on an input of size `s`, and its output size.
    fn flops(&self, s: Spatial) -> (f64, Spatial) {
        let shortcut = |d: &Option<ConvBn>| d.as_ref().map_or(0.0, |d| conv_flops(d, s).0);
        match self {
            Block::Basic(b) => {
                let (f1, s2) = conv_flops(&b.conv1, s);
                (f1 + conv_flops(&b.conv2, s2).0 + shortcut(&b.downsample), s2)
            }
            Block::Bottleneck(b) => {
                let (f1, _) = conv_flops(&b.conv1, s);
                let (f2, s2) = conv_flops(&b.conv2, s);
                (f1 + f2 + conv_flops(&b.conv3, s2).0 + shortcut(&b.downsample), s2)
            }
        }
    }

    fn convs(&self) -> Vec<&ConvBn> {
        match self {
            Block::Basic(b) => [&b.conv1, &b.conv2].into_iter().chain(&b.downsample).collect(),
            Block::Bottleneck(b) => [&b.conv1, &b.conv2, &b.conv3].into_iter().chain(&b.downsample).collect(),
        }
    }

    fn convs_mut(&mut self) -> Vec<&mut ConvBn> {
        match self {
            Block::Basic(b) => [&mut b.conv1, &mut b.conv2].into_iter().chain(&mut b.downsample).collect(),
            Block::Bottleneck(b) => {
                [&mut b.conv1, &mut b.conv2, &mut b.conv3].into_iter().chain(&mut b.downsample).collect()
            }
        }
    }
}

/// A ResNet encoder of `patch x patch x 3` inputs: stem, stages, global mean pool.
#[derive(Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    /// The ImageNet stem's 3x3 stride-2 max-pool.
    pub max_pool: bool,
    /// `stages[s][b]` is torchvision's `layer{s+1}.{b}`.
    pub stages: Vec<Vec<Block>>,
    pub patch: usize,
}

impl ResNet {
    pub fn new(prefix: &str, layout: &ResnetLayout, stem: Stem, patch: usize, init: &mut Init<'_>) -> Result<Self> {
        let name = |m: &str| child(prefix, m);
        let first = *layout.widths.first().ok_or_else(|| ModelError::Config("a ResNet needs a stage".into()))?;
        let (kernel, stride) = match stem {
            Stem::Cifar => (3, 1),
            Stem::Imagenet => (7, 2),
        };
        let stem_layer = ConvBn::new(
            &name("conv1"),
            &name("bn1"),
            ConvSpec { c_in: 3, c_out: first, kernel, stride, relu: true },
            init,
        )?;
        let mut c_in = first;
        let mut stages = Vec::with_capacity(layout.widths.len());
        for (s, (&width, &count)) in layout.widths.iter().zip(&layout.blocks).enumerate() {
            let mut blocks = Vec::with_capacity(count);
            for b in 0..count {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let prefix = name(&format!("layer{}.{b}", s + 1));
                blocks.push(match layout.block {
                    BlockKind::Basic => Block::Basic(Box::new(BasicBlock::new(&prefix, c_in, width, stride, init)?)),
                    BlockKind::Bottleneck => {
                        Block::Bottleneck(Box::new(Bottleneck::new(&prefix, c_in, width, stride, init)?))
                    }
                });
                c_in = width * layout.block.expansion();
            }
            stages.push(blocks);
        }
        Ok(ResNet { stem: stem_layer, max_pool: stem == Stem::Imagenet, stages, patch })
    }

    /// GEMM FLOPs of one patch's forward through the convolutions, and the stem's alone.
    pub fn forward_flops_per_patch(&self) -> (f64, f64) {
        let (stem, mut s) = conv_flops(&self.stem, Spatial { n: 1, h: self.patch, w: self.patch });
        if self.max_pool {
            let g = stem_pool(self.stem.conv.c_out(), s);
            s = Spatial { n: 1, h: g.out_h(), w: g.out_w() };
        }
        let mut total = stem;
        for block in self.stages.iter().flatten() {
            let (f, out) = block.flops(s);
            total += f;
            s = out;
        }
        (total, stem)
    }

    fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(self.stages.iter().flatten().flat_map(Block::convs))
    }
}

/// FLOPs of one convolution on one image of size `s` (2 per multiply-add), and its output size.
fn conv_flops(c: &ConvBn, s: Spatial) -> (f64, Spatial) {
    let g = c.conv.window(s);
    let macs = g.out_h() * g.out_w() * c.conv.c_out() * g.patch_len();
    (2.0 * macs as f64, Spatial { n: s.n, h: g.out_h(), w: g.out_w() })
}

/// torchvision's stem max-pool: 3x3, stride 2, padding 1.
fn stem_pool(c: usize, s: Spatial) -> Window2d {
    Window2d { n: s.n, h: s.h, w: s.w, c, kh: 3, kw: 3, stride: 2, pad: 1 }
}

impl Layer for ResNet {
    /// `x` holds patches (n, patch·patch·3), HWC-flattened: as NHWC rows it is already the
    /// (n·patch·patch, 3) activation. Returns h (n, channels of the last stage).
    fn forward<'a>(&'a self, f: &mut Forward<'_, 'a>, x: Var) -> Result<Var> {
        let per_patch = self.patch * self.patch * 3;
        let numel = f.tape.value(x).numel();
        if numel == 0 || !numel.is_multiple_of(per_patch) {
            let shape = f.tape.value(x).shape().to_vec();
            return Err(ModelError::Config(format!(
                "ResNet input {shape:?} is not whole {0}x{0}x3 patches",
                self.patch
            )));
        }
        let s = Spatial { n: numel / per_patch, h: self.patch, w: self.patch };
        let (mut y, mut s) = self.stem.forward_spatial(f, x, s)?;
        if self.max_pool {
            let g = stem_pool(self.stem.conv.c_out(), s);
            y = f.tape.max_pool(y, g)?;
            s = Spatial { n: s.n, h: g.out_h(), w: g.out_w() };
        }
        for block in self.stages.iter().flatten() {
            (y, s) = block.forward_spatial(f, y, s)?;
        }
        Ok(f.tape.group_mean(y, s.h * s.w)?)
    }

    fn visit<'s>(&'s self, v: &mut Visitor<'s>) {
        self.convs().for_each(|c| c.visit(v));
    }

    fn visit_mut<'s>(&'s mut self, v: &mut VisitorMut<'s>) {
        self.stem.visit_mut(v);
        for c in self.stages.iter_mut().flatten().flat_map(Block::convs_mut) {
            c.visit_mut(v);
        }
    }
}
