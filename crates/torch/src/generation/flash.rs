//! FlashAttention-2 for one query per row over a fixed-size key/value cache, through the
//! C++ shim in `csrc/flash_decode.cpp` (built with the rest of the shim, which sets
//! `cfg(gptpipe_cuda_kernels)`; see build.rs).

use tch::{Device, Kind, Tensor};

/// The lengths a decoding step's attention needs besides the tensors, built once per
/// batch capacity: `cu_q` `[cap + 1]` = 0..=cap, `cu_k` `[cap + 1]` = multiples of `max_k`.
pub struct Offsets {
    cu_q: Tensor,
    cu_k: Tensor,
    max_k: i64,
}

impl Offsets {
    pub fn new(cap: i64, max_k: i64, device: Device) -> Self {
        let cu_q = Tensor::arange(cap + 1, (Kind::Int, device));
        let cu_k = &cu_q * max_k;
        Self { cu_q, cu_k, max_k }
    }

    /// Attention of `q` `[B, H, D]` over the first `used_k[b]` (Int32 `[B]`) of each row's
    /// `max_k` cached keys and values (`keys`, `values`: `[B * max_k, H, D]`), scores
    /// multiplied by `scale`. `None` when the kernel is unavailable or refuses the inputs.
    pub fn attend(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        used_k: &Tensor,
        scale: f64,
    ) -> Option<Tensor> {
        let b = q.size()[0];
        let cu_q = self.cu_q.narrow(0, 0, b + 1);
        let cu_k = self.cu_k.narrow(0, 0, b + 1);
        decode(q, keys, values, &cu_q, &cu_k, used_k, self.max_k, scale)
    }
}

/// Whether the kernel runs on `device` (probed once per process with tiny tensors; the
/// reason it does not is printed once with `GPTPIPE_DEBUG_FLASH=1`).
pub fn available(device: Device) -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !device.is_cuda() || !cfg!(gptpipe_cuda_kernels) {
        return false;
    }
    *PROBE.get_or_init(|| {
        let opts = (Kind::BFloat16, device);
        let q = Tensor::ones([2, 2, 64], opts);
        let kv = Tensor::ones([2 * 8, 2, 64], opts);
        let offsets = Offsets::new(2, 8, device);
        let used = Tensor::from_slice(&[3i32, 8]).to_device(device);
        offsets.attend(&q, &kv, &kv, &used, 0.125).is_some()
    })
}

/// The shim's kernel call; `None` (with the reason printed when `GPTPIPE_DEBUG_FLASH` is
/// set) when it refuses or is not built.
#[allow(clippy::too_many_arguments)]
fn decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_q: &Tensor,
    cu_k: &Tensor,
    used_k: &Tensor,
    max_k: i64,
    scale: f64,
) -> Option<Tensor> {
    #[cfg(gptpipe_cuda_kernels)]
    {
        use crate::ffi::{check, gptpipe_flash_decode, ptr};
        use std::ffi::c_void;
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the
        // call; on success the shim hands over a new `at::Tensor*`, which tch then owns.
        let rc = unsafe {
            gptpipe_flash_decode(
                ptr(q),
                ptr(k),
                ptr(v),
                ptr(cu_q),
                ptr(cu_k),
                ptr(used_k),
                max_k,
                scale,
                &mut out,
            )
        };
        match check(rc) {
            // SAFETY: see above.
            Ok(()) if !out.is_null() => Some(unsafe { Tensor::from_ptr(out as *mut _) }),
            result => {
                if std::env::var_os("GPTPIPE_DEBUG_FLASH").is_some() {
                    eprintln!("flash decoding unavailable: {result:?}");
                }
                None
            }
        }
    }
    #[cfg(not(gptpipe_cuda_kernels))]
    {
        let _ = (q, k, v, cu_q, cu_k, used_k, max_k, scale);
        None
    }
}
