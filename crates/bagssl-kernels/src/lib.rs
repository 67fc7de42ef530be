//! bagssl-kernels: everything that knows about CUDA. (Skeleton: the kernels helper fills this in.)

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no CUDA GPU: {0}")]
    NoGpu(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
}

pub struct Gpu {
    name: String,
}

impl Gpu {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn zeros(self: &Arc<Self>, _n: usize) -> Result<GpuBuf, KernelError> {
        Err(KernelError::NoGpu("skeleton".into()))
    }
    pub fn upload(self: &Arc<Self>, _v: &[f32]) -> Result<GpuBuf, KernelError> {
        Err(KernelError::NoGpu("skeleton".into()))
    }
    pub fn copy(self: &Arc<Self>, _b: &GpuBuf) -> Result<GpuBuf, KernelError> {
        Err(KernelError::NoGpu("skeleton".into()))
    }
}

/// A device buffer of f32 plus the GPU that owns it.
pub struct GpuBuf {
    gpu: Arc<Gpu>,
    len: usize,
}

impl GpuBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn to_host(&self) -> Result<Vec<f32>, KernelError> {
        Err(KernelError::NoGpu("skeleton".into()))
    }
}
