//! Analyses of a trained encoder (`bagssl-train analyze`, issue 14): how the whole-image
//! embedding relates to the mean of k patch embeddings as k grows ([`whole_vs_bag`]), which
//! patches of other images are nearest in the encoder space h and the projector space z
//! ([`patch_neighbours`], the paper's locality figure), and kNN accuracy by aggregation
//! ([`aggregation_knn`]). Every result is plain numbers (serde), so the CLI writes them as JSON
//! and draws them; the embeddings come from [`crate::embed`], nothing here gathers pixels.

use bagssl_autograd::Tensor;
use bagssl_data::{grid_len, ImageStore, SeededRng};
use bagssl_model::BagSslModel;
use rayon::prelude::*;
use serde::Serialize;

use crate::embed::{embed_patches, embed_single_patch, grid_boxes, Grid};
use crate::knn::knn_accuracy;
use crate::report::{class_count, embed_protocol, splits, EvalConfig};
use crate::{EvalError, Result};

/// `n` images of `store` chosen by a seeded permutation, in store order (all of them when
/// `n >= len`).
pub fn seeded_subset(store: &ImageStore, n: usize, seed: u64) -> ImageStore {
    if n >= store.len() {
        return store.clone();
    }
    let mut idx = SeededRng::new(seed).permutation(store.len());
    idx.truncate(n);
    idx.sort_unstable();
    store.subset(&idx)
}

/// The patch sides the analyses compare: the input side `patch`, 1.5x and 2x it, those that fit
/// the images with at least two grid positions at `stride` (one position is the whole image).
pub fn default_scales(patch: usize, height: usize, width: usize, stride: usize) -> Vec<usize> {
    let mut sides = vec![patch, (3 * patch).div_ceil(2), 2 * patch];
    sides.dedup();
    sides.retain(|&s| s <= height && s <= width && (s == patch || grid_len(height, width, s, stride) >= 2));
    sides
}

/// Bag sizes 1, 2, 4, ... below `n`, then `n` itself.
pub fn bag_sizes(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k < n).collect();
    if n > 0 {
        ks.push(n);
    }
    ks
}

/// Cosine of two vectors in f64, norms floored like `F.normalize` (eps 1e-12).
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    dot / (na * nb)
}

/// Whole image vs bag at one patch side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BagCurve {
    /// Patch side before resizing to the input side, and the grid's stride.
    pub side: usize,
    pub stride: usize,
    /// Grid patches per image (the last k).
    pub grid: usize,
    pub images: usize,
    pub k: Vec<usize>,
    /// Mean over images of cos(whole-image embedding, mean of k patch embeddings).
    pub cosine_whole: Vec<f64>,
    /// Mean over images of cos(mean of k patch embeddings, mean of all of them): 1 at the end.
    pub cosine_full_bag: Vec<f64>,
}

/// The curves of [`BagCurve`] from embeddings: `whole` (N, dim) and `patches` (N * grid, dim),
/// image-major. Each image's patches are taken in the order of its own seeded shuffle (one RNG
/// from `seed`, drawing a permutation per image in turn), the first k averaged in f64.
pub fn bag_curve_of(
    whole: &[f32],
    patches: &[f32],
    dim: usize,
    grid: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<f64>, Vec<f64>)> {
    let n = crate::rows_of("whole-image embeddings", whole, dim)?;
    if grid == 0 || crate::rows_of("patch embeddings", patches, dim)? != n * grid {
        return Err(EvalError::Invalid(format!(
            "{} patch embeddings of dim {dim} are not {grid} per image for {n} images",
            patches.len() / dim.max(1)
        )));
    }
    let ks = bag_sizes(grid);
    let (mut cos_whole, mut cos_full) = (vec![0f64; ks.len()], vec![0f64; ks.len()]);
    let mut rng = SeededRng::new(seed);
    let (mut sum, mut full) = (vec![0f64; dim], vec![0f64; dim]);
    for i in 0..n {
        let w: Vec<f64> = whole[i * dim..(i + 1) * dim].iter().map(|&v| f64::from(v)).collect();
        let rows = &patches[i * grid * dim..(i + 1) * grid * dim];
        full.fill(0.0);
        for row in rows.chunks_exact(dim) {
            full.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
        }
        // A sum and a mean have the same cosine with anything: no division needed.
        sum.fill(0.0);
        let order = rng.permutation(grid);
        let mut taken = 0;
        for (j, &k) in ks.iter().enumerate() {
            for &p in &order[taken..k] {
                sum.iter_mut().zip(&rows[p * dim..(p + 1) * dim]).for_each(|(s, &v)| *s += f64::from(v));
            }
            taken = k;
            cos_whole[j] += cosine(&w, &sum);
            cos_full[j] += cosine(&full, &sum);
        }
    }
    let mean = |v: Vec<f64>| v.into_iter().map(|c| c / n.max(1) as f64).collect();
    Ok((ks, mean(cos_whole), mean(cos_full)))
}

