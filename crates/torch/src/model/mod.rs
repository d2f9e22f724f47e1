//! GPT-2 exactly as `transformers`' `GPT2LMHeadModel`: same tensor names and layouts, tied
//! head, tanh GELU, causal scaled-dot-product attention, dropout only when training.
//!
//! # API (stable; the generation backend builds on it)
//! - [`Config`]: `Config::preset("gpt2-medium")`, `Config::from_json_file(path)`,
//!   `Config::from_inline(&InlineModel)`, `config.to_hf_json()`.
//! - [`Gpt2`]: `Gpt2::random(&cfg, device, seed)`, or load one with
//!   [`crate::weights::load_folder`] / [`crate::source::load_model`].
//! - `model.forward(&ids, cache, train) -> logits [B, T, vocab]`: `ids` is `[B, T]` Int64
//!   on `model.device()`. Logits come in the compute kind (fp32 unless
//!   [`Gpt2::set_compute_kind`] or [`Gpt2::convert_weights`] said otherwise).
//! - Incremental decoding: `let mut cache = model.new_cache();` then
//!   `model.forward(&prompt, Some(&mut cache), false)` once and
//!   `model.forward(&next_tokens /*[B,1]*/, Some(&mut cache), false)` per step. The total
//!   length (`cache.len()` + new tokens) must stay within `config.n_ctx`: to slide the
//!   window, clear the cache and feed the last tokens again.
//! - Prompts of different lengths: left-pad them to a common length and call
//!   `model.forward_masked(&ids, Some(&mask), Some(&mut cache), false)` with `mask`
//!   `[B, T]` (1 = real, 0 = padding); later steps may pass `None` (new tokens are real).
//!   Positions count real tokens only, as `transformers`' `generate` does, so each row's
//!   logits equal those of the row alone. `cache.select_rows(&idx)` drops finished rows.
//! - Training: `model.loss(&ids, true)` is the mean next-token cross-entropy;
//!   `model.named_parameters()` lists the leaf weights in Hugging Face's names.

mod cache;
mod checkpoint;
mod config;
mod gpt2;

pub use cache::KvCache;
pub use config::Config;
pub use gpt2::Gpt2;
pub(crate) use gpt2::{LayerNorm, Linear, Weights, VOCAB_ALIGN};

use tch::Tensor;

/// Consecutive views of the 1-D `buffer`, one per shape, in order: the layout of
/// [`Gpt2::flatten_parameters`], which the optimizer's moments and early stopping's copy of
/// the weights share. The shapes must tile the buffer exactly. The views are lasting ones
/// (`narrow`, which allows in-place updates of the buffer); a forward pass splits its cast
/// of the buffer with `split_with_sizes` instead, for one gradient concatenation.
pub fn tile(buffer: &Tensor, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let mut offset = 0;
    let views = shapes
        .iter()
        .map(|shape| {
            let len: i64 = shape.iter().product();
            let view = buffer.narrow(0, offset, len).view(shape.as_slice());
            offset += len;
            view
        })
        .collect();
    assert_eq!(
        offset,
        buffer.numel() as i64,
        "the shapes must tile the buffer"
    );
    views
}
