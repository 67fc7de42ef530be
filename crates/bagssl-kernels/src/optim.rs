//! Launchers of `kernels/optim.cu`: AdamW with torch.optim.AdamW semantics, one tensor per launch
//! or many (`adamw_multi_f32`, what the training step uses).

use cudarc::driver::PushKernelArg;

use crate::device::same_gpu;
use crate::ffi::{BagsslAdamWMulti, BagsslAdamWParams, BAGSSL_ADAMW_MAX_TENSORS, BAGSSL_ADAMW_TILE};
use crate::launch::{cfg_1d, cfg_blocks, check_len, launch_struct, u32_of, DevPtrs, MAX_GRID};
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

/// The two bias corrections of step `h.step`, in f64 on the host as torch computes them in Python
/// floats: (lr / (1 - beta1^t), sqrt(1 - beta2^t)). Step 0 is treated as 1, like the CPU kernel.
fn bias_corrections(h: &AdamWConfig) -> (f32, f32) {
    let t = h.step.clamp(1, i32::MAX as u64) as i32;
    let bc1 = 1.0 - f64::from(h.beta1).powi(t);
    let bc2 = 1.0 - f64::from(h.beta2).powi(t);
    ((f64::from(h.lr) / bc1) as f32, bc2.sqrt() as f32)
}

/// One AdamW update of `t.param` in place, with its moment buffers `t.m`, `t.v` (same length) and
/// `t.weight_decay` (as in [`adamw_multi_f32`]: `h.weight_decay` is not used).
pub fn adamw_f32(t: AdamWTensor<'_>, h: AdamWConfig) -> Result<(), KernelError> {
    let op = "adamw_f32";
    t_checked(op, &t)?;
    let AdamWTensor { param, grad, m, v, weight_decay } = t;
    let gpu = param.gpu().clone();
    let n = u32_of(param.len(), "adamw_f32 n")?;
    let (step_size, bias_correction2_sqrt) = bias_corrections(&h);
    let prm = BagsslAdamWParams {
        n,
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay,
        step_size,
        bias_correction2_sqrt,
    };
    if n > 0 {
        let mut b = gpu.stream().launch_builder(gpu.function("adamw_f32")?);
        b.arg(param.slice_mut()).arg(grad.slice()).arg(m.slice_mut()).arg(v.slice_mut()).arg(&prm);
        // SAFETY: all four hold n floats.
        unsafe { b.launch(cfg_1d(n as usize)) }?;
    }
    Ok(())
}

/// One tensor of [`adamw_f32`] and [`adamw_multi_f32`], by name (`param`, `m` and `v` are all
/// mutable f32 buffers: positional arguments would let two of them trade places). Generic over
/// the buffer so that the autograd's device-independent slot (of `Tensor`s) is this same type.
pub struct AdamWTensor<'a, B = GpuBuf> {
    pub param: &'a mut B,
    pub grad: &'a B,
    pub m: &'a mut B,
    pub v: &'a mut B,
    /// This tensor's weight decay (the config's is not used): biases and BatchNorm parameters get 0.
    pub weight_decay: f32,
}

/// Checks that `t`'s buffers live on one GPU and match `t.param`'s length.
fn t_checked(op: &str, t: &AdamWTensor<'_>) -> Result<(), KernelError> {
    same_gpu(op, t.param.gpu(), &[t.grad.gpu(), t.m.gpu(), t.v.gpu()])?;
    for (name, len) in [("grad", t.grad.len()), ("m", t.m.len()), ("v", t.v.len())] {
        check_len(op, name, len, t.param.len())?;
    }
    Ok(())
}

