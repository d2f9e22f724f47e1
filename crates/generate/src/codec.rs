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

    /// How many tokens the tokenizer has (ids `0..vocab_len()`), for tables over the
    /// vocabulary such as `bad_words`'.
    fn vocab_len(&self) -> usize;
}

/// Text of some bytes; a token boundary inside a UTF-8 character shows as U+FFFD, as
/// transformers' decode does.
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// GPT-2's tokenizer (from `gptpipe_text`).
pub fn gpt2() -> Result<Box<dyn Codec>> {
    Ok(Box::new(gptpipe_text::Gpt2Tokenizer::new()?))
}

impl Codec for gptpipe_text::Gpt2Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(gptpipe_text::Gpt2Tokenizer::encode(self, text))
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.decode_bytes(&[id])
    }

    fn start_token(&self) -> u32 {
        self.eot_id()
    }

    fn vocab_len(&self) -> usize {
        self.vocab_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_codec_treats_endoftext_as_special_and_startoftext_as_text() {
        let c = gpt2().unwrap();
        assert_eq!(c.encode("<|endoftext|>").unwrap(), vec![50256]);
        assert_eq!(c.start_token(), 50256);
        assert_eq!(c.token_bytes(50256), b"<|endoftext|>");
        let sot = c.encode("<|startoftext|>").unwrap();
        assert!(sot.len() > 1 && !sot.contains(&50256));
        let joined: Vec<u8> = sot.iter().flat_map(|&t| c.token_bytes(t)).collect();
        assert_eq!(joined, b"<|startoftext|>");
    }
}
