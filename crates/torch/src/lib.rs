//! GPT-2 on libtorch.

use gptpipe_core::stage::Registry;

/// Adds the finetune stage (and the tch generation backend).
pub fn register(_registry: &mut Registry) {}
