//! Every `extern "C"` function of the C++ shim in `csrc/` (libtorch functions tch does not
//! bind: CUDA graphs, FlashAttention decoding, the fused Adam update), declared as in
//! `csrc/gptpipe_torch.h`, and the two helpers every call uses. build.rs compiles the shim
//! against any libtorch and sets `cfg(gptpipe_shim)` (the fused Adam update, which runs on
//! the CPU too), and its CUDA part against a libtorch with CUDA, setting
//! `cfg(gptpipe_cuda_kernels)`; without them the declarations are absent and callers fall
//! back. The safe wrappers live beside their
//! callers: `generation/graph.rs`, `generation/flash.rs`, `finetune/fused.rs`.
//!
//! Every function that returns a `c_int` returns 0 on success and 1 when C++ threw; the
//! message is then `gptpipe_shim_last_error`'s (see [`check`]). Tensors are passed as
//! tch's handles, which are `at::Tensor*` ([`ptr`]).

use std::ffi::c_void;
use tch::Tensor;

/// Whether the shim was built (its kernels may still refuse a call).
pub const BUILT: bool = cfg!(gptpipe_shim);

/// A tch tensor as the shim takes it: tch's tensor handle is an `at::Tensor*`.
#[cfg_attr(not(gptpipe_shim), allow(dead_code))]
pub fn ptr(t: &Tensor) -> *const c_void {
    t.as_ptr() as *const c_void
}

/// A shim return code as a result, with the shim's message on failure.
#[cfg(gptpipe_shim)]
pub fn check(rc: std::ffi::c_int) -> Result<(), String> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string owned by its thread-local storage,
    // valid until the next shim call on this thread; it is copied at once.
    let msg = unsafe { std::ffi::CStr::from_ptr(gptpipe_shim_last_error()) };
    Err(msg.to_string_lossy().into_owned())
}

#[cfg(gptpipe_shim)]
pub use decls::*;

#[cfg(gptpipe_cuda_kernels)]
pub use cuda_decls::*;

#[cfg(gptpipe_shim)]
mod decls {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" {
        // csrc/shim.cpp
        /// The message of the last failure on this thread (valid until the next call).
        pub fn gptpipe_shim_last_error() -> *const c_char;

        // csrc/fused_adam.cpp
        /// Updates `param`, `exp_avg` and `exp_avg_sq` in place; `decoupled` != 0: AdamW.
        pub fn gptpipe_fused_adam(
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
    }
}

#[cfg(gptpipe_cuda_kernels)]
mod cuda_decls {
    use std::ffi::{c_int, c_void};

    extern "C" {
        // csrc/cuda_graph.cpp: a graph is the pointer `gptpipe_graph_new` returns (null on
        // failure), freed once by `gptpipe_graph_free`.
        pub fn gptpipe_graph_new() -> *mut c_void;
        /// Makes a fresh side stream of CUDA device `device` current.
        pub fn gptpipe_graph_stream_begin(g: *mut c_void, device: c_int) -> c_int;
        pub fn gptpipe_graph_capture_begin(g: *mut c_void) -> c_int;
        pub fn gptpipe_graph_capture_end(g: *mut c_void) -> c_int;
        /// Waits for the side stream, then restores the previous current stream.
        pub fn gptpipe_graph_stream_end(g: *mut c_void) -> c_int;
        pub fn gptpipe_graph_replay(g: *mut c_void) -> c_int;
        pub fn gptpipe_graph_free(g: *mut c_void);

        // csrc/flash_decode.cpp
        /// q `[B, H, D]`; k, v `[B * max_k, H, D]`; cu_q, cu_k `[B + 1]` and used_k `[B]`
        /// (Int32). On success `*out` is a new `at::Tensor*` `[B, H, D]` the caller owns.
        pub fn gptpipe_flash_decode(
            q: *const c_void,
            k: *const c_void,
            v: *const c_void,
            cu_q: *const c_void,
            cu_k: *const c_void,
            used_k: *const c_void,
            max_k: i64,
            scale: f64,
            out: *mut *mut c_void,
        ) -> c_int;
    }
}

// csrc/device_props.cpp, built on its own (`cfg(gptpipe_cuda_props)`, see build.rs).
#[cfg(gptpipe_cuda_props)]
extern "C" {
    /// 0 and the compute capability and total memory (bytes) of CUDA device `device`; 1
    /// when they cannot be read.
    pub fn gptpipe_cuda_device_props(
        device: std::ffi::c_int,
        major: *mut std::ffi::c_int,
        minor: *mut std::ffi::c_int,
        total_memory: *mut u64,
    ) -> std::ffi::c_int;
}

/// Whether the collectives were built with NCCL's process group.
#[cfg_attr(not(gptpipe_dist), allow(dead_code))]
pub const NCCL: bool = cfg!(gptpipe_nccl);

// csrc/collectives.cpp, built on its own (`cfg(gptpipe_dist)`, see build.rs): a store or
// group is the pointer its `_new` returns (null on failure), freed once by its `_free`.
#[cfg(gptpipe_dist)]
extern "C" {
    /// Rank 0 serves the store (`is_server`), on `listen_fd` when it is a bound socket
    /// (else -1); the port it serves is written to `bound_port`.
    pub fn gptpipe_dist_store_new(
        host: *const std::ffi::c_char,
        port: std::ffi::c_int,
        is_server: std::ffi::c_int,
        listen_fd: std::ffi::c_int,
        world: std::ffi::c_int,
        timeout_ms: i64,
        bound_port: *mut std::ffi::c_int,
    ) -> *mut std::ffi::c_void;
    pub fn gptpipe_dist_store_free(store: *mut std::ffi::c_void);
    /// `master`: the store's host (it picks Gloo's address); `nccl` != 0: NCCL.
    pub fn gptpipe_dist_group_new(
        store: *mut std::ffi::c_void,
        master: *const std::ffi::c_char,
        rank: std::ffi::c_int,
        world: std::ffi::c_int,
        timeout_ms: i64,
        nccl: std::ffi::c_int,
    ) -> *mut std::ffi::c_void;
    pub fn gptpipe_dist_group_free(group: *mut std::ffi::c_void);
    /// In place: the sum over the ranks.
    pub fn gptpipe_dist_all_reduce_sum(
        group: *mut std::ffi::c_void,
        t: *const std::ffi::c_void,
    ) -> std::ffi::c_int;
    /// In place: rank `root`'s tensor.
    pub fn gptpipe_dist_broadcast(
        group: *mut std::ffi::c_void,
        t: *const std::ffi::c_void,
        root: std::ffi::c_int,
    ) -> std::ffi::c_int;
}