/// [`BagCurve`] of `store` at patch side `side` (every grid patch resized to the input side),
/// against `whole`, the [`embed_whole`] embeddings of the same store.
pub fn whole_vs_bag(
    model: &BagSslModel,
    store: &ImageStore,
    whole: &[f32],
    side: usize,
    stride: usize,
    seed: u64,
    batch_images: usize,
) -> Result<BagCurve> {
    if stride == 0 || side == 0 || side > store.height || side > store.width {
        return Err(EvalError::Invalid(format!(
            "whole vs bag: patch side {side} at stride {stride} does not fit {}x{} images",
            store.height, store.width
        )));
    }
    let boxes = grid_boxes(store, side, stride);
    let patches = embed_patches(model, store, &boxes, batch_images)?;
    let (k, cosine_whole, cosine_full_bag) = bag_curve_of(whole, &patches, model.hidden(), boxes.len(), seed)?;
    Ok(BagCurve { side, stride, grid: boxes.len(), images: store.len(), k, cosine_whole, cosine_full_bag })
}

/// A grid patch of the neighbour pool: its image (an index into the pool's store), label and
/// position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PatchRef {
    pub image: usize,
    pub label: u32,
    pub oy: usize,
    pub ox: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Neighbour {
    #[serde(flatten)]
    pub patch: PatchRef,
    pub cosine: f64,
}

/// One query patch and its nearest patches of other images in h and in z, nearest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryNeighbours {
    pub query: PatchRef,
    pub h: Vec<Neighbour>,
    pub z: Vec<Neighbour>,
}

/// How local the neighbours of one space are, over every statistics query and neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Locality {
    /// Mean Euclidean distance (pixels) between the query's and the neighbour's grid position.
    pub mean_offset_px: f64,
    /// Fraction of neighbours at exactly the query's position.
    pub same_position: f64,
    /// Fraction of neighbours of the query's class.
    pub same_class: f64,
    /// Mean cosine of the neighbours (none for chance).
    pub mean_cosine: Option<f64>,
}

/// The patch nearest-neighbour analysis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeighbourReport {
    pub patch: usize,
    pub stride: usize,
    pub pool_images: usize,
    pub pool_patches: usize,
    pub k: usize,
    /// Queries (one per image, seeded) the locality numbers average over.
    pub stat_queries: usize,
    pub h: Locality,
    pub z: Locality,
    /// What a neighbour drawn uniformly from the other images' grid patches would give.
    pub chance: Locality,
    /// The first queries, with their neighbours (the mosaic).
    pub shown: Vec<QueryNeighbours>,
}

/// Rows scaled to unit length (f32, through f64), floored like `F.normalize`.
fn unit_rows(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim)
        .flat_map(|r| {
            let n = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt().max(1e-12);
            r.iter().map(move |&v| (f64::from(v) / n) as f32)
        })
        .collect()
}

