//! Recycled CPU buffers, so that a training step allocates nothing once the first step is done.
//!
//! A step creates the same tensors, of the same lengths, every time, and drops them all at its
//! end. When a CPU [`crate::Tensor`] of at least [`MIN_LEN`] elements is dropped its buffer comes
//! here; an op whose kernel writes every element of its output takes a buffer of that length back
//! with [`take`] instead of allocating a zeroed one. That saves the zeroing (a memset of every
//! output, ~3% of a CPU step) and keeps the allocator from handing pages back to the OS between
//! steps and faulting them in again.
//!
//! A taken buffer holds stale values of an earlier tensor: valid f32s that the kernel
//! overwrites, never reads (`tests/pool.rs` fills the pool with NaNs and checks every op that
//! takes from it). The pool is bounded by [`MAX_BYTES`]; past that the oldest buffers are freed.

use std::sync::Mutex;

/// Shorter buffers go straight back to the allocator (they are cheap to zero).
pub const MIN_LEN: usize = 1 << 12;

/// Most bytes the pool keeps. A step of the CPU benchmark configuration cycles ~40 MiB; the
/// reference configuration's (N = 4096, D = 2048) ~1 GiB, of which the pool keeps this much.
pub const MAX_BYTES: usize = 256 << 20;

struct Pool {
    /// Oldest first.
    bufs: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { bufs: Vec::new(), bytes: 0 });

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // The pool holds no invariant a panic elsewhere could break: keep using it.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of exactly `len` elements whose contents are unspecified (stale values of a dropped
/// tensor, or zeros when none of that length is free). For outputs the kernel writes in full.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        let mut pool = lock();
        if let Some(i) = pool.bufs.iter().rposition(|b| b.len() == len) {
            let buf = pool.bufs.remove(i);
            pool.bytes -= len * 4;
            return buf;
        }
    }
    vec![0.0; len]
}

/// Hands a buffer back for a later [`take`] of the same length.
pub fn give(buf: Vec<f32>) {
    if buf.len() < MIN_LEN || buf.len() * 4 > MAX_BYTES {
        return;
    }
    let freed: Vec<Vec<f32>> = {
        let mut pool = lock();
        pool.bytes += buf.len() * 4;
        pool.bufs.push(buf);
        let mut evict = 0;
        let mut bytes = pool.bytes;
        while bytes > MAX_BYTES {
            bytes -= pool.bufs[evict].len() * 4;
            evict += 1;
        }
        pool.bytes = bytes;
        pool.bufs.drain(..evict).collect()
    };
    // Freed outside the lock.
    drop(freed);
}

/// Frees every pooled buffer (for a long-lived process that is done training).
pub fn clear() {
    let freed = {
        let mut pool = lock();
        pool.bytes = 0;
        std::mem::take(&mut pool.bufs)
    };
    drop(freed);
}

/// Bytes the pool holds now.
pub fn pooled_bytes() -> usize {
    lock().bytes
}

/// Fills every pooled buffer with `v` (tests: a kernel that reads its output before writing it
/// then shows as a wrong result).
pub fn poison(v: f32) {
    lock().bufs.iter_mut().for_each(|b| b.fill(v));
}
