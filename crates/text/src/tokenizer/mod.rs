//! GPT-2's byte-level BPE tokenizer.
//!
//! The vocabulary and merges are GPT-2's `encoder.json` and `vocab.bpe`, embedded in the
//! binary. Merging is done by the `tokenizers` crate's BPE model; around it sit a
//! hand-written pre-tokenizer (see [`pretokenize`]), a direct vocabulary lookup for pieces
//! that are one token, a per-thread cache of the rest, and rayon over chunks of long texts
//! split where the split cannot change the result. Ids equal tiktoken's `r50k_base`.
//!
//! `<|endoftext|>` is the special token 50256 wherever it appears; `<|startoftext|>` is
//! plain text, as in gpt-2-simple.

mod bytes;
mod hf_files;
mod piece_map;
mod pretokenize;
mod stream;
mod vocab_files;

pub use hf_files::{write_tokenizer_files, write_tokenizer_files_with_max_length};
pub use stream::StreamEncoder;
pub use vocab_files::check_gpt2_vocabulary;

use anyhow::Context as _;
use piece_map::PieceMap;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use tokenizers::models::bpe::BPE;
use tokenizers::Model as _;

/// GPT-2's `encoder.json` (token -> id).
pub const ENCODER_JSON: &str = include_str!("../../assets/encoder.json");
/// GPT-2's `vocab.bpe` (merges, best first).
pub const VOCAB_BPE: &str = include_str!("../../assets/vocab.bpe");

/// The end-of-text token, GPT-2's only special token.
pub const EOT: &str = "<|endoftext|>";
/// Its id, and the number of tokens in GPT-2's vocabulary.
pub use gptpipe_hf::config::gpt2::{EOT_ID, VOCAB_SIZE};

/// Texts shorter than this are encoded on the calling thread.
const PARALLEL_MIN: usize = 256 * 1024;
/// The size of the pieces a long text is cut into for rayon.
const CHUNK: usize = 64 * 1024;
/// The per-thread cache of multi-token words is emptied when it grows past this.
const CACHE_MAX: usize = 256 * 1024;

/// GPT-2's tokenizer. Cheap to clone: all clones share one vocabulary.
#[derive(Clone)]
pub struct Gpt2Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Token bytes -> id, for pieces that are a single token.
    encoder: PieceMap<u32>,
    /// Id -> token bytes.
    decoder: Vec<Box<[u8]>>,
    byte_chars: [char; 256],
    bpe: BPE,
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt2Tokenizer")
            .field("vocab_size", &self.inner.decoder.len())
            .finish()
    }
}

/// Piece bytes -> the ids BPE gives them.
type WordCache = PieceMap<Box<[u32]>>;

thread_local! {
    /// BPE results of pieces that are not a single token. GPT-2 has one vocabulary, so the
    /// cache is shared by every tokenizer on the thread.
    static WORDS: RefCell<WordCache> = RefCell::default();
}

