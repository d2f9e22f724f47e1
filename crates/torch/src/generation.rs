//! The libtorch generation backend: GPT-2 decoding with a preallocated KV cache.
//!
//! The prompt of a batch runs through [`Gpt2::forward`] (its keys and values land in the
//! model's own cache and are copied into ours). Each later token runs through a decoder
//! written for one token per row: keys and values are written in place into buffers of
//! `n_ctx` positions (no concatenation per step), and attention is an explicit
//! matmul-softmax-matmul over the filled positions, which beat scaled-dot-product attention
//! for a one-token query with a growing key length (see `shared/docs/gpu.md`).

use crate::device::parse_device;
use crate::model::{Config, Gpt2};
use crate::source::load_model;
use anyhow::{ensure, Context, Result};
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{Backend, BackendFactory, Logits};
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The factory the generate stage calls for `backend = "tch"`.
pub fn factory() -> BackendFactory {
    Arc::new(|source: &ModelSource, device: &str| {
        let device = parse_device(device)?;
        // An inline model is random: seed 0 keeps it the same from run to run.
        let model = load_model(source, device, 0)?;
        Ok(Box::new(TchBackend::new(model)) as Box<dyn Backend>)
    })
}

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// `x [N, in] -> [N, out]`.
    fn apply(&self, x: &Tensor) -> Tensor {
        self.b.addmm(x, &self.w)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

struct Layer {
    ln_1: Norm,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
    /// `c_attn` with the attention scale folded into its query columns, so a decoding
    /// step needs no separate scaling op.
    c_attn_scaled: Linear,
    /// Keys and values `[B, 2, n_head, n_ctx, head_dim]` (one buffer, so one copy per step
    /// writes both), filled up to `len`.
    kv: Tensor,
}

/// GPT-2 decoding on libtorch, batched, with rows that can leave the batch.
pub struct TchBackend {
    model: Gpt2,
    cfg: Config,
    kind: Kind,
    wte: Tensor,
    wpe: Tensor,
    ln_f: Norm,
    layers: Vec<Layer>,
    /// Tokens per row in the cache.
    len: i64,
    rows: i64,
    /// Next-token logits `[rows, vocab]` on the device, in fp32.
    last: Option<Tensor>,
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
        w: scale_cols(&lin.w, 1),
        b: scale_cols(&lin.b, 0),
    }
}

impl TchBackend {
    /// Wraps a loaded model. On a GPU the weights are converted to bf16 (generation needs
    /// no fp32 master weights); on the CPU they stay fp32.
    pub fn new(mut model: Gpt2) -> Self {
        if model.device() != Device::Cpu {
            model.convert_weights(Kind::BFloat16);
        }
        let kind = model.compute_kind();
        let w: HashMap<&str, Tensor> = model
            .named_parameters()
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_kind(kind).detach()))
            .collect();
        let get = |n: &str| w[n].shallow_clone();
        let norm = |n: &str| Norm {
            w: get(&format!("{n}.weight")),
            b: get(&format!("{n}.bias")),
        };
        let lin = |n: &str| Linear {
            w: get(&format!("{n}.weight")),
            b: get(&format!("{n}.bias")),
        };
        let cfg = model.config.clone();
        let layers = tch::no_grad(|| {
            (0..cfg.n_layer)
                .map(|l| {
                    let h = format!("transformer.h.{l}");
                    Layer {
                        ln_1: norm(&format!("{h}.ln_1")),
                        attn_proj: lin(&format!("{h}.attn.c_proj")),
                        ln_2: norm(&format!("{h}.ln_2")),
                        c_fc: lin(&format!("{h}.mlp.c_fc")),
                        mlp_proj: lin(&format!("{h}.mlp.c_proj")),
                        c_attn_scaled: scaled_qkv(
                            &lin(&format!("{h}.attn.c_attn")),
                            cfg.n_embd as i64,
                            attn_scale(&cfg, l),
                        ),
                        kv: Tensor::new(),
                    }
                })
                .collect()
        });
        Self {
            wte: get("transformer.wte.weight"),
            wpe: get("transformer.wpe.weight"),
            ln_f: norm("transformer.ln_f"),
            layers,
            cfg,
            kind,
            model,
            len: 0,
            rows: 0,
            last: None,
        }
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    fn norm(&self, x: &Tensor, n: &Norm) -> Tensor {
        let e = self.cfg.n_embd as i64;
        x.layer_norm(
            [e],
            Some(&n.w),
            Some(&n.b),
            self.cfg.layer_norm_epsilon,
            true,
        )
    }

    fn ids(&self, tokens: &[u32], rows: i64) -> Tensor {
        let flat: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        Tensor::from_slice(&flat)
            .reshape([rows, -1])
            .to_device(self.device())
    }

    /// One token per row at position `self.len`: returns hidden states `[B, n_embd]`.
    fn decode_one(&self, ids: &Tensor) -> Tensor {
        let (b, pos) = (self.rows, self.len);
        let (h, d, e) = (
            self.cfg.n_head as i64,
            self.cfg.head_dim() as i64,
            self.cfg.n_embd as i64,
        );
        let tok = self.wte.index_select(0, &ids.reshape([-1]));
        let mut x = tok + self.wpe.get(pos);
        let gelu = if self.cfg.gelu_tanh { "tanh" } else { "none" };
        for layer in &self.layers {
            let a = self.norm(&x, &layer.ln_1);
            let qkv = layer.c_attn_scaled.apply(&a).reshape([b, 3, h, 1, d]);
            // Write this position's key and value in place.
            layer.kv.narrow(3, pos, 1).copy_(&qkv.narrow(1, 1, 2));
            let filled = layer.kv.narrow(3, 0, pos + 1);
            let (keys, values) = (filled.select(1, 0), filled.select(1, 1));
            // [B, H, 1, D] x [B, H, D, L] -> [B, H, 1, L]; the scale is in the query.
            let att = qkv.select(1, 0).matmul(&keys.transpose(2, 3));
            // Half-precision softmax accumulates in fp32 inside the kernel.
            let att = att.softmax(-1, self.kind);
            let y = att.matmul(&values).reshape([b, e]);
            x += layer.attn_proj.apply(&y);
            let m = layer.c_fc.apply(&self.norm(&x, &layer.ln_2)).gelu(gelu);
            x += layer.mlp_proj.apply(&m);
        }
        self.norm(&x, &self.ln_f)
    }

    fn set_logits(&mut self, hidden: &Tensor) {
        self.last = Some(hidden.matmul(&self.wte.tr()).to_kind(Kind::Float));
    }
}

