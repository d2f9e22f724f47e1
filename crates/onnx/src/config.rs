//! The part of a Hugging Face GPT-2 `config.json` that shapes the graph.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Activation of the MLP, from `activation_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation GPT-2 was trained with.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Longest sequence (`n_positions`, or the older `n_ctx`).
    pub n_positions: usize,
    pub vocab_size: usize,
    pub layer_norm_epsilon: f64,
    pub activation: Activation,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct Raw {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "act")]
    activation_function: String,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    model_type: Option<String>,
}

fn eps() -> f64 {
    1e-5
}
fn act() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).context("not a GPT-2 config.json")?;
        if let Some(t) = raw.model_type.as_deref() {
            if t != "gpt2" {
                bail!("model_type is {t:?}; only \"gpt2\" models can be exported");
            }
        }
        let activation = match raw.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => bail!("activation_function {other:?} is not supported (gelu_new, gelu)"),
        };
        if raw.n_head == 0 || (raw.n_embd / raw.n_head) * raw.n_head != raw.n_embd {
            bail!(
                "n_embd ({}) must be a multiple of n_head ({})",
                raw.n_embd,
                raw.n_head
            );
        }
        let n_positions = raw
            .n_positions
            .or(raw.n_ctx)
            .context("config.json has neither n_positions nor n_ctx")?;
        gptpipe_hf::limits::check_shape(
            raw.n_layer,
            raw.n_head,
            raw.n_embd,
            n_positions,
            raw.vocab_size,
        )
        .map_err(|(key, message)| match key {
            "n_ctx" => anyhow::anyhow!("{message} (n_ctx is `n_positions` in config.json)"),
            _ => anyhow::anyhow!("{message}"),
        })?;
        Ok(Self {
            n_layer: raw.n_layer,
            n_head: raw.n_head,
            n_embd: raw.n_embd,
            n_positions,
            vocab_size: raw.vocab_size,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            activation,
            scale_attn_weights: raw.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx,
            tie_word_embeddings: raw.tie_word_embeddings,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}
