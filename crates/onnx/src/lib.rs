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
pub mod weights;
pub mod write;

use gptpipe_core::stage::Registry;

/// Adds what this crate provides to the registry.
pub fn register(_registry: &mut Registry) {}
