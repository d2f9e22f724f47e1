//! The part of a Hugging Face GPT-2 `config.json` that shapes the graph, read from
//! `gptpipe-hf`'s one parse of it.

use anyhow::{bail, Context, Result};
use gptpipe_hf::config::gpt2;
use gptpipe_hf::{HfConfig, CONFIG_FILE};
use std::path::Path;

pub use gptpipe_hf::Activation;

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

impl Gpt2Config {
    pub fn load(dir: &Path) -> Result<Self> {
        if gptpipe_hf::gpt2_simple::is_checkpoint(dir) {
            let hparams = gptpipe_hf::gpt2_simple::hparams(dir)?;
            return Self::from_hf(&HfConfig::from_value(hparams.hf_config()));
        }
        let path = dir.join(CONFIG_FILE);
        let text = gptpipe_hf::config::read_config_text(&path)?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let hf = HfConfig::parse(text).context("not a GPT-2 config.json")?;
        Self::from_hf(&hf)
    }

    /// The graph's shape from a parsed `config.json`. Stricter than libtorch's reading: the
    /// shape keys are required, and each key is read as serde reads a typed struct (`null`
    /// or another JSON type is an error).
    pub fn from_hf(hf: &HfConfig) -> Result<Self> {
        let raw = Raw::of(hf).context("not a GPT-2 config.json")?;
        if let Some(t) = raw.model_type.as_deref() {
            if t != "gpt2" {
                bail!("model_type is {t:?}; only \"gpt2\" models can be exported");
            }
        }
        let activation = Activation::from_name(&raw.activation_function)?;
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
        gptpipe_hf::check_config_shape(
            raw.n_layer,
            raw.n_head,
            raw.n_embd,
            n_positions,
            raw.vocab_size,
        )?;
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

/// The keys the exporter reads, as a serde struct with required shape keys would read them.
struct Raw {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    vocab_size: usize,
    layer_norm_epsilon: f64,
    activation_function: String,
    scale_attn_weights: bool,
    scale_attn_by_inverse_layer_idx: bool,
    tie_word_embeddings: bool,
    model_type: Option<String>,
}

impl Raw {
    /// serde's errors, without a position: a key of the wrong type (or `null` where no
    /// default applies) before a missing key.
    fn of(hf: &HfConfig) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        match &hf.not_object {
            // serde reads a struct from an array by position; no GPT-2 config is one.
            Some(serde_json::Value::Array(a)) => {
                return Err(serde_json::Error::invalid_length(
                    a.len(),
                    &"struct Raw with 12 elements",
                ))
            }
            Some(v) => {
                return Err(serde_json::Error::invalid_type(
                    unexpected(v),
                    &"struct Raw",
                ))
            }
            None => {}
        }
        let n_layer = hf.n_layer.present()?;
        let n_head = hf.n_head.present()?;
        let n_embd = hf.n_embd.present()?;
        let n_positions = hf.n_positions.optional()?;
        let n_ctx = hf.n_ctx.optional()?;
        let vocab_size = hf.vocab_size.present()?;
        let layer_norm_epsilon = hf.layer_norm_epsilon.present()?;
        let activation_function = hf.activation_function.present()?;
        let scale_attn_weights = hf.scale_attn_weights.present()?;
        let scale_attn_by_inverse_layer_idx = hf.scale_attn_by_inverse_layer_idx.present()?;
        let tie_word_embeddings = hf.tie_word_embeddings.present()?;
        let model_type = hf.model_type.optional()?;
        let required = |v: Option<usize>, key: &'static str| {
            v.ok_or_else(|| serde_json::Error::missing_field(key))
        };
        Ok(Self {
            n_layer: required(n_layer, "n_layer")?,
            n_head: required(n_head, "n_head")?,
            n_embd: required(n_embd, "n_embd")?,
            n_positions,
            n_ctx,
            vocab_size: required(vocab_size, "vocab_size")?,
            layer_norm_epsilon: layer_norm_epsilon.unwrap_or(gpt2::LAYER_NORM_EPSILON),
            activation_function: activation_function.unwrap_or_else(|| gpt2::ACTIVATION.into()),
            scale_attn_weights: scale_attn_weights.unwrap_or(gpt2::SCALE_ATTN_WEIGHTS),
            scale_attn_by_inverse_layer_idx: scale_attn_by_inverse_layer_idx
                .unwrap_or(gpt2::SCALE_ATTN_BY_INVERSE_LAYER_IDX),
            tie_word_embeddings: tie_word_embeddings.unwrap_or(gpt2::TIE_WORD_EMBEDDINGS),
            model_type,
        })
    }
}

/// What serde calls a JSON value that is not an object.
fn unexpected(v: &serde_json::Value) -> serde::de::Unexpected<'_> {
    use serde::de::Unexpected;
    use serde_json::Value;
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            _ => Unexpected::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq, // not reached: an array is read by position
        Value::Object(_) => Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        format!("{:#}", Gpt2Config::parse(text).unwrap_err())
    }

    #[test]
    fn the_exporter_reads_config_json_strictly() {
        let c = Gpt2Config::parse(
            r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "n_ctx": 16, "vocab_size": 50}"#,
        )
        .unwrap();
        assert_eq!(c.n_positions, 16);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(
            error(r#"{"n_head": 2, "n_embd": 8, "n_ctx": 16, "vocab_size": 50}"#),
            "not a GPT-2 config.json: missing field `n_layer`"
        );
        assert_eq!(
            error(r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "vocab_size": 50}"#),
            "config.json has neither n_positions nor n_ctx"
        );
        assert_eq!(
            error(r#"{"n_layer": 2, "n_head": 3, "n_embd": 8, "n_ctx": 16, "vocab_size": 50}"#),
            "n_embd (8) must be a multiple of n_head (3)"
        );
        assert_eq!(
            error(
                r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "n_ctx": 16, "vocab_size": 50,
                    "scale_attn_weights": null}"#
            ),
            "not a GPT-2 config.json: invalid type: null, expected a boolean"
        );
        assert_eq!(
            error(r#"{"model_type": "llama"}"#),
            "not a GPT-2 config.json: missing field `n_layer`"
        );
        assert_eq!(
            error(
                r#"{"n_layer": 2, "n_head": 2, "n_embd": 8, "n_ctx": 16, "vocab_size": 50,
                    "model_type": "llama"}"#
            ),
            "model_type is \"llama\"; only \"gpt2\" models can be exported"
        );
        assert_eq!(
            error("3"),
            "not a GPT-2 config.json: invalid type: integer `3`, expected struct Raw"
        );
        assert!(error("{").starts_with("not a GPT-2 config.json: EOF"));
    }
}
