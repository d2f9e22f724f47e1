//! Text side of gptpipe: GPT-2's tokenizer and the prepare stage.

use gptpipe_core::stage::Registry;

/// Adds the prepare stage.
pub fn register(_registry: &mut Registry) {}
