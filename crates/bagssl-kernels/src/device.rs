//! GPU detection ([`probe`]), the device handle ([`Gpu`]: context, stream, kernels, cuBLAS) and
//! device buffers ([`GpuBuf`] f32, [`GpuBytes`] u8). Nothing here panics without CUDA: the driver
//! library is probed before any other cudarc call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::ffi::MODULES;
use crate::gemm::GemmPrecision;
use crate::KernelError;

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100/H200.
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// What [`probe`] found: the usable devices, or why there are none.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuProbe {
    pub devices: Vec<GpuInfo>,
    /// Why no GPU can be used (`None` when `devices` is not empty).
    pub reason: Option<String>,
}

impl GpuProbe {
    pub fn is_available(&self) -> bool {
        !self.devices.is_empty()
    }

    /// One line for logs: the devices, or the reason there are none.
    pub fn summary(&self) -> String {
        match &self.reason {
            Some(r) => format!("no usable GPU: {r}"),
            None => self
                .devices
                .iter()
                .map(|d| {
                    let (ma, mi) = d.compute_capability;
                    format!(
                        "cuda:{} {} (sm_{ma}{mi}, {:.0} GiB)",
                        d.ordinal,
                        d.name,
                        d.memory_bytes as f64 / (1u64 << 30) as f64
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn none(reason: impl Into<String>) -> GpuProbe {
        GpuProbe { devices: Vec::new(), reason: Some(reason.into()) }
    }
}

/// Lists the CUDA devices without panicking when there is no driver or no device.
pub fn probe() -> GpuProbe {
    // SAFETY: only tries to dlopen libcuda; no other cudarc call happens before it succeeds.
    probe_with_driver(unsafe { cudarc::driver::sys::is_culib_present() })
}

/// [`probe`] with the outcome of the driver-library check given (lets tests take the no-driver
/// path on a machine that has one).
pub(crate) fn probe_with_driver(driver_present: bool) -> GpuProbe {
    use cudarc::driver::result;
    use cudarc::driver::sys::CUdevice_attribute as A;
    if !driver_present {
        return GpuProbe::none("no CUDA driver (libcuda.so not found)");
    }
    let count = match CudaContext::device_count() {
        Ok(n) => n,
        Err(e) => return GpuProbe::none(format!("the CUDA driver did not initialise: {e:?}")),
    };
    if count <= 0 {
        return GpuProbe::none("the CUDA driver reports no device");
    }
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let info = (|| -> Result<GpuInfo, result::DriverError> {
            let dev = result::device::get(ordinal)?;
            let name = result::device::get_name(dev)?;
            // SAFETY: `dev` is a valid device handle from the driver.
            let (major, minor, memory_bytes) = unsafe {
                (
                    result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                    result::device::total_mem(dev)?,
                )
            };
            Ok(GpuInfo { ordinal: ordinal as usize, name, compute_capability: (major, minor), memory_bytes })
        })();
        match info {
            Ok(i) => devices.push(i),
            Err(e) => return GpuProbe::none(format!("cannot query CUDA device {ordinal}: {e:?}")),
        }
    }
    GpuProbe { devices, reason: None }
}

/// Which compiled form of the kernels a [`Gpu`] loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// The sm_90a cubins (compute capability 9.0: H100, H200).
    Cubin,
    /// The compute_80 PTX, JIT-compiled by the driver (any other GPU of compute capability >= 8.0).
    Ptx,
}

impl ModuleKind {
    /// What [`Gpu::new`] loads on `info`: the cubins on compute capability 9.0, else the PTX.
    pub fn for_device(info: &GpuInfo) -> ModuleKind {
        if info.compute_capability == (9, 0) {
            ModuleKind::Cubin
        } else {
            ModuleKind::Ptx
        }
    }
}

/// A CUDA device ready to run the kernels: context, one stream (everything is ordered on it),
/// the loaded kernel modules and a cuBLAS handle.
pub struct Gpu {
    info: GpuInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    functions: HashMap<&'static str, CudaFunction>,
    module_kind: ModuleKind,
    precision: AtomicU8,
    /// Device-memory budget for a resident image store, bytes (0: half the free memory at the
    /// time of asking); see [`Gpu::store_budget`].
    store_budget: AtomicUsize,
    /// Page-locked 4 x f64 buffers for asynchronous scalar read-backs (see [`PinnedScalars`]),
    /// kept for reuse: allocating page-locked memory costs far more than the copy.
    pinned: Mutex<Vec<(PinnedHostSlice<f64>, CudaEvent)>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{} {}, {:?})", self.info.ordinal, self.info.name, self.module_kind)
    }
}

impl Gpu {
    /// Opens device `ordinal`: loads the sm_90a cubins on compute capability 9.0, else the PTX
    /// ([`ModuleKind::for_device`]); creates a stream and a cuBLAS handle. GEMM precision starts
    /// as bf16 ([`Gpu::set_gemm_precision`] changes it).
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>, KernelError> {
        Gpu::open(ordinal, None)
    }

