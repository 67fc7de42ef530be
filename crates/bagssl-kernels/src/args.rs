//! The BatchNorm argument structs, generic over what holds the values: the autograd's `ops` and
//! backends take them over tensors, the CPU kernels over slices, the launchers of this crate over
//! [`crate::GpuBuf`]s (with the row count, which a flat buffer does not carry). One definition
//! for every level, named fields throughout: no two arguments can trade places on the way down.
//! They live here, in the crate every backend depends on, so no level imports another's.

/// A training-mode BatchNorm over the rows of `x + bias` (batch statistics, biased variance),
/// optionally followed by ReLU.
///
/// `bias` is the bias of the Linear layer before the BatchNorm, folded in, so no pass writes and
/// re-reads the biased matrix: the CUDA kernels add it as they read x (bit for bit `bias_add`
/// then BatchNorm), the CPU ones take the statistics of x and shift its mean (the same values to
/// f32 rounding, no work per element). The batch mean is that of `x + bias`.
pub struct BnTrainArgs<'a, T: ?Sized> {
    /// (rows, cols).
    pub x: &'a T,
    /// (cols), or `None`.
    pub bias: Option<&'a T>,
    /// Scale (cols).
    pub gamma: &'a T,
    /// Shift (cols).
    pub beta: &'a T,
    pub eps: f32,
    /// Fuse a ReLU after the affine transform.
    pub relu: bool,
}

impl<'a, T: ?Sized> BnTrainArgs<'a, T> {
    /// The same arguments with every value mapped by `f` (a tensor to its slice, say).
    pub fn try_map<U: ?Sized, E>(self, f: impl Fn(&'a T) -> Result<&'a U, E>) -> Result<BnTrainArgs<'a, U>, E> {
        let BnTrainArgs { x, bias, gamma, beta, eps, relu } = self;
        Ok(BnTrainArgs { x: f(x)?, bias: bias.map(&f).transpose()?, gamma: f(gamma)?, beta: f(beta)?, eps, relu })
    }
}

/// The backward of the forward `fwd`, with its output `y`, batch statistics and dL/dy.
///
/// With ReLU, `y > 0` is the mask (a GPU recomputes it from x, gamma and beta, bit for bit,
/// rather than read y). With a bias, the backward also returns dbias, the column sums of dx.
pub struct BnBackwardArgs<'a, T: ?Sized> {
    pub fwd: BnTrainArgs<'a, T>,
    /// dL/dy (rows, cols).
    pub dy: &'a T,
    /// The forward's output (rows, cols).
    pub y: &'a T,
    /// The forward's batch mean (cols).
    pub mean: &'a T,
    /// The forward's 1 / sqrt(biased variance + eps) (cols).
    pub invstd: &'a T,
}

impl<'a, T: ?Sized> BnBackwardArgs<'a, T> {
    /// The same arguments with every value mapped by `f`.
    pub fn try_map<U: ?Sized, E>(self, f: impl Fn(&'a T) -> Result<&'a U, E>) -> Result<BnBackwardArgs<'a, U>, E> {
        let [dy, y, mean, invstd] = [self.dy, self.y, self.mean, self.invstd].map(&f);
        Ok(BnBackwardArgs { fwd: self.fwd.try_map(f)?, dy: dy?, y: y?, mean: mean?, invstd: invstd? })
    }
}

/// An eval-mode BatchNorm: running statistics and affine parameters (each (cols)), optionally
/// followed by ReLU. Its input is passed beside it (`ops::linear_bn_eval`'s is a product).
pub struct BnEval<'a, T: ?Sized> {
    pub running_mean: &'a T,
    pub running_var: &'a T,
    pub gamma: &'a T,
    pub beta: &'a T,
    pub eps: f32,
    pub relu: bool,
}

impl<'a, T: ?Sized> BnEval<'a, T> {
    /// The four per-column vectors, named, for shape and device checks.
    pub fn vectors(&self) -> [(&'static str, &'a T); 4] {
        [
            ("running_mean", self.running_mean),
            ("running_var", self.running_var),
            ("gamma", self.gamma),
            ("beta", self.beta),
        ]
    }

    /// The same arguments with every value mapped by `f`.
    pub fn try_map<U: ?Sized, E>(self, f: impl Fn(&'a T) -> Result<&'a U, E>) -> Result<BnEval<'a, U>, E> {
        let [running_mean, running_var, gamma, beta] = self.vectors().map(|(_, v)| f(v));
        let (eps, relu) = (self.eps, self.relu);
        Ok(BnEval { running_mean: running_mean?, running_var: running_var?, gamma: gamma?, beta: beta?, eps, relu })
    }
}

/// By hand: `derive(Clone, Copy)` would ask `T: Copy` of the unsized slice type.
macro_rules! copy_struct {
    ($($name:ident),*) => {$(
        impl<T: ?Sized> Clone for $name<'_, T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T: ?Sized> Copy for $name<'_, T> {}
    )*};
}
copy_struct!(BnTrainArgs, BnBackwardArgs, BnEval);

/// The geometry of a sliding window over NHWC images (a convolution's or a pooling's): `n`
/// images of `h`×`w` pixels and `c` channels, stored as (n·h·w, c) rows; a `kh`×`kw` window
/// moved by `stride` over the image padded by `pad` pixels on every side. One struct from the
/// model's layers to the CPU kernels and the CUDA launchers, so no two sizes can trade places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window2d {
    /// Output height: `(h + 2 pad - kh) / stride + 1`.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width: `(w + 2 pad - kw) / stride + 1`.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Rows of the input, `n·h·w`.
    pub fn in_rows(&self) -> usize {
        self.n * self.h * self.w
    }
    /// Rows of the output, `n·out_h·out_w`.
    pub fn out_rows(&self) -> usize {
        self.n * self.out_h() * self.out_w()
    }
    /// Elements of one window, `kh·kw·c`: a row of the im2col matrix, ordered (ki, kj, channel).
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.c
    }
    /// The same geometry over the output of this one (for chaining layers).
    pub fn output(&self, c: usize, kh: usize, kw: usize, stride: usize, pad: usize) -> Window2d {
        Window2d { n: self.n, h: self.out_h(), w: self.out_w(), c, kh, kw, stride, pad }
    }
    /// A 1×1 window at stride 1 without padding: the im2col matrix is the input itself.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Why the geometry is unusable (an empty window, a zero stride, a window larger than the
    /// padded image).
    pub fn check(&self) -> Result<(), String> {
        let Window2d { n, h, w, c, kh, kw, stride, pad } = *self;
        if n == 0 || h == 0 || w == 0 || c == 0 || kh == 0 || kw == 0 || stride == 0 {
            return Err(format!("empty geometry {self:?}"));
        }
        if kh > h + 2 * pad || kw > w + 2 * pad {
            return Err(format!("window {kh}x{kw} larger than the padded {h}x{w} image (pad {pad})"));
        }
        Ok(())
    }
}
