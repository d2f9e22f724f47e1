//! The libtorch generation backend: GPT-2 decoding with a preallocated KV cache.
//!
//! The prompt of a batch runs through [`Gpt2::forward`] (its keys and values land in the
//! model's own cache and are copied into ours). Each later token runs through a decoder
//! written for one token per row: keys and values are written in place into buffers of
//! `n_ctx` positions (no concatenation per step). On a GPU ([`DecodeOptions`]):
//! - attention is FlashAttention over each row's filled positions (`flash`), or else an
//!   explicit matmul-softmax-matmul, which beat scaled-dot-product attention for a
//!   one-token query with a growing key length (see `shared/docs/gpu.md`);
//! - each step is a CUDA graph replay (`graph`);
//! - tokens are sampled on the device ([`sampler`]) in blocks, so the host waits for the
//!   GPU once per block instead of once per token.

mod flash;
mod graph;
pub mod sampler;

use crate::device::parse_device;
use crate::model::{Config, Gpt2, LayerNorm, Linear, Weights, VOCAB_ALIGN};
use crate::source::load_model;
use anyhow::{ensure, Context, Result};
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{Backend, BackendFactory, Logits, Sampling};
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The factory the generate stage calls for `backend = "tch"`.
pub fn factory() -> BackendFactory {
    Arc::new(
        |source: &ModelSource, device: &gptpipe_core::config::Device| {
            let device = parse_device(device)?;
            // An inline model is random: seed 0 keeps it the same from run to run.
            let model = load_model(source, device, 0)?;
            Ok(Box::new(TchBackend::new(model)) as Box<dyn Backend>)
        },
    )
}

/// Tokens per row one [`Backend::sample_ahead`] call decodes at most: the host reads the
/// tokens (and stops rows at `truncate`) once per block.
pub const BLOCK: usize = 16;

/// Batches of more rows than this decode eagerly: a graph is captured per row count, and
/// beyond this the rows amortise the launches anyway.
const GRAPH_MAX_ROWS: i64 = 64;

/// How decoding runs. [`DecodeOptions::for_device`] turns everything on for CUDA and off
/// on the CPU; `GPTPIPE_DECODE_OFF=graphs,flash,sample` (any of them) turns parts off,
/// as does `GPTPIPE_CUDA_GRAPHS=0` for graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Capture each step in a CUDA graph.
    pub graphs: bool,
    /// FlashAttention (variable-length kernel) for one-token steps.
    pub flash: bool,
    /// Sample on the device, in blocks of up to [`BLOCK`] tokens.
    pub sample_on_device: bool,
}

impl DecodeOptions {
    pub fn for_device(device: Device) -> Self {
        let cuda = device.is_cuda();
        const PARTS: [&str; 3] = ["graphs", "flash", "sample"];
        let off = std::env::var("GPTPIPE_DECODE_OFF").unwrap_or_default();
        let off: Vec<&str> = off
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        for unknown in off.iter().filter(|o| !PARTS.contains(o)) {
            eprintln!("GPTPIPE_DECODE_OFF: no decoding part {unknown:?} (known: {PARTS:?})");
        }
        let on = |name: &str| cuda && !off.contains(&name);
        Self {
            graphs: on("graphs") && std::env::var("GPTPIPE_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            flash: on("flash"),
            sample_on_device: on("sample"),
        }
    }
}

struct Layer {
    ln_1: LayerNorm,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    /// `c_attn` with the attention scale folded into its query columns, so a decoding
    /// step needs no separate scaling op.
    c_attn_scaled: Linear,
    /// Keys and values in one buffer (one copy per step writes both), `n_ctx` positions per
    /// row: `[2, cap, n_ctx, H, D]` for FlashAttention, else `[2, cap, H, n_ctx, D]` (batch
    /// dimensions mergeable, so the attention matmuls need no copy).
    kv: Tensor,
}

/// Where the token of a decoding step sits: known to the host (eager steps), or in the
/// device buffers (`Buffers::pos`, `Buffers::used`; graph-replayable steps).
#[derive(Clone, Copy)]
enum At {
    Host(i64),
    Buffers,
}

/// Device buffers at fixed addresses (captured graphs read and write them), sized for
/// `cap` rows; rows `..rows` are in use.
struct Buffers {
    cap: i64,
    /// Next-token logits `[cap, padded vocab]` in the compute kind, written by the lm_head
    /// matmul itself; readers drop the padding columns.
    logits: Tensor,
    /// The tokens a host-fed step feeds `[cap]`.
    ids: Tensor,
    /// The position of the step's token and the block column of the step `[2]` (one
    /// increment advances both).
    counters: Tensor,
    /// Filled positions per row after the step's token, Int32 `[cap]` (FlashAttention).
    used: Tensor,
    /// A block's uniforms `[cap, BLOCK]` (fp32) and the tokens picked `[cap, BLOCK]`.
    uniforms: Tensor,
    picked: Tensor,
    /// 0..n_ctx, for masking positions not yet written.
    key_positions: Tensor,
    flash: Option<flash::Offsets>,
}

impl Buffers {
    fn pos(&self) -> Tensor {
        self.counters.narrow(0, 0, 1)
    }

