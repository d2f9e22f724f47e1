//! GPT-2 hyper-parameters: the presets, Hugging Face's `config.json`, and the spec's inline
//! table for a fresh model.

use anyhow::{bail, Context, Result};
use gptpipe_core::config::InlineModel;
use gptpipe_hf::config::gpt2;
use gptpipe_hf::{Activation, HfConfig};
use serde_json::{json, Value};
use std::path::Path;

/// The shape and regularisation of a GPT-2, with `transformers`' `GPT2Config` names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    /// The context length (`n_positions`, also written as `n_ctx`).
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the MLP; `4 * n_embd` when `config.json` has `n_inner: null`.
    pub n_inner: usize,
    pub layer_norm_epsilon: f64,
    pub attn_pdrop: f64,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub initializer_range: f64,
    /// `true` for GPT-2's tanh approximation (`gelu_new`), `false` for the exact erf GELU.
    pub gelu_tanh: bool,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
}

impl Config {
    /// GPT-2 124M.
    pub fn gpt2() -> Self {
        Self::sized(12, 12, 768)
    }

    /// `gpt2`, `gpt2-medium`, `gpt2-large` or `gpt2-xl` (the hub ids, with or without the
    /// `openai-community/` prefix).
    pub fn preset(name: &str) -> Option<Self> {
        let (n_layer, n_head, n_embd) = match name.trim_start_matches("openai-community/") {
            "gpt2" => (12, 12, 768),
            "gpt2-medium" => (24, 16, 1024),
            "gpt2-large" => (36, 20, 1280),
            "gpt2-xl" => (48, 25, 1600),
            _ => return None,
        };
        Some(Self::sized(n_layer, n_head, n_embd))
    }

    fn sized(n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        Self {
            vocab_size: gpt2::VOCAB_SIZE,
            n_ctx: gpt2::N_POSITIONS,
            n_embd,
            n_layer,
            n_head,
            n_inner: 4 * n_embd,
            layer_norm_epsilon: gpt2::LAYER_NORM_EPSILON,
            attn_pdrop: gpt2::DROPOUT,
            resid_pdrop: gpt2::DROPOUT,
            embd_pdrop: gpt2::DROPOUT,
            initializer_range: gpt2::INITIALIZER_RANGE,
            gelu_tanh: true,
            scale_attn_weights: gpt2::SCALE_ATTN_WEIGHTS,
            scale_attn_by_inverse_layer_idx: gpt2::SCALE_ATTN_BY_INVERSE_LAYER_IDX,
            bos_token_id: gpt2::EOT_ID.into(),
            eos_token_id: gpt2::EOT_ID.into(),
        }
    }

    /// The spec's inline table: `{ n_layer, n_head, n_embd, n_ctx, vocab_size, dropout }`.
    pub fn from_inline(m: &InlineModel) -> Result<Self> {
        let mut c = Self::sized(m.n_layer, m.n_head, m.n_embd);
        c.n_ctx = m.n_ctx;
        c.vocab_size = m.vocab_size;
        c.attn_pdrop = m.dropout;
        c.resid_pdrop = m.dropout;
        c.embd_pdrop = m.dropout;
        c.validate().context("invalid inline model")?;
        Ok(c)
    }

