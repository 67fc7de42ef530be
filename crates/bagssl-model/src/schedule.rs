//! Learning-rate schedule: linear warm-up, then cosine decay to 0, evaluated per step.
//!
//! Identical to the reference's `LambdaLR`
//! `(s+1)/warm if s < warm else 0.5 (1 + cos(pi (s-warm)/(total-warm)))`, with the same
//! `max(., 1)` guards, so a run with the same step counts sees the same learning rates.

/// Multiplier of the peak learning rate for the 0-based step `step`.
///
/// Steps past `total` stay at 0 instead of climbing back up the cosine.
pub fn lr_factor(step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_from_one_step() {
        assert_eq!(lr_factor(0, 4, 20), 0.25);
        assert_eq!(lr_factor(1, 4, 20), 0.5);
        assert_eq!(lr_factor(3, 4, 20), 1.0);
    }

    #[test]
    fn cosine_after_warmup_reaches_zero() {
        assert_eq!(lr_factor(4, 4, 20), 1.0);
        assert!((lr_factor(12, 4, 20) - 0.5).abs() < 1e-12); // halfway through the cosine
        let v = lr_factor(8, 4, 20);
        assert!((v - 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos())).abs() < 1e-12);
        assert!(lr_factor(20, 4, 20).abs() < 1e-12);
        assert!(lr_factor(25, 4, 20).abs() < 1e-12, "no restart after the end");
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        assert_eq!(lr_factor(0, 0, 10), 1.0);
        assert!(lr_factor(9, 0, 10) > 0.0);
        assert_eq!(lr_factor(0, 0, 0), 1.0);
    }
}
