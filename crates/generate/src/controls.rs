//! Stop and shape controls: masks on a row's full logits, applied after the repetition
//! penalty and before temperature, top-k and top-p, in the order transformers'
//! `GenerationMixin._get_logits_processor` applies its processors:
//! 1. `no_repeat_ngram_size`: `NoRepeatNGramLogitsProcessor` over the row's whole context
//!    (prompt and every generated token, also past the sliding window);
//! 2. `bad_words`: `NoBadWordsLogitsProcessor` at the byte level, so a word is banned
//!    whatever its tokenisation ([`BadWords`]);
//! 3. `min_length`: `MinNewTokensLengthLogitsProcessor`, with every stop string that is
//!    one token as an eos id.
//!
//! Every mask sets logits to -inf, as transformers does. A job with none of them has no
//! [`Controls`], and the backends' fast paths (top-k candidates, device-side sampling)
//! stay as they are.

use crate::codec::Codec;
use anyhow::{ensure, Result};
use std::sync::Arc;

/// The compiled controls of a job (see the module documentation).
#[derive(Clone, PartialEq)]
pub struct Controls {
    /// Generated tokens before a stop may end a sample.
    pub min_length: usize,
    pub no_repeat_ngram_size: usize,
    /// Stop strings that are one token: banned while fewer than `min_length` tokens are
    /// generated.
    stop_tokens: Vec<u32>,
    bad_words: Option<Arc<BadWords>>,
    /// The bad-word automaton's state after the prompt's bytes.
    start_state: u32,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls")
            .field("min_length", &self.min_length)
            .field("no_repeat_ngram_size", &self.no_repeat_ngram_size)
            .field("stop_tokens", &self.stop_tokens)
            .field("bad_words", &self.bad_words.as_ref().map(|b| &b.words))
            .finish()
    }
}

impl Controls {
    /// The controls for a job with these `stops` and `prompt`; `None` when all are off.
    pub fn new(
        codec: &dyn Codec,
        prompt: &[u32],
        stops: &[String],
        min_length: usize,
        no_repeat_ngram_size: usize,
        bad_words: &[String],
    ) -> Result<Option<Self>> {
        if min_length == 0 && no_repeat_ngram_size == 0 && bad_words.is_empty() {
            return Ok(None);
        }
        let mut stop_tokens = Vec::new();
        for stop in stops.iter().filter(|s| !s.is_empty()) {
            if let [t] = codec.encode(stop)?[..] {
                stop_tokens.push(t);
            }
        }
        let bad_words = if bad_words.is_empty() {
            None
        } else {
            Some(Arc::new(BadWords::new(codec, bad_words)?))
        };
        let start_state = bad_words.as_ref().map_or(0, |b| {
            prompt
                .iter()
                .fold(0, |s, &t| b.advance(s, &codec.token_bytes(t)))
        });
        Ok(Some(Self {
            min_length,
            no_repeat_ngram_size,
            stop_tokens,
            bad_words,
            start_state,
        }))
    }

    /// The bad-word state of a row before its first generated token.
    pub fn start_state(&self) -> u32 {
        self.start_state
    }

    /// The bad-word state after `bytes` more of the row's text.
    pub fn advance(&self, state: u32, bytes: &[u8]) -> u32 {
        self.bad_words
            .as_ref()
            .map_or(0, |b| b.advance(state, bytes))
    }

    /// Masks `logits` for a row whose `context` (prompt and generated tokens) holds
    /// `generated` generated tokens and whose text is in bad-word state `state`.
    pub fn apply(&self, logits: &mut [f32], context: &[u32], generated: usize, state: u32) {
        if self.no_repeat_ngram_size > 0 {
            for t in banned_ngram_tokens(context, self.no_repeat_ngram_size) {
                ban(logits, t);
            }
        }
        if let Some(b) = &self.bad_words {
            for &t in &b.banned[state as usize] {
                ban(logits, t);
            }
        }
        if generated < self.min_length {
            for &t in &self.stop_tokens {
                ban(logits, t);
            }
        }
    }
}

fn ban(logits: &mut [f32], token: u32) {
    if let Some(l) = logits.get_mut(token as usize) {
        *l = f32::NEG_INFINITY;
    }
}

/// transformers' `_calc_banned_ngram_tokens` for one row: the tokens that would end an
/// n-gram already in `context` (those following an earlier occurrence of its last n - 1
/// tokens).
pub fn banned_ngram_tokens(context: &[u32], n: usize) -> Vec<u32> {
    // transformers stops at `cur_len + 1 < n`; at `cur_len + 1 == n` the context holds no
    // n-gram yet either.
    if n == 0 || context.len() < n {
        return Vec::new();
    }
    let k = n - 1;
    let tail = &context[context.len() - k..];
    (0..=context.len() - n)
        .filter(|&i| &context[i..i + k] == tail)
        .map(|i| context[i + k])
        .collect()
}