    /// [`Gpu::new`] with the kernels in the form `modules` (e.g. the PTX on an H100/H200, to time
    /// or test the JIT path); the cubins on a device they were not built for is an error.
    pub fn with_modules(ordinal: usize, modules: ModuleKind) -> Result<Arc<Gpu>, KernelError> {
        Gpu::open(ordinal, Some(modules))
    }

    fn open(ordinal: usize, modules: Option<ModuleKind>) -> Result<Arc<Gpu>, KernelError> {
        let p = probe();
        if let Some(reason) = p.reason {
            return Err(KernelError::NoGpu(reason));
        }
        let info = p.devices.get(ordinal).cloned().ok_or_else(|| {
            KernelError::NoGpu(format!("no CUDA device {ordinal} ({} present: {})", p.devices.len(), p.summary()))
        })?;
        if info.compute_capability.0 < 8 {
            return Err(KernelError::NoGpu(format!(
                "{} has compute capability {}.{}; the kernels need 8.0 or newer",
                info.name, info.compute_capability.0, info.compute_capability.1
            )));
        }
        // SAFETY: only tries to dlopen libcublas; cudarc would panic on first use otherwise.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(KernelError::NoGpu(
                "cuBLAS not found (libcublas.so.13 and libcublasLt.so.13): add their directory, e.g. \
                 /usr/local/cuda/lib64, to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream orders everything, so cudarc's per-buffer event tracking is pure overhead.
        // SAFETY: no buffer of this context exists yet, and all work goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        if let Err(e) = keep_freed_memory(&ctx) {
            // Only a speed and memory-accounting matter: never a reason to refuse the GPU.
            eprintln!("bagssl-kernels: warning: memory pool release threshold not set: {e}");
        }
        let module_kind = modules.unwrap_or_else(|| ModuleKind::for_device(&info));
        if module_kind == ModuleKind::Cubin && info.compute_capability != (9, 0) {
            let (ma, mi) = info.compute_capability;
            return Err(KernelError::Invalid(format!("the sm_90a cubins do not run on {} (sm_{ma}{mi})", info.name)));
        }
        let stream = ctx.new_stream()?;
        let mut functions = HashMap::new();
        for m in MODULES {
            let image = match module_kind {
                ModuleKind::Cubin => Ptx::from_binary(m.cubin.to_vec()),
                ModuleKind::Ptx => Ptx::from_src(m.ptx),
            };
            let module = ctx
                .load_module(image)
                .map_err(|e| KernelError::Cuda(format!("loading kernels/{}.cu ({module_kind:?}): {e:?}", m.family)))?;
            for &k in m.kernels {
                let f = module.load_function(k).map_err(|e| KernelError::Cuda(format!("kernel {k}: {e:?}")))?;
                functions.insert(k, f);
            }
        }
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Arc::new(Gpu {
            info,
            ctx,
            stream,
            blas: Mutex::new(blas),
            functions,
            module_kind,
            precision: AtomicU8::new(GemmPrecision::Bf16 as u8),
            store_budget: AtomicUsize::new(0),
            pinned: Mutex::new(Vec::new()),
        }))
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }
    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }
    pub fn module_kind(&self) -> ModuleKind {
        self.module_kind
    }
    /// The stream every launch of this crate goes to (for events, graphs, extra copies).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Precision of every f32 GEMM of this device (matmul and the bag-VICReg covariance).
    pub fn gemm_precision(&self) -> GemmPrecision {
        GemmPrecision::from_u8(self.precision.load(Ordering::Relaxed))
    }
    pub fn set_gemm_precision(&self, p: GemmPrecision) {
        self.precision.store(p as u8, Ordering::Relaxed);
    }

    /// The most bytes an image store may take on this device and stay resident; a larger one is
    /// streamed a batch at a time ([`crate::ImageStream`]). Set with [`Gpu::set_store_budget`];
    /// unset (0), half the device memory free now.
    pub fn store_budget(&self) -> Result<usize, KernelError> {
        match self.store_budget.load(Ordering::Relaxed) {
            0 => Ok(self.memory_info()?.0 / 2),
            b => Ok(b),
        }
    }
    /// Sets [`Gpu::store_budget`] in bytes (0: back to half the free memory).
    pub fn set_store_budget(&self, bytes: usize) {
        self.store_budget.store(bytes, Ordering::Relaxed);
    }

    /// (free, total) bytes of device memory, as the driver reports them (all processes).
    pub fn memory_info(&self) -> Result<(usize, usize), KernelError> {
        self.ctx.bind_to_thread()?;
        Ok(cudarc::driver::result::mem_get_info()?)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        Ok(self.stream.synchronize()?)
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions
            .get(name)
            .ok_or_else(|| KernelError::Cuda(format!("kernel {name} is not in the compiled modules")))
    }

    pub(crate) fn blas(&self) -> Result<MutexGuard<'_, CudaBlas>, KernelError> {
        self.ctx.bind_to_thread()?;
        self.blas.lock().map_err(|_| KernelError::Cuda("cuBLAS handle poisoned by a panic".into()))
    }

    /// `n` zeros.
    pub fn zeros(self: &Arc<Self>, n: usize) -> Result<GpuBuf, KernelError> {
        Ok(GpuBuf { gpu: self.clone(), data: self.alloc_zeros_raw(n)?, len: n, bf16: OnceLock::new() })
    }

    /// `n` elements whose values are unspecified until written (for kernel outputs).
    pub fn uninit(self: &Arc<Self>, n: usize) -> Result<GpuBuf, KernelError> {
        Ok(GpuBuf { gpu: self.clone(), data: self.alloc_raw(n)?, len: n, bf16: OnceLock::new() })
    }

    /// A device copy of `v`.
    pub fn upload(self: &Arc<Self>, v: &[f32]) -> Result<GpuBuf, KernelError> {
        Ok(GpuBuf { gpu: self.clone(), data: self.upload_raw(v)?, len: v.len(), bf16: OnceLock::new() })
    }

    /// A device copy of a device buffer.
    pub fn copy(self: &Arc<Self>, b: &GpuBuf) -> Result<GpuBuf, KernelError> {
        let mut data = self.alloc_raw::<f32>(b.len())?;
        if !b.is_empty() {
            self.stream.memcpy_dtod(&b.data.slice(..b.len()), &mut data)?;
        }
        Ok(GpuBuf { gpu: self.clone(), data, len: b.len(), bf16: OnceLock::new() })
    }

    /// A device copy of bytes (e.g. the u8 dataset).
    pub fn upload_bytes(self: &Arc<Self>, v: &[u8]) -> Result<GpuBytes, KernelError> {
        Ok(GpuBytes { gpu: self.clone(), data: self.upload_raw(v)?, len: v.len() })
    }

    /// At least `n`, and at least 1, uninitialised elements: the driver refuses 0-byte
    /// allocations, so an empty buffer owns one element it never uses.
    pub(crate) fn alloc_raw<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>, KernelError> {
        // SAFETY: the elements are only read after a kernel or copy has written them.
        Ok(unsafe { self.stream.alloc::<T>(n.max(1)) }?)
    }

    /// Room for the bf16 copy of an n-element GEMM operand, for a kernel to write beside its f32
    /// output (see [`GpuBuf::set_bf16`]), or `None` when this GPU's GEMMs do not run in bf16.
    pub(crate) fn bf16_operand(&self, n: usize) -> Result<Option<CudaSlice<u16>>, KernelError> {
        if self.gemm_precision() == GemmPrecision::Bf16 {
            Ok(Some(self.alloc_raw::<u16>(n)?))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn alloc_zeros_raw<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    pub(crate) fn upload_raw<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, KernelError> {
        let mut d = self.alloc_raw::<T>(v.len())?;
        if !v.is_empty() {
            self.stream.memcpy_htod(v, &mut d)?;
        }
        Ok(d)
    }

    /// The first `len` elements of `d` on the host (waits for the stream).
    /// Starts copying `src[..4]` to the host without waiting: the copy is queued on the stream
    /// into page-locked memory, and [`PinnedScalars::wait`] blocks only until it has landed (work
    /// queued after it keeps running).
    pub(crate) fn read_scalars_async(self: &Arc<Self>, src: &CudaSlice<f64>) -> Result<PinnedScalars, KernelError> {
        if src.len() < PINNED_SCALARS {
            return Err(KernelError::Invalid(format!(
                "read_scalars_async: {} values, need {PINNED_SCALARS}",
                src.len()
            )));
        }
        let reuse = self.pinned.lock().map_err(|_| KernelError::Cuda("pinned pool poisoned".into()))?.pop();
        let (mut host, done) = match reuse {
            Some(h) => h,
            None => (
                // SAFETY: the buffer is written by the copy below before anyone reads it.
                unsafe { self.ctx.alloc_pinned_with_flags::<f64>(PINNED_SCALARS, 0) }?,
                self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?,
            ),
        };
        // A pooled buffer's previous copy has landed: its `wait` or its drop waited for it.
        self.stream.memcpy_dtoh(&src.slice(..PINNED_SCALARS), &mut host)?;
        // cudarc records the pinned slice's own event only with event tracking on (it is off,
        // see `Gpu::new`), so this event marks the copy's completion.
        done.record(&self.stream)?;
        Ok(PinnedScalars { gpu: self.clone(), host: Some((host, done)) })
    }

    pub(crate) fn download_raw<T: DeviceRepr + Default + Clone>(
        &self,
        d: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>, KernelError> {
        let mut v = vec![T::default(); len];
        if len > 0 {
            self.stream.memcpy_dtoh(&d.slice(..len), &mut v)?;
            self.stream.synchronize()?;
        }
        Ok(v)
    }
}

/// Makes the stream-ordered allocator a caching one. cudarc allocates with `cuMemAllocAsync` from
/// the device's current memory pool, whose release threshold is 0 by default: every stream
/// synchronisation (each step's loss download) would hand all freed memory back to the driver,
/// so the next step maps its buffers anew and `cuMemGetInfo` sees none of the working set. With
/// the threshold at its maximum the pool keeps what it freed for reuse (as PyTorch's
/// `cudaMallocAsync` backend does).
fn keep_freed_memory(ctx: &CudaContext) -> Result<(), KernelError> {
    use cudarc::driver::result;
    use cudarc::driver::sys::{CUdevice_attribute, CUmemPool_attribute};
    let dev = ctx.cu_device();
    // SAFETY: `dev` is the context's device; the attribute value is the u64 the driver expects.
    unsafe {
        let pools = result::device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)?;
        if pools == 0 {
            return Ok(()); // cudarc then allocates with cuMemAlloc, which has no pool
        }
        let pool = result::device::get_mem_pool(dev)?;
        let mut threshold = u64::MAX;
        result::mem_pool::set_attribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )?;
    }
    Ok(())
}

