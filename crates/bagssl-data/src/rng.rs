//! Seeded, checkpointable randomness.
//!
//! Everything random in training goes through a ChaCha8 stream whose full state (seed, stream,
//! word position) is a small serializable value, so a resumed run draws exactly what the original
//! would have. The integer and float draws are written out here instead of using `rand`'s
//! distributions, whose algorithms may change between `rand` versions: a seed must mean the same
//! numbers forever (and the same numbers on the GPU side, which only sees the specs).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Full state of a [`ChaCha8Rng`]: restoring it continues the stream bit-identically.
///
/// `word_pos` counts 32-bit words and can exceed 2^64, so it is serialized as a decimal string
/// (JSON and TOML have no portable 128-bit integers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

impl RngState {
    /// Captures the state of `rng`.
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState { seed: rng.get_seed(), stream: rng.get_stream(), word_pos: rng.get_word_pos() }
    }

    /// Rebuilds the generator at exactly this position.
    pub fn to_rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

mod u128_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| D::Error::custom(format!("word_pos {s:?}: {e}")))
    }
}

/// Uniform integer in `0..n` (Lemire's multiply-shift with rejection, so unbiased).
///
/// # Panics
/// If `n == 0`.
#[inline]
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    assert!(n > 0, "below(0): empty range");
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        let lo = m as u64;
        // Reject the few low products that would make some outcomes more likely than others.
        if lo >= n || lo >= n.wrapping_neg() % n {
            return (m >> 64) as u64;
        }
    }
}

/// Uniform f32 in `[0, 1)`: the top 24 bits of one 32-bit word, times 2^-24 (exact in f32).
#[inline]
pub(crate) fn unit_f32(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform f64 in `[0, 1)`: the top 53 bits of one 64-bit word, times 2^-53 (exact in f64).
#[inline]
pub(crate) fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// Seeded RNG used for everything random in training (epoch permutations, weight init, ...).
#[derive(Clone, Debug)]
pub struct SeededRng {
    rng: ChaCha8Rng,
}

impl SeededRng {
    /// Stream 0 of `ChaCha8Rng::seed_from_u64(seed)`. ([`crate::PatchSampler`] uses stream 1 of
    /// the same seed, so the two never share draws.)
    pub fn new(seed: u64) -> Self {
        SeededRng { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn state(&self) -> RngState {
        RngState::of(&self.rng)
    }

    pub fn from_state(s: &RngState) -> Self {
        SeededRng { rng: s.to_rng() }
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates, from the top down, with
    /// [`SeededRng::below`]-style draws).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = below(&mut self.rng, i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform(&mut self) -> f32 {
        unit_f32(&mut self.rng)
    }

    /// Uniform integer in `0..n`, unbiased.
    ///
    /// # Panics
    /// If `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        below(&mut self.rng, n as u64) as usize
    }

    /// The underlying generator, for draws this wrapper does not provide (e.g. normal init).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_uniform_and_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[below(&mut rng, 7) as usize] += 1;
        }
        // 10_000 expected per bucket, sd ~93: 5 sd.
        assert!(counts.iter().all(|&c| (c as i64 - 10_000).abs() < 470), "{counts:?}");
        assert!((0..1000).all(|_| below(&mut rng, 1) == 0));
        assert!((0..1000).all(|_| below(&mut rng, u64::MAX) < u64::MAX));
    }

    #[test]
    fn unit_f32_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..100_000).map(|_| unit_f32(&mut rng)).all(|u| (0.0..1.0).contains(&u)));
        assert_eq!((u32::MAX >> 8) as f32 * (1.0 / 16_777_216.0), 1.0 - 2f32.powi(-24));
    }

    /// A seed must mean the same numbers forever: checkpoints and published runs depend on it.
    /// If this fails, the draw procedure changed; that breaks resuming old runs.
    #[test]
    fn pinned_draws() {
        let mut r = SeededRng::new(0);
        let perm = r.permutation(8);
        let u = r.uniform();
        println!("perm {perm:?} u {u}");
        assert_eq!(perm, [7, 2, 1, 6, 0, 4, 3, 5]);
        assert_eq!(u, 0.8235383);
    }
}
