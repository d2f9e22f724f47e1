//! Hugging Face's `config.json` of a GPT-2: the one parse of it, shared by libtorch's model
//! (`gptpipe-torch`), the ONNX exporter and runtime (`gptpipe-onnx`) and the generate
//! stage's early look at a model's context (`gptpipe-generate`).
//!
//! [`HfConfig`] keeps each key as written ([`Field`]); the readers apply their own rules on
//! top (libtorch fills absent keys with `GPT2Config`'s defaults and ignores flags of another
//! type, the ONNX exporter requires the shape keys and reads each key as serde would).

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// transformers' `GPT2Config` defaults: GPT-2's vocabulary and the values a `config.json`
/// may leave out. Every reader takes them from here.
pub mod gpt2 {
    /// Tokens in GPT-2's vocabulary.
    pub const VOCAB_SIZE: usize = 50257;
    /// `<|endoftext|>`, GPT-2's only special token: its BOS and EOS.
    pub const EOT_ID: u32 = 50256;
    pub const N_POSITIONS: usize = 1024;
    pub const LAYER_NORM_EPSILON: f64 = 1e-5;
    pub const ACTIVATION: &str = "gelu_new";
    /// `attn_pdrop`, `resid_pdrop` and `embd_pdrop`.
    pub const DROPOUT: f64 = 0.1;
    pub const INITIALIZER_RANGE: f64 = 0.02;
    pub const SCALE_ATTN_WEIGHTS: bool = true;
    pub const SCALE_ATTN_BY_INVERSE_LAYER_IDX: bool = false;
    pub const TIE_WORD_EMBEDDINGS: bool = true;
}

/// One key of `config.json` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    /// The key is not there (or the document is not a JSON object).
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A value of `T`'s JSON type.
    Set(T),
    /// A value of another JSON type (a negative or fractional size, a string flag...).
    Invalid(Value),
}

impl<T: Clone + DeserializeOwned> Field<T> {
    /// The value when it is set with `T`'s type; absent, `null` and mistyped keys are `None`.
    pub fn get(&self) -> Option<T> {
        match self {
            Field::Set(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The value, `default` when absent or `null`; a mistyped value is returned as the error.
    pub fn or(&self, default: T) -> Result<T, &Value> {
        match self {
            Field::Absent | Field::Null => Ok(default),
            Field::Set(v) => Ok(v.clone()),
            Field::Invalid(v) => Err(v),
        }
    }

    /// serde's reading of the key as an `Option<T>`: absent and `null` are `None`, a
    /// mistyped value is serde's error ("invalid type: ..., expected ...").
    pub fn optional(&self) -> Result<Option<T>, serde_json::Error> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Set(v) => Ok(Some(v.clone())),
            Field::Invalid(v) => serde_json::from_value(v.clone()),
        }
    }

    /// serde's reading of the key as a `T` (a required or defaulted field): absent is
    /// `None`, `null` and a mistyped value are serde's error.
    pub fn present(&self) -> Result<Option<T>, serde_json::Error> {
        match self {
            Field::Absent => Ok(None),
            Field::Set(v) => Ok(Some(v.clone())),
            Field::Null => serde_json::from_value(Value::Null).map(Some),
            Field::Invalid(v) => serde_json::from_value(v.clone()).map(Some),
        }
    }
}

impl Field<usize> {
    /// The size `key`, `default` when absent or `null`; anything but a non-negative
    /// integer is an error.
    pub fn size_or(&self, key: &str, default: usize) -> Result<usize> {
        self.or(default)
            .map_err(|x| anyhow::anyhow!("{key} must be a non-negative integer, found {x}"))
    }
}

impl Field<f64> {
    /// The number `key`, `default` when absent or `null`; anything but a number is an
    /// error.
    pub fn number_or(&self, key: &str, default: f64) -> Result<f64> {
        self.or(default)
            .map_err(|x| anyhow::anyhow!("{key} must be a number, found {x}"))
    }
}

/// The keys of a GPT-2 `config.json` that gptpipe reads, with `transformers`' `GPT2Config`
/// names, each as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HfConfig {
    pub model_type: Field<String>,
    pub n_layer: Field<usize>,
    pub n_head: Field<usize>,
    pub n_embd: Field<usize>,
    /// The context length; older files write it as `n_ctx` (see [`HfConfig::context`]).
    pub n_positions: Field<usize>,
    pub n_ctx: Field<usize>,
    pub vocab_size: Field<usize>,
    /// Width of the MLP; `null` means `4 * n_embd`.
    pub n_inner: Field<usize>,
    pub activation_function: Field<String>,
    pub layer_norm_epsilon: Field<f64>,
    pub attn_pdrop: Field<f64>,
    pub resid_pdrop: Field<f64>,
    pub embd_pdrop: Field<f64>,
    pub initializer_range: Field<f64>,
    pub scale_attn_weights: Field<bool>,
    pub scale_attn_by_inverse_layer_idx: Field<bool>,
    pub tie_word_embeddings: Field<bool>,
    pub bos_token_id: Field<i64>,
    pub eos_token_id: Field<i64>,
    /// The document, when it is valid JSON but not an object (every key is then absent).
    pub not_object: Option<Value>,
}

