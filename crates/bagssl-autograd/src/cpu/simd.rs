//! Runtime CPU-feature dispatch for the hand-written loops.
//!
//! The crate is compiled for the baseline x86-64 target (SSE2) so that one binary runs on the CPU
//! build machines and on the GPU hosts alike. Each hot loop is declared with [`multiversion!`]:
//! the body is compiled twice, once plainly and once inside a
//! `#[target_feature(enable = "avx2,fma")]` function, and the call picks the second when the
//! running CPU has those features (a cached runtime check). LLVM then auto-vectorizes the loop
//! with 256-bit registers (8 f32 / 4 f64 lanes) instead of 128-bit SSE2. AVX-512 would add
//! little: these loops are bound by memory, and on Zen 4 a 512-bit op is two 256-bit halves.
//!
//! Why a macro and not a `fn vectorized(f: impl FnOnce())` wrapper: LLVM does not reliably
//! inline a large closure into the feature-enabled frame, and a closure that stays out of line is
//! compiled for SSE2 (measured: the bag-VICReg pass was). A named body marked
//! `#[inline(always)]` is always inlined.
//!
//! The kernels avoid `mul_add`, so both variants round identically and the fallback never calls
//! libm's software `fmaf`. The GEMMs do not go through here: the `gemm` crate dispatches itself.

/// Declares `fn name(args) -> ret { body }` with an AVX2+FMA variant chosen at run time.
/// Arguments must be plain identifiers (no patterns, no `mut`); no generics.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the target features were detected on the running CPU just above.
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}

pub(crate) use multiversion;
