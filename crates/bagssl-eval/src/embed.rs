//! Image embeddings from a trained encoder.
//!
//! [`embed_bag`] is BagSSL's image representation: every patch of the evaluation grid goes
//! through the eval-mode encoder and the image's embedding is the mean of its patch embeddings.
//! [`embed_single_patch`] embeds only the centre grid patch: the "no bag" baseline that shows how
//! much the aggregation adds. [`embed_whole`] is the image-level view (the whole image resized to
//! the input side, one forward); [`embed_random`] the mean over random-resized patches
//! (EMP-SSL's protocol), seeded.
//!
//! Both work in batches of images; the encoder and the per-image mean run with
//! `bagssl_autograd::ops` on the model's device. The patch matrices are made where the model
//! lives: on the CPU by the `bagssl_data` gathers, straight into the tensor's recycled buffer;
//! on CUDA by the patch-embedding kernels from the store uploaded once per call ([`GpuStore`]),
//! so only the (N, hidden) embeddings cross the bus.

use bagssl_autograd::{ops, Device, Tensor};
use bagssl_data::{gather_grid, gather_patches, grid_len, grid_positions, ImageStore, PatchSampler, PatchSpec, Views};
use bagssl_model::source::GpuStore;
use bagssl_model::BagSslModel;

use crate::{EvalError, Result};

/// Where a batch's patch matrix is made: host gathers (CPU model) or kernels reading the
/// GPU-resident store (CUDA model).
enum Patches {
    Host,
    Gpu(Box<GpuStore>),
}

impl Patches {
    fn new(device: &Device, store: &ImageStore) -> Result<Patches> {
        Ok(match device {
            Device::Cpu => Patches::Host,
            Device::Cuda(gpu) => Patches::Gpu(Box::new(GpuStore::upload(gpu, store)?)),
        })
    }

    /// Grid patches of images `first .. first + count` (image-major, row-major positions), each
    /// resized to the input side `input` when the grid's `patch` differs from it.
    fn grid(&mut self, store: &ImageStore, first: usize, count: usize, grid: Grid, input: usize) -> Result<Tensor> {
        let Grid { patch, stride } = grid;
        if patch != input {
            let boxes = grid_boxes(store, patch, stride);
            return self.specs(store, &box_specs(first..first + count, &boxes), input);
        }
        match self {
            Patches::Host => {
                let rows = count * grid_len(store.height, store.width, patch, stride);
                let shape = [rows, patch * patch * 3];
                Ok(Tensor::filled_by(&shape, |out| gather_grid(store, first..first + count, patch, stride, out)))
            }
            Patches::Gpu(g) => Ok(g.grid(store, first, count, patch, stride)?),
        }
    }

    /// The (un-augmented) patches of `specs`.
    fn specs(&mut self, store: &ImageStore, specs: &[PatchSpec], patch: usize) -> Result<Tensor> {
        match self {
            Patches::Host => {
                let shape = [specs.len(), patch * patch * 3];
                Ok(Tensor::filled_by(&shape, |out| gather_patches(store, specs, patch, out)))
            }
            Patches::Gpu(g) => Ok(g.patches(store, specs, patch)?),
        }
    }
}

/// The evaluation grid (docs/DEFINITIONS.md §8): patches of side `patch` every `stride` pixels,
/// each resized to the model's input side when `patch` is not that side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub patch: usize,
    pub stride: usize,
}

fn check_args(store: &ImageStore, grid: Grid, batch_images: usize) -> Result<()> {
    let Grid { patch, stride } = grid;
    if patch == 0 || stride == 0 || batch_images == 0 {
        return Err(EvalError::Invalid(format!(
            "patch ({patch}), stride ({stride}) and batch_images ({batch_images}) must be positive"
        )));
    }
    if patch > store.height || patch > store.width {
        return Err(EvalError::Invalid(format!("patch {patch} does not fit {}x{} images", store.height, store.width)));
    }
    Ok(())
}

