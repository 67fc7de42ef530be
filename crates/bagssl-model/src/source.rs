//! Where a training step's patch matrix comes from.
//!
//! The patch specs are drawn on the host (they are the step's only randomness, docs/DEFINITIONS.md §2); turning
//! them into the normalized (B*n, p*p*3) matrix is device work. This enum is the single seam
//! between the trainer and that work.
//!
//! - CPU: `bagssl_data::gather_patches` straight into the tensor's (recycled) buffer.
//! - CUDA: the u8 [`ImageStore`] is uploaded once and stays resident ([`GpuStore`]); per step only
//!   the specs go host -> device (40 bytes each, into a reused [`GpuPatchSpecs`]) and
//!   `patch_embed_fwd_f32` writes the patch matrix on the device. The same GPU-resident store also
//!   serves evaluation (`patch_grid_fwd_f32`, see `bagssl-eval`). A store over the device's
//!   budget (`data.gpu_store_budget_mib`) is streamed instead: each step sends its own images,
//!   double-buffered ([`bagssl_kernels::ImageStream`]).

use std::sync::Arc;

use bagssl_autograd::{Device, Tensor};
use bagssl_data::{gather_patches, ImageStore, PatchSpec};
use bagssl_kernels::{patch_embed_fwd_f32, patch_grid_fwd_f32, Gpu, GpuImages, GpuPatchSpecs, ImageStream};

use crate::{ModelError, Result};

/// The patch-embedding kernel's spec (`BagsslPatchSpec`) for a sampler spec: the crop box, flip,
/// jitter (brightness, contrast, saturation; factors 1 and the flag off without jitter), gray,
/// blur (its sigma) and solarize map one to one onto the kernel's fields and flags.
pub fn kernel_spec(s: &PatchSpec) -> bagssl_kernels::PatchSpec {
    bagssl_kernels::PatchSpec::new_box(
        s.image,
        [s.oy, s.ox, s.h, s.w],
        s.flip,
        s.jitter.map(|j| [j.brightness, j.contrast, j.saturation]),
        s.gray,
    )
    .with_blur_solarize(s.blur, s.solarize)
}

/// [`kernel_spec`] of every spec, into a reused buffer (cleared first).
pub fn kernel_specs_into(specs: &[PatchSpec], out: &mut Vec<bagssl_kernels::PatchSpec>) {
    out.clear();
    out.extend(specs.iter().map(kernel_spec));
}

/// Identity of an [`ImageStore`] as seen by a resident GPU copy: the pixel buffer's address and
/// length, its view index if any, the image size, the normalisation, and a fingerprint of up to [`FINGERPRINT_SAMPLES`]
/// bytes spread over the pixels. A different store (or the same one reallocated, resized or
/// renormalised) gets a different key; the fingerprint also catches a new store that happens to
/// reuse a freed buffer's address. Editing pixels in place is not reliably detected: call
/// [`PatchSource::register_store`] (or [`crate::Trainer::register_store`]) after doing that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreKey {
    ptr: usize,
    len: usize,
    /// Address and length of the view index (0, 0 without one): a view of a mapped store shares
    /// the map's bytes with every other view of it.
    view: (usize, usize),
    height: usize,
    width: usize,
    norm: [u32; 6],
    fingerprint: u64,
}

/// Bytes of the pixel buffer hashed into a [`StoreKey`] (cheap enough to check every step).
pub(crate) const FINGERPRINT_SAMPLES: usize = 256;

