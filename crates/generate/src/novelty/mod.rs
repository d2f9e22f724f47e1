//! Unique samples: how new a sample is next to the rows its model was trained
//! on. [`NoveltyIndex`] answers per sample whether it is a copy of a training row, the
//! longest run of tokens it shares with one, and which row; [`store`] keeps the index
//! cached per dataset; [`rows`] finds a generate stage's training rows.
//!
//! Normalisation (one rule for rows, samples and `dedupe`): whitespace trimmed at both
//! ends and every run of whitespace made one space. Training rows are already cleaned by
//! the prepare stage and samples come from a model trained on them, so nothing else is
//! changed (case, punctuation). Tokens are GPT-2's encoding of the normalised text after
//! one space ([`tokens_of`]): GPT-2 tokenises a word at the start of a text differently
//! from the same word after a space, and a sample's first word is often a row's middle one.

mod index;
pub mod rows;
pub mod store;

pub use index::{NoveltyIndex, Run};

use crate::codec::Codec;
use anyhow::Result;
use gptpipe_core::config::GenerateParams;
use gptpipe_core::stage::StageContext;

/// A sample's novelty, as `samples.jsonl` records it (`copied`, `overlap`, `nearest`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Novelty {
    /// The normalised sample equals a normalised training row (an empty sample never does).
    pub copied: bool,
    /// The longest run of tokens shared with any training row, as a fraction of the
    /// sample's tokens (0 for a sample of no tokens).
    pub overlap: f64,
    /// The 0-based index of the first training row holding that run; `None` when no token
    /// is shared.
    pub nearest: Option<usize>,
}

/// The index over the training rows of the generate stage `ctx` runs with params `p`
/// (`novelty_against`), from the workdir's cache or built and cached; `None` when the
/// stage names no rows. A damaged cached index is rebuilt with a warning.
pub fn for_stage(
    ctx: &StageContext,
    p: &GenerateParams,
    codec: &dyn Codec,
) -> Result<Option<NoveltyIndex>> {
    let Some(rows) = rows::training_rows(ctx, p)? else {
        return Ok(None);
    };
    let (index, origin) = store::open(&store::dir_in(&ctx.pipeline.workdir), &rows, codec)?;
    if let store::Origin::Rebuilt(why) = origin {
        ctx.warn(format!(
            "rebuilt the novelty index: the cached one was unusable ({why})"
        ));
    }
    Ok(Some(index))
}

/// Trimmed, with every run of whitespace made one space.
pub fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The hash that identifies a normalised text in the copy set.
pub fn copy_hash(normalized: &str) -> [u8; 16] {
    let h = blake3::hash(normalized.as_bytes());
    h.as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

/// The tokens a normalised text is indexed and queried by: those of " " + text (none for
/// an empty text).
pub fn tokens_of(normalized: &str, codec: &dyn Codec) -> Result<Vec<u32>> {
    if normalized.is_empty() {
        return Ok(Vec::new());
    }
    codec.encode(&format!(" {normalized}"))
}

impl NoveltyIndex {
    /// Builds the index over training `rows` (texts, normalised here), tokenised by `codec`.
    pub fn build(rows: &[String], codec: &dyn Codec) -> Result<Self> {
        let mut copies = Vec::new();
        let mut tokens = Vec::with_capacity(rows.len());
        for row in rows {
            let row = normalize(row);
            if !row.is_empty() {
                copies.push(copy_hash(&row));
            }
            tokens.push(tokens_of(&row, codec)?);
        }
        Self::from_tokens(&tokens, copies)
    }

    /// The novelty of a generated text (the prefix left out).
    pub fn judge(&self, generated: &str, codec: &dyn Codec) -> Result<Novelty> {
        let text = normalize(generated);
        let copied = !text.is_empty() && self.is_copy(&copy_hash(&text));
        let tokens = tokens_of(&text, codec)?;
        let run = self.longest_run(&tokens);
        let overlap = if tokens.is_empty() {
            0.0
        } else {
            run.len as f64 / tokens.len() as f64
        };
        Ok(Novelty {
            copied,
            overlap,
            nearest: run.row,
        })
    }
}
