//! ONNX export of GPT-2 and an ONNX Runtime generation backend.
//!
//! - [`export`]: reads a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`)
//!   and writes `model.onnx` with a KV cache interface ([`gpt2`] documents it), built in
//!   Rust ([`graph`], [`proto`], [`write`]): no Python, no libtorch.

pub mod config;
pub mod export;
pub mod gpt2;
pub mod graph;
pub mod proto;
pub mod runtime;
pub mod weights;
pub mod write;

use gptpipe_core::stage::Registry;

/// An fp16 export passes when its logits are within this fraction of the largest reference
/// logit (at least 1.0) of fp32 reference logits: half precision keeps ~3 significant
/// digits, and errors grow with depth.
pub const FP16_REL_TOLERANCE: f64 = 1e-2;

/// An fp32 export passes when its logits are within this of the reference's.
pub const FP32_TOLERANCE: f64 = 1e-4;

/// Adds what this crate provides to the registry.
pub fn register(_registry: &mut Registry) {}
