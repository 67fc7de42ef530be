//! Seeded patch sampling (docs/DEFINITIONS.md §2 "Patch spec").
//!
//! A step's only randomness is the list of [`PatchSpec`]s drawn here on the host; the CPU gather
//! and the GPU kernel both consume the same specs, which is what makes CPU-vs-GPU parity exact.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::rng::{below, unit_f32, unit_f64, RngState};
use crate::DataError;

/// Probability of a left-right flip.
pub const FLIP_P: f32 = 0.5;
/// Probability of applying colour jitter.
pub const JITTER_P: f32 = 0.8;
/// Brightness, contrast and saturation factors are each uniform in this range.
pub const JITTER_RANGE: (f32, f32) = (0.6, 1.4);
/// Probability of converting the patch to grayscale.
pub const GRAY_P: f32 = 0.2;
/// ChaCha stream used by [`PatchSampler`], distinct from [`crate::SeededRng`]'s stream 0, so a
/// run that seeds both with the same number gets independent draws.
pub const PATCH_STREAM: u64 = 1;
/// Tries of the random-resized box before the centre fallback (torchvision's RandomResizedCrop).
pub const RESIZED_CROP_TRIES: usize = 10;

/// Colour-jitter factors of one patch (docs/DEFINITIONS.md §2; applied as §3 says).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

/// Where one patch comes from and how it is augmented.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchSpec {
    /// Index into the [`crate::ImageStore`].
    pub image: u32,
    /// Top-left corner of the crop box, `0 <= oy <= H - h`, `0 <= ox <= W - w`.
    pub oy: u32,
    pub ox: u32,
    /// Size of the crop box; the gather resizes it bilinearly to its output side when that
    /// differs (docs/DEFINITIONS.md §3 step 1).
    pub h: u32,
    pub w: u32,
    /// Mirror left-right.
    pub flip: bool,
    pub jitter: Option<Jitter>,
    /// Replace every channel with the luma `x . (0.299, 0.587, 0.114)`.
    pub gray: bool,
    /// Gaussian blur of this standard deviation, in output pixels.
    pub blur: Option<f32>,
    /// Replace every value `v >= 0.5` with `1 - v`.
    pub solarize: bool,
}

impl PatchSpec {
    /// A plain `p x p` crop at `(oy, ox)`: no resize, no augmentation (the evaluation grid's).
    pub fn crop(image: u32, oy: u32, ox: u32, p: u32) -> PatchSpec {
        PatchSpec::boxed(image, oy, ox, p, p)
    }

    /// A plain `h x w` crop box at `(oy, ox)`, no augmentation.
    pub fn boxed(image: u32, oy: u32, ox: u32, h: u32, w: u32) -> PatchSpec {
        PatchSpec { image, oy, ox, h, w, flip: false, jitter: None, gray: false, blur: None, solarize: false }
    }
}

/// The augmentations of a training view and their parameters (docs/DEFINITIONS.md §2); the
/// defaults are the original fixed-crop recipe, with blur and solarize off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Probability of a left-right flip.
    pub flip: f32,
    /// Probability of colour jitter.
    pub jitter: f32,
    /// Brightness, contrast and saturation strengths `s`: each factor is uniform on `[1 - s, 1 + s]`.
    pub jitter_strength: [f32; 3],
    /// Probability of grayscale.
    pub gray: f32,
    /// Probability of a Gaussian blur, and the range its sigma is drawn from (output pixels).
    pub blur: f32,
    pub blur_sigma: [f32; 2],
    /// Probability of solarize.
    pub solarize: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            flip: FLIP_P,
            jitter: JITTER_P,
            jitter_strength: [0.4; 3],
            gray: GRAY_P,
            blur: 0.0,
            blur_sigma: [0.1, 2.0],
            solarize: 0.0,
        }
    }
}

