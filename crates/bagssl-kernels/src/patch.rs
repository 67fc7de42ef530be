//! Launchers of `kernels/patch_embed.cu`: training patches gathered and augmented from the
//! GPU-resident u8 dataset, and the evaluation grid.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
};

use crate::device::same_gpu;
use crate::ffi::{
    BagsslGridParams, BagsslImageDims, BagsslPatchParams, BAGSSL_PATCH_BLUR, BAGSSL_PATCH_FLIP, BAGSSL_PATCH_GRAY,
    BAGSSL_PATCH_JITTER, BAGSSL_PATCH_SOLARIZE,
};
use crate::launch::{arg_or_null, u32_of};
use crate::{Gpu, GpuBuf, GpuBytes, KernelError};

/// One training patch (the bindgen'd `BagsslPatchSpec` of `kernels/include/bagssl_kernels.h`).
pub type PatchSpec = crate::ffi::BagsslPatchSpec;

impl PatchSpec {
    /// A `p x p` crop from its parts; `jitter` = (brightness, contrast, saturation).
    pub fn new(image: u32, oy: u32, ox: u32, p: u32, flip: bool, jitter: Option<[f32; 3]>, gray: bool) -> PatchSpec {
        PatchSpec::new_box(image, [oy, ox, p, p], flip, jitter, gray)
    }

    /// A crop box `[oy, ox, h, w]` from its parts; the kernel resizes it to the output side.
    pub fn new_box(image: u32, b: [u32; 4], flip: bool, jitter: Option<[f32; 3]>, gray: bool) -> PatchSpec {
        let [oy, ox, box_h, box_w] = b;
        let mut flags = 0;
        if flip {
            flags |= BAGSSL_PATCH_FLIP;
        }
        if gray {
            flags |= BAGSSL_PATCH_GRAY;
        }
        let [brightness, contrast, saturation] = match jitter {
            Some(j) => {
                flags |= BAGSSL_PATCH_JITTER;
                j
            }
            None => [1.0; 3],
        };
        PatchSpec { image, oy, ox, flags, brightness, contrast, saturation, blur_sigma: 0.0, box_h, box_w }
    }

    /// This spec with a Gaussian blur of `sigma` (output pixels) and/or solarize.
    pub fn with_blur_solarize(mut self, blur: Option<f32>, solarize: bool) -> PatchSpec {
        if let Some(sigma) = blur {
            self.flags |= BAGSSL_PATCH_BLUR;
            self.blur_sigma = sigma;
        }
        if solarize {
            self.flags |= BAGSSL_PATCH_SOLARIZE;
        }
        self
    }
}

/// The u8 dataset (n_images, height, width, 3) resident on the GPU, with its normalisation.
pub struct GpuImages {
    bytes: GpuBytes,
    dims: BagsslImageDims,
}

