//! Runtime CPU-feature dispatch for the hand-written loops.
//!
//! The crate is compiled for the baseline x86-64 target (SSE2) so that one binary runs on the CPU
//! build machines and on the GPU hosts alike. The hot elementwise and reduction loops are written
//! as plain `#[inline(always)]` Rust and called through [`vectorized`], which re-enters them in a
//! `#[target_feature(enable = "avx2,fma")]` frame when the CPU has those features: LLVM then
//! auto-vectorizes them with 256-bit registers (8 f32 / 4 f64 lanes) instead of 128-bit SSE2.
//! (AVX-512 would add little: these loops are bound by memory, and on Zen 4 a 512-bit op is two
//! 256-bit halves.) The kernels avoid `mul_add` so both paths round identically and the
//! fallback never calls libm's software `fmaf`.
//!
//! The GEMMs do not go through here: the `gemm` crate dispatches on its own.

/// Runs `f`, compiled for AVX2 + FMA when the running CPU supports them.
///
/// `f` must be a thin closure around `#[inline(always)]` kernels so that the whole loop nest is
/// inlined into the feature-enabled frame.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the target features were detected on the running CPU just above.
            return unsafe { avx2_fma(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}