/// Bad words over bytes: an Aho-Corasick automaton of the words whose state is the longest
/// suffix of a row's text that starts a word, and, per state, the tokens whose bytes
/// would complete a word after such a text (computed once per job, so a step costs one
/// lookup, not a scan of the vocabulary).
#[derive(Debug, PartialEq)]
pub struct BadWords {
    words: Vec<String>,
    /// Full transition table, 256 entries per state (the words are short: few states).
    next: Vec<[u32; 256]>,
    /// Tokens banned in each state, increasing.
    banned: Vec<Vec<u32>>,
}

impl BadWords {
    pub fn new(codec: &dyn Codec, words: &[String]) -> Result<Self> {
        for w in words {
            ensure!(!w.is_empty(), "bad_words: an empty string cannot be banned");
        }
        // The trie: node 0 is the root; `depth` = the length of the prefix a node stands
        // for, `ends` = a word ends there or at a suffix of it (through fail links).
        let mut next: Vec<[u32; 256]> = vec![[u32::MAX; 256]];
        let mut prefix: Vec<Vec<u8>> = vec![Vec::new()];
        let mut ends = vec![false];
        for w in words {
            let mut s = 0usize;
            for &b in w.as_bytes() {
                if next[s][b as usize] == u32::MAX {
                    next[s][b as usize] = next.len() as u32;
                    let mut p = prefix[s].clone();
                    p.push(b);
                    next.push([u32::MAX; 256]);
                    prefix.push(p);
                    ends.push(false);
                }
                s = next[s][b as usize] as usize;
            }
            ends[s] = true;
        }
        // Breadth-first: fail links, then missing transitions through them (a DFA).
        let mut fail = vec![0u32; next.len()];
        let mut queue = std::collections::VecDeque::new();
        for slot in next[0].iter_mut() {
            match *slot {
                u32::MAX => *slot = 0,
                child => queue.push_back(child as usize),
            }
        }
        while let Some(s) = queue.pop_front() {
            ends[s] = ends[s] || ends[fail[s] as usize];
            let fallback = next[fail[s] as usize];
            for (slot, via_fail) in next[s].iter_mut().zip(fallback) {
                let child = *slot;
                if child == u32::MAX {
                    *slot = via_fail;
                } else {
                    fail[child as usize] = via_fail;
                    queue.push_back(child as usize);
                }
            }
        }
        // Vocabulary byte strings in byte order: the tokens starting with some bytes are
        // one range of it.
        let mut vocab: Vec<(Vec<u8>, u32)> = (0..codec.vocab_len() as u32)
            .map(|t| (codec.token_bytes(t), t))
            .filter(|(b, _)| !b.is_empty())
            .collect();
        vocab.sort_unstable();
        let starting_with = |y: &[u8]| {
            let lo = vocab.partition_point(|(b, _)| b.as_slice() < y);
            let hi = lo + vocab[lo..].partition_point(|(b, _)| b.starts_with(y));
            vocab[lo..hi].iter().map(|(_, t)| *t)
        };
        // Tokens holding a whole word, whatever came before.
        let feed = |mut s: usize, bytes: &[u8]| {
            bytes.iter().any(|&b| {
                s = next[s][b as usize] as usize;
                ends[s]
            })
        };
        let always: Vec<u32> = vocab
            .iter()
            .filter(|(b, _)| feed(0, b))
            .map(|(_, t)| *t)
            .collect();
        // Per state: the words that the text's suffixes (the state and its fail chain)
        // start; a token starting with a word's rest completes it.
        let mut banned = Vec::with_capacity(next.len());
        for s in 0..next.len() {
            let mut set = always.clone();
            let mut q = s;
            while q != 0 {
                let p = &prefix[q];
                for w in words.iter().map(|w| w.as_bytes()) {
                    if w.len() > p.len() && w.starts_with(p) {
                        set.extend(starting_with(&w[p.len()..]));
                    }
                }
                q = fail[q] as usize;
            }
            set.sort_unstable();
            set.dedup();
            banned.push(set);
        }
        Ok(Self {
            words: words.to_vec(),
            next,
            banned,
        })
    }

    /// The state after `bytes` more text.
    pub fn advance(&self, mut state: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            state = self.next[state as usize][b as usize];
        }
        state
    }

    /// The tokens banned after a text in `state`, increasing.
    pub fn banned(&self, state: u32) -> &[u32] {
        &self.banned[state as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_transformers_rule() {
        // Context 1 2 3 1 2: the 3-gram (1, 2, 3) exists, its head (1, 2) ends the context.
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        // Size 1 bans every token seen; too short a context bans nothing.
        assert_eq!(banned_ngram_tokens(&[4, 5, 4], 1), vec![4, 5, 4]);
        assert!(banned_ngram_tokens(&[4], 3).is_empty());
        assert!(banned_ngram_tokens(&[4, 5], 3).is_empty());
    }
}