/// A device buffer of f32 plus the GPU that owns it. The allocation holds at least one element
/// (an empty buffer still owns one), so kernels must use [`GpuBuf::len`], not the slice's length.
pub struct GpuBuf {
    gpu: Arc<Gpu>,
    data: CudaSlice<f32>,
    len: usize,
    /// bf16 copy of the elements for the bf16 GEMMs, made on first use and dropped by every
    /// mutable access (see [`GpuBuf::bf16`]).
    bf16: OnceLock<CudaSlice<u16>>,
}

/// `len`, `is_empty` and `gpu` of a device buffer type with fields `len` and `gpu`.
macro_rules! buffer_basics {
    ($t:ty) => {
        impl $t {
            pub fn len(&self) -> usize {
                self.len
            }
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }
            pub fn gpu(&self) -> &Arc<Gpu> {
                &self.gpu
            }
        }
    };
}
buffer_basics!(GpuBuf);
buffer_basics!(GpuBytes);

impl GpuBuf {
    /// Copies the elements to the host (waits for the stream).
    pub fn to_host(&self) -> Result<Vec<f32>, KernelError> {
        self.gpu.download_raw(&self.data, self.len)
    }
    /// Copies the first `len` elements to the host (waits for the stream).
    pub fn to_host_prefix(&self, len: usize) -> Result<Vec<f32>, KernelError> {
        if len > self.len {
            return Err(KernelError::Invalid(format!("GpuBuf::to_host_prefix: {len} of {} elements", self.len)));
        }
        self.gpu.download_raw(&self.data, len)
    }
    /// Overwrites the elements from the host; `v.len()` must equal `len()`.
    pub fn write(&mut self, v: &[f32]) -> Result<(), KernelError> {
        if v.len() != self.len() {
            return Err(KernelError::Invalid(format!(
                "GpuBuf::write: {} values into {} elements",
                v.len(),
                self.len()
            )));
        }
        if !v.is_empty() {
            self.bf16.take();
            self.gpu.stream.memcpy_htod(v, &mut self.data)?;
        }
        Ok(())
    }
    /// The cudarc allocation (at least `len()`, and at least 1, elements), for launches outside
    /// this crate.
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.data
    }
    /// Mutable access for a launch that writes the buffer (drops the bf16 copy, now stale).
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.bf16.take();
        &mut self.data
    }

    /// Whether the bf16 copy is made (the buffer has been a bf16 GEMM operand since its last write).
    pub fn has_bf16(&self) -> bool {
        self.bf16.get().is_some()
    }

    /// Installs `b` as the bf16 copy through a shared reference, unless one is there already (the
    /// same bits: both are bf16_bits of the elements): for a kernel that reads the buffer anyway.
    pub(crate) fn offer_bf16(&self, b: CudaSlice<u16>) {
        let _ = self.bf16.set(b);
    }

    /// Installs `b` as the bf16 copy: for kernels that write it beside the f32 values (with
    /// `bf16_bits` of kernels/common.cuh, so it is exactly what [`GpuBuf::bf16`] would make).
    pub(crate) fn set_bf16(&mut self, b: CudaSlice<u16>) {
        self.bf16 = OnceLock::from(b);
    }

    /// The elements rounded to bf16 (nearest even), as bit patterns: the operand a bf16 GEMM
    /// reads. Made by one cast kernel on first use and kept until the buffer is next written,
    /// so a weight is cast once per update and an activation once for its forward and backward
    /// products. Every write goes through [`GpuBuf::slice_mut`] or [`GpuBuf::write`], which drop it.
    pub fn bf16(&self) -> Result<&CudaSlice<u16>, KernelError> {
        if let Some(b) = self.bf16.get() {
            return Ok(b);
        }
        let b = crate::elementwise::cast_bf16_raw(&self.gpu, &self.data, self.len)?;
        let _ = self.bf16.set(b); // a racing caller's identical copy wins instead: same bits
        self.bf16.get().ok_or_else(|| KernelError::Invalid("GpuBuf::bf16: copy missing".into()))
    }
}

