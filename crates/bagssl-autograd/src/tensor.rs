//! `Tensor`: a row-major f32 array with a shape, stored on the CPU or on a GPU.

use std::sync::Arc;

use bagssl_kernels::{Gpu, GpuBuf};

use crate::Result;

/// Where a tensor lives.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Device {
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(g) => g.name().to_string(),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Storage of a tensor's elements, row-major.
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(GpuBuf),
}

/// A dense f32 tensor (row-major). Most ops take 1-D or 2-D tensors.
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A CPU tensor from its elements. Panics only on a programming error (length != product of shape).
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor::new("from_vec", shape, data.len(), Storage::Cpu(data))
    }

    /// `storage` of `len` elements as a tensor of `shape`; panics (a programming error of `op`)
    /// when they do not match.
    fn new(op: &str, shape: &[usize], len: usize, storage: Storage) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), len, "Tensor::{op}: shape {shape:?} vs {len} elements");
        Tensor { shape: shape.to_vec(), storage }
    }

    /// A CPU tensor holding a copy of `data`, in a recycled buffer ([`crate::cpu::pool`]).
    pub fn from_slice(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::filled_by(shape, |v| v.copy_from_slice(data))
    }

    /// A CPU tensor whose elements `fill` writes, every one of them, into a recycled buffer
    /// ([`crate::cpu::pool`]: it holds stale values until then): per-batch inputs gathered
    /// straight into the tensor, with no buffer of the caller's and no copy.
    pub fn filled_by(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> Tensor {
        let mut v = crate::cpu::pool::take(shape.iter().product());
        fill(&mut v);
        Tensor::from_vec(shape, v)
    }

    /// Wraps a GPU buffer of `shape.iter().product()` elements.
    pub fn from_gpu(shape: &[usize], buf: GpuBuf) -> Tensor {
        Tensor::new("from_gpu", shape, buf.len(), Storage::Cuda(buf))
    }

    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(match device {
            Device::Cpu => Tensor::from_vec(shape, vec![0.0; n]),
            Device::Cuda(gpu) => Tensor::from_gpu(shape, gpu.zeros(n)?),
        })
    }

    pub fn full(shape: &[usize], value: f32, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(shape, vec![value; shape.iter().product()]).to_device(device)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Rows and columns of a 2-D tensor (a 1-D tensor is one row).
    pub fn dims2(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            s => (s[..s.len() - 1].iter().product(), s[s.len() - 1]),
        }
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.gpu().clone()),
        }
    }
    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda(_))
    }

    /// Same elements, new shape (element count must match).
    pub fn reshape(mut self, shape: &[usize]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.numel(), "reshape {:?} -> {shape:?}", self.shape);
        self.shape = shape.to_vec();
        self
    }

    /// CPU elements; `None` for a GPU tensor (use [`Tensor::to_vec`]).
    pub fn as_slice(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Cuda(_) => None,
        }
    }
    pub fn as_mut_slice(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Cuda(_) => None,
        }
    }

    /// Copies the elements to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(match &self.storage {
            Storage::Cpu(v) => v.clone(),
            Storage::Cuda(b) => b.to_host()?,
        })
    }

    /// Copies the first `len` elements (row-major) to the host: part of a tensor without
    /// downloading all of it.
    pub fn to_vec_prefix(&self, len: usize) -> Result<Vec<f32>> {
        if len > self.numel() {
            let detail = format!("{len} of the {} elements of {:?}", self.numel(), self.shape);
            return Err(crate::Error::Shape { op: "to_vec_prefix", detail });
        }
        Ok(match &self.storage {
            Storage::Cpu(v) => v[..len].to_vec(),
            Storage::Cuda(b) => b.to_host_prefix(len)?,
        })
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Ok(match (device, &self.storage) {
            (Device::Cpu, Storage::Cpu(v)) => Tensor::from_slice(&self.shape, v),
            (Device::Cpu, Storage::Cuda(b)) => Tensor::from_vec(&self.shape, b.to_host()?),
            (Device::Cuda(gpu), Storage::Cpu(v)) => Tensor::from_gpu(&self.shape, gpu.upload(v)?),
            (Device::Cuda(gpu), Storage::Cuda(b)) => Tensor::from_gpu(&self.shape, gpu.copy(b)?),
        })
    }

    pub fn try_clone(&self) -> Result<Tensor> {
        self.to_device(&self.device())
    }
}

/// A CPU tensor's buffer goes back to [`crate::cpu::pool`] for the next op of its length.
impl Drop for Tensor {
    fn drop(&mut self) {
        if let Storage::Cpu(v) = &mut self.storage {
            crate::cpu::pool::give(std::mem::take(v));
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.device())
    }
}