/// The `k` rows of `unit` (unit rows of width `dim`) most cosine-similar to row `query`, among
/// rows whose `owner` differs from the query's, most similar first (ties: lower row first);
/// the cosines are f64 dot products of the unit rows.
pub fn nearest_of_other_owners(
    unit: &[f32],
    dim: usize,
    owners: &[usize],
    query: usize,
    k: usize,
) -> Vec<(usize, f64)> {
    let q = &unit[query * dim..(query + 1) * dim];
    let mut scored: Vec<(usize, f64)> = unit
        .chunks_exact(dim)
        .enumerate()
        .filter(|&(j, _)| owners[j] != owners[query])
        .map(|(j, r)| (j, q.iter().zip(r).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()))
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    let by_sim = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    scored.select_nth_unstable_by(k - 1, by_sim);
    scored.truncate(k);
    scored.sort_by(by_sim);
    scored
}

/// Eval-mode z of `h` rows (hidden wide), in chunks, on the model's device.
fn project_rows(model: &BagSslModel, h: &[f32]) -> Result<Vec<f32>> {
    const ROWS: usize = 4096;
    let dim = model.hidden();
    let mut out = Vec::new();
    for chunk in h.chunks(ROWS * dim) {
        let t = Tensor::from_vec(&[chunk.len() / dim, dim], chunk.to_vec()).to_device(model.device())?;
        out.extend(model.project_eval(&t)?.to_vec()?);
    }
    Ok(out)
}

/// Settings of [`patch_neighbours`].
#[derive(Clone, Copy, Debug)]
pub struct NeighbourOptions {
    pub stride: usize,
    /// Neighbours per query and space.
    pub k: usize,
    /// Queries shown (kept with their neighbours).
    pub shown: usize,
    /// Queries the locality numbers average over (at least `shown`; capped at the pool's images).
    pub stat_queries: usize,
    pub seed: u64,
    pub batch_images: usize,
}

/// Nearest grid patches (input side, at `stride`) of other images of `pool`, in h (encoder) and
/// z (projector), for query patches drawn from `pool`: one per image, images and positions
/// seeded.
pub fn patch_neighbours(model: &BagSslModel, pool: &ImageStore, o: &NeighbourOptions) -> Result<NeighbourReport> {
    let patch = model.config().patch;
    if pool.len() < 2 || o.stride == 0 || o.k == 0 {
        return Err(EvalError::Invalid(format!(
            "patch neighbours need 2 or more pool images ({}), a positive stride ({}) and k ({})",
            pool.len(),
            o.stride,
            o.k
        )));
    }
    let boxes = grid_boxes(pool, patch, o.stride);
    let grid = boxes.len();
    let h = embed_patches(model, pool, &boxes, o.batch_images)?;
    let z = project_rows(model, &h)?;
    let (hd, zd) = (model.hidden(), z.len() / (pool.len() * grid).max(1));
    let (hu, zu) = (unit_rows(&h, hd), unit_rows(&z, zd));
    drop((h, z));
    let owners: Vec<usize> = (0..pool.len() * grid).map(|r| r / grid).collect();
    let at = |row: usize| {
        let (image, (oy, ox, _, _)) = (row / grid, boxes[row % grid]);
        PatchRef { image, label: pool.labels[image], oy, ox }
    };

    let mut rng = SeededRng::new(o.seed);
    let nq = o.stat_queries.max(o.shown).min(pool.len());
    let queries: Vec<usize> = rng.permutation(pool.len())[..nq].iter().map(|&i| i * grid + rng.below(grid)).collect();
    let found: Vec<QueryNeighbours> = queries
        .par_iter()
        .map(|&q| {
            let near = |unit: &[f32], dim| {
                nearest_of_other_owners(unit, dim, &owners, q, o.k)
                    .into_iter()
                    .map(|(j, cosine)| Neighbour { patch: at(j), cosine })
                    .collect::<Vec<_>>()
            };
            QueryNeighbours { query: at(q), h: near(&hu, hd), z: near(&zu, zd) }
        })
        .collect();

    let offset = |a: &PatchRef, b: &PatchRef| (a.oy as f64 - b.oy as f64).hypot(a.ox as f64 - b.ox as f64);
    let locality = |pick: fn(&QueryNeighbours) -> &Vec<Neighbour>| {
        let pairs: Vec<(&PatchRef, &Neighbour)> =
            found.iter().flat_map(|f| pick(f).iter().map(move |n| (&f.query, n))).collect();
        let mean =
            |v: &dyn Fn(&(&PatchRef, &Neighbour)) -> f64| pairs.iter().map(v).sum::<f64>() / pairs.len().max(1) as f64;
        Locality {
            mean_offset_px: mean(&|(q, n)| offset(q, &n.patch)),
            same_position: mean(&|(q, n)| f64::from((q.oy, q.ox) == (n.patch.oy, n.patch.ox))),
            same_class: mean(&|(q, n)| f64::from(q.label == n.patch.label)),
            mean_cosine: Some(mean(&|(_, n)| n.cosine)),
        }
    };
    // Chance: the neighbour's position uniform over the grid, its image uniform over the others.
    let positions: Vec<PatchRef> =
        boxes.iter().map(|&(oy, ox, _, _)| PatchRef { image: 0, label: 0, oy, ox }).collect();
    let pairs = (grid * grid) as f64;
    let chance_offset = positions.iter().flat_map(|a| positions.iter().map(move |b| offset(a, b))).sum::<f64>() / pairs;
    let chance_class = found
        .iter()
        .map(|f| {
            let same = pool.labels.iter().filter(|&&l| l == f.query.label).count() - 1;
            same as f64 / (pool.len() - 1) as f64
        })
        .sum::<f64>()
        / found.len().max(1) as f64;
    let chance = Locality {
        mean_offset_px: chance_offset,
        same_position: 1.0 / grid as f64,
        same_class: chance_class,
        mean_cosine: None,
    };
    let (h_loc, z_loc) = (locality(|f| &f.h), locality(|f| &f.z));
    let mut shown = found;
    shown.truncate(o.shown);
    Ok(NeighbourReport {
        patch,
        stride: o.stride,
        pool_images: pool.len(),
        pool_patches: pool.len() * grid,
        k: o.k,
        stat_queries: nq,
        h: h_loc,
        z: z_loc,
        chance,
        shown,
    })
}