    fn column(&self) -> Tensor {
        self.counters.narrow(0, 1, 1)
    }

    /// Puts the step counters at `pos` and block column `column`.
    fn seek(&self, pos: i64, column: i64) {
        let _ = self.pos().fill_(pos);
        let _ = self.column().fill_(column);
        let _ = self.used.shallow_clone().fill_(pos + 1);
    }
}

/// GPT-2 decoding on libtorch, batched, with rows that can leave the batch.
pub struct TchBackend {
    model: Gpt2,
    cfg: Config,
    kind: Kind,
    opts: DecodeOptions,
    wte: Tensor,
    /// `wte` padded with zero rows to a multiple of [`VOCAB_ALIGN`] on a GPU, so the logits
    /// matmul has aligned shapes; the extra logits are dropped.
    lm_head: Tensor,
    wpe: Tensor,
    ln_f: LayerNorm,
    layers: Vec<Layer>,
    /// Tokens per row in the cache.
    len: i64,
    rows: i64,
    bufs: Option<Buffers>,
    graphs: graph::Graphs,
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

/// Bit patterns of the settings a device-sampling graph bakes in.
fn sampling_key(s: &Sampling) -> [u64; 3] {
    [s.temperature.to_bits(), s.top_k as u64, s.top_p.to_bits()]
}

impl TchBackend {
    /// Wraps a loaded model, with [`DecodeOptions::for_device`].
    pub fn new(model: Gpt2) -> Self {
        let opts = DecodeOptions::for_device(model.device());
        Self::with_options(model, opts)
    }