impl Augment {
    /// Checks every value, naming its `patches.*` config key.
    pub fn validate(&self) -> Result<(), String> {
        let probs = [
            ("patches.flip", self.flip),
            ("patches.jitter", self.jitter),
            ("patches.gray", self.gray),
            ("patches.blur", self.blur),
            ("patches.solarize", self.solarize),
        ];
        for (key, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("config key `{key}` is a probability in [0, 1] (got {p})"));
            }
        }
        if let Some(s) = self.jitter_strength.iter().find(|s| !(0.0..1.0).contains(*s)) {
            return Err(format!(
                "config key `patches.jitter_strength` must hold three strengths in [0, 1) (got {s} in {:?})",
                self.jitter_strength
            ));
        }
        let [lo, hi] = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(format!(
                "config key `patches.blur_sigma` must be [min, max] with 0 < min <= max (got {:?})",
                self.blur_sigma
            ));
        }
        Ok(())
    }

    /// `[1 - s, 1 + s]` of one strength, rounded from f64 so the default 0.4 gives exactly the
    /// (0.6, 1.4) of [`JITTER_RANGE`] (which pins the draws of older runs).
    fn range(s: f32) -> (f32, f32) {
        ((1.0 - f64::from(s)) as f32, (1.0 + f64::from(s)) as f32)
    }
}

/// How a training view is cut: a fixed `p x p` crop (no `scale`), or a random-resized box
/// (`scale`, `ratio`, as torchvision's RandomResizedCrop), then augmented with `augment`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Views {
    /// Side of the fixed crop; `None`: the output side (the model's input).
    pub crop: Option<usize>,
    /// Range of the box's area as a fraction of the image's; `None`: fixed crops.
    pub scale: Option<[f64; 2]>,
    /// Range of the box's aspect ratio `w / h`, drawn log-uniformly.
    pub ratio: [f64; 2],
    pub augment: Augment,
}

impl Default for Views {
    fn default() -> Self {
        Views { crop: None, scale: None, ratio: [3.0 / 4.0, 4.0 / 3.0], augment: Augment::default() }
    }
}

impl Views {
    /// Checks `scale`, `ratio`, `crop` and the augmentations, naming their `patches.*` keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.crop == Some(0) {
            return Err("config key `patches.size` must be at least 1 (got 0)".into());
        }
        if let Some([lo, hi]) = self.scale {
            if !(lo > 0.0 && lo <= 1.0 && hi > 0.0 && hi <= 1.0) {
                return Err(format!("config key `patches.scale` must lie in (0, 1] (got [{lo}, {hi}])"));
            }
            if lo > hi {
                return Err(format!(
                    "config key `patches.scale` must be [min, max] with min <= max (got [{lo}, {hi}])"
                ));
            }
        }
        let [lo, hi] = self.ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(format!(
                "config key `patches.ratio` must be [min, max] with 0 < min <= max (got [{lo}, {hi}])"
            ));
        }
        self.augment.validate()
    }
}

/// Checks that `patch` fits `height x width` images; call it once on user configuration so the
/// sampler and gathers (which assert) never see a bad size.
pub fn check_patch_size(patch: usize, height: usize, width: usize) -> Result<(), DataError> {
    if patch == 0 || patch > height || patch > width {
        return Err(DataError::PatchTooLarge { patch, height, width });
    }
    Ok(())
}

/// Python's `int(round(x))` (ties to even), which torchvision's box sizes use.
fn round_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Draws [`PatchSpec`]s from a seeded ChaCha8 stream.
///
/// Draw order, per patch, in output order (image-major). The box, with fixed crops (no
/// `scale`; the original recipe):
/// 1. `oy` = uniform integer in `0..=H-p` (one 64-bit word, Lemire rejection),
/// 2. `ox` = uniform integer in `0..=W-p`;
///
/// or, with `scale`, up to [`RESIZED_CROP_TRIES`] tries of (each `u` a 53-bit uniform in `[0, 1)`
/// from one 64-bit word) area fraction `smin + (smax - smin) u`, log aspect ratio
/// `ln rmin + (ln rmax - ln rmin) u`, `w = round(sqrt(A r))`, `h = round(sqrt(A / r))` (ties to
/// even); the first box that fits draws `oy` in `0..=H-h` then `ox` in `0..=W-w`; if none fits,
/// torchvision's fallback: the centred box of the whole image clamped to the ratio range (no draws).
///
/// Then, only when augmenting, each a 24-bit uniform `u` in `[0, 1)` from one 32-bit word:
/// 3. `flip = u < flip_p`,
/// 4. `jitter = u < jitter_p`,
/// 5. brightness, 6. contrast, 7. saturation `= (1 - s) + 2s u` (drawn even when `jitter` is
///    false, so every patch consumes the same number of draws),
/// 8. `gray = u < gray_p`,
/// 9. only when `blur_p > 0`: `blur = u < blur_p`, then `sigma = smin + (smax - smin) u`,
/// 10. only when `solarize_p > 0`: `solarize = u < solarize_p`.
///
/// With the defaults (fixed crops, blur and solarize off) this is the original draw order.
#[derive(Clone, Debug)]
pub struct PatchSampler {
    rng: ChaCha8Rng,
    augment: bool,
    views: Views,
}