/// The grid's boxes `(oy, ox, patch, patch)`, row-major.
pub(crate) fn grid_boxes(store: &ImageStore, patch: usize, stride: usize) -> Vec<Box4> {
    grid_positions(store.height, store.width, patch, stride)
        .into_iter()
        .map(|(oy, ox)| (oy, ox, patch, patch))
        .collect()
}

/// The specs of the same `boxes` in each of `images`, image-major.
fn box_specs(images: std::ops::Range<usize>, boxes: &[Box4]) -> Vec<PatchSpec> {
    let u = |v: usize| v as u32;
    images
        .flat_map(|i| boxes.iter().map(move |&(oy, ox, h, w)| PatchSpec::boxed(u(i), u(oy), u(ox), u(h), u(w))))
        .collect()
}

/// Bag-of-patch embeddings, (N, dim) row-major: for each image, the mean over the evaluation
/// grid ([`Grid`]) of the eval-mode representation ([`BagSslModel::represent_eval`]).
///
/// Memory per batch is `batch_images * grid_len * (p*p*3 + hidden)` floats; choose `batch_images`
/// accordingly (e.g. 64 for CIFAR-10 at p = 8, stride 2, hidden 2048: about 110 MB).
pub fn embed_bag(model: &BagSslModel, store: &ImageStore, grid: Grid, batch_images: usize) -> Result<Vec<f32>> {
    check_args(store, grid, batch_images)?;
    let per_image = grid_len(store.height, store.width, grid.patch, grid.stride);
    let input = model.config().patch;
    let mut out = Vec::with_capacity(store.len() * model.representation_dim());
    let mut patches = Patches::new(model.device(), store)?;
    for start in (0..store.len()).step_by(batch_images) {
        let end = (start + batch_images).min(store.len());
        let x = patches.grid(store, start, end - start, grid, input)?;
        let h = model.represent_eval(&x)?;
        out.extend(ops::group_mean(&h, per_image)?.to_vec()?);
    }
    Ok(out)
}

/// Multi-scale bag embeddings, (N, hidden): per image the mean over the grids of every patch side
/// in `sizes` (each at `stride`) of the eval-mode embeddings, each patch resized bilinearly
/// (docs/DEFINITIONS.md §3) to the model's input side; every patch weighs the same.
pub fn embed_multiscale(
    model: &BagSslModel,
    store: &ImageStore,
    sizes: &[usize],
    stride: usize,
    batch_images: usize,
) -> Result<Vec<f32>> {
    check_args(store, Grid { patch: model.config().patch, stride }, batch_images)?;
    let (height, width) = (store.height, store.width);
    if sizes.is_empty() || sizes.iter().any(|&s| s == 0 || s > height || s > width) {
        return Err(EvalError::Invalid(format!(
            "multiscale: patch sides {sizes:?} must be non-empty and fit {height}x{width} images"
        )));
    }
    let boxes: Vec<Box4> = sizes
        .iter()
        .flat_map(|&s| grid_positions(height, width, s, stride).into_iter().map(move |(oy, ox)| (oy, ox, s, s)))
        .collect();
    embed_boxes(model, store, &boxes, batch_images)
}

/// A box of every image: `(oy, ox, h, w)`.
type Box4 = (usize, usize, usize, usize);

/// Per image the mean of the eval-mode embeddings of the same `boxes`, each resized to the
/// model's input side, not augmented (one box: its embedding, exactly).
fn embed_boxes(model: &BagSslModel, store: &ImageStore, boxes: &[Box4], batch_images: usize) -> Result<Vec<f32>> {
    let patch = model.config().patch;
    let mut out = Vec::with_capacity(store.len() * model.representation_dim());
    let mut patches = Patches::new(model.device(), store)?;
    for start in (0..store.len()).step_by(batch_images) {
        let end = (start + batch_images).min(store.len());
        let h = model.represent_eval(&patches.specs(store, &box_specs(start..end, boxes), patch)?)?;
        let h = if boxes.len() == 1 { h } else { ops::group_mean(&h, boxes.len())? };
        out.extend(h.to_vec()?);
    }
    Ok(out)
}

