//! Text <-> tokens, as generation needs it.
//!
//! GPT-2's tokenizer is byte-level: each token stands for a fixed byte string, and a
//! sample's text is its tokens' bytes joined. Working on bytes lets the driver check
//! `truncate` on the newest bytes only instead of re-decoding the whole row every step.

use anyhow::Result;

pub trait Codec {
    /// Token ids of `text`, with `<|endoftext|>` as the special token.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;

    /// The bytes token `id` stands for (ids the tokenizer does not know give no bytes).
    fn token_bytes(&self, id: u32) -> Vec<u8>;

    /// The token a sample starts from when the prefix is empty (`<|endoftext|>`).
    fn start_token(&self) -> u32;
}

/// Text of some bytes; a token boundary inside a UTF-8 character shows as U+FFFD, as
/// transformers' decode does.
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// GPT-2's tokenizer (from `gptpipe_text`).
pub fn gpt2() -> Result<Box<dyn Codec>> {
    anyhow::bail!("GPT-2's tokenizer is not wired in yet")
}
