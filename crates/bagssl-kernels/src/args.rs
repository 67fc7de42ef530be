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