impl std::fmt::Debug for GpuBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuf({} f32 on cuda:{})", self.len(), self.gpu.ordinal())
    }
}

/// A device buffer of bytes (the u8 image dataset); like [`GpuBuf`], never a 0-byte allocation.
pub struct GpuBytes {
    gpu: Arc<Gpu>,
    data: CudaSlice<u8>,
    len: usize,
}

impl GpuBytes {
    /// Uninitialised room for `len` bytes (written by a copy before any kernel reads it).
    pub(crate) fn uninit(gpu: &Arc<Gpu>, len: usize) -> Result<GpuBytes, KernelError> {
        Ok(GpuBytes { gpu: gpu.clone(), data: gpu.alloc_raw(len)?, len })
    }
    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.data
    }
    pub fn to_host(&self) -> Result<Vec<u8>, KernelError> {
        self.gpu.download_raw(&self.data, self.len)
    }
    pub fn slice(&self) -> &CudaSlice<u8> {
        &self.data
    }
}

impl std::fmt::Debug for GpuBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBytes({} B on cuda:{})", self.len(), self.gpu.ordinal())
    }
}

/// Checks that every buffer lives on `gpu` (same device ordinal).
pub(crate) fn same_gpu(op: &str, gpu: &Gpu, others: &[&Arc<Gpu>]) -> Result<(), KernelError> {
    if others.iter().any(|g| g.ordinal() != gpu.ordinal()) {
        return Err(KernelError::Invalid(format!("{op}: buffers on different GPUs")));
    }
    Ok(())
}

