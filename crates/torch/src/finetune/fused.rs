//! The Adam/AdamW update in one kernel: libtorch's `_fused_adam_` / `_fused_adamw_`
//! (torch.optim's `fused=True`) through the C++ shim (`csrc/fused_adam.cpp`, declared in
//! `crate::ffi`; `cfg(gptpipe_shim)`), on the CPU as on CUDA; without the shim every call
//! reports that the kernel is unavailable.

use crate::ffi;
use tch::Tensor;

/// Whether the shim was built (the kernels themselves may still refuse a call).
pub const BUILT: bool = ffi::BUILT;

/// Updates `param`, `exp_avg` and `exp_avg_sq` (same shape, dtype and device) in place with
/// gradient `grad`. `step` is an fp32 scalar tensor on the same device holding the step
/// count of this update (already incremented: the kernel's bias correction reads it).
/// `decoupled`: AdamW, else Adam. Buffers that differ in size, dtype or device, or that are
/// sparse or not contiguous, are refused by the shim before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    lr: f64,
    (beta1, beta2): (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<(), String> {
    #[cfg(gptpipe_shim)]
    {
        use crate::ffi::{check, gptpipe_fused_adam, ptr};
        use std::ffi::c_int;
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the
        // call; the shim only reads the handles (the kernel writes through their storage)
        // and keeps none of them.
        let rc = unsafe {
            gptpipe_fused_adam(
                ptr(param),
                ptr(grad),
                ptr(exp_avg),
                ptr(exp_avg_sq),
                ptr(step),
                lr,
                beta1,
                beta2,
                weight_decay,
                eps,
                c_int::from(decoupled),
            )
        };
        check(rc)
    }
    #[cfg(not(gptpipe_shim))]
    {
        let _ = (param, grad, exp_avg, exp_avg_sq, step);
        let _ = (lr, beta1, beta2, weight_decay, eps, decoupled);
        Err("the libtorch shim was not built".into())
    }
}
