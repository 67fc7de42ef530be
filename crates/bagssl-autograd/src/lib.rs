//! bagssl-autograd: f32 tensors on the CPU or a CUDA GPU, a tape for reverse-mode
//! differentiation, and the primitive ops the BagSSL model needs.
//!
//! Layers:
//! - [`tensor`]: `Tensor` (shape + storage) and `Device`.
//! - [`backend`]: the `Backend` trait (every primitive once, with argument structs and composite
//!   defaults for fused forms), implemented by [`cpu::CpuBackend`] and [`cuda::CudaBackend`].
//! - [`ops`]: the primitives for any device: shape checks, then the tensors' backend.
//! - [`loss`]: `ScalarLoss` (a loss with its gradient in one op, N named scalars); `BagVicreg`.
//! - [`tape`]: records ops on `Var`s and runs their backward.
//! - [`profile`]: optional per-op wall-clock totals (`bagssl-train bench --profile`).

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod loss;
pub mod ops;
pub mod profile;
pub mod tape;
pub mod tensor;

pub use backend::{
    AdamW, AdamWSlot, Backend, BnBackward, BnBackwardArgs, BnEval, BnForward, BnTrainArgs, Transpose, VicregParts,
    VicregWeights, Window2d,
};
pub use cpu::{cpu_matmul_precision, set_cpu_matmul_precision, CpuMatmulPrecision};
pub use loss::{BagVicreg, LossValues, PendingLoss, ScalarLoss};
pub use tape::{BnVars, Gradients, Tape, Var};
pub use tensor::{Device, Storage, Tensor};

/// Errors of this crate: shape mismatches and device problems, never panics on user data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("tensors of {op} live on different devices")]
    DeviceMismatch { op: &'static str },
    #[error(transparent)]
    Gpu(#[from] bagssl_kernels::KernelError),
}

pub type Result<T> = std::result::Result<T, Error>;
