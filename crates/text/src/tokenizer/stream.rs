//! Encoding text that arrives in pieces, with the ids of the whole.

use super::{first_safe_cut, last_safe_cut, Gpt2Tokenizer};

/// Encodes a text handed over in parts (rows of a dataset) so that the ids equal those of
/// the concatenated text: GPT-2's pre-tokenizer looks across row ends (`"a \n"` splits
/// differently from `"a \nb"`), so the tail after the last safe cut waits for the next part.
pub struct StreamEncoder {
    tokenizer: Gpt2Tokenizer,
    pending: String,
    /// Encode once this much text is waiting.
    batch: usize,
}

impl StreamEncoder {
    pub fn new(tokenizer: Gpt2Tokenizer) -> Self {
        Self::with_batch(tokenizer, 4 << 20)
    }

    /// `batch`: how many bytes to collect before encoding them (in parallel).
    pub fn with_batch(tokenizer: Gpt2Tokenizer, batch: usize) -> Self {
        Self {
            tokenizer,
            pending: String::new(),
            batch,
        }
    }

    /// Adds `text`; appends to `out` the ids of what can no longer change.
    pub fn push(&mut self, text: &str, out: &mut Vec<u32>) {
        if self.pending.len() + text.len() < self.batch {
            self.pending.push_str(text);
            return;
        }
        let (Some(first), Some(last)) = (first_safe_cut(text), last_safe_cut(text)) else {
            self.pending.push_str(text);
            return;
        };
        // What waits, up to the first safe cut of `text`; then the bulk of `text` without
        // copying it; the tail waits for more.
        self.pending.push_str(&text[..first]);
        self.tokenizer.encode_extend(&self.pending, out);
        self.pending.clear();
        self.tokenizer.encode_extend(&text[first..last], out);
        self.pending.push_str(&text[last..]);
    }

    /// Appends the ids of whatever is left.
    pub fn finish(&mut self, out: &mut Vec<u32>) {
        self.tokenizer.encode_extend(&self.pending, out);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_encoding_the_whole() {
        let tok = Gpt2Tokenizer::new().unwrap();
        let parts = [
            "a  \n",
            "b \n",
            " c<|endoftext|>",
            "\n\nd",
            "  ",
            "e",
            "  \n",
        ];
        let whole: String = parts.concat();
        // Encoding the parts one by one differs, so this test can fail.
        let naive: Vec<u32> = parts.iter().flat_map(|p| tok.encode(p)).collect();
        assert_ne!(naive, tok.encode(&whole));
        for batch in [1, 3, 5, 8, 13, 1000] {
            let mut stream = StreamEncoder::with_batch(tok.clone(), batch);
            let mut ids = Vec::new();
            for p in parts {
                stream.push(p, &mut ids);
            }
            stream.finish(&mut ids);
            assert_eq!(ids, tok.encode(&whole), "batch {batch}");
        }
    }
}