/// One AdamW update of every tensor, [`BAGSSL_ADAMW_MAX_TENSORS`] per launch; each element as
/// [`adamw_f32`] computes it, bit for bit. A parameter that has a bf16 copy (a weight the bf16
/// GEMMs read) gets it rewritten by the same kernel, so the next forward does not cast it again.
pub fn adamw_multi_f32(tensors: &mut [AdamWTensor<'_>], h: AdamWConfig) -> Result<(), KernelError> {
    let op = "adamw_multi_f32";
    let Some(first) = tensors.first() else { return Ok(()) };
    let gpu = first.param.gpu().clone();
    for t in tensors.iter() {
        same_gpu(op, &gpu, &[t.param.gpu()])?;
        t_checked(op, t)?;
        u32_of(t.param.len().div_ceil(BAGSSL_ADAMW_TILE as usize) * BAGSSL_ADAMW_TILE as usize, "adamw n")?;
    }
    let (step_size, bias_correction2_sqrt) = bias_corrections(&h);
    let stream = gpu.stream().clone();
    let max = BAGSSL_ADAMW_MAX_TENSORS as usize;
    let mut live: Vec<&mut AdamWTensor<'_>> = tensors.iter_mut().filter(|t| !t.param.is_empty()).collect();
    for group in live.chunks_mut(max) {
        let mut prm = BagsslAdamWMulti {
            n_tensors: group.len() as u32,
            lr: h.lr,
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            step_size,
            bias_correction2_sqrt,
            ..Default::default()
        };
        // The copies to write: for the parameters that have one now (slice_mut drops it below).
        let mut copies: Vec<Option<cudarc::driver::CudaSlice<u16>>> = group
            .iter()
            .map(|t| if t.param.has_bf16() { gpu.alloc_raw::<u16>(t.param.len()).map(Some) } else { Ok(None) })
            .collect::<Result<_, _>>()?;
        {
            let mut p = DevPtrs::new(&stream);
            for (i, (t, copy)) in group.iter_mut().zip(copies.iter_mut()).enumerate() {
                let n = t.param.len();
                prm.n[i] = n as u32;
                prm.weight_decay[i] = t.weight_decay;
                prm.first_tile[i + 1] = prm.first_tile[i] + n.div_ceil(BAGSSL_ADAMW_TILE as usize) as u32;
                prm.param[i] = p.write(t.param.slice_mut());
                prm.grad[i] = p.read(t.grad.slice());
                prm.m[i] = p.write(t.m.slice_mut());
                prm.v[i] = p.write(t.v.slice_mut());
                prm.param16[i] = p.write_opt(copy.as_mut());
            }
            let tiles = prm.first_tile[prm.n_tensors as usize] as usize;
            // SAFETY: every pointer addresses a live buffer of n[i] elements on this GPU (f32, or
            // u16 for the copies), each tensor's buffers distinct; the tiles cover exactly those
            // elements; `p` keeps the borrows until the launch is queued.
            unsafe {
                launch_struct(&gpu, gpu.function("adamw_multi_f32")?, &prm, cfg_blocks(tiles.clamp(1, MAX_GRID)))
            }?;
        }
        for (t, copy) in group.iter_mut().zip(copies) {
            if let Some(c) = copy {
                t.param.set_bf16(c); // bf16_bits of every updated element
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_or_skip;

    /// The multi-tensor launch gives adamw_f32's bits tensor by tensor, over several steps and
    /// more tensors than one launch takes; a weight that had a bf16 copy gets the copy of its new
    /// values (what `GpuBuf::bf16`'s cast makes), the others get none.
    #[test]
    fn adamw_multi_matches_adamw_per_tensor() {
        let Some(gpu) = gpu_or_skip("adamw_multi_matches_adamw_per_tensor") else {
            return;
        };
        let sizes = [1usize, 2048, 4096, 4097, 192 * 2048, 33, 7, 5000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100_003];
        let host = |n: usize, f: f32| (0..n).map(|i| ((i as f32 + 1.0) * f).sin()).collect::<Vec<f32>>();
        let mut one: Vec<[GpuBuf; 3]> = Vec::new();
        let mut many: Vec<[GpuBuf; 3]> = Vec::new();
        for &n in &sizes {
            let p = host(n, 0.37);
            let up = |v: &[f32]| gpu.upload(v).unwrap();
            one.push([up(&p), gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap()]);
            many.push([up(&p), gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap()]);
        }
        for step in 1..=3u64 {
            let grads: Vec<GpuBuf> =
                sizes.iter().map(|&n| gpu.upload(&host(n, 0.11 * step as f32 + 0.5)).unwrap()).collect();
            let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step };
            let wd = |i: usize| if i.is_multiple_of(2) { 0.05 } else { 0.0 };
            for (i, ([param, m, v], grad)) in one.iter_mut().zip(&grads).enumerate() {
                adamw_f32(AdamWTensor { param, grad, m, v, weight_decay: wd(i) }, cfg).unwrap();
            }
            // Every third parameter is a GEMM operand: it has a bf16 copy before the update.
            for (i, [p, _, _]) in many.iter().enumerate() {
                if i % 3 == 0 {
                    p.bf16().unwrap();
                }
            }
            let mut ts: Vec<AdamWTensor<'_>> = many
                .iter_mut()
                .zip(&grads)
                .enumerate()
                .map(|(i, ([param, m, v], grad))| AdamWTensor { param, grad, m, v, weight_decay: wd(i) })
                .collect();
            adamw_multi_f32(&mut ts, cfg).unwrap();
        }
        let bits = |b: &GpuBuf| b.to_host().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            for k in 0..3 {
                assert_eq!(bits(&a[k]), bits(&b[k]), "tensor {i} (n = {}), buffer {k}", sizes[i]);
            }
            let p = &b[0];
            assert_eq!(p.has_bf16(), i % 3 == 0, "tensor {i}: bf16 copy");
            if p.has_bf16() {
                let got = gpu.stream().clone_dtoh(p.bf16().unwrap()).unwrap();
                let want: Vec<u16> = p.to_host().unwrap().iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
                assert_eq!(&got[..p.len()], &want[..], "tensor {i}: bf16 copy of the updated values");
            }
        }
        println!(
            "OK     adamw_multi_f32 = adamw_f32 per tensor ({} tensors, 3 steps), bf16 copies current",
            sizes.len()
        );
    }
}
