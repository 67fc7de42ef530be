//! Optional per-op wall-clock totals, for `bagssl-train bench --profile`: where a step's time goes.
//!
//! Off by default; then an op pays one relaxed atomic load. When on, every public op of
//! [`crate::ops`] adds its wall time to a process-wide table. Only the outermost op on a thread
//! counts (an op that calls another is timed once). On CUDA the ops only queue work, so the
//! times there are host-side launch costs, not kernel times (use `cargo xtask bench-kernels`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<OpTime>> = Mutex::new(Vec::new());

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// One op's totals since [`enable`] (or the last [`take`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub calls: u64,
    pub seconds: f64,
}

/// Turns the timing on or off (process-wide).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The totals so far, largest first, and a fresh table.
pub fn take() -> Vec<OpTime> {
    let mut t = std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()));
    t.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    t
}

/// Times the enclosing op until the returned guard drops.
#[inline]
pub fn op(name: &'static str) -> Span {
    if !ON.load(Ordering::Relaxed) {
        return Span(None);
    }
    let outer = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    Span(Some((name, outer.then(Instant::now))))
}

/// Guard of [`op`]: adds the elapsed time to the op's total when dropped.
pub struct Span(Option<(&'static str, Option<Instant>)>);

impl Drop for Span {
    fn drop(&mut self) {
        let Some((name, start)) = self.0 else { return };
        DEPTH.with(|d| d.set(d.get() - 1));
        let Some(start) = start else { return };
        let dt = start.elapsed().as_secs_f64();
        let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter_mut().find(|o| o.op == name) {
            Some(o) => {
                o.calls += 1;
                o.seconds += dt;
            }
            None => t.push(OpTime { op: name, calls: 1, seconds: dt }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outermost_ops_only_and_only_when_on() {
        {
            let _off = op("off");
        }
        enable(true);
        {
            let _a = op("outer");
            let _b = op("inner"); // nested: not counted on its own
        }
        {
            let _a = op("outer");
        }
        enable(false);
        let t = take();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].op, t[0].calls), ("outer", 2));
        assert!(t[0].seconds >= 0.0);
        assert!(take().is_empty());
    }
}