    /// Reads a Hugging Face `config.json`; missing keys take `GPT2Config`'s defaults.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = gptpipe_hf::config::read_config_text(path)?;
        let hf = HfConfig::parse(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_hf(&hf).with_context(|| format!("unsupported model config {}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        Self::from_hf(&HfConfig::from_value(v.clone()))
    }

    /// The model a parsed `config.json` describes: absent and `null` keys take
    /// `GPT2Config`'s defaults, flags, ids and names of another JSON type are ignored.
    pub fn from_hf(v: &HfConfig) -> Result<Self> {
        if let Some(t) = v.model_type.get() {
            if t != "gpt2" {
                bail!("model_type is {t:?}; only GPT-2 (\"gpt2\") models are supported");
            }
        }
        let d = Self::gpt2();
        let n_embd = v.n_embd.size_or("n_embd", d.n_embd)?;
        let gelu_tanh = match v.activation_function.get() {
            None => true,
            Some(name) => Activation::from_name(&name)? == Activation::GeluTanh,
        };
        // `reorder_and_upcast_attn`: numerically the same attention up to rounding; accepted.
        let c = Self {
            vocab_size: v.vocab_size.size_or("vocab_size", d.vocab_size)?,
            n_ctx: v
                .n_positions
                .size_or("n_positions", v.n_ctx.size_or("n_ctx", d.n_ctx)?)?,
            n_embd,
            n_layer: v.n_layer.size_or("n_layer", d.n_layer)?,
            n_head: v.n_head.size_or("n_head", d.n_head)?,
            n_inner: v.n_inner.size_or("n_inner", 4 * n_embd)?,
            layer_norm_epsilon: v
                .layer_norm_epsilon
                .number_or("layer_norm_epsilon", d.layer_norm_epsilon)?,
            attn_pdrop: v.attn_pdrop.number_or("attn_pdrop", d.attn_pdrop)?,
            resid_pdrop: v.resid_pdrop.number_or("resid_pdrop", d.resid_pdrop)?,
            embd_pdrop: v.embd_pdrop.number_or("embd_pdrop", d.embd_pdrop)?,
            initializer_range: v
                .initializer_range
                .number_or("initializer_range", d.initializer_range)?,
            gelu_tanh,
            scale_attn_weights: v.scale_attn_weights.get().unwrap_or(d.scale_attn_weights),
            scale_attn_by_inverse_layer_idx: v
                .scale_attn_by_inverse_layer_idx
                .get()
                .unwrap_or(d.scale_attn_by_inverse_layer_idx),
            bos_token_id: v.bos_token_id.get().unwrap_or(d.bos_token_id),
            eos_token_id: v.eos_token_id.get().unwrap_or(d.eos_token_id),
        };
        c.validate()?;
        Ok(c)
    }

    /// Rejects shapes no GPT-2 can have.
    pub fn validate(&self) -> Result<()> {
        for (k, x) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_ctx", self.n_ctx),
            ("vocab_size", self.vocab_size),
        ] {
            if x == 0 {
                bail!("{k} must be at least 1");
            }
        }
        gptpipe_hf::check_config_shape(
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.n_ctx,
            self.vocab_size,
        )?;
        let max_inner = gptpipe_hf::MAX_N_INNER;
        if self.n_inner > max_inner {
            bail!(
                "n_inner = {} is more than gptpipe's limit of {max_inner}",
                self.n_inner
            );
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        for (k, p) in [
            ("attn_pdrop", self.attn_pdrop),
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{k} must be in [0, 1), found {p}");
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The `config.json` that `transformers` writes for a `GPT2LMHeadModel`.
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": if self.gelu_tanh { "gelu_new" } else { "gelu" },
            "attn_pdrop": self.attn_pdrop,
            "bos_token_id": self.bos_token_id,
            "embd_pdrop": self.embd_pdrop,
            "eos_token_id": self.eos_token_id,
            "initializer_range": self.initializer_range,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_inner": if self.n_inner == 4 * self.n_embd { Value::Null } else { json!(self.n_inner) },
            "n_layer": self.n_layer,
            "n_positions": self.n_ctx,
            "reorder_and_upcast_attn": false,
            "resid_pdrop": self.resid_pdrop,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "scale_attn_weights": self.scale_attn_weights,
            "summary_activation": null,
            "summary_first_dropout": 0.1,
            "summary_proj_to_labels": true,
            "summary_type": "cls_index",
            "summary_use_proj": true,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    /// Parameters, for logs and benchmarks (the tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let e = self.n_embd;
        let per_layer = 2 * 2 * e
            + (e * 3 * e + 3 * e)
            + (e * e + e)
            + (e * self.n_inner + self.n_inner)
            + (self.n_inner * e + e);
        self.vocab_size * e + self.n_ctx * e + self.n_layer * per_layer + 2 * e
    }
}
