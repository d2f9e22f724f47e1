//! ONNX export of GPT-2 and an ONNX Runtime generation backend, with no libtorch.
//!
//! - [`export`]: reads a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`)
//!   and writes `model.onnx` (plus `model.onnx.data` past 2 GiB), `config.json` and the
//!   tokenizer files. The graph ([`gpt2`] documents its inputs and outputs) is built in
//!   Rust ([`graph`]) and serialised with hand-written protobuf messages ([`proto`],
//!   [`write`]): no Python, no libtorch.
//! - [`runtime`]: ONNX Runtime loaded at run time (`ORT_DYLIB_PATH`, else found beside the
//!   binary or in the workspace's `.venv`): a [`Runtime`] holds the library and makes
//!   sessions, [`runtime::OnnxGpt2`], that run `input_ids` + past into logits + present.
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

pub use runtime::Runtime;
pub use stage::ReferenceLogits;

/// Adds the export stage as unavailable, with a message saying why: it has no reference to
/// validate against (see [`register_with_reference`]).
pub fn register(registry: &mut Registry) {
    registry.unavailable(
        StageKind::Export,
        "export validates ONNX Runtime's logits against libtorch's, and this gptpipe was \
         built without libtorch (feature `worker`)",
    );
}

/// Adds the export stage, validating each export on `runtime` against `reference`
/// (libtorch's logits, which the binary has with the `worker` feature). Without a reference
/// ([`register`]) the stage is unavailable: an unvalidated export would break the spec's
/// promise that a published `model.onnx` matches the trained model.
pub fn register_with_reference(
    registry: &mut Registry,
    runtime: Runtime,
    reference: ReferenceLogits,
) {
    registry.register(StageKind::Export, stage::VERSION, move |ctx| {
        stage::run_stage(ctx, &runtime, &reference)
    });
}
