//! The Adam/AdamW update in one kernel: libtorch's `_fused_adam_` / `_fused_adamw_`
//! (torch.optim's `fused=True`) through the C++ shim (`csrc/fused_adam.cpp`), which is only
//! built against a libtorch with CUDA (`cfg(gptpipe_cuda_graph)`); without it every call
//! reports that the kernel is unavailable.

use tch::Tensor;

/// Whether the shim was built (the kernels themselves may still refuse a call).
pub const BUILT: bool = cfg!(gptpipe_cuda_graph);

/// Updates `param`, `exp_avg` and `exp_avg_sq` (same shape, dtype and device) in place with
/// gradient `grad`. `step` is an fp32 scalar tensor on the same device holding the step
/// count of this update (already incremented: the kernel's bias correction reads it).
/// `decoupled`: AdamW, else Adam. An error leaves the tensors as they were only when the
/// kernel refused its inputs, which it checks before writing anything.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
) -> Result<(), String> {
    ffi::adam_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step,
        lr,
        betas,
        weight_decay,
        eps,
        decoupled,
    )
}

#[cfg(gptpipe_cuda_graph)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use tch::Tensor;

    extern "C" {
        fn gptpipe_fused_adam(
            param: *const c_void,
            grad: *const c_void,
            exp_avg: *const c_void,
            exp_avg_sq: *const c_void,
            step: *const c_void,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            decoupled: c_int,
        ) -> c_int;
        fn gptpipe_fused_adam_last_error() -> *const c_char;
    }

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
        let ptr = |t: &Tensor| t.as_ptr() as *const c_void;
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the
        // call; the shim only reads the handles (the kernel writes through their storage)
        // and keeps none of them.
        unsafe {
            let rc = gptpipe_fused_adam(
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
            );
            if rc != 0 {
                let msg = CStr::from_ptr(gptpipe_fused_adam_last_error()).to_string_lossy();
                return Err(msg.into_owned());
            }
        }
        Ok(())
    }
}

#[cfg(not(gptpipe_cuda_graph))]
mod ffi {
    use tch::Tensor;

    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        _param: &Tensor,
        _grad: &Tensor,
        _exp_avg: &Tensor,
        _exp_avg_sq: &Tensor,
        _step: &Tensor,
        _lr: f64,
        _betas: (f64, f64),
        _weight_decay: f64,
        _eps: f64,
        _decoupled: bool,
    ) -> Result<(), String> {
        Err("the libtorch shim was not built (no CUDA libtorch)".into())
    }
}
