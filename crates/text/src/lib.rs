//! Text side of gptpipe: GPT-2's tokenizer and the prepare stage.

pub mod prepare;
pub mod tokenizer;

pub use tokenizer::{write_tokenizer_files, Gpt2Tokenizer, StreamEncoder, EOT, EOT_ID};

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::Registry;

/// Adds the prepare stage.
pub fn register(registry: &mut Registry) {
    registry.register(StageKind::Prepare, prepare::VERSION, prepare::run);
}