impl GpuImages {
    /// Uploads `pixels` (n_images * height * width * 3 bytes, HWC row-major).
    pub fn upload(
        gpu: &Arc<Gpu>,
        pixels: &[u8],
        height: usize,
        width: usize,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<GpuImages, KernelError> {
        let per = height * width * 3;
        if per == 0 || !pixels.len().is_multiple_of(per) {
            return Err(KernelError::Invalid(format!(
                "GpuImages::upload: {} bytes are not images of {height}x{width}x3",
                pixels.len()
            )));
        }
        let dims = BagsslImageDims {
            n_images: u32_of(pixels.len() / per, "n_images")?,
            height: u32_of(height, "height")?,
            width: u32_of(width, "width")?,
            pad: 0,
            mean,
            std,
        };
        Ok(GpuImages { bytes: gpu.upload_bytes(pixels)?, dims })
    }
    pub fn len(&self) -> usize {
        self.dims.n_images as usize
    }
    pub fn is_empty(&self) -> bool {
        self.dims.n_images == 0
    }
    pub fn height(&self) -> usize {
        self.dims.height as usize
    }
    pub fn width(&self) -> usize {
        self.dims.width as usize
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        self.bytes.gpu()
    }
    pub fn bytes(&self) -> &GpuBytes {
        &self.bytes
    }
}

/// Images sent to the GPU a batch at a time, for a store larger than [`Gpu::store_budget`]:
/// each batch is written into one of two page-locked staging buffers and copied on a stream of
/// its own into one of two device buffers, which the compute stream waits for. The copy of a
/// step's images thus overlaps the previous step's kernels, and the host fills one buffer while
/// the other may still be in flight.
///
/// Per slot, two events keep the buffers safe: `copied` (on the copy stream, after the upload
/// out of the staging buffer: the host waits for it before refilling that buffer) and
/// `consumed` (on the compute stream, after the kernel that read the device buffer: the copy
/// stream waits for it before overwriting that buffer).
pub struct ImageStream {
    gpu: Arc<Gpu>,
    copy: Arc<CudaStream>,
    height: usize,
    width: usize,
    mean: [f32; 3],
    std: [f32; 3],
    slots: [Option<StreamSlot>; 2],
    next: usize,
}

struct StreamSlot {
    host: PinnedHostSlice<u8>,
    images: GpuImages,
    copied: CudaEvent,
    consumed: CudaEvent,
}

impl StreamSlot {
    fn capacity(&self) -> usize {
        self.host.len().min(self.images.bytes.len())
    }
    /// Waits until neither the copy nor the kernels use this slot.
    fn drain(&self) -> Result<(), KernelError> {
        self.copied.synchronize()?;
        Ok(self.consumed.synchronize()?)
    }
}

impl ImageStream {
    /// An empty stream for images of `height x width` (HWC u8) with the store's normalisation.
    pub fn new(
        gpu: &Arc<Gpu>,
        height: usize,
        width: usize,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<ImageStream, KernelError> {
        if height == 0 || width == 0 {
            return Err(KernelError::Invalid(format!("ImageStream: images of {height}x{width}")));
        }
        let copy = gpu.stream().fork()?;
        Ok(ImageStream { gpu: gpu.clone(), copy, height, width, mean, std, slots: [None, None], next: 0 })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn width(&self) -> usize {
        self.width
    }

    /// Sends `count` images to the GPU and runs `kernel` on them: `fill` writes their pixels
    /// (`count * height * width * 3` bytes, HWC, one image after another) into page-locked
    /// memory, the copy is queued on the copy stream, and `kernel`'s launches (on the compute
    /// stream) start once it has landed. Returns what `kernel` returns, without waiting for it.
    pub fn with_batch<T>(
        &mut self,
        count: usize,
        fill: impl FnOnce(&mut [u8]),
        kernel: impl FnOnce(&GpuImages) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        let per = self.height * self.width * 3;
        let bytes = count * per;
        let i = self.next;
        self.next ^= 1;
        if self.slots[i].as_ref().is_none_or(|s| s.capacity() < bytes) {
            if let Some(old) = self.slots[i].take() {
                old.drain()?; // no DMA or kernel may touch the buffers once they are freed
            }
            self.slots[i] = Some(self.new_slot(bytes.max(per))?);
        }
        let slot = self.slots[i].as_mut().ok_or_else(|| KernelError::Invalid("ImageStream: no slot".into()))?;
        // The last upload out of this staging buffer (two batches ago) must have landed.
        slot.copied.synchronize()?;
        let host = slot.host.as_mut_slice()?;
        fill(&mut host[..bytes]);
        slot.images.dims.n_images = u32_of(count, "images in a batch")?;
        if bytes > 0 {
            self.copy.wait(&slot.consumed)?;
            let host = slot.host.as_slice()?;
            self.copy.memcpy_htod(&host[..bytes], &mut slot.images.bytes.slice_mut().slice_mut(..bytes))?;
            slot.copied.record(&self.copy)?;
            self.gpu.stream().wait(&slot.copied)?;
        }
        let out = kernel(&slot.images)?;
        slot.consumed.record(self.gpu.stream())?;
        Ok(out)
    }

    fn new_slot(&self, bytes: usize) -> Result<StreamSlot, KernelError> {
        let ctx = self.gpu.context();
        // SAFETY: `fill` writes every byte a copy reads.
        let host = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }?;
        let flags = Some(CUevent_flags::CU_EVENT_DISABLE_TIMING);
        let dims = BagsslImageDims {
            n_images: 0,
            height: u32_of(self.height, "height")?,
            width: u32_of(self.width, "width")?,
            pad: 0,
            mean: self.mean,
            std: self.std,
        };
        let images = GpuImages { bytes: GpuBytes::uninit(&self.gpu, bytes)?, dims };
        let consumed = ctx.new_event(flags)?;
        // The device buffer is allocated in order on the compute stream: the first copy into it
        // (on the copy stream) waits for that point.
        consumed.record(self.gpu.stream())?;
        Ok(StreamSlot { host, images, copied: ctx.new_event(flags)?, consumed })
    }
}

impl Drop for ImageStream {
    fn drop(&mut self) {
        for s in self.slots.iter().flatten() {
            let _ = s.drain(); // no DMA may read a page-locked buffer once it is freed
        }
    }
}

impl std::fmt::Debug for ImageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageStream({}x{} on cuda:{})", self.height, self.width, self.gpu.ordinal())
    }
}

