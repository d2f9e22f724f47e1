//! What generation needs from a model runtime (libtorch, ONNX Runtime, a test fake).
//!
//! A backend holds one batch of rows. The batch driver starts every row of a batch from the
//! same prompt, so its rows all have the same number of tokens, and feeds each active row
//! one token per step. `gptpipe serve` also adds rows to a running batch
//! ([`Backend::join`]), so that there rows differ in length. Rows that finish are dropped
//! with [`Backend::retain`] so they stop costing compute.
//! Positions never exceed `n_ctx`: past the context the driver restarts the batch from the
//! last `n_ctx - 1` tokens (the sliding window), so backends need no shifting logic.

use crate::sampling::Sampling;
pub use crate::score::score_window;
use anyhow::Result;
use gptpipe_core::config::Device;
use gptpipe_core::stage::ModelSource;
use std::sync::Arc;

/// Next-token logits of each active row, row-major `[rows, vocab]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn new(rows: usize, vocab: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * vocab, data.len(), "logits shape");
        Self { rows, vocab, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.vocab..(r + 1) * self.vocab]
    }
}

/// A model that continues token sequences.
pub trait Backend {
    /// The longest sequence the model attends over.
    fn n_ctx(&self) -> usize;

    /// Size of the logits vector (may exceed the tokenizer's 50257 for padded vocabularies).
    fn vocab_size(&self) -> usize;

    /// Replaces the batch with these rows, all of the same length (1..=n_ctx), and runs them.
    fn start(&mut self, rows: &[Vec<u32>]) -> Result<()>;

    /// Appends one token to each active row (in row order) and runs it.
    fn step(&mut self, tokens: &[u32]) -> Result<()>;

    /// Keeps only these active rows (indices into the current rows, increasing).
    /// `retain(&[])` empties the batch, also before any `start` (a no-op then).
    fn retain(&mut self, keep: &[usize]) -> Result<()>;

    /// Next-token logits of each active row after the last `start` or `step`.
    fn logits(&mut self) -> Result<Logits>;

    /// The `k` largest logits of each row as `(logit, token)`, largest first, ties by lower
    /// token id. Backends on an accelerator override this so that only `k` values per row
    /// cross to the host; the default reads all logits.
    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
        let logits = self.logits()?;
        Ok((0..logits.rows)
            .map(|r| crate::sampling::top_k_of(logits.row(r), k))
            .collect())
    }

    /// The model's log-probabilities (natural log, temperature 1, no sampling rule) of
    /// given tokens: for each row, `log p(row[j] | context)` for `j in from[row]..row.len()`
    /// (`from >= 1`; an empty vector when `from == row.len()`).
    ///
    /// The context of token `j` is [`score_window`]`(j, n_ctx)..j`: the whole row before
    /// it while that fits the model, and past the context a strided sliding window (as
    /// `transformers`' perplexity guide does it), so every token keeps at least half the
    /// context. This replaces the batch (as [`Backend::start`] does): start again before
    /// decoding. The default runs through `start`, `step` and `logits`, which works for any
    /// backend; backends that can run a whole padded batch in one pass override it.
    fn token_log_probs(&mut self, rows: &[Vec<u32>], from: &[usize]) -> Result<Vec<Vec<f32>>> {
        crate::score::log_probs_by_steps(self, rows, from)
    }

    /// Whether [`Backend::join`] works: rows of different lengths in one batch, what
    /// continuous batching (`gptpipe serve`) needs.
    fn can_join(&self) -> bool {
        false
    }

    /// Adds rows after those in use (or to an empty batch, before any `start`), each with
    /// its own prompt of 1..=n_ctx tokens, and runs them: their logits follow those of the
    /// rows already there. From then on rows may differ in length: `step` feeds each row at
    /// its own position (the caller keeps every row under `n_ctx`), and `retain`, `logits`
    /// and `top_k` cover joined rows like any other. A row's logits do not depend on the
    /// other rows of the batch, up to floating-point rounding.
    fn join(&mut self, _prompts: &[Vec<u32>]) -> Result<()> {
        anyhow::bail!("this backend cannot add rows to a running batch")
    }

    /// How many tokens per row [`Backend::sample_ahead`] can decode in one call with these
    /// settings; 0 (the default) when the backend cannot sample by itself, and the driver
    /// samples on the host one step at a time.
    fn sample_ahead_limit(&self, _sampling: &Sampling) -> usize {
        0
    }

    /// Decodes `n = uniforms[row].len()` tokens per row without returning to the host in
    /// between (up to [`Backend::sample_ahead_limit`], and only while the cache has room):
    /// token j of a row is picked from its current logits with `uniforms[row][j]` exactly as
    /// [`Sampling::sample_row`] picks it, then fed. Returns the tokens `[rows][n]`; every
    /// one of them has been fed, so the logits are those after the last.
    fn sample_ahead(
        &mut self,
        _sampling: &Sampling,
        _uniforms: &[Vec<f64>],
    ) -> Result<Vec<Vec<u32>>> {
        anyhow::bail!("this backend does not sample by itself")
    }
}

/// Builds a backend for a model on a device (`"auto"`, `"cpu"`, `"cuda"`, `"cuda:N"`).
pub type BackendFactory =
    Arc<dyn Fn(&ModelSource, &Device) -> Result<Box<dyn Backend>> + Send + Sync>;

/// The backends compiled into this build.
#[derive(Clone, Default)]
pub struct Backends {
    pub tch: Option<BackendFactory>,
    pub onnx: Option<BackendFactory>,
}
