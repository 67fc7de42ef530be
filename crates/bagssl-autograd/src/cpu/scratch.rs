//! Per-thread scratch buffers that grow to the largest size any thread has needed.
//!
//! Which worker thread gets which chunk of a product varies from call to call, so a buffer sized
//! to exactly what its own thread last needed would keep growing in warm steps. Growing every
//! buffer of a kind to that kind's high-water mark over all threads bounds the growth to one
//! allocation per thread and kind, made in the first steps.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest length requested so far of one kind of buffer, over all threads (starting from a
/// floor: the size most calls are planned to fit, so that most threads allocate once).
pub struct HighWater(AtomicUsize);

impl HighWater {
    pub const fn new(floor: usize) -> Self {
        Self(AtomicUsize::new(floor))
    }

    /// Makes `buf` at least `len` long; when it must grow, it grows to the high-water mark exactly
    /// (not to the doubled capacity `Vec` would pick).
    pub fn reserve<T: Copy + Default>(&self, buf: &mut Vec<T>, len: usize) {
        if buf.len() < len {
            let mark = self.0.fetch_max(len, Ordering::Relaxed).max(len);
            buf.reserve_exact(mark - buf.len());
            buf.resize(mark, T::default());
        }
    }
}
