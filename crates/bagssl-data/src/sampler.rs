//! Seeded patch sampling (docs/DEFINITIONS.md §2 "Patch spec").
//!
//! A step's only randomness is the list of [`PatchSpec`]s drawn here on the host; the CPU gather
//! and the GPU kernel both consume the same specs, which is what makes CPU-vs-GPU parity exact.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::rng::{below, unit_f32, RngState};
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
    /// Top-left corner, `0 <= oy <= H - p`, `0 <= ox <= W - p`.
    pub oy: u32,
    pub ox: u32,
    /// Mirror left-right.
    pub flip: bool,
    pub jitter: Option<Jitter>,
    /// Replace every channel with the luma `x . (0.299, 0.587, 0.114)`.
    pub gray: bool,
}

/// Checks that `patch` fits `height x width` images; call it once on user configuration so the
/// sampler and gathers (which assert) never see a bad size.
pub fn check_patch_size(patch: usize, height: usize, width: usize) -> Result<(), DataError> {
    if patch == 0 || patch > height || patch > width {
        return Err(DataError::PatchTooLarge { patch, height, width });
    }
    Ok(())
}

/// Draws [`PatchSpec`]s from a seeded ChaCha8 stream.
///
/// Draw order, per patch, in output order (image-major):
/// 1. `oy` = uniform integer in `0..=H-p` (one 64-bit word, Lemire rejection),
/// 2. `ox` = uniform integer in `0..=W-p`,
///
/// and only when augmenting, each a 24-bit uniform `u` in `[0, 1)` from one 32-bit word:
/// 3. `flip = u < 0.5`,
/// 4. `jitter = u < 0.8`,
/// 5. brightness, 6. contrast, 7. saturation `= 0.6 + 0.8 u` (drawn even when `jitter` is false,
///    so every patch consumes the same number of draws),
/// 8. `gray = u < 0.2`.
#[derive(Clone, Debug)]
pub struct PatchSampler {
    rng: ChaCha8Rng,
    augment: bool,
}

impl PatchSampler {
    /// Stream [`PATCH_STREAM`] of `ChaCha8Rng::seed_from_u64(seed)`.
    pub fn new(seed: u64, augment: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(PATCH_STREAM);
        PatchSampler { rng, augment }
    }

    pub fn augment(&self) -> bool {
        self.augment
    }

    /// Image-major specs: rows `b*n .. b*n+n-1` are patches of `images[b]` (`n = per_image`).
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
        let ny = (height - patch + 1) as u64;
        let nx = (width - patch + 1) as u64;
        let (lo, hi) = JITTER_RANGE;
        for &image in images {
            for _ in 0..per_image {
                let oy = below(&mut self.rng, ny) as u32;
                let ox = below(&mut self.rng, nx) as u32;
                let mut spec = PatchSpec { image, oy, ox, flip: false, jitter: None, gray: false };
                if self.augment {
                    let r = &mut self.rng;
                    spec.flip = unit_f32(r) < FLIP_P;
                    let jit = unit_f32(r) < JITTER_P;
                    let brightness = lo + (hi - lo) * unit_f32(r);
                    let contrast = lo + (hi - lo) * unit_f32(r);
                    let saturation = lo + (hi - lo) * unit_f32(r);
                    spec.jitter = jit.then_some(Jitter { brightness, contrast, saturation });
                    spec.gray = unit_f32(r) < GRAY_P;
                }
                out.push(spec);
            }
        }
    }

    pub fn state(&self) -> RngState {
        RngState::of(&self.rng)
    }

    pub fn from_state(s: &RngState, augment: bool) -> Self {
        PatchSampler { rng: s.to_rng(), augment }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler's draw order is part of the checkpoint format: same seed, same specs, forever.
    #[test]
    fn pinned_specs() {
        let specs = PatchSampler::new(0, true).sample(&[3, 1], 2, 8, 32, 24);
        let j = |brightness, contrast, saturation| Some(Jitter { brightness, contrast, saturation });
        let expect = [
            PatchSpec { image: 3, oy: 18, ox: 12, flip: false, jitter: j(0.66275465, 1.329241, 0.930508), gray: false },
            PatchSpec {
                image: 3,
                oy: 19,
                ox: 3,
                flip: false,
                jitter: j(1.0981328, 1.1490897, 0.69940287),
                gray: false,
            },
            PatchSpec { image: 1, oy: 3, ox: 8, flip: false, jitter: j(0.8749533, 0.7762809, 0.69057465), gray: false },
            PatchSpec { image: 1, oy: 2, ox: 7, flip: true, jitter: None, gray: false },
        ];
        assert_eq!(specs, expect);
    }
}