impl Backend for TchBackend {
    fn n_ctx(&self) -> usize {
        self.cfg.n_ctx
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn start(&mut self, rows: &[Vec<u32>]) -> Result<()> {
        let t = rows.first().map_or(0, Vec::len);
        ensure!(
            t >= 1 && t <= self.cfg.n_ctx,
            "a batch must start with 1..=n_ctx tokens, not {t}"
        );
        ensure!(
            rows.iter().all(|r| r.len() == t),
            "rows of a batch must have the same length"
        );
        let b = rows.len() as i64;
        let flat: Vec<u32> = rows.concat();
        let ids = self.ids(&flat, b);
        let (h, d, n_ctx) = (
            self.cfg.n_head as i64,
            self.cfg.head_dim() as i64,
            self.cfg.n_ctx as i64,
        );
        let mut cache = self.model.new_cache();
        let hidden = tch::no_grad(|| {
            self.model
                .hidden_states(&ids, None, Some(&mut cache), false)
        });
        let opts = (self.kind, self.device());
        tch::no_grad(|| {
            for (layer, kv) in self.layers.iter_mut().zip(&cache.layers) {
                let (k, v) = kv.as_ref().context("the model filled no cache")?;
                layer.kv = Tensor::zeros([b, 2, h, n_ctx, d], opts);
                layer.kv.select(1, 0).narrow(2, 0, t as i64).copy_(k);
                layer.kv.select(1, 1).narrow(2, 0, t as i64).copy_(v);
            }
            anyhow::Ok(())
        })?;
        self.rows = b;
        self.len = t as i64;
        let last = hidden.select(1, t as i64 - 1).to_kind(self.kind);
        tch::no_grad(|| self.set_logits(&last));
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<()> {
        ensure!(
            tokens.len() as i64 == self.rows,
            "{} tokens for {} rows",
            tokens.len(),
            self.rows
        );
        ensure!(
            (self.len as usize) < self.cfg.n_ctx,
            "the cache is full ({} tokens)",
            self.len
        );
        let ids = self.ids(tokens, self.rows);
        tch::no_grad(|| {
            let hidden = self.decode_one(&ids);
            self.set_logits(&hidden);
        });
        self.len += 1;
        Ok(())
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.device());
        tch::no_grad(|| {
            for layer in &mut self.layers {
                layer.kv = layer.kv.index_select(0, &idx);
            }
            self.last = self.last.as_ref().map(|l| l.index_select(0, &idx));
        });
        self.rows = keep.len() as i64;
        Ok(())
    }

    fn logits(&mut self) -> Result<Logits> {
        let last = self.last.as_ref().context("logits before start")?;
        let v = self.cfg.vocab_size;
        let host = last.to_device(Device::Cpu).contiguous();
        let data: Vec<f32> = Vec::<f32>::try_from(host.reshape([-1]))?;
        Ok(Logits::new(self.rows as usize, v, data))
    }

    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
        let last = self.last.as_ref().context("logits before start")?;
        let k = k.min(self.cfg.vocab_size) as i64;
        let (values, indices) = last.topk(k, -1, true, true);
        let values: Vec<f32> = Vec::try_from(values.to_device(Device::Cpu).reshape([-1]))?;
        let indices: Vec<i64> = Vec::try_from(indices.to_device(Device::Cpu).reshape([-1]))?;
        let k = k as usize;
        let mut out: Vec<Vec<(f32, u32)>> = values
            .chunks(k)
            .zip(indices.chunks(k))
            .map(|(v, i)| v.iter().zip(i).map(|(&v, &i)| (v, i as u32)).collect())
            .collect();
        // torch does not promise an order among equal values; ours is by lower id.
        for row in &mut out {
            row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        Ok(out)
    }
}
