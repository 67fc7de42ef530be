//! Launcher of `kernels/optim.cu`: AdamW with torch.optim.AdamW semantics.

use cudarc::driver::PushKernelArg;

use crate::device::same_gpu;
use crate::ffi::BagsslAdamWParams;
use crate::launch::{cfg_1d, check_len, u32_of};
use crate::{GpuBuf, KernelError};

/// AdamW hyper-parameters of one update; `step` is 1-based (bias correction; 0 counts as 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
}

/// One AdamW update of `param` in place, with moment buffers `m`, `v` (same length as `param`).
pub fn adamw_f32(
    param: &mut GpuBuf,
    grad: &GpuBuf,
    m: &mut GpuBuf,
    v: &mut GpuBuf,
    h: AdamWConfig,
) -> Result<(), KernelError> {
    let op = "adamw_f32";
    let gpu = param.gpu().clone();
    same_gpu(op, &gpu, &[grad.gpu(), m.gpu(), v.gpu()])?;
    for (name, len) in [("grad", grad.len()), ("m", m.len()), ("v", v.len())] {
        check_len(op, name, len, param.len())?;
    }
    let n = u32_of(param.len(), "adamw_f32 n")?;
    // Bias corrections in f64 on the host, as torch computes them in Python floats.
    // Step 0 is treated as 1, like the CPU kernel.
    let t = h.step.clamp(1, i32::MAX as u64) as i32;
    let bc1 = 1.0 - f64::from(h.beta1).powi(t);
    let bc2 = 1.0 - f64::from(h.beta2).powi(t);
    let prm = BagsslAdamWParams {
        n,
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        step_size: (f64::from(h.lr) / bc1) as f32,
        bias_correction2_sqrt: bc2.sqrt() as f32,
    };
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("adamw_f32")?);
        b.arg(param.slice_mut()).arg(grad.slice()).arg(m.slice_mut()).arg(v.slice_mut()).arg(&prm);
        // SAFETY: all four hold n floats.
        unsafe { b.launch(cfg_1d(n as usize)) }?;
    }
    Ok(())
}