/// Patch specs on the GPU (reusable across steps), with the extents checked on upload.
pub struct GpuPatchSpecs {
    gpu: Arc<Gpu>,
    data: CudaSlice<PatchSpec>,
    /// Page-locked staging copy of the specs: the host -> device copy is then truly
    /// asynchronous (from pageable memory the driver may wait for the stream), and the next
    /// `write` waits only for that copy (the buffer's event) before it overwrites the buffer.
    staging: Option<(PinnedHostSlice<PatchSpec>, CudaEvent)>,
    len: usize,
    /// Largest image index, and the specs themselves for the extent check at launch.
    max_image: u32,
    host: Vec<PatchSpec>,
    /// Whether any spec blurs (the kernel then needs `scratch`).
    blur: bool,
    /// The blur's scratch, p*p*3 floats per spec (reused; grown when needed).
    scratch: Option<CudaSlice<f32>>,
}

impl GpuPatchSpecs {
    pub fn upload(gpu: &Arc<Gpu>, specs: &[PatchSpec]) -> Result<GpuPatchSpecs, KernelError> {
        let data = gpu.alloc_raw(specs.len())?;
        let mut s = GpuPatchSpecs {
            gpu: gpu.clone(),
            data,
            staging: None,
            len: 0,
            max_image: 0,
            host: Vec::new(),
            blur: false,
            scratch: None,
        };
        s.write(specs)?;
        Ok(s)
    }