impl PatchSampler {
    /// Stream [`PATCH_STREAM`] of `ChaCha8Rng::seed_from_u64(seed)`, fixed crops, the default
    /// augmentations when `augment`.
    pub fn new(seed: u64, augment: bool) -> Self {
        PatchSampler::with_views(seed, augment, Views::default())
    }

    /// Like [`PatchSampler::new`] with the given views (check them with [`Views::validate`]).
    pub fn with_views(seed: u64, augment: bool, views: Views) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(PATCH_STREAM);
        PatchSampler { rng, augment, views }
    }

    pub fn augment(&self) -> bool {
        self.augment
    }

    pub fn views(&self) -> &Views {
        &self.views
    }

    /// Image-major specs: rows `b*n .. b*n+n-1` are patches of `images[b]` (`n = per_image`).
    /// `patch` is the side of a fixed crop (unused for the box when the views have a `scale`).
    ///
    /// # Panics
    /// If the patch does not fit (validate with [`check_patch_size`] first).
    pub fn sample(
        &mut self,
        images: &[u32],
        per_image: usize,
        patch: usize,
        height: usize,
        width: usize,
    ) -> Vec<PatchSpec> {
        let mut out = Vec::with_capacity(images.len() * per_image);
        self.sample_into(images, per_image, patch, height, width, &mut out);
        out
    }

    /// [`PatchSampler::sample`] into a reused buffer (cleared first), so the training loop
    /// does not allocate per step.
    pub fn sample_into(
        &mut self,
        images: &[u32],
        per_image: usize,
        patch: usize,
        height: usize,
        width: usize,
        out: &mut Vec<PatchSpec>,
    ) {
        if let Err(e) = check_patch_size(patch, height, width) {
            panic!("PatchSampler::sample: {e}");
        }
        out.clear();
        out.reserve(images.len() * per_image);
        let a = self.views.augment;
        let ranges = a.jitter_strength.map(Augment::range);
        for &image in images {
            for _ in 0..per_image {
                let (oy, ox, h, w) = self.draw_box(patch, height, width);
                let mut spec = PatchSpec::boxed(image, oy, ox, h, w);
                if self.augment {
                    let r = &mut self.rng;
                    spec.flip = unit_f32(r) < a.flip;
                    let jit = unit_f32(r) < a.jitter;
                    let [brightness, contrast, saturation] = ranges.map(|(lo, hi)| lo + (hi - lo) * unit_f32(r));
                    spec.jitter = jit.then_some(Jitter { brightness, contrast, saturation });
                    spec.gray = unit_f32(r) < a.gray;
                    if a.blur > 0.0 {
                        let blur = unit_f32(r) < a.blur;
                        let [lo, hi] = a.blur_sigma;
                        let sigma = lo + (hi - lo) * unit_f32(r);
                        spec.blur = blur.then_some(sigma);
                    }
                    if a.solarize > 0.0 {
                        spec.solarize = unit_f32(r) < a.solarize;
                    }
                }
                out.push(spec);
            }
        }
    }

    /// The crop box `(oy, ox, h, w)` of one patch: fixed `patch x patch`, or random-resized.
    fn draw_box(&mut self, patch: usize, height: usize, width: usize) -> (u32, u32, u32, u32) {
        let Some([smin, smax]) = self.views.scale else {
            let oy = below(&mut self.rng, (height - patch + 1) as u64) as u32;
            let ox = below(&mut self.rng, (width - patch + 1) as u64) as u32;
            return (oy, ox, patch as u32, patch as u32);
        };
        let (hh, ww) = (height as i64, width as i64);
        let area = (height * width) as f64;
        let [rmin, rmax] = self.views.ratio;
        let (lmin, lmax) = (rmin.ln(), rmax.ln());
        for _ in 0..RESIZED_CROP_TRIES {
            let target = area * (smin + (smax - smin) * unit_f64(&mut self.rng));
            let ratio = (lmin + (lmax - lmin) * unit_f64(&mut self.rng)).exp();
            let w = round_even((target * ratio).sqrt());
            let h = round_even((target / ratio).sqrt());
            if 0 < w && w <= ww && 0 < h && h <= hh {
                let oy = below(&mut self.rng, (hh - h + 1) as u64) as u32;
                let ox = below(&mut self.rng, (ww - w + 1) as u64) as u32;
                return (oy, ox, h as u32, w as u32);
            }
        }
        // torchvision's fallback: the whole image, cut to the nearest allowed ratio, centred.
        let in_ratio = width as f64 / height as f64;
        let (h, w) = if in_ratio < rmin {
            ((round_even(ww as f64 / rmin)).clamp(1, hh), ww)
        } else if in_ratio > rmax {
            (hh, (round_even(hh as f64 * rmax)).clamp(1, ww))
        } else {
            (hh, ww)
        };
        (((hh - h) / 2) as u32, ((ww - w) / 2) as u32, h as u32, w as u32)
    }

    pub fn state(&self) -> RngState {
        RngState::of(&self.rng)
    }

    pub fn from_state(s: &RngState, augment: bool, views: Views) -> Self {
        PatchSampler { rng: s.to_rng(), augment, views }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(image: u32, oy: u32, ox: u32, flip: bool, jitter: Option<Jitter>) -> PatchSpec {
        PatchSpec { flip, jitter, ..PatchSpec::crop(image, oy, ox, 8) }
    }

    /// The sampler's draw order is part of the checkpoint format: same seed, same specs, forever.
    #[test]
    fn pinned_specs() {
        let specs = PatchSampler::new(0, true).sample(&[3, 1], 2, 8, 32, 24);
        let j = |brightness, contrast, saturation| Some(Jitter { brightness, contrast, saturation });
        let expect = [
            fixed(3, 18, 12, false, j(0.66275465, 1.329241, 0.930508)),
            fixed(3, 19, 3, false, j(1.0981328, 1.1490897, 0.69940287)),
            fixed(1, 3, 8, false, j(0.8749533, 0.7762809, 0.69057465)),
            fixed(1, 2, 7, true, None),
        ];
        assert_eq!(specs, expect);
        // The default strengths give the original range exactly (older runs' factors).
        assert_eq!(Augment::range(0.4), JITTER_RANGE);
    }

    /// Blur and solarize at probability 0 draw nothing: turning the keys on only appends draws.
    #[test]
    fn blur_and_solarize_append_their_draws() {
        let views = Views { augment: Augment { blur: 1.0, solarize: 1.0, ..Augment::default() }, ..Views::default() };
        let mut s = PatchSampler::with_views(0, true, views);
        let specs = s.sample(&[3, 1], 2, 8, 32, 24);
        let plain = PatchSampler::new(0, true).sample(&[3], 1, 8, 32, 24);
        let first = specs[0];
        assert_eq!(PatchSpec { blur: None, solarize: false, ..first }, plain[0]);
        let sigma = first.blur.unwrap();
        assert!((0.1..2.0).contains(&sigma) && first.solarize, "{first:?}");
        assert!(specs.iter().all(|s| s.blur.is_some() && s.solarize));
    }

    #[test]
    fn resized_boxes_follow_scale_and_ratio() {
        let (h, w) = (32usize, 40usize);
        let views = Views { scale: Some([0.2, 0.6]), ratio: [0.5, 2.0], ..Views::default() };
        let specs = PatchSampler::with_views(5, false, views).sample(&[0], 4000, 8, h, w);
        let (mut small, mut large) = (false, false);
        for s in &specs {
            assert!(s.oy + s.h <= h as u32 && s.ox + s.w <= w as u32 && s.h > 0 && s.w > 0, "{s:?}");
            // Rounding each side moves the area by at most about one row and one column.
            let frac = f64::from(s.h * s.w) / (h * w) as f64;
            let slack = f64::from(s.h + s.w + 1) / (h * w) as f64;
            assert!(frac >= 0.2 - slack && frac <= 0.6 + slack, "{s:?}: area fraction {frac}");
            let r = f64::from(s.w) / f64::from(s.h);
            let rs = 1.0 / f64::from(s.h.min(s.w));
            assert!(r >= 0.5 * (1.0 - rs) - 1e-9 && r <= 2.0 * (1.0 + rs) + 1e-9, "{s:?}: ratio {r}");
            small |= frac < 0.3;
            large |= frac > 0.5;
        }
        assert!(small && large, "the areas cover their range");
    }

    /// A box that can never fit falls back to torchvision's centred crop of the whole image.
    #[test]
    fn impossible_boxes_fall_back_to_the_centre() {
        let (h, w) = (10usize, 30usize);
        // Ratio at most 1 on a 3:1 image at full area: never fits; fallback h = H, w = round(H * 1).
        let views = Views { scale: Some([1.0, 1.0]), ratio: [0.5, 1.0], ..Views::default() };
        let specs = PatchSampler::with_views(1, false, views.clone()).sample(&[2], 3, 8, h, w);
        for s in &specs {
            assert_eq!((s.image, s.oy, s.ox, s.h, s.w), (2, 0, 10, 10, 10));
        }
        // A tall image with a wide-only ratio: w = W, h = round(W / rmin), centred vertically.
        let views = Views { scale: Some([1.0, 1.0]), ratio: [2.0, 3.0], ..Views::default() };
        let s = PatchSampler::with_views(1, false, views).sample(&[0], 1, 8, 30, 10)[0];
        assert_eq!((s.oy, s.ox, s.h, s.w), (12, 0, 5, 10));
        // The whole image when its ratio is allowed: scale 1 and ratio 1 on a square.
        let views = Views { scale: Some([1.0, 1.0]), ratio: [1.0, 1.0], ..Views::default() };
        let s = PatchSampler::with_views(1, false, views).sample(&[0], 1, 8, 12, 12)[0];
        assert_eq!((s.oy, s.ox, s.h, s.w), (0, 0, 12, 12));
    }

    #[test]
    fn bad_views_name_their_key() {
        let bad = [
            (Views { scale: Some([0.0, 1.0]), ..Views::default() }, "patches.scale"),
            (Views { scale: Some([0.5, 1.5]), ..Views::default() }, "patches.scale"),
            (Views { scale: Some([0.8, 0.2]), ..Views::default() }, "patches.scale"),
            (Views { ratio: [2.0, 1.0], ..Views::default() }, "patches.ratio"),
            (Views { ratio: [0.0, 1.0], ..Views::default() }, "patches.ratio"),
            (Views { crop: Some(0), ..Views::default() }, "patches.size"),
            (Views { augment: Augment { blur: 1.5, ..Augment::default() }, ..Views::default() }, "patches.blur"),
            (Views { augment: Augment { flip: -0.1, ..Augment::default() }, ..Views::default() }, "patches.flip"),
            (
                Views {
                    augment: Augment { jitter_strength: [0.4, 1.0, 0.4], ..Augment::default() },
                    ..Views::default()
                },
                "patches.jitter_strength",
            ),
            (
                Views { augment: Augment { blur_sigma: [0.0, 1.0], ..Augment::default() }, ..Views::default() },
                "patches.blur_sigma",
            ),
        ];
        for (v, key) in bad {
            let e = v.validate().unwrap_err();
            assert!(e.contains(key), "{v:?}: {e}");
        }
        Views::default().validate().unwrap();
    }
}