impl StoreKey {
    pub(crate) fn of(store: &ImageStore) -> StoreKey {
        let px = &store.pixels;
        // FNV-1a over evenly spaced bytes (all of them for a small store) and the last one.
        let step = px.len().div_ceil(FINGERPRINT_SAMPLES).max(1);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in px.iter().step_by(step).chain(px.last()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let m = store.mean.map(f32::to_bits);
        let s = store.std.map(f32::to_bits);
        StoreKey {
            ptr: px.as_ptr() as usize,
            len: px.len(),
            view: store.view().map_or((0, 0), |v| (v.as_ptr() as usize, v.len())),
            height: store.height,
            width: store.width,
            norm: [m[0], m[1], m[2], s[0], s[1], s[2]],
            fingerprint: h,
        }
    }
}

/// An [`ImageStore`] on one GPU, with reused spec buffers: produces training patch matrices from
/// specs and evaluation grids, as tensors on that GPU.
///
/// A store within the device's [`Gpu::store_budget`] is uploaded once and stays resident (u8
/// HWC plus its mean/std). A larger one is streamed: each call sends only the images it needs
/// ([`ImageStream`], double-buffered, overlapping the previous step), compacted by
/// [`bagssl_data::compact_specs`], so the patches are bit for bit those of a resident copy.
pub struct GpuStore {
    placement: Placement,
    key: StoreKey,
    /// Host conversion buffer of the specs (reused).
    host_specs: Vec<bagssl_kernels::PatchSpec>,
    /// Device copy of the specs (reused; grows when a step has more specs).
    specs: Option<GpuPatchSpecs>,
}

enum Placement {
    Resident(GpuImages),
    Streamed {
        stream: Box<ImageStream>,
        len: usize,
        /// A call's images (store indices) and its specs pointing into them (reused).
        images: Vec<u32>,
        local: Vec<PatchSpec>,
    },
}

impl Placement {
    fn gpu(&self) -> &Arc<Gpu> {
        match self {
            Placement::Resident(images) => images.gpu(),
            Placement::Streamed { stream, .. } => stream.gpu(),
        }
    }
}

fn gpu_err(e: bagssl_kernels::KernelError) -> ModelError {
    ModelError::Autograd(e.into())
}

impl GpuStore {
    /// Places `store` on `gpu`: uploaded whole when its pixels fit [`Gpu::store_budget`], else
    /// streamed per call.
    pub fn upload(gpu: &Arc<Gpu>, store: &ImageStore) -> Result<GpuStore> {
        let bytes = store.len() * store.image_bytes();
        let placement = if bytes <= gpu.store_budget().map_err(gpu_err)? {
            let pixels = store.contiguous_pixels();
            let images =
                GpuImages::upload(gpu, &pixels, store.height, store.width, store.mean, store.std).map_err(gpu_err)?;
            Placement::Resident(images)
        } else {
            let stream =
                Box::new(ImageStream::new(gpu, store.height, store.width, store.mean, store.std).map_err(gpu_err)?);
            Placement::Streamed { stream, len: store.len(), images: Vec::new(), local: Vec::new() }
        };
        Ok(GpuStore { placement, key: StoreKey::of(store), host_specs: Vec::new(), specs: None })
    }

    /// Whether this is the GPU copy (resident or streamed) of `store`: same pixel buffer
    /// (address and length), image size and normalisation, and the same fingerprint of up to
    /// 256 bytes spread over the pixels. Pixels edited in place are not reliably noticed:
    /// re-upload with [`PatchSource::register_store`] after that.
    pub fn holds(&self, store: &ImageStore) -> bool {
        self.key == StoreKey::of(store)
    }

