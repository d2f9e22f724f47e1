//! ONNX export of GPT-2 and an ONNX Runtime generation backend, with no libtorch.
//!
//! - [`export`]: reads a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`)
//!   and writes `model.onnx` (plus `model.onnx.data` past 2 GiB), `config.json` and the
//!   tokenizer files. The graph ([`gpt2`] documents its inputs and outputs) is built in
//!   Rust ([`graph`]) and serialised with hand-written protobuf messages ([`proto`],
//!   [`write`]): no Python, no libtorch.
//! - [`runtime`]: ONNX Runtime loaded at run time (`ORT_DYLIB_PATH`, else found beside the
//!   binary or in the workspace's `.venv`), and [`runtime::OnnxGpt2`], a session running
//!   `input_ids` + past into logits + present.
//! - [`stage`]: `kind = "export"`, validated against reference logits before publishing.
//! - [`backend`]: `gptpipe_generate`'s `Backend` on ONNX Runtime, with the KV cache.

pub mod backend;
pub mod config;
pub mod export;
pub mod gpt2;
pub mod graph;
pub mod proto;
pub mod runtime;
pub mod stage;
pub mod weights;
pub mod write;

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::Registry;

/// An fp16 export passes when its logits are within this fraction of the largest reference
/// logit (at least 1.0) of fp32 reference logits: half precision keeps ~3 significant
/// digits, and errors grow with depth.
pub const FP16_REL_TOLERANCE: f64 = 1e-2;

/// An fp32 export passes when its logits are within this of the reference's.
pub const FP32_TOLERANCE: f64 = 1e-4;

pub use stage::ReferenceLogits;

/// Adds the export stage without a reference to validate against: export is then
/// unavailable, with a message saying why (see [`register_with_reference`]).
pub fn register(registry: &mut Registry) {
    register_with_reference(registry, None);
}

/// Adds the export stage, validating each export with ONNX Runtime against `reference`
/// (libtorch's logits when the binary has the `worker` feature). Without a reference the
/// stage is registered as unavailable: an unvalidated export would break the spec's
/// promise that a published `model.onnx` matches the trained model.
pub fn register_with_reference(registry: &mut Registry, reference: Option<ReferenceLogits>) {
    match reference {
        Some(reference) => registry.register(StageKind::Export, stage::VERSION, move |ctx| {
            stage::run_stage(ctx, &reference)
        }),
        None => registry.unavailable(
            StageKind::Export,
            "export validates ONNX Runtime's logits against libtorch's, and this gptpipe was \
             built without libtorch (feature `worker`)",
        ),
    }
}
