//! The C++ shim in `csrc/`: libtorch functions tch does not bind (CUDA graphs,
//! FlashAttention decoding, the fused Adam update). build.rs compiles it only against a
//! libtorch with CUDA and sets `cfg(gptpipe_cuda_graph)`; callers fall back without it.

use std::ffi::c_void;
use tch::Tensor;

/// Whether the shim was built (its kernels may still refuse a call).
pub const BUILT: bool = cfg!(gptpipe_cuda_graph);

/// A tch tensor as the shim takes it: tch's tensor handle is an `at::Tensor*`.
#[cfg_attr(not(gptpipe_cuda_graph), allow(dead_code))]
pub fn ptr(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
}

/// A shim return code as a result, with the shim's message on failure.
#[cfg(gptpipe_cuda_graph)]
pub fn check(rc: std::ffi::c_int) -> Result<(), String> {
    extern "C" {
        fn gptpipe_shim_last_error() -> *const std::ffi::c_char;
    }
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string owned by its thread-local storage,
    // valid until the next shim call on this thread; it is copied at once.
    let msg = unsafe { std::ffi::CStr::from_ptr(gptpipe_shim_last_error()) };
    Err(msg.to_string_lossy().into_owned())
}