    /// Whether the store is streamed per call rather than resident.
    pub fn is_streamed(&self) -> bool {
        matches!(self.placement, Placement::Streamed { .. })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        self.placement.gpu()
    }
    /// Number of images of the store.
    pub fn len(&self) -> usize {
        match &self.placement {
            Placement::Resident(images) => images.len(),
            Placement::Streamed { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn height(&self) -> usize {
        match &self.placement {
            Placement::Resident(images) => images.height(),
            Placement::Streamed { stream, .. } => stream.height(),
        }
    }
    pub fn width(&self) -> usize {
        match &self.placement {
            Placement::Resident(images) => images.width(),
            Placement::Streamed { stream, .. } => stream.width(),
        }
    }
    /// The kernels' view of the resident images (`None` when streamed).
    pub fn images(&self) -> Option<&GpuImages> {
        match &self.placement {
            Placement::Resident(images) => Some(images),
            Placement::Streamed { .. } => None,
        }
    }

    /// The normalized, augmented patch matrix of `specs`, (specs.len(), patch*patch*3) HWC, on
    /// the GPU, from `store` (the store this copy [`holds`](GpuStore::holds)): the specs go
    /// host -> device (and, streamed, the images they use), `patch_embed_fwd_f32` does the rest.
    /// Specs reaching past the images are an error (checked before the launch).
    pub fn patches(&mut self, store: &ImageStore, specs: &[PatchSpec], patch: usize) -> Result<Tensor> {
        match &mut self.placement {
            Placement::Resident(_) => kernel_specs_into(specs, &mut self.host_specs),
            Placement::Streamed { images, local, .. } => {
                bagssl_data::compact_specs(specs, images, local);
                kernel_specs_into(local, &mut self.host_specs);
            }
        }
        let dev = match &mut self.specs {
            Some(d) => {
                d.write(&self.host_specs).map_err(gpu_err)?;
                d
            }
            None => {
                let first = GpuPatchSpecs::upload(self.placement.gpu(), &self.host_specs).map_err(gpu_err)?;
                self.specs.insert(first)
            }
        };
        let x = match &mut self.placement {
            Placement::Resident(images) => patch_embed_fwd_f32(images, dev, patch),
            Placement::Streamed { stream, images, .. } => stream.with_batch(
                images.len(),
                |out| bagssl_data::copy_images(store, images, out),
                |batch| patch_embed_fwd_f32(batch, dev, patch),
            ),
        }
        .map_err(gpu_err)?;
        Ok(Tensor::from_gpu(&[specs.len(), patch * patch * 3], x))
    }

    /// Every evaluation-grid patch (no augmentation) of images `first .. first + count` of
    /// `store` (the store this copy holds), image-major then row-major grid position, like
    /// `bagssl_data::gather_grid`: (count * grid_len, patch*patch*3) on the GPU. Resident, nothing
    /// crosses the bus; streamed, those images do.
    pub fn grid(
        &mut self,
        store: &ImageStore,
        first: usize,
        count: usize,
        patch: usize,
        stride: usize,
    ) -> Result<Tensor> {
        let x = match &mut self.placement {
            Placement::Resident(images) => patch_grid_fwd_f32(images, first, count, patch, stride),
            Placement::Streamed { stream, images, .. } => {
                if first + count > store.len() {
                    return Err(ModelError::Internal(format!(
                        "grid: images {first}..{} past {}",
                        first + count,
                        store.len()
                    )));
                }
                images.clear();
                images.extend((first..first + count).map(|i| i as u32));
                stream.with_batch(
                    count,
                    |out| bagssl_data::copy_images(store, images, out),
                    |batch| patch_grid_fwd_f32(batch, 0, count, patch, stride),
                )
            }
        }
        .map_err(gpu_err)?;
        let rows = count * bagssl_kernels::grid_len(self.height(), self.width(), patch, stride);
        Ok(Tensor::from_gpu(&[rows, patch * patch * 3], x))
    }
}

impl std::fmt::Debug for GpuStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuStore({} images {}x{} on {:?})", self.len(), self.height(), self.width(), self.gpu())
    }
}

/// Produces the patch matrix of a step on the model's device (on CUDA it holds the resident store).
pub enum PatchSource {
    /// CPU gather + augmentation (`bagssl_data::gather_patches`) straight into the tensor.
    Cpu,
    /// GPU gather + augmentation (`patch_embed_fwd_f32`) from the training store kept resident on
    /// `gpu`; `store` is uploaded on first use and again only when a different store is passed.
    Cuda { gpu: Arc<Gpu>, store: Option<Box<GpuStore>> },
}

impl PatchSource {
    pub fn for_device(device: &Device) -> Self {
        match device {
            Device::Cpu => PatchSource::Cpu,
            Device::Cuda(gpu) => PatchSource::Cuda { gpu: gpu.clone(), store: None },
        }
    }