/// The BPE model (vocabulary and merges) as the `tokenizers` crate reads them.
pub(crate) fn vocab_and_merges(
) -> anyhow::Result<(tokenizers::models::bpe::Vocab, Vec<(String, String)>)> {
    let vocab: std::collections::HashMap<String, u32> =
        serde_json::from_str(ENCODER_JSON).context("parsing the embedded encoder.json")?;
    let merges = VOCAB_BPE
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .with_context(|| format!("bad merge line in vocab.bpe: {l:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((vocab.into_iter().collect(), merges))
}

impl Inner {
    fn load() -> anyhow::Result<Self> {
        let (vocab, merges) = vocab_and_merges()?;
        let byte_chars = bytes::byte_chars();
        let mut char_bytes = FxHashMap::default();
        for (b, c) in byte_chars.iter().enumerate() {
            char_bytes.insert(*c, b as u8);
        }
        let mut decoder = vec![Box::<[u8]>::default(); vocab.len()];
        let mut encoder = PieceMap::default();
        for (token, &id) in &vocab {
            let bytes: Box<[u8]> = if token == EOT {
                token.as_bytes().into()
            } else {
                token
                    .chars()
                    .map(|c| char_bytes.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .with_context(|| format!("token {token:?} is not byte-level"))?
                    .into()
            };
            let slot = decoder
                .get_mut(id as usize)
                .with_context(|| format!("token id {id} out of range"))?;
            *slot = bytes.clone();
            // The special token is matched separately; as text it is ordinary characters.
            if id != EOT_ID {
                encoder.insert(&bytes, id);
            }
        }
        anyhow::ensure!(
            decoder.len() == VOCAB_SIZE && decoder.iter().all(|b| !b.is_empty()),
            "the embedded vocabulary is not GPT-2's"
        );
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            // Our per-thread cache sits in front; this one would only add a lock.
            .cache_capacity(0)
            .build()
            .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))?;
        Ok(Inner {
            encoder,
            decoder,
            byte_chars,
            bpe,
        })
    }

    /// Appends the ids of `text`, which holds no special token.
    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        WORDS.with(|cache| {
            let mut cache = cache.borrow_mut();
            for piece in pretokenize::pieces(text) {
                let piece = piece.as_bytes();
                if let Some(&id) = self.encoder.get(piece) {
                    out.push(id);
                } else if let Some(ids) = cache.get(piece) {
                    // Most are two or three ids: a loop beats a call to memmove.
                    for &id in ids.iter() {
                        out.push(id);
                    }
                } else {
                    let ids = self.merge(piece);
                    out.extend_from_slice(&ids);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(piece, ids);
                }
            }
        });
    }

    /// BPE of one piece, by the `tokenizers` crate.
    fn merge(&self, piece: &[u8]) -> Box<[u32]> {
        let mapped: String = piece.iter().map(|&b| self.byte_chars[b as usize]).collect();
        self.bpe
            .tokenize(&mapped)
            .expect("every byte is in GPT-2's vocabulary")
            .into_iter()
            .map(|t| t.id)
            .collect()
    }

    /// Appends the ids of `text`, with `<|endoftext|>` as the special token.
    fn encode_serial(&self, text: &str, out: &mut Vec<u32>) {
        let mut rest = text;
        while let Some(at) = eot_finder().find(rest.as_bytes()) {
            self.encode_ordinary(&rest[..at], out);
            out.push(EOT_ID);
            rest = &rest[at + EOT.len()..];
        }
        self.encode_ordinary(rest, out);
    }
}

impl Gpt2Tokenizer {
    /// The tokenizer (loaded once per process; later calls are cheap).
    pub fn new() -> anyhow::Result<Self> {
        static GLOBAL: OnceLock<Result<Gpt2Tokenizer, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Inner::load()
                    .map(|inner| Gpt2Tokenizer {
                        inner: Arc::new(inner),
                    })
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("loading GPT-2's tokenizer: {e}"))
    }

    /// The id of `<|endoftext|>`.
    pub fn eot_id(&self) -> u32 {
        EOT_ID
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.decoder.len()
    }

    /// The ids of `text`. Long texts are encoded on several threads (rayon).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_extend(text, &mut out);
        out
    }

    /// Appends the ids of `text` to `out`; long texts are encoded on several threads.
    pub fn encode_extend(&self, text: &str, out: &mut Vec<u32>) {
        if text.len() < PARALLEL_MIN {
            self.inner.encode_serial(text, out);
            return;
        }
        let parts: Vec<Vec<u32>> = split_safely(text, CHUNK)
            .par_iter()
            .map(|chunk| {
                let mut ids = Vec::with_capacity(chunk.len() / 4 + 1);
                self.inner.encode_serial(chunk, &mut ids);
                ids
            })
            .collect();
        out.reserve(parts.iter().map(Vec::len).sum());
        for part in parts {
            out.extend_from_slice(&part);
        }
    }

    /// Appends the ids of `text` on the calling thread only.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        self.inner.encode_serial(text, out);
    }

    /// The bytes `ids` stand for; unknown ids become U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.inner.decoder.get(id as usize) {
                Some(bytes) => out.extend_from_slice(bytes),
                None => out.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        out
    }

    /// The text `ids` stand for; bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match String::from_utf8(self.decode_bytes(ids)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The token string of `id` in the vocabulary's byte-level form (`Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        let bytes = self.inner.decoder.get(id as usize)?;
        if id == EOT_ID {
            return Some(EOT.to_owned());
        }
        Some(
            bytes
                .iter()
                .map(|&b| self.inner.byte_chars[b as usize])
                .collect(),
        )
    }

    /// The full `tokenizers` pipeline for GPT-2 (what `tokenizer.json` holds).
    pub fn hf_tokenizer(&self) -> anyhow::Result<tokenizers::Tokenizer> {
        hf_files::hf_tokenizer()
    }
}