impl HfConfig {
    /// Parses the text of a `config.json`. Only invalid JSON is an error here: what a key
    /// may hold is up to the reader.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        Ok(Self::from_value(serde_json::from_str(text)?))
    }

    /// The keys of a parsed `config.json`.
    pub fn from_value(v: Value) -> Self {
        let Value::Object(map) = v else {
            return Self {
                not_object: Some(v),
                ..Self::default()
            };
        };
        fn field<T>(v: Option<&Value>, typed: impl Fn(&Value) -> Option<T>) -> Field<T> {
            match v {
                None => Field::Absent,
                Some(Value::Null) => Field::Null,
                Some(x) => typed(x).map_or_else(|| Field::Invalid(x.clone()), Field::Set),
            }
        }
        let size = |k: &str| field(map.get(k), |x| x.as_u64().map(|x| x as usize));
        let number = |k: &str| field(map.get(k), Value::as_f64);
        let flag = |k: &str| field(map.get(k), Value::as_bool);
        let text = |k: &str| field(map.get(k), |x| x.as_str().map(str::to_owned));
        let id = |k: &str| field(map.get(k), Value::as_i64);
        Self {
            model_type: text("model_type"),
            n_layer: size("n_layer"),
            n_head: size("n_head"),
            n_embd: size("n_embd"),
            n_positions: size("n_positions"),
            n_ctx: size("n_ctx"),
            vocab_size: size("vocab_size"),
            n_inner: size("n_inner"),
            activation_function: text("activation_function"),
            layer_norm_epsilon: number("layer_norm_epsilon"),
            attn_pdrop: number("attn_pdrop"),
            resid_pdrop: number("resid_pdrop"),
            embd_pdrop: number("embd_pdrop"),
            initializer_range: number("initializer_range"),
            scale_attn_weights: flag("scale_attn_weights"),
            scale_attn_by_inverse_layer_idx: flag("scale_attn_by_inverse_layer_idx"),
            tie_word_embeddings: flag("tie_word_embeddings"),
            bos_token_id: id("bos_token_id"),
            eos_token_id: id("eos_token_id"),
            not_object: None,
        }
    }

    /// The context length when the file gives one as a non-negative integer: `n_positions`,
    /// else `n_ctx`. Never an error (for a look before the model is loaded).
    pub fn context(&self) -> Option<usize> {
        self.n_positions.get().or_else(|| self.n_ctx.get())
    }
}

/// Activation of the MLP, from `activation_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation GPT-2 was
    /// trained with.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
}

impl Activation {
    /// The activation an `activation_function` value names.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            other => bail!("activation_function {other:?} is not supported (gelu_new, gelu)"),
        })
    }
}

/// Reads `path` as text, with the error both readers give.
pub fn read_config_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_as_written() {
        let c = HfConfig::parse(
            r#"{"n_layer": 2, "n_head": null, "n_embd": "8", "n_ctx": 16, "n_inner": -1,
                "scale_attn_weights": "yes", "activation_function": "gelu", "eos_token_id": 7}"#,
        )
        .unwrap();
        assert_eq!(c.n_layer, Field::Set(2));
        assert_eq!(c.n_head, Field::Null);
        assert_eq!(c.n_embd, Field::Invalid(Value::from("8")));
        assert_eq!(c.vocab_size, Field::Absent);
        assert_eq!(c.context(), Some(16));
        assert_eq!(
            c.n_inner.size_or("n_inner", 4).unwrap_err().to_string(),
            "n_inner must be a non-negative integer, found -1"
        );
        assert_eq!(c.n_head.size_or("n_head", 12).unwrap(), 12);
        assert_eq!(c.scale_attn_weights.get(), None);
        assert_eq!(
            c.scale_attn_weights.present().unwrap_err().to_string(),
            "invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            c.n_head.present().unwrap_err().to_string(),
            "invalid type: null, expected usize"
        );
        assert_eq!(c.n_head.optional().unwrap(), None);
        assert_eq!(
            Activation::from_name(&c.activation_function.get().unwrap()).unwrap(),
            Activation::GeluErf
        );
        assert_eq!(c.eos_token_id.get(), Some(7));
        assert!(c.not_object.is_none());
    }

    #[test]
    fn n_positions_comes_before_n_ctx() {
        let c = HfConfig::parse(r#"{"n_positions": 32, "n_ctx": 16}"#).unwrap();
        assert_eq!(c.context(), Some(32));
        let c = HfConfig::parse(r#"{"n_positions": "32", "n_ctx": 16}"#).unwrap();
        assert_eq!(c.context(), Some(16));
        let c = HfConfig::parse("[1]").unwrap();
        assert_eq!(c.context(), None);
        assert_eq!(c.not_object, Some(serde_json::json!([1])));
        assert!(HfConfig::parse("{").is_err());
    }
}