    /// Uploads `store` now (CUDA; a no-op on the CPU), replacing any resident copy even when it
    /// looks the same: for a store whose pixels were edited in place, or to pay the upload before
    /// a timed loop.
    pub fn register_store(&mut self, store: &ImageStore) -> Result<()> {
        if let PatchSource::Cuda { gpu, store: resident } = self {
            *resident = None; // free the old copy before allocating the new one
            *resident = Some(Box::new(GpuStore::upload(gpu, store)?));
        }
        Ok(())
    }

    /// The resident GPU copy, if any (CUDA only).
    pub fn gpu_store(&self) -> Option<&GpuStore> {
        match self {
            PatchSource::Cuda { store, .. } => store.as_deref(),
            PatchSource::Cpu => None,
        }
    }

    /// The normalized patch matrix (specs.len(), patch*patch*3), HWC-flattened, on the device.
    pub fn patches(&mut self, store: &ImageStore, specs: &[PatchSpec], patch: usize) -> Result<Tensor> {
        let shape = [specs.len(), patch * patch * 3];
        match self {
            // A recycled buffer (the last step's patches, by now): no allocation, no copy.
            PatchSource::Cpu => Ok(Tensor::filled_by(&shape, |out| gather_patches(store, specs, patch, out))),
            PatchSource::Cuda { gpu, store: resident } => {
                if !resident.as_ref().is_some_and(|r| r.holds(store)) {
                    *resident = None; // free the old copy before allocating the new one
                    *resident = Some(Box::new(GpuStore::upload(gpu, store)?));
                }
                let r = resident.as_mut().ok_or_else(|| ModelError::Internal("no resident store".into()))?;
                r.patches(store, specs, patch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bagssl_data::{synthetic, Jitter, PatchSampler, SyntheticSpec};
    use bagssl_kernels::ffi::{BAGSSL_PATCH_FLIP, BAGSSL_PATCH_GRAY, BAGSSL_PATCH_JITTER};

    fn spec(flip: bool, jitter: Option<Jitter>, gray: bool) -> PatchSpec {
        PatchSpec { flip, jitter, gray, ..PatchSpec::boxed(7, 3, 5, 6, 9) }
    }

    #[test]
    fn spec_conversion_maps_every_field() {
        let j = Jitter { brightness: 0.61, contrast: 1.39, saturation: 1.0625 };
        for flip in [false, true] {
            for jitter in [None, Some(j)] {
                for gray in [false, true] {
                    let k = kernel_spec(&spec(flip, jitter, gray));
                    assert_eq!((k.image, k.oy, k.ox, k.box_h, k.box_w), (7, 3, 5, 6, 9));
                    assert_eq!(k.flags & BAGSSL_PATCH_FLIP != 0, flip);
                    assert_eq!(k.flags & BAGSSL_PATCH_JITTER != 0, jitter.is_some());
                    assert_eq!(k.flags & BAGSSL_PATCH_GRAY != 0, gray);
                    assert_eq!(k.flags & !(BAGSSL_PATCH_FLIP | BAGSSL_PATCH_JITTER | BAGSSL_PATCH_GRAY), 0);
                    let factors = (k.brightness, k.contrast, k.saturation);
                    // Bit-exact: the kernel must see the very factors the CPU gather uses.
                    match jitter {
                        Some(j) => assert_eq!(factors, (j.brightness, j.contrast, j.saturation)),
                        None => assert_eq!(factors, (1.0, 1.0, 1.0)),
                    }
                }
            }
        }
    }

    #[test]
    fn sampled_specs_convert_one_to_one() {
        let mut sampler = PatchSampler::new(3, true);
        let specs = sampler.sample(&[0, 4, 2, 9], 64, 8, 32, 32);
        let mut out = vec![kernel_spec(&specs[0]); 3]; // stale content is cleared
        kernel_specs_into(&specs, &mut out);
        assert_eq!(out.len(), specs.len());
        let (mut flips, mut jitters, mut grays) = (0, 0, 0);
        for (s, k) in specs.iter().zip(&out) {
            assert_eq!(*k, kernel_spec(s));
            assert_eq!((k.image, k.oy, k.ox), (s.image, s.oy, s.ox));
            flips += usize::from(k.flags & BAGSSL_PATCH_FLIP != 0);
            jitters += usize::from(k.flags & BAGSSL_PATCH_JITTER != 0);
            grays += usize::from(k.flags & BAGSSL_PATCH_GRAY != 0);
            if let Some(j) = s.jitter {
                assert_eq!([k.brightness, k.contrast, k.saturation], [j.brightness, j.contrast, j.saturation]);
            }
        }
        // 256 draws of p = 0.5, 0.8, 0.2: every flag occurs, none always.
        for (name, n) in [("flip", flips), ("jitter", jitters), ("gray", grays)] {
            assert!(n > 0 && n < specs.len(), "{name}: {n} of {}", specs.len());
        }
        // Without augmentation only the position is set.
        let plain = PatchSampler::new(3, false).sample(&[1], 8, 8, 32, 32);
        assert!(plain.iter().map(kernel_spec).all(|k| k.flags == 0 && k.brightness == 1.0));
    }

    #[test]
    fn blur_and_solarize_map_onto_their_flags() {
        use bagssl_kernels::ffi::{BAGSSL_PATCH_BLUR, BAGSSL_PATCH_SOLARIZE};
        for blur in [None, Some(0.75f32)] {
            for solarize in [false, true] {
                let k = kernel_spec(&PatchSpec { blur, solarize, ..spec(true, None, false) });
                assert_eq!(k.flags & BAGSSL_PATCH_BLUR != 0, blur.is_some());
                assert_eq!(k.flags & BAGSSL_PATCH_SOLARIZE != 0, solarize);
                assert_eq!(k.blur_sigma, blur.unwrap_or(0.0));
                assert_eq!(k.flags & BAGSSL_PATCH_FLIP, BAGSSL_PATCH_FLIP);
            }
        }
    }

    #[test]
    fn store_key_tells_stores_apart() {
        let spec = SyntheticSpec { images: 6, classes: 2, height: 12, width: 12, seed: 1 };
        let a = synthetic(&spec);
        let key = StoreKey::of(&a);
        assert_eq!(key, StoreKey::of(&a), "the same store keeps its key");
        assert_ne!(key, StoreKey::of(&a.clone()), "another buffer is another store");
        assert_ne!(key, StoreKey::of(&a.subset(&[0, 1, 2])));
        let mut renorm = a.clone();
        let clone_key = StoreKey::of(&renorm);
        renorm.std[1] *= 2.0;
        assert_ne!(clone_key, StoreKey::of(&renorm), "normalisation is part of the key");
        // Same address and length, different content (a freed buffer reused): the fingerprint.
        let mut edited = a.clone();
        let before = StoreKey::of(&edited);
        for b in edited.pixels.iter_mut() {
            *b = b.wrapping_add(1);
        }
        assert_ne!(before, StoreKey::of(&edited));
    }

    #[test]
    fn cpu_source_matches_gather_and_needs_no_gpu() {
        let store = synthetic(&SyntheticSpec { images: 4, classes: 2, height: 16, width: 16, seed: 2 });
        let specs = PatchSampler::new(1, true).sample(&[0, 3], 5, 8, 16, 16);
        let mut src = PatchSource::for_device(&Device::Cpu);
        src.register_store(&store).unwrap();
        assert!(src.gpu_store().is_none());
        let x = src.patches(&store, &specs, 8).unwrap();
        let mut want = vec![0f32; specs.len() * 192];
        gather_patches(&store, &specs, 8, &mut want);
        assert_eq!(x.shape(), &[10, 192]);
        assert_eq!(x.as_slice().unwrap(), &want[..]);
    }
}