/// Finds `<|endoftext|>` (built once: building a finder costs more than a short search).
fn eot_finder() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(EOT.as_bytes()))
}

/// Cuts `text` into pieces of about `size` bytes, each cut just before a space or newline
/// that follows a non-whitespace character. GPT-2's pattern never matches across such a
/// point: whitespace only appears in runs and as a single leading space, and both start at
/// the cut. Nor does what it matches on one side depend on the other (a run of letters,
/// digits or symbols ends at the whitespace either way). So the pieces encode to the same
/// ids as the whole. (`<|endoftext|>` holds no whitespace, so no cut falls inside it.)
pub(crate) fn split_safely(text: &str, size: usize) -> Vec<&str> {
    let mut parts = Vec::with_capacity(text.len() / size + 1);
    let mut start = 0;
    while text.len() - start > size {
        match next_safe_cut(text, start + size) {
            Some(cut) => {
                parts.push(&text[start..cut]);
                start = cut;
            }
            None => break,
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The first safe cut at or after byte `from` (see [`split_safely`]).
fn next_safe_cut(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    memchr::memchr2_iter(b' ', b'\n', &bytes[from..])
        .map(|i| from + i)
        .find(|&at| is_safe_cut(text, at))
}

/// The first safe cut in `text` after its start (see [`last_safe_cut`]).
pub(crate) fn first_safe_cut(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let space = memchr::memchr2_iter(b' ', b'\n', bytes).find(|&at| is_safe_cut(text, at));
    let eot = eot_finder().find(bytes).map(|at| at + EOT.len());
    match (space, eot) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The last safe cut in `text`: before a space or newline that follows a non-space, or just
/// after an `<|endoftext|>`.
pub(crate) fn last_safe_cut(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let space = memchr::memrchr2_iter(b' ', b'\n', bytes).find(|&at| is_safe_cut(text, at));
    static BACK: OnceLock<memchr::memmem::FinderRev<'static>> = OnceLock::new();
    let back = BACK.get_or_init(|| memchr::memmem::FinderRev::new(EOT.as_bytes()));
    let eot = back.rfind(bytes).map(|at| at + EOT.len());
    space.max(eot).filter(|&at| at > 0)
}

/// Whether `at` (the index of a space or newline) follows a character that is not
/// whitespace.
fn is_safe_cut(text: &str, at: usize) -> bool {
    if at == 0 {
        return false;
    }
    let before = text[..at].chars().next_back().expect("not at the start");
    pretokenize::class_of(before) != pretokenize::Class::Space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_sentence() {
        let tok = Gpt2Tokenizer::new().unwrap();
        // Reference ids from GPT-2's vocabulary: "Hello" 15496, " world" 995.
        assert_eq!(tok.encode("Hello world"), [15496, 995]);
        assert_eq!(tok.encode("<|endoftext|>"), [EOT_ID]);
        assert_eq!(
            tok.decode(&tok.encode("a<|endoftext|>b")),
            "a<|endoftext|>b"
        );
    }

    #[test]
    fn cuts_only_before_a_space_after_a_non_space() {
        let text = "ab  cd\n ef gh";
        let cuts: Vec<usize> = (0..text.len())
            .filter(|&i| text.as_bytes()[i] == b' ' && is_safe_cut(text, i))
            .collect();
        assert_eq!(cuts, [2, 10]);
        assert_eq!(last_safe_cut(text), Some(10));
        assert_eq!(last_safe_cut("x<|endoftext|>yz"), Some(14));
        assert_eq!(first_safe_cut(text), Some(2));
        assert_eq!(first_safe_cut("x<|endoftext|>y z"), Some(14));
        assert_eq!(first_safe_cut("  x"), None);
        assert_eq!(last_safe_cut("日本\n語"), Some(6));
        assert_eq!(last_safe_cut("日本\n\n語"), Some(6));
        assert_eq!(split_safely("aa bb cc dd", 2), ["aa", " bb", " cc", " dd"]);
    }
}