/// Which of the four quadrants (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) holds
/// the centre of the patch at (oy, ox): a centre exactly on a midline counts as bottom / right,
/// as in the PyTorch reference (`centre < H / 2` is the top half).
fn quadrant(oy: usize, ox: usize, patch: usize, height: usize, width: usize) -> usize {
    let top = 2 * oy + patch < height;
    let left = 2 * ox + patch < width;
    usize::from(!top) * 2 + usize::from(!left)
}

/// Spatial-pyramid embeddings, (N, 5 * hidden): per image the grid mean ([`embed_bag`]) followed
/// by the means of the grid patches of each quadrant ([`quadrant`] order), as the reference's
/// `embed_images(pool="pyramid")`. Every quadrant must hold at least one patch centre.
pub fn embed_pyramid(model: &BagSslModel, store: &ImageStore, grid: Grid, batch_images: usize) -> Result<Vec<f32>> {
    check_args(store, grid, batch_images)?;
    let Grid { patch, stride } = grid;
    let positions = grid_positions(store.height, store.width, patch, stride);
    let quads: Vec<usize> =
        positions.iter().map(|&(oy, ox)| quadrant(oy, ox, patch, store.height, store.width)).collect();
    let mut counts = [0usize; 4];
    quads.iter().for_each(|&q| counts[q] += 1);
    if counts.contains(&0) {
        return Err(EvalError::Invalid(format!(
            "pyramid: the {patch}x{patch} grid at stride {stride} leaves a quadrant of {}x{} images empty              (patches per quadrant {counts:?}); use a smaller patch or stride",
            store.height, store.width
        )));
    }
    let (hidden, per_image, input) = (model.representation_dim(), positions.len(), model.config().patch);
    let mut out = Vec::with_capacity(store.len() * 5 * hidden);
    let mut patches = Patches::new(model.device(), store)?;
    let mut sums = vec![0f64; 5 * hidden];
    for start in (0..store.len()).step_by(batch_images) {
        let end = (start + batch_images).min(store.len());
        let h = model.represent_eval(&patches.grid(store, start, end - start, grid, input)?)?.to_vec()?;
        for image in h.chunks_exact(per_image * hidden) {
            sums.fill(0.0);
            for (row, &q) in image.chunks_exact(hidden).zip(&quads) {
                for (d, &v) in row.iter().enumerate() {
                    sums[d] += f64::from(v);
                    sums[(1 + q) * hidden + d] += f64::from(v);
                }
            }
            let n = |block: usize| if block == 0 { per_image } else { counts[block - 1] } as f64;
            out.extend(sums.iter().enumerate().map(|(j, &v)| (v / n(j / hidden)) as f32));
        }
    }
    Ok(out)
}

/// The grid position at the centre of the evaluation grid: row `ny / 2`, column `nx / 2` of the
/// `ny x nx` positions (so an odd grid gives its exact middle). `None` when the patch does not fit.
pub fn centre_position(height: usize, width: usize, patch: usize, stride: usize) -> Option<(usize, usize)> {
    let positions = grid_positions(height, width, patch, stride);
    let nx = positions.iter().filter(|(oy, _)| *oy == 0).count();
    let ny = positions.len().checked_div(nx)?;
    positions.get((ny / 2) * nx + nx / 2).copied()
}

