//! Where a training step's patch matrix comes from.
//!
//! The patch specs are drawn on the host (they are the step's only randomness, DESIGN §2); turning
//! them into the normalized (B*n, p*p*3) matrix is device work. This enum is the single seam
//! between the trainer and that work, so the CUDA gather kernel can replace the `Cuda` variant's
//! body without touching the trainer.

use std::sync::Arc;

use bagssl_autograd::{Device, Tensor};
use bagssl_data::{gather_patches, ImageStore, PatchSpec};
use bagssl_kernels::Gpu;

use crate::Result;

/// Produces the patch matrix of a step on the model's device. Holds reusable buffers.
pub enum PatchSource {
    /// CPU gather + augmentation into a reusable host buffer (`bagssl_data::gather_patches`).
    Cpu { host: Vec<f32> },
    /// PLACEHOLDER for the GPU fast path: gathers on the host exactly like `Cpu` and uploads the
    /// result. Correct (same specs -> same matrix), just not fast. The CUDA engineer replaces the
    /// body of [`PatchSource::patches`] for this variant with the patch-embedding gather kernel,
    /// keeping the u8 store resident on the GPU (uploaded once, e.g. cached here by store identity).
    Cuda { gpu: Arc<Gpu>, host: Vec<f32> },
}

impl PatchSource {
    pub fn for_device(device: &Device) -> Self {
        match device {
            Device::Cpu => PatchSource::Cpu { host: Vec::new() },
            Device::Cuda(gpu) => PatchSource::Cuda { gpu: gpu.clone(), host: Vec::new() },
        }
    }

    /// The normalized patch matrix (specs.len(), patch*patch*3), HWC-flattened, on the device.
    pub fn patches(&mut self, store: &ImageStore, specs: &[PatchSpec], patch: usize) -> Result<Tensor> {
        let shape = [specs.len(), patch * patch * 3];
        match self {
            PatchSource::Cpu { host } => {
                fill(host, store, specs, patch);
                // A CPU tensor owns its Vec and the tape consumes it, so hand over a copy and keep
                // the buffer: a memcpy of the batch is small next to the step's GEMMs.
                Ok(Tensor::from_vec(&shape, host.clone()))
            }
            PatchSource::Cuda { gpu, host } => {
                fill(host, store, specs, patch);
                Ok(Tensor::from_gpu(&shape, gpu.upload(host).map_err(bagssl_autograd::Error::from)?))
            }
        }
    }
}

fn fill(host: &mut Vec<f32>, store: &ImageStore, specs: &[PatchSpec], patch: usize) {
    host.resize(specs.len() * patch * patch * 3, 0.0);
    gather_patches(store, specs, patch, host);
}