/// How an image becomes one embedding, for [`aggregation_knn`].
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregation {
    /// The centre grid patch alone ([`embed_single_patch`]).
    SinglePatch,
    /// One of the evaluation protocols.
    Protocol(crate::Protocol),
}

/// Weighted-kNN accuracy on `test` with `train` as the neighbours, images embedded as
/// `aggregation` says with `cfg`'s grid, kNN settings and seed; a random protocol draws the
/// training split with the seed, the test split with the seed + 1, as `evaluate_protocol` does.
pub fn aggregation_knn(
    model: &BagSslModel,
    train: &ImageStore,
    test: &ImageStore,
    aggregation: &Aggregation,
    cfg: &EvalConfig,
) -> Result<f64> {
    let embed = |store: &ImageStore, seed: u64| match aggregation {
        Aggregation::SinglePatch => {
            embed_single_patch(model, store, Grid { patch: cfg.patch, stride: cfg.stride }, cfg.batch_images)
        }
        Aggregation::Protocol(p) => embed_protocol(model, store, cfg, p, seed),
    };
    let ftr = embed(train, cfg.seed)?;
    let fte = embed(test, cfg.seed.wrapping_add(1))?;
    let dim = ftr.len() / train.len().max(1);
    knn_accuracy(&splits(train, &ftr, test, &fte, dim, class_count(train, test)), cfg.knn_k, cfg.knn_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{embed_multiscale, embed_whole};
    use bagssl_autograd::Device;
    use bagssl_data::{synthetic, SyntheticSpec};
    use bagssl_model::ModelConfig;

    #[test]
    fn bag_sizes_double_then_end_at_the_grid() {
        assert_eq!(bag_sizes(25), [1, 2, 4, 8, 16, 25]);
        assert_eq!(bag_sizes(16), [1, 2, 4, 8, 16]);
        assert_eq!(bag_sizes(1), [1]);
        assert!(bag_sizes(0).is_empty());
        assert_eq!(default_scales(16, 32, 32, 4), [16, 24], "32 would be the whole image, one position");
        assert_eq!(default_scales(8, 32, 32, 4), [8, 12, 16]);
        assert_eq!(default_scales(32, 32, 32, 4), [32]);
    }

    /// Orthogonal patches e_0..e_{G-1} and the whole image their sum: cos(whole, mean of any k
    /// of them) = k / sqrt(k G) = sqrt(k / G), whatever the shuffle; the same against the full bag.
    #[test]
    fn bag_curve_of_orthogonal_patches_is_sqrt_k_over_g() {
        let (g, n) = (8, 5);
        let mut patches = Vec::new();
        for i in 0..n {
            for j in 0..g {
                // Each image scales its basis differently: the cosine must not care.
                patches.extend((0..g).map(|d| if d == j { 1.0 + i as f32 } else { 0.0 }));
            }
        }
        let whole: Vec<f32> = (0..n).flat_map(|_| vec![3.0; g]).collect();
        let (ks, cw, cf) = bag_curve_of(&whole, &patches, g, g, 7).unwrap();
        assert_eq!(ks, [1, 2, 4, 8]);
        for (j, &k) in ks.iter().enumerate() {
            let want = (k as f64 / g as f64).sqrt();
            assert!(
                (cw[j] - want).abs() < 1e-12 && (cf[j] - want).abs() < 1e-12,
                "k {k}: {} {} vs {want}",
                cw[j],
                cf[j]
            );
        }
        assert!(bag_curve_of(&whole, &patches[g..], g, g, 7).is_err(), "a missing patch row is an error");
    }

    #[test]
    fn nearest_of_other_owners_skips_the_query_image_and_sorts() {
        // Rows: owner 0: a, b; owner 1: c, d; owner 2: e.
        let rows = [[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]];
        let unit: Vec<f32> = rows.iter().flatten().copied().collect();
        let near = nearest_of_other_owners(&unit, 2, &[0, 0, 1, 1, 2], 0, 3);
        let idx: Vec<usize> = near.iter().map(|n| n.0).collect();
        assert_eq!(idx, [2, 4, 3], "row 1 (same image, cosine 1) is left out");
        assert!((near[0].1 - 0.8).abs() < 1e-6 && (near[2].1).abs() < 1e-6);
        assert_eq!(nearest_of_other_owners(&unit, 2, &[0, 0, 1, 1, 2], 4, 10).len(), 4);
    }

    fn model(patch: usize) -> BagSslModel {
        BagSslModel::new(ModelConfig::mlp(patch, 2, 16, 12), 3, &Device::Cpu).unwrap()
    }

    fn store(images: usize, seed: u64) -> ImageStore {
        synthetic(&SyntheticSpec { images, classes: 3, height: 12, width: 12, seed })
    }

    /// With a real (seeded, untrained) model: the curve ends at 1 against the full bag and at
    /// the multiscale bag's own cosine with the whole image; a grid of one box the size of the
    /// image is the whole image exactly.
    #[test]
    fn whole_vs_bag_ends_at_the_bag_and_the_whole_image_is_its_own_bag() {
        let (m, s) = (model(4), store(7, 1));
        let whole = embed_whole(&m, &s, 3).unwrap();
        let c = whole_vs_bag(&m, &s, &whole, 6, 2, 0, 3).unwrap();
        assert_eq!((c.grid, c.images, c.k.clone()), (16, 7, vec![1, 2, 4, 8, 16]));
        assert!((c.cosine_full_bag.last().unwrap() - 1.0).abs() < 1e-9);
        let bag = embed_multiscale(&m, &s, &[6], 2, 4).unwrap();
        let d = m.hidden();
        let to64 = |r: &[f32]| r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        let want: f64 =
            (0..7).map(|i| cosine(&to64(&whole[i * d..(i + 1) * d]), &to64(&bag[i * d..(i + 1) * d]))).sum::<f64>()
                / 7.0;
        assert!((c.cosine_whole.last().unwrap() - want).abs() < 1e-5, "{:?} vs {want}", c.cosine_whole);
        assert!(c.cosine_whole.iter().chain(&c.cosine_full_bag).all(|v| (-1.0..=1.0 + 1e-9).contains(v)));
        let one = whole_vs_bag(&m, &s, &whole, 12, 2, 0, 3).unwrap();
        assert_eq!(one.k, [1]);
        assert!((one.cosine_whole[0] - 1.0).abs() < 1e-6, "{:?}", one.cosine_whole);
        assert!(whole_vs_bag(&m, &s, &whole, 13, 2, 0, 3).is_err());
    }

    /// Neighbours come from other images, nearest first, and their cosines are the ones of the
    /// patch embeddings computed directly (h: the encoder, z: the projector on h).
    #[test]
    fn patch_neighbours_match_direct_embeddings() {
        let (m, pool) = (model(4), store(9, 2));
        let o = NeighbourOptions { stride: 4, k: 5, shown: 3, stat_queries: 6, seed: 1, batch_images: 4 };
        let r = patch_neighbours(&m, &pool, &o).unwrap();
        assert_eq!((r.pool_patches, r.stat_queries, r.shown.len()), (9 * 9, 6, 3));
        let one = |p: &PatchRef| {
            let s = pool.subset(&[p.image]);
            let h = embed_patches(&m, &s, &[(p.oy, p.ox, 4, 4)], 1).unwrap();
            let z = m.project_eval(&Tensor::from_vec(&[1, m.hidden()], h.clone())).unwrap().to_vec().unwrap();
            (h.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), z.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
        };
        for q in &r.shown {
            let (qh, qz) = one(&q.query);
            for (list, is_h) in [(&q.h, true), (&q.z, false)] {
                assert_eq!(list.len(), 5);
                assert!(list.windows(2).all(|w| w[0].cosine >= w[1].cosine));
                for n in list {
                    assert_ne!(n.patch.image, q.query.image);
                    let (nh, nz) = one(&n.patch);
                    let want = if is_h { cosine(&qh, &nh) } else { cosine(&qz, &nz) };
                    assert!((n.cosine - want).abs() < 1e-4, "{} vs {want}", n.cosine);
                }
            }
        }
        for l in [r.h, r.z, r.chance] {
            assert!((0.0..=1.0).contains(&l.same_class) && (0.0..=1.0).contains(&l.same_position));
            assert!(l.mean_offset_px >= 0.0 && l.mean_offset_px <= 8f64.hypot(8.0));
        }
        assert!((r.chance.same_position - 1.0 / 9.0).abs() < 1e-12);
    }

    /// Test set = training set and k = 1: every image's nearest neighbour is itself, so every
    /// deterministic aggregation scores 1.
    #[test]
    fn aggregation_knn_of_the_training_set_with_k1_is_one() {
        let (m, s) = (model(4), store(20, 3));
        let knn = |k| EvalConfig {
            patch: 4,
            stride: 4,
            knn_k: k,
            knn_t: 0.1,
            seed: 0,
            batch_images: 8,
            ..EvalConfig::default()
        };
        for a in [
            Aggregation::SinglePatch,
            Aggregation::Protocol(crate::Protocol::Grid),
            Aggregation::Protocol(crate::Protocol::Whole),
            Aggregation::Protocol(crate::Protocol::Multiscale { sizes: vec![4, 6] }),
            Aggregation::Protocol(crate::Protocol::Pyramid),
        ] {
            let acc = aggregation_knn(&m, &s, &s, &a, &knn(1)).unwrap();
            assert_eq!(acc, 1.0, "{a:?}");
        }
        let other = store(10, 4);
        let acc = aggregation_knn(&m, &s, &other, &Aggregation::SinglePatch, &knn(5)).unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }

    #[test]
    fn seeded_subsets_are_reproducible() {
        let s = store(30, 5);
        let (a, b) = (seeded_subset(&s, 10, 9), seeded_subset(&s, 10, 9));
        assert_eq!((a.len(), a.pixels.clone()), (10, b.pixels));
        assert_eq!(seeded_subset(&s, 99, 9).len(), 30);
    }
}
