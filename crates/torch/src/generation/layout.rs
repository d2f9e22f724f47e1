//! The weights as the decoder reads them: in the compute kind, detached, the attention
//! scale folded into each layer's query columns, and the lm_head padded to aligned shapes.

use crate::model::{Config, Gpt2, LayerNorm, Linear, Weights, VOCAB_ALIGN};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// One transformer block's weights.
pub(super) struct Layer {
    pub ln_1: LayerNorm,
    pub attn_proj: Linear,
    pub ln_2: LayerNorm,
    pub c_fc: Linear,
    pub mlp_proj: Linear,
    /// `c_attn` with the attention scale folded into its query columns, so a decoding
    /// step needs no separate scaling op.
    pub c_attn_scaled: Linear,
}

pub(super) struct DecodeWeights {
    pub wte: Tensor,
    /// `wte` padded with zero rows to a multiple of [`VOCAB_ALIGN`] on a GPU, so the logits
    /// matmul has aligned shapes; the extra logits are dropped.
    pub lm_head: Tensor,
    pub wpe: Tensor,
    pub ln_f: LayerNorm,
    pub layers: Vec<Layer>,
}

impl DecodeWeights {
    /// `model`'s weights in `kind`.
    pub fn new(model: &Gpt2, kind: Kind) -> Self {
        let device = model.device();
        let w: HashMap<&str, Tensor> = model
            .named_parameters()
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_kind(kind).detach()))
            .collect();
        let cfg = &model.config;
        let weights = Weights::build(cfg.n_layer, |n| w[n].shallow_clone());
        let layers = tch::no_grad(|| {
            weights
                .blocks
                .into_iter()
                .enumerate()
                .map(|(l, block)| Layer {
                    c_attn_scaled: scaled_qkv(&block.c_attn, cfg.n_embd as i64, attn_scale(cfg, l)),
                    ln_1: block.ln_1,
                    attn_proj: block.attn_c_proj,
                    ln_2: block.ln_2,
                    c_fc: block.c_fc,
                    mlp_proj: block.mlp_c_proj,
                })
                .collect()
        });
        let wte = weights.wte;
        let vocab = cfg.vocab_size as i64;
        let padded = (vocab + VOCAB_ALIGN - 1) / VOCAB_ALIGN * VOCAB_ALIGN;
        let lm_head = if device.is_cuda() && padded != vocab {
            tch::no_grad(|| wte.constant_pad_nd([0, 0, 0, padded - vocab]))
        } else {
            wte.shallow_clone()
        };
        Self {
            wte,
            lm_head,
            wpe: weights.wpe,
            ln_f: weights.ln_f,
            layers,
        }
    }
}

/// The factor attention scores are scaled by in layer `l`.
fn attn_scale(cfg: &Config, l: usize) -> f64 {
    let mut s = if cfg.scale_attn_weights {
        1.0 / (cfg.head_dim() as f64).sqrt()
    } else {
        1.0
    };
    if cfg.scale_attn_by_inverse_layer_idx {
        s /= (l + 1) as f64;
    }
    s
}

/// `c_attn` (`[E, 3E]`, columns q|k|v) with the query columns multiplied by `scale`.
fn scaled_qkv(lin: &Linear, e: i64, scale: f64) -> Linear {
    let scale_cols = |t: &Tensor, dim: i64| {
        Tensor::cat(&[t.narrow(dim, 0, e) * scale, t.narrow(dim, e, 2 * e)], dim)
    };
    Linear {
        weight: scale_cols(&lin.weight, 1),
        bias: scale_cols(&lin.bias, 0),
    }
}