    /// Wraps a loaded model. On a GPU the weights are converted to bf16 (generation needs
    /// no fp32 master weights); on the CPU they stay fp32.
    pub fn with_options(mut model: Gpt2, mut opts: DecodeOptions) -> Self {
        let device = model.device();
        if device != Device::Cpu {
            model.convert_weights(Kind::BFloat16);
        }
        opts.flash = opts.flash && flash::available(device);
        let kind = model.compute_kind();
        let w: HashMap<&str, Tensor> = model
            .named_parameters()
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_kind(kind).detach()))
            .collect();
        let cfg = model.config.clone();
        let weights = Weights::build(cfg.n_layer, |n| w[n].shallow_clone());
        let layers = tch::no_grad(|| {
            weights
                .blocks
                .into_iter()
                .enumerate()
                .map(|(l, block)| Layer {
                    c_attn_scaled: scaled_qkv(
                        &block.c_attn,
                        cfg.n_embd as i64,
                        attn_scale(&cfg, l),
                    ),
                    ln_1: block.ln_1,
                    attn_proj: block.attn_c_proj,
                    ln_2: block.ln_2,
                    c_fc: block.c_fc,
                    mlp_proj: block.mlp_c_proj,
                    kv: Tensor::new(),
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
            cfg,
            kind,
            opts,
            model,
            len: 0,
            rows: 0,
            bufs: None,
            graphs: graph::Graphs::default(),
        }
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The options in effect (FlashAttention is off where its kernel is unavailable).
    pub fn options(&self) -> DecodeOptions {
        self.opts
    }

    fn bufs(&self) -> &Buffers {
        self.bufs.as_ref().expect("decoding before start")
    }

    fn graphs_on(&self) -> bool {
        self.opts.graphs && self.rows <= GRAPH_MAX_ROWS && self.graphs.usable(self.device())
    }

    fn norm(&self, x: &Tensor, n: &LayerNorm) -> Tensor {
        let e = self.cfg.n_embd as i64;
        x.layer_norm(
            [e],
            Some(&n.weight),
            Some(&n.bias),
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

    /// (Re)allocates the KV cache and buffers for `b` rows when they do not fit.
    fn reserve(&mut self, b: i64) {
        if self.bufs.as_ref().is_some_and(|bufs| bufs.cap >= b) {
            return;
        }
        self.graphs.clear();
        let (h, d, n_ctx) = (
            self.cfg.n_head as i64,
            self.cfg.head_dim() as i64,
            self.cfg.n_ctx as i64,
        );
        let device = self.device();
        let opts = (self.kind, device);
        for layer in &mut self.layers {
            layer.kv = if self.opts.flash {
                Tensor::zeros([2, b, n_ctx, h, d], opts)
            } else {
                Tensor::zeros([2, b, h, n_ctx, d], opts)
            };
        }
        let block = BLOCK as i64;
        self.bufs = Some(Buffers {
            cap: b,
            logits: Tensor::zeros([b, self.lm_head.size()[0]], opts),
            ids: Tensor::zeros([b], (Kind::Int64, device)),
            counters: Tensor::zeros([2], (Kind::Int64, device)),
            used: Tensor::zeros([b], (Kind::Int, device)),
            uniforms: Tensor::zeros([b, block], (Kind::Float, device)),
            picked: Tensor::zeros([b, block], (Kind::Int64, device)),
            key_positions: Tensor::arange(n_ctx, (Kind::Int64, device)),
            flash: self
                .opts
                .flash
                .then(|| flash::Offsets::new(b, n_ctx, device)),
        });
    }

    /// One token per row (`ids` `[b]`) at position `at`: writes its keys and values into the
    /// cache and returns the final hidden states `[b, n_embd]`.
    fn decode(&self, b: i64, ids: &Tensor, at: At) -> Tensor {
        let bufs = self.bufs();
        let tok = self.wte.index_select(0, ids);
        let mut x = match at {
            At::Host(p) => tok + self.wpe.get(p),
            At::Buffers => tok + self.wpe.index_select(0, &bufs.pos()),
        };
        // Per step, shared by the layers: the filled length of each row (FlashAttention),
        // or the positions not yet written (masked attention over the whole cache).
        let used = self.opts.flash.then(|| match at {
            At::Host(p) => Tensor::full([b], p + 1, (Kind::Int, self.device())),
            At::Buffers => bufs.used.narrow(0, 0, b),
        });
        let later = match at {
            At::Buffers if !self.opts.flash => Some(bufs.key_positions.gt_tensor(&bufs.pos())),
            _ => None,
        };
        let gelu = if self.cfg.gelu_tanh { "tanh" } else { "none" };
        for layer in &self.layers {
            let a = self.norm(&x, &layer.ln_1);
            let qkv = layer.c_attn_scaled.apply(&a);
            let y = match &used {
                Some(used) => self.attend_flash(layer, &qkv, b, at, used),
                None => self.attend_matmul(layer, &qkv, b, at, later.as_ref()),
            };
            x += layer.attn_proj.apply(&y);
            let m = layer.c_fc.apply(&self.norm(&x, &layer.ln_2)).gelu(gelu);
            x += layer.mlp_proj.apply(&m);
        }
        self.norm(&x, &self.ln_f)
    }

    /// Attention with the `[2, cap, H, n_ctx, D]` cache: over the filled positions (host
    /// position) or over all of them with the unwritten ones masked (device position).
    fn attend_matmul(
        &self,
        layer: &Layer,
        qkv: &Tensor,
        b: i64,
        at: At,
        later: Option<&Tensor>,
    ) -> Tensor {
        let (h, d, e) = self.dims();
        let qkv = qkv.reshape([b, 3, h, 1, d]);
        let new = qkv.narrow(1, 1, 2).transpose(0, 1);
        let kv = layer.kv.narrow(1, 0, b);
        let kv = match at {
            At::Host(p) => {
                kv.narrow(3, p, 1).copy_(&new);
                kv.narrow(3, 0, p + 1)
            }
            At::Buffers => {
                let _ = kv.shallow_clone().index_copy_(3, &self.bufs().pos(), &new);
                kv
            }
        };
        let (keys, values) = (kv.get(0), kv.get(1));
        // [B, H, 1, L] scores; the scale is in the query. (`K q^T`, with the long dimension
        // as M, measured slower on an H200.)
        let mut att = qkv.select(1, 0).matmul(&keys.transpose(2, 3));
        if let Some(later) = later {
            att = att.masked_fill(later, f64::NEG_INFINITY);
        }
        // Half-precision softmax accumulates in fp32 inside the kernel.
        let att = att.softmax(-1, self.kind);
        att.matmul(&values).reshape([b, e])
    }

    /// Attention with the `[2, cap, n_ctx, H, D]` cache through FlashAttention, each row
    /// over its first `used` positions.
    fn attend_flash(&self, layer: &Layer, qkv: &Tensor, b: i64, at: At, used: &Tensor) -> Tensor {
        let (h, d, e) = self.dims();
        let n_ctx = self.cfg.n_ctx as i64;
        let qkv = qkv.reshape([b, 3, 1, h, d]);
        let new = qkv.narrow(1, 1, 2).transpose(0, 1);
        let kv = layer.kv.narrow(1, 0, b);
        match at {
            At::Host(p) => {
                kv.narrow(2, p, 1).copy_(&new);
            }
            At::Buffers => {
                let _ = kv.shallow_clone().index_copy_(2, &self.bufs().pos(), &new);
            }
        }
        let q = qkv.select(1, 0).squeeze_dim(1);
        let keys = kv.get(0).reshape([b * n_ctx, h, d]);
        let values = kv.get(1).reshape([b * n_ctx, h, d]);
        let offsets = self.bufs().flash.as_ref().expect("flash offsets");
        match offsets.attend(&q, &keys, &values, used, 1.0) {
            Some(y) => y.reshape([b, e]),
            None => {
                // The probe passed, so this should not happen; stay correct if it does.
                let keys = kv.get(0).permute([0, 2, 1, 3]);
                let values = kv.get(1).permute([0, 2, 1, 3]);
                let mask = self
                    .bufs()
                    .key_positions
                    .unsqueeze(0)
                    .ge_tensor(&used.unsqueeze(1))
                    .view([b, 1, 1, n_ctx]);
                let att = q
                    .unsqueeze(2)
                    .matmul(&keys.transpose(2, 3))
                    .masked_fill(&mask, f64::NEG_INFINITY)
                    .softmax(-1, self.kind);
                att.matmul(&values).reshape([b, e])
            }
        }
    }

    fn dims(&self) -> (i64, i64, i64) {
        (
            self.cfg.n_head as i64,
            self.cfg.head_dim() as i64,
            self.cfg.n_embd as i64,
        )
    }

    /// Next-token logits of the first `b` rows from their hidden states `[b, n_embd]`,
    /// written into the buffer by the matmul.
    fn write_logits(&self, hidden: &Tensor, b: i64) {
        let _ = hidden.mm_out(&self.bufs().logits.narrow(0, 0, b), &self.lm_head.tr());
    }

    /// The logits of the first `b` rows, without the padding columns.
    fn logits_of(&self, b: i64) -> Tensor {
        self.bufs()
            .logits
            .narrow(0, 0, b)
            .narrow(1, 0, self.cfg.vocab_size as i64)
    }

    /// The step a graph captures with host-fed tokens: token ids and position from the
    /// buffers, logits into the buffer.
    fn fed_step(&self, b: i64) {
        let hidden = self.decode(b, &self.bufs().ids.narrow(0, 0, b), At::Buffers);
        self.write_logits(&hidden, b);
    }

    /// The step that samples on the device: picks each row's token from the logits with the
    /// uniform of the current column, records it, feeds it, and advances position and column.
    fn sampled_step(&self, b: i64, s: &Sampling) {
        let bufs = self.bufs();
        let column = bufs.column();
        let u = bufs
            .uniforms
            .narrow(0, 0, b)
            .index_select(1, &column)
            .squeeze_dim(1);
        let token = sampler::sample(&self.logits_of(b), &u, s);
        let _ = bufs
            .picked
            .narrow(0, 0, b)
            .index_copy_(1, &column, &token.unsqueeze(1));
        let hidden = self.decode(b, &token, At::Buffers);
        self.write_logits(&hidden, b);
        let _ = bufs.counters.shallow_clone().g_add_scalar_(1);
        if self.opts.flash {
            let _ = bufs.used.shallow_clone().g_add_scalar_(1);
        }
    }

    /// Replays the graph of `key`, capturing it first if needed with `step` (whose warm-up
    /// run is undone by `restore`). False when graphs are off or failed: run eagerly.
    fn replay(&mut self, key: graph::Key, step: impl Fn(&Self), restore: impl Fn(&Self)) -> bool {
        if !self.graphs_on() {
            return false;
        }
        if !self.graphs.has(&key) {
            let this = &*self;
            match graph::capture(self.device(), || step(this)) {
                Some(g) => {
                    restore(this);
                    self.graphs.insert(key, g);
                }
                None => {
                    restore(this);
                    self.graphs.disable();
                    return false;
                }
            }
        }
        self.graphs.replay(&key)
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
        // A batch larger than the buffers allocates new ones: check first that they fit.
        if self.bufs.as_ref().is_none_or(|bufs| bufs.cap < b) {
            let need = crate::memory::generation(&self.cfg, rows.len(), t, self.kind);
            crate::memory::ensure_fits(&need, self.device())?;
        }
        let flat: Vec<u32> = rows.concat();
        let ids = self.ids(&flat, b);
        let mut cache = self.model.new_cache();
        let hidden = tch::no_grad(|| {
            self.model
                .hidden_states(&ids, None, Some(&mut cache), false)
        });
        // Keep the buffers (and the graphs captured on them) when the batch fits.
        self.reserve(b);
        let t = t as i64;
        tch::no_grad(|| {
            for (layer, kv) in self.layers.iter().zip(&cache.layers) {
                let (k, v) = kv.as_ref().context("the model filled no cache")?;
                let rows = layer.kv.narrow(1, 0, b);
                if self.opts.flash {
                    rows.get(0).narrow(1, 0, t).copy_(&k.transpose(1, 2));
                    rows.get(1).narrow(1, 0, t).copy_(&v.transpose(1, 2));
                } else {
                    rows.get(0).narrow(2, 0, t).copy_(k);
                    rows.get(1).narrow(2, 0, t).copy_(v);
                }
            }
            anyhow::Ok(())
        })?;
        self.rows = b;
        self.len = t;
        let last = hidden.select(1, t - 1).to_kind(self.kind);
        tch::no_grad(|| self.write_logits(&last, b));
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
        let (b, len) = (self.rows, self.len);
        let ids = self.ids(tokens, b).reshape([-1]);
        tch::no_grad(|| {
            if self.graphs_on() {
                let bufs = self.bufs();
                bufs.ids.narrow(0, 0, b).copy_(&ids);
                bufs.seek(len, 0);
                // The step only writes this position's keys and the logits: rerunning
                // it is harmless, nothing to undo.
                if self.replay((b, None), |this| this.fed_step(b), |_| ()) {
                    return;
                }
            }
            let hidden = self.decode(b, &ids, At::Host(len));
            self.write_logits(&hidden, b);
        });
        self.len += 1;
        Ok(())
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.device());
        let n = keep.len() as i64;
        tch::no_grad(|| {
            // In place, so the buffers (and any captured graph) keep their addresses.
            for layer in &self.layers {
                let kept = layer.kv.narrow(1, 0, self.rows).index_select(1, &idx);
                layer.kv.narrow(1, 0, n).copy_(&kept);
            }
            let logits = &self.bufs().logits;
            let kept = logits.narrow(0, 0, self.rows).index_select(0, &idx);
            logits.narrow(0, 0, n).copy_(&kept);
        });
        self.rows = n;
        Ok(())
    }

    fn logits(&mut self) -> Result<Logits> {
        ensure!(self.bufs.is_some(), "logits before start");
        let last = self.logits_of(self.rows).to_kind(Kind::Float);
        let data: Vec<f32> = Vec::<f32>::try_from(last.to_device(Device::Cpu).reshape([-1]))?;
        Ok(Logits::new(self.rows as usize, self.cfg.vocab_size, data))
    }

    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
        ensure!(self.bufs.is_some(), "logits before start");
        let last = self.logits_of(self.rows);
        let k = k.min(self.cfg.vocab_size) as i64;
        let (values, indices) = last.topk(k, -1, true, true);
        let values = values.to_kind(Kind::Float);
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

    fn sample_ahead_limit(&self, sampling: &Sampling) -> usize {
        if self.opts.sample_on_device && !sampling.penalizes() {
            BLOCK
        } else {
            0
        }
    }

    fn sample_ahead(&mut self, s: &Sampling, uniforms: &[Vec<f64>]) -> Result<Vec<Vec<u32>>> {
        let (b, len) = (self.rows, self.len);
        let n = uniforms.first().map_or(0, Vec::len);
        ensure!(
            uniforms.len() as i64 == b && uniforms.iter().all(|u| u.len() == n),
            "uniforms for {} rows, expected {b} rows of {n}",
            uniforms.len()
        );
        ensure!(
            (1..=BLOCK).contains(&n) && len as usize + n <= self.cfg.n_ctx,
            "a block of {n} tokens at position {len} (n_ctx {}, at most {BLOCK})",
            self.cfg.n_ctx
        );
        ensure!(self.bufs.is_some(), "sampling before start");
        let flat: Vec<f32> = uniforms.iter().flatten().map(|&u| u as f32).collect();
        tch::no_grad(|| {
            let bufs = self.bufs();
            bufs.uniforms
                .narrow(0, 0, b)
                .narrow(1, 0, n as i64)
                .copy_(&Tensor::from_slice(&flat).view([b, n as i64]));
            bufs.seek(len, 0);
            let key = (b, Some(sampling_key(s)));
            for j in 0..n as i64 {
                // Capture runs the step once for real: put back the logits it consumed,
                // the position and the column.
                let saved = (!self.graphs.has(&key) && self.graphs_on())
                    .then(|| self.bufs().logits.narrow(0, 0, b).copy());
                let restore = |this: &Self| {
                    let bufs = this.bufs();
                    if let Some(saved) = &saved {
                        bufs.logits.narrow(0, 0, b).copy_(saved);
                    }
                    bufs.seek(len + j, j);
                };
                if !self.replay(key, |this| this.sampled_step(b, s), restore) {
                    self.sampled_step(b, s);
                }
            }
        });
        self.len += n as i64;
        let picked = self
            .bufs()
            .picked
            .narrow(0, 0, b)
            .narrow(1, 0, n as i64)
            .to_device(Device::Cpu)
            .contiguous();
        let picked: Vec<i64> = Vec::try_from(picked.reshape([-1]))?;
        Ok(picked
            .chunks(n)
            .map(|row| row.iter().map(|&t| t as u32).collect())
            .collect())
    }
}