/// Single-patch embeddings, (N, dim): the eval-mode representation of the centre grid patch of
/// each image ([`centre_position`], resized to the input side) — the baseline without bag
/// aggregation.
pub fn embed_single_patch(
    model: &BagSslModel,
    store: &ImageStore,
    grid: Grid,
    batch_images: usize,
) -> Result<Vec<f32>> {
    check_args(store, grid, batch_images)?;
    let Grid { patch, stride } = grid;
    let (oy, ox) = centre_position(store.height, store.width, patch, stride)
        .ok_or_else(|| EvalError::Invalid("empty evaluation grid".into()))?;
    embed_boxes(model, store, &[(oy, ox, patch, patch)], batch_images)
}

/// Whole-image embeddings, (N, hidden): each image resized bilinearly (docs/DEFINITIONS.md §3
/// step 1) to the model's input side, one eval-mode forward.
pub fn embed_whole(model: &BagSslModel, store: &ImageStore, batch_images: usize) -> Result<Vec<f32>> {
    check_args(store, Grid { patch: model.config().patch, stride: 1 }, batch_images)?;
    embed_boxes(model, store, &[(0, 0, store.height, store.width)], batch_images)
}

/// Random-patch embeddings, (N, hidden): per image the mean of `count` eval-mode embeddings of
/// boxes drawn as `views` says (its `scale` / `ratio`, or fixed crops of `views.crop`, default the
/// input side), resized to the input side, not augmented; the draws are `seed`'s.
pub fn embed_random(
    model: &BagSslModel,
    store: &ImageStore,
    views: &Views,
    count: usize,
    seed: u64,
    batch_images: usize,
) -> Result<Vec<f32>> {
    let patch = model.config().patch;
    check_args(store, Grid { patch, stride: 1 }, batch_images)?;
    views.validate().map_err(EvalError::Invalid)?;
    let crop = views.crop.unwrap_or(patch);
    if count == 0 || crop > store.height || crop > store.width {
        return Err(EvalError::Invalid(format!(
            "random patches: {count} of side {crop} in {}x{} images",
            store.height, store.width
        )));
    }
    let mut sampler = PatchSampler::with_views(seed, false, views.clone());
    let mut out = Vec::with_capacity(store.len() * model.representation_dim());
    let mut patches = Patches::new(model.device(), store)?;
    let (mut images, mut specs) = (Vec::with_capacity(batch_images), Vec::new());
    for start in (0..store.len()).step_by(batch_images) {
        let end = (start + batch_images).min(store.len());
        images.clear();
        images.extend(start as u32..end as u32);
        sampler.sample_into(&images, count, crop, store.height, store.width, &mut specs);
        let x = patches.specs(store, &specs, patch)?;
        let h = model.represent_eval(&x)?;
        out.extend(ops::group_mean(&h, count)?.to_vec()?);
    }
    Ok(out)
}

/// Every box's eval-mode embedding, (N * boxes.len(), hidden), image-major then box: the
/// [`embed_multiscale`]-style boxes `(oy, ox, h, w)` of every image, each resized to the model's
/// input side, not augmented, not averaged (the analyses need the patches one by one).
pub fn embed_patches(
    model: &BagSslModel,
    store: &ImageStore,
    boxes: &[(usize, usize, usize, usize)],
    batch_images: usize,
) -> Result<Vec<f32>> {
    let patch = model.config().patch;
    check_args(store, Grid { patch, stride: 1 }, batch_images)?;
    if let Some(b) =
        boxes.iter().find(|&&(oy, ox, h, w)| h == 0 || w == 0 || oy + h > store.height || ox + w > store.width)
    {
        return Err(EvalError::Invalid(format!("box {b:?} is not inside {}x{} images", store.height, store.width)));
    }
    let mut out = Vec::with_capacity(store.len() * boxes.len() * model.hidden());
    let mut patches = Patches::new(model.device(), store)?;
    for start in (0..store.len()).step_by(batch_images) {
        let end = (start + batch_images).min(store.len());
        out.extend(model.encode_eval(&patches.specs(store, &box_specs(start..end, boxes), patch)?)?.to_vec()?);
    }
    Ok(out)
}