/// Values per asynchronous scalar read-back.
pub(crate) const PINNED_SCALARS: usize = 4;

/// Four f64 on their way from the device (see `Gpu::read_scalars_async`); the page-locked
/// buffer returns to the GPU's pool on drop.
pub struct PinnedScalars {
    gpu: Arc<Gpu>,
    host: Option<(PinnedHostSlice<f64>, CudaEvent)>,
}

impl PinnedScalars {
    /// Waits until the copy has landed (not for later work on the stream) and returns the values.
    pub fn wait(&self) -> Result<[f64; PINNED_SCALARS], KernelError> {
        let (host, done) = self.host.as_ref().ok_or_else(|| KernelError::Invalid("PinnedScalars: no buffer".into()))?;
        done.synchronize()?;
        let v = host.as_slice()?;
        Ok([v[0], v[1], v[2], v[3]])
    }
}

impl Drop for PinnedScalars {
    fn drop(&mut self) {
        if let Some((h, done)) = self.host.take() {
            // The copy must land before the buffer is reused (or freed).
            if done.synchronize().is_ok() {
                if let Ok(mut pool) = self.gpu.pinned.lock() {
                    pool.push((h, done));
                }
            }
        }
    }
}

impl std::fmt::Debug for PinnedScalars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedScalars({:?})", self.gpu)
    }
}
