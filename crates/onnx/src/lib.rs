//! ONNX export and ONNX Runtime backend.

use gptpipe_core::stage::Registry;

/// Adds what this crate provides to the registry.
pub fn register(_registry: &mut Registry) {}
