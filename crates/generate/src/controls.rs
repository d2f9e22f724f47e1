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
    /// The bad-word automaton's state after the prompt's bytes (none for the start token
    /// of an empty prefix, see `Job::with_controls`).
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
    /// The controls for a job with these `stops` whose text before the first token is
    /// `prompt`'s bytes; `None` when all are off.
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
            for &t in b.always.iter().chain(&b.banned[state as usize]) {
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
    /// Tokens holding a whole word: banned in every state, increasing.
    always: Vec<u32>,
    /// Tokens banned in each state besides `always`, increasing.
    banned: Vec<Vec<u32>>,
}

impl BadWords {
    pub fn new(codec: &dyn Codec, words: &[String]) -> Result<Self> {
        for w in words {
            ensure!(!w.is_empty(), "bad_words: an empty string cannot be banned");
        }
        // The trie: node 0 is the root; `ends` = a word ends there or at a suffix of it
        // (through fail links).
        let mut next: Vec<[u32; 256]> = vec![[u32::MAX; 256]];
        let mut ends = vec![false];
        for w in words {
            let mut s = 0usize;
            for &b in w.as_bytes() {
                if next[s][b as usize] == u32::MAX {
                    next[s][b as usize] = next.len() as u32;
                    next.push([u32::MAX; 256]);
                    ends.push(false);
                }
                s = next[s][b as usize] as usize;
            }
            ends[s] = true;
        }
        // Breadth-first: fail links, then missing transitions through them (a DFA).
        let mut fail = vec![0u32; next.len()];
        let mut queue = std::collections::VecDeque::new();
        let mut order = Vec::with_capacity(next.len());
        for slot in next[0].iter_mut() {
            match *slot {
                u32::MAX => *slot = 0,
                child => queue.push_back(child as usize),
            }
        }
        while let Some(s) = queue.pop_front() {
            order.push(s);
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
        let mut always: Vec<u32> = vocab
            .iter()
            .filter(|(b, _)| feed(0, b))
            .map(|(_, t)| *t)
            .collect();
        always.sort_unstable();
        // Per state: the tokens completing a word that the state's own prefix starts
        // (the word's rest starts the token), then, through the fail link, those of the
        // longest proper suffix that is a state too. Breadth-first order computes a fail
        // state before the states linking to it, so the build costs the words' bytes and
        // the sets' sizes, not words x states.
        let mut own: Vec<Vec<u32>> = vec![Vec::new(); next.len()];
        for w in words.iter().map(|w| w.as_bytes()) {
            let mut s = 0usize;
            for k in 1..w.len() {
                s = next[s][w[k - 1] as usize] as usize;
                own[s].extend(starting_with(&w[k..]));
            }
        }
        // `always` (banned in every state) is kept once, not in each state's set.
        let mut banned: Vec<Vec<u32>> = vec![Vec::new(); next.len()];
        for s in order {
            let mut set = std::mem::take(&mut own[s]);
            set.extend_from_slice(&banned[fail[s] as usize]);
            set.sort_unstable();
            set.dedup();
            set.retain(|t| always.binary_search(t).is_err());
            banned[s] = set;
        }
        Ok(Self {
            words: words.to_vec(),
            next,
            always,
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
    pub fn banned(&self, state: u32) -> Vec<u32> {
        let mut all = [&self.always[..], &self.banned[state as usize][..]].concat();
        all.sort_unstable();
        all
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

    /// Tokens are the byte strings of a list.
    struct ListCodec(Vec<Vec<u8>>);

    impl Codec for ListCodec {
        fn encode(&self, _: &str) -> Result<Vec<u32>> {
            unimplemented!()
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            self.0.get(id as usize).cloned().unwrap_or_default()
        }
        fn start_token(&self) -> u32 {
            0
        }
        fn vocab_len(&self) -> usize {
            self.0.len()
        }
    }

    /// A small xorshift stream, so the test needs no crate.
    struct Rand(u64);

    impl Rand {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn string(&mut self, max: usize) -> Vec<u8> {
            let len = 1 + self.below(max);
            (0..len).map(|_| b"abc"[self.below(3)]).collect()
        }
    }

    /// The rule itself: after `text`, a token is banned when some word occurs in
    /// `text` + the token's bytes ending inside the token's bytes.
    fn banned_by_rule(codec: &ListCodec, words: &[Vec<u8>], text: &[u8]) -> Vec<u32> {
        (0..codec.0.len() as u32)
            .filter(|&t| {
                let all = [text, &codec.0[t as usize][..]].concat();
                words.iter().any(|w| {
                    (0..=all.len().saturating_sub(w.len()))
                        .any(|i| i + w.len() > text.len() && all[i..].starts_with(w))
                })
            })
            .collect()
    }

    #[test]
    fn bad_word_bans_follow_the_rule_on_random_words() {
        let mut r = Rand(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            let vocab: Vec<Vec<u8>> = (0..60).map(|_| r.string(4)).collect();
            let codec = ListCodec(vocab);
            let words: Vec<Vec<u8>> = (0..1 + r.below(6)).map(|_| r.string(5)).collect();
            let strings: Vec<String> = words
                .iter()
                .map(|w| String::from_utf8(w.clone()).unwrap())
                .collect();
            let bad = BadWords::new(&codec, &strings).unwrap();
            for _ in 0..20 {
                let text = r.string(8);
                let state = bad.advance(0, &text);
                assert_eq!(
                    bad.banned(state),
                    banned_by_rule(&codec, &words, &text),
                    "round {round}, words {strings:?}, text {:?}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test -p gptpipe-generate --lib bad_words_build_time -- --ignored --nocapture`:
    /// the build time with GPT-2's vocabulary for 1,000 and 5,000 random words.
    #[test]
    #[ignore]
    fn bad_words_build_time() {
        let codec = crate::codec::gpt2().unwrap();
        let mut x = 88172645463325252u64;
        for n in [1_000, 5_000] {
            let words: Vec<String> = (0..n)
                .map(|_| {
                    (0..8)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            (b'a' + (x % 26) as u8) as char
                        })
                        .collect()
                })
                .collect();
            let t = std::time::Instant::now();
            BadWords::new(codec.as_ref(), &words).unwrap();
            eprintln!("{n} words: {:?}", t.elapsed());
        }
    }
}