    /// Replaces the specs, reusing the allocations when they are large enough.
    pub fn write(&mut self, specs: &[PatchSpec]) -> Result<(), KernelError> {
        if specs.len() > self.data.len() {
            self.data = self.gpu.alloc_raw(specs.len())?;
        }
        if !specs.is_empty() {
            if self.staging.as_ref().is_none_or(|(s, _)| s.len() < specs.len()) {
                if let Some((_, copied)) = self.staging.take() {
                    copied.synchronize()?; // the old buffer's last copy, before it is freed
                }
                let ctx = self.gpu.context();
                // SAFETY: written below before the copy reads it.
                let buf = unsafe { ctx.alloc_pinned_with_flags(self.data.len(), 0) }?;
                self.staging = Some((buf, ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?));
            }
            let (staging, copied) =
                self.staging.as_mut().ok_or_else(|| KernelError::Invalid("no staging buffer".into()))?;
            // The previous copy out of this buffer must have landed before it is overwritten
            // (cudarc's own event on the slice is only recorded with event tracking on; it is off).
            copied.synchronize()?;
            staging.as_mut_slice()?[..specs.len()].copy_from_slice(specs);
            // The whole buffer (as long as `data`; a stale tail is never read).
            self.gpu.stream().memcpy_htod(staging, &mut self.data)?;
            copied.record(self.gpu.stream())?;
        }
        self.len = specs.len();
        self.max_image = specs.iter().map(|s| s.image).max().unwrap_or(0);
        self.blur = specs.iter().any(|s| s.flags & BAGSSL_PATCH_BLUR != 0);
        self.host.clear();
        self.host.extend_from_slice(specs);
        Ok(())
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for GpuPatchSpecs {
    fn drop(&mut self) {
        if let Some((_, copied)) = &self.staging {
            let _ = copied.synchronize(); // no DMA may read the page-locked buffer once it is freed
        }
    }
}

fn patch_block(patch: usize) -> LaunchConfig {
    let threads = (patch * patch).div_ceil(32).clamp(1, 8) as u32 * 32;
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

fn check_patch(op: &str, images: &GpuImages, patch: usize) -> Result<u32, KernelError> {
    if patch == 0 || patch > images.height() || patch > images.width() {
        return Err(KernelError::Invalid(format!(
            "{op}: patch {patch} does not fit {}x{} images",
            images.height(),
            images.width()
        )));
    }
    u32_of(patch, "patch")
}

/// Gathers, augments and normalises `specs` into `out` (specs.len() rows of patch*patch*3, HWC).
pub fn patch_embed_fwd_f32_into(
    images: &GpuImages,
    specs: &mut GpuPatchSpecs,
    patch: usize,
    out: &mut GpuBuf,
) -> Result<(), KernelError> {
    let op = "patch_embed_fwd_f32";
    let p = check_patch(op, images, patch)?;
    let gpu = images.gpu();
    same_gpu(op, gpu, &[&specs.gpu, out.gpu()])?;
    let row = patch * patch * 3;
    if out.len() != specs.len() * row {
        return Err(KernelError::Invalid(format!("{op}: out has {} floats, need {} x {row}", out.len(), specs.len())));
    }
    if specs.is_empty() {
        return Ok(());
    }
    if specs.max_image as usize >= images.len() {
        return Err(KernelError::Invalid(format!(
            "{op}: specs reach image {}, past {}",
            specs.max_image,
            images.len()
        )));
    }
    let (hh, ww) = (images.height() as u64, images.width() as u64);
    if let Some(s) = specs.host[..specs.len].iter().find(|s| {
        let (h, w) = (u64::from(s.box_h), u64::from(s.box_w));
        h == 0 || w == 0 || u64::from(s.oy) + h > hh || u64::from(s.ox) + w > ww
    }) {
        return Err(KernelError::Invalid(format!(
            "{op}: spec {s:?} does not fit {} images of {hh}x{ww} with patch {patch}",
            images.len()
        )));
    }
    u32_of(out.len(), "patch matrix size")?;
    let prm = BagsslPatchParams { dims: images.dims, n_patches: specs.len() as u32, patch: p };
    let GpuPatchSpecs { data, scratch, blur, .. } = specs;
    let scratch = if *blur {
        if scratch.as_ref().is_none_or(|s| s.len() < out.len()) {
            *scratch = None; // free the old one first
            *scratch = Some(gpu.alloc_raw(out.len())?);
        }
        scratch.as_mut()
    } else {
        None
    };
    // SAFETY: every box was checked against the image extents; out (and scratch) hold n_patches rows.
    unsafe { launch_patches(images, gpu.function("patch_embed_fwd_f32")?, Some((data, scratch)), out, &prm, patch) }
}

/// Launches a patch kernel, one block per output row of `out`, with the arguments (images,
/// [specs,] out, out16, [scratch,] prm) (scratch null when absent); out16 is X's bf16 copy, which the first Linear's bf16 GEMMs read
/// (written here, not by a cast kernel), or null when the GEMMs are not bf16. Installs the copy.
///
/// # Safety
/// `f` must take those arguments, and read only inside the images for every row of `out`.
unsafe fn launch_patches<P: DeviceRepr>(
    images: &GpuImages,
    f: &CudaFunction,
    specs: Option<(&CudaSlice<PatchSpec>, Option<&mut CudaSlice<f32>>)>,
    out: &mut GpuBuf,
    prm: &P,
    patch: usize,
) -> Result<(), KernelError> {
    let gpu = images.gpu();
    let mut cfg = patch_block(patch);
    cfg.grid_dim.0 = u32_of(out.len() / (patch * patch * 3), "patch rows")?;
    let mut out16 = gpu.bf16_operand(out.len())?;
    let null = 0u64;
    let mut b = gpu.stream().launch_builder(f);
    b.arg(images.bytes.slice());
    let (specs, scratch) = match specs {
        Some((s, scratch)) => (Some(s), Some(scratch)),
        None => (None, None),
    };
    if let Some(s) = specs {
        b.arg(s);
    }
    b.arg(out.slice_mut());
    arg_or_null(&mut b, out16.as_mut(), &null);
    if let Some(scratch) = scratch {
        arg_or_null(&mut b, scratch, &null);
    }
    b.arg(prm);
    // SAFETY: the caller's; out16 (a whole allocation) holds as many u16 as out floats, or is null.
    unsafe { b.launch(cfg) }?;
    drop(b);
    if let Some(c) = out16 {
        out.set_bf16(c); // after out's last slice_mut
    }
    Ok(())
}

/// [`patch_embed_fwd_f32_into`] into a new (specs.len(), patch*patch*3) buffer.
pub fn patch_embed_fwd_f32(images: &GpuImages, specs: &mut GpuPatchSpecs, patch: usize) -> Result<GpuBuf, KernelError> {
    let mut out = images.gpu().uninit(specs.len() * patch * patch * 3)?;
    patch_embed_fwd_f32_into(images, specs, patch, &mut out)?;
    Ok(out)
}

/// Number of grid positions per image: ((H - p) / s + 1) * ((W - p) / s + 1), 0 if p does not fit.
pub fn grid_len(height: usize, width: usize, patch: usize, stride: usize) -> usize {
    let steps = |len: usize| if patch == 0 || patch > len || stride == 0 { 0 } else { (len - patch) / stride + 1 };
    steps(height) * steps(width)
}

/// Every grid patch (no augmentation) of images `first .. first + count`, image-major then
/// row-major grid position: (count * grid_len, patch*patch*3).
pub fn patch_grid_fwd_f32(
    images: &GpuImages,
    first: usize,
    count: usize,
    patch: usize,
    stride: usize,
) -> Result<GpuBuf, KernelError> {
    let op = "patch_grid_fwd_f32";
    let p = check_patch(op, images, patch)?;
    if stride == 0 {
        return Err(KernelError::Invalid(format!("{op}: stride 0")));
    }
    if first + count > images.len() {
        return Err(KernelError::Invalid(format!("{op}: images {first}..{} past {}", first + count, images.len())));
    }
    let ny = (images.height() - patch) / stride + 1;
    let nx = (images.width() - patch) / stride + 1;
    let rows = count * ny * nx;
    let gpu = images.gpu();
    let mut out = gpu.uninit(rows * patch * patch * 3)?;
    if rows == 0 {
        return Ok(out);
    }
    u32_of(out.len(), "grid matrix size")?;
    let prm = BagsslGridParams {
        dims: images.dims,
        first_image: first as u32,
        count: count as u32,
        patch: p,
        stride: stride as u32,
        ny: ny as u32,
        nx: nx as u32,
    };
    // SAFETY: the grid lies inside the images by construction; out holds `rows` rows.
    unsafe { launch_patches(images, gpu.function("patch_grid_fwd_f32")?, None, &mut out, &prm, patch) }?;
    Ok(out)
}
