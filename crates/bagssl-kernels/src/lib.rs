//! bagssl-kernels: everything that knows about CUDA.
//!
//! - The kernels of `kernels/*.cu`, compiled by `cargo xtask build-kernels` into PTX
//!   (compute_80) and sm_90a cubins that are embedded here ([`Gpu::new`] loads the cubins on
//!   compute capability 9.0, else the PTX), and their `#[repr(C)]` parameter structs from
//!   `kernels/include/*.h` (bindgen, [`ffi`]).
//! - Detection that never panics without CUDA ([`probe`]) and the device handle ([`Gpu`]).
//! - Safe launchers named `<op>_<direction>_<dtype>`, one module per kernel family, and
//!   row-major cuBLAS GEMMs ([`gemm`]; bf16 operands with f32 accumulation by default, see
//!   [`GemmPrecision`]).
//!
//! Without a GPU every type exists and [`Gpu::new`] returns [`KernelError::NoGpu`] with the reason.
//! Everything runs on the one stream of its [`Gpu`], so launches are ordered and only the
//! explicit `to_host` copies synchronise.

pub mod args;
pub mod batchnorm;
pub mod conv;
mod device;
pub mod elementwise;
pub mod ffi;
pub mod gemm;
mod launch;
pub mod optim;
pub mod patch;
pub mod vicreg;

pub use args::{BnBackwardArgs, BnEval, BnTrainArgs, Window2d};
pub use batchnorm::{
    bn_batch_stats_f32, bn_bwd_sums_f32, bn_ema_f32, bn_ema_multi_f32, bn_eval_fwd_f32, bn_train_bwd_f32,
    bn_train_bwd_f32_variant, bn_train_fwd_f32, bn_train_fwd_f32_variant, BnTrainGrads, BnTrainOut, BnVariant,
    MaskSource,
};
pub use conv::{col2im_f32, im2col_f32, max_pool_bwd_f32, max_pool_fwd_f32, transpose_last2_f32};
pub use device::{probe, Gpu, GpuBuf, GpuBytes, GpuInfo, GpuProbe, ModuleKind};
pub use elementwise::{
    add_f32, axpy_f32, bias_add_fwd_f32, cast_bf16_f32, dot_f32, group_mean_bwd_f32, group_mean_fwd_f32, relu_bwd_f32,
    relu_fwd_f32, scale_f32, sum_rows_f32,
};
pub use gemm::{gemm_f32, matmul_f32, Gemm, GemmPrecision};
pub use optim::{adamw_f32, adamw_multi_f32, AdamWConfig, AdamWTensor};
pub use patch::{
    grid_len, patch_embed_fwd_f32, patch_embed_fwd_f32_into, patch_grid_fwd_f32, GpuImages, GpuPatchSpecs, ImageStream,
    PatchSpec,
};
pub use vicreg::{vicreg_fwd_bwd_f32, PendingScalars, VicregOut, VicregScalars, VicregWeights};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no CUDA GPU: {0}")]
    NoGpu(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("invalid kernel arguments: {0}")]
    Invalid(String),
}

impl From<cudarc::driver::DriverError> for KernelError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        KernelError::Cuda(format!("{e:?}"))
    }
}

impl From<cudarc::cublas::result::CublasError> for KernelError {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        KernelError::Cuda(format!("cuBLAS: {e:?}"))
    }
}

/// The unit tests' GPU: device 0, or `None` after printing `skipped: <test>: <reason>`
/// (panics under `BAGSSL_REQUIRE_GPU=1`). Integration tests use `bagssl_testkit::gpu_or_skip`,
/// which cannot serve here: the testkit links the library, not this test build of it.
#[cfg(test)]
pub(crate) fn gpu_or_skip(test: &str) -> Option<std::sync::Arc<Gpu>> {
    use std::io::Write as _;
    use std::sync::{Arc, OnceLock};
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu.clone()),
        Err(reason) => {
            if std::env::var("BAGSSL_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: BAGSSL_REQUIRE_GPU=1 but the GPU is unusable: {reason}");
            }
            let line = format!("skipped: {test}: {reason}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            print!("{line}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_without_driver_gives_a_reason() {
        let p = device::probe_with_driver(false);
        assert!(!p.is_available());
        assert_eq!(p.reason.as_deref(), Some("no CUDA driver (libcuda.so not found)"));
        assert!(p.summary().contains("libcuda.so"));
    }

    #[test]
    fn probe_never_panics_and_is_consistent() {
        let p = probe();
        assert_eq!(p.is_available(), p.reason.is_none(), "{p:?}");
        if !p.is_available() {
            let err = Gpu::new(0).expect_err("Gpu::new must fail when probe finds nothing");
            assert!(matches!(err, KernelError::NoGpu(_)), "{err}");
        }
    }

    #[test]
    fn patch_spec_flags() {
        let s = PatchSpec::new(3, 1, 2, 8, true, Some([1.1, 0.9, 1.2]), true);
        assert_eq!(s.flags, ffi::BAGSSL_PATCH_FLIP | ffi::BAGSSL_PATCH_JITTER | ffi::BAGSSL_PATCH_GRAY);
        assert_eq!((s.brightness, s.contrast, s.saturation), (1.1, 0.9, 1.2));
        assert_eq!((s.box_h, s.box_w, s.blur_sigma), (8, 8, 0.0));
        assert_eq!(PatchSpec::new(0, 0, 0, 8, false, None, false).flags, 0);
        let b = PatchSpec::new_box(0, [1, 2, 5, 7], false, None, false).with_blur_solarize(Some(0.5), true);
        assert_eq!(b.flags, ffi::BAGSSL_PATCH_BLUR | ffi::BAGSSL_PATCH_SOLARIZE);
        assert_eq!((b.oy, b.ox, b.box_h, b.box_w, b.blur_sigma), (1, 2, 5, 7, 0.5));
        assert_eq!(std::mem::size_of::<PatchSpec>(), 40);
    }

    #[test]
    fn every_kernel_is_an_entry_of_its_ptx() {
        let mut total = 0;
        for m in ffi::MODULES {
            assert!(m.ptx.starts_with("// Generated by `cargo xtask build-kernels`"), "{}", m.family);
            assert!(m.ptx.contains(".target sm_80"), "{}: PTX must target compute_80", m.family);
            assert!(m.cubin.starts_with(b"\x7fELF"), "{}: cubin is not an ELF image", m.family);
            for k in m.kernels {
                assert!(m.ptx.contains(&format!(".entry {k}(")), "{k} missing from {}.ptx", m.family);
                total += 1;
            }
        }
        // Every name a launcher uses must be compiled.
        let src = [
            include_str!("elementwise.rs"),
            include_str!("batchnorm.rs"),
            include_str!("vicreg.rs"),
            include_str!("optim.rs"),
            include_str!("patch.rs"),
            include_str!("conv.rs"),
        ]
        .concat();
        for name in src.split("function(\"").skip(1).map(|s| s.split('"').next().unwrap_or_default()) {
            assert!(ffi::MODULES.iter().any(|m| m.kernels.contains(&name)), "launcher uses unknown kernel {name}");
        }
        assert!(total >= 31);
    }
}
