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
    /// Keys and values `[2, B, n_head, n_ctx, head_dim]` (one buffer, so one copy per step
    /// writes both; keys and values each `[B, H, L, D]` with mergeable batch dimensions, so
    /// the attention matmuls need no copy), filled up to `len`.
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
    /// Rows the KV buffers hold room for; `rows` of them are in use (views `[..rows]`, so
    /// buffer addresses stay fixed for CUDA graphs while rows leave).
    cap: i64,
    graphs: graph::Graphs,
}

/// Batches of more rows than this decode eagerly (see `graph_step`): a graph is captured
/// per row count, and beyond this the rows amortise the launches anyway.
const GRAPH_MAX_ROWS: i64 = 64;

/// Attention scores `[B, H, 1, L]` of one query per row `q` `[B, H, 1, D]` against `keys`
/// `[B, H, L, D]`. (`K q^T`, with the long dimension as M, measured slower on an H200.)
fn scores(q: &Tensor, keys: &Tensor) -> Tensor {
    q.matmul(&keys.transpose(2, 3))
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
            cap: 0,
            graphs: graph::Graphs::default(),
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
            let kv = layer.kv.narrow(1, 0, b);
            kv.narrow(3, pos, 1)
                .copy_(&qkv.narrow(1, 1, 2).transpose(0, 1));
            let filled = kv.narrow(3, 0, pos + 1);
            let (keys, values) = (filled.get(0), filled.get(1));
            // [B, H, 1, L] scores; the scale is in the query.
            let att = scores(&qkv.select(1, 0), &keys);
            // Half-precision softmax accumulates in fp32 inside the kernel.
            let att = att.softmax(-1, self.kind);
            let y = att.matmul(&values).reshape([b, e]);
            x += layer.attn_proj.apply(&y);
            let m = layer.c_fc.apply(&self.norm(&x, &layer.ln_2)).gelu(gelu);
            x += layer.mlp_proj.apply(&m);
        }
        self.norm(&x, &self.ln_f)
    }

    /// One decoding step through a CUDA graph captured for this row count (captured on
    /// first use). `false` when graphs are unavailable, and the eager path must run.
    fn graph_step(&mut self, ids: &Tensor) -> bool {
        // Measured on an H200 (124M): graphs beat eager steps at every batch from 1 to 20
        // rows (2.5x at 1, 2x at 20); the cap only bounds how many graphs are kept.
        if self.rows > GRAPH_MAX_ROWS || !self.graphs.enabled(self.device()) {
            return false;
        }
        let b = self.rows;
        tch::no_grad(|| {
            let (ids_buf, pos_buf) = self.graphs.inputs(self.cap, self.device());
            ids_buf.narrow(0, 0, b).copy_(&ids.reshape([-1]));
            let _ = pos_buf.shallow_clone().fill_(self.len);
            if !self.graphs.has(b) {
                let this = &*self;
                let captured = graph::capture(self.device(), || this.fixed_step(b));
                match captured {
                    Some(g) => self.graphs.insert(b, g),
                    None => {
                        self.graphs.disable();
                        return false;
                    }
                }
            }
            match self.graphs.replay(b) {
                Some(out) => {
                    self.last = Some(out);
                    true
                }
                None => false,
            }
        })
    }

    /// The one-token step with shapes that do not depend on the position: attention runs
    /// over all `n_ctx` cached positions with later ones masked, and the position and the
    /// token ids are read from device buffers, so a captured graph can be replayed at any
    /// position. Returns logits `[b, vocab]` (fp32).
    fn fixed_step(&self, b: i64) -> Tensor {
        let (h, d, e) = (
            self.cfg.n_head as i64,
            self.cfg.head_dim() as i64,
            self.cfg.n_embd as i64,
        );
        let (ids_buf, pos_buf) = self.graphs.inputs_ref();
        let tok = self.wte.index_select(0, &ids_buf.narrow(0, 0, b));
        let mut x = tok + self.wpe.index_select(0, pos_buf);
        let later = self
            .graphs
            .key_positions(self.cfg.n_ctx as i64, self.device())
            .gt_tensor(pos_buf);
        let gelu = if self.cfg.gelu_tanh { "tanh" } else { "none" };
        for layer in &self.layers {
            let a = self.norm(&x, &layer.ln_1);
            let qkv = layer.c_attn_scaled.apply(&a).reshape([b, 3, h, 1, d]);
            let kv = layer.kv.narrow(1, 0, b);
            let _ =
                kv.shallow_clone()
                    .index_copy_(3, pos_buf, &qkv.narrow(1, 1, 2).transpose(0, 1));
            let (keys, values) = (kv.get(0), kv.get(1));
            let att = scores(&qkv.select(1, 0), &keys)
                .masked_fill(&later, f64::NEG_INFINITY)
                .softmax(-1, self.kind);
            let y = att.matmul(&values).reshape([b, e]);
            x += layer.attn_proj.apply(&y);
            let m = layer.c_fc.apply(&self.norm(&x, &layer.ln_2)).gelu(gelu);
            x += layer.mlp_proj.apply(&m);
        }
        self.norm(&x, &self.ln_f)
            .matmul(&self.wte.tr())
            .to_kind(Kind::Float)
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
        // Keep the buffers (and the graphs captured on them) when the batch fits.
        let realloc = b > self.cap;
        if realloc {
            self.graphs.clear();
            self.cap = b;
        }
        tch::no_grad(|| {
            for (layer, kv) in self.layers.iter_mut().zip(&cache.layers) {
                let (k, v) = kv.as_ref().context("the model filled no cache")?;
                if realloc {
                    layer.kv = Tensor::zeros([2, b, h, n_ctx, d], opts);
                }
                let rows = layer.kv.narrow(1, 0, b);
                rows.get(0).narrow(2, 0, t as i64).copy_(k);
                rows.get(1).narrow(2, 0, t as i64).copy_(v);
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
        if !self.graph_step(&ids) {
            tch::no_grad(|| {
                let hidden = self.decode_one(&ids);
                self.set_logits(&hidden);
            });
        }
        self.len += 1;
        Ok(())
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.device());
        tch::no_grad(|| {
            for layer in &mut self.layers {
                // In place, so the buffer (and any captured graph) keeps its address.
                let kept = layer.kv.narrow(1, 0, self.rows).index_select(1, &idx);
                layer.kv.narrow(1, 0, keep.len() as i64).copy_(&kept);
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

/// CUDA graphs for decoding steps, one per row count, through the C++ shim in
/// `csrc/cuda_graph.cpp` (built when libtorch has CUDA; see build.rs). Off on the CPU, when
/// the shim is not built, when `GPTPIPE_CUDA_GRAPHS=0`, or after a capture failed.
mod graph {
    use std::collections::HashMap;
    use tch::{Device, Kind, Tensor};

    #[derive(Default)]
    pub struct Graphs {
        disabled: bool,
        /// Token ids `[cap]` and the position `[1]` the captured steps read.
        inputs: Option<(Tensor, Tensor)>,
        key_positions: Option<Tensor>,
        graphs: HashMap<i64, (Graph, Tensor)>,
    }

    impl Graphs {
        pub fn enabled(&self, device: Device) -> bool {
            cfg!(gptpipe_cuda_graph)
                && !self.disabled
                && device.is_cuda()
                && std::env::var("GPTPIPE_CUDA_GRAPHS").map_or(true, |v| v != "0")
        }

        pub fn disable(&mut self) {
            self.disabled = true;
            self.clear();
        }

        /// Forgets graphs captured on buffers that are being replaced.
        pub fn clear(&mut self) {
            self.graphs.clear();
            self.inputs = None;
        }

        pub fn inputs(&mut self, cap: i64, device: Device) -> (Tensor, Tensor) {
            let (ids, pos) = self.inputs.get_or_insert_with(|| {
                (
                    Tensor::zeros([cap], (Kind::Int64, device)),
                    Tensor::zeros([1], (Kind::Int64, device)),
                )
            });
            (ids.shallow_clone(), pos.shallow_clone())
        }

        pub fn inputs_ref(&self) -> (&Tensor, &Tensor) {
            let (ids, pos) = self.inputs.as_ref().expect("graph inputs");
            (ids, pos)
        }

        pub fn key_positions(&self, n_ctx: i64, device: Device) -> Tensor {
            match &self.key_positions {
                Some(k) if k.size()[0] == n_ctx => k.shallow_clone(),
                _ => Tensor::arange(n_ctx, (Kind::Int64, device)),
            }
        }

        pub fn has(&self, rows: i64) -> bool {
            self.graphs.contains_key(&rows)
        }

        pub fn insert(&mut self, rows: i64, g: (Graph, Tensor)) {
            self.graphs.insert(rows, g);
        }

        /// Replays the graph of `rows`; its output tensor (overwritten by the next replay).
        pub fn replay(&self, rows: i64) -> Option<Tensor> {
            let (g, out) = self.graphs.get(&rows)?;
            g.replay().then(|| out.shallow_clone())
        }
    }

    /// Runs `step` once to warm up, then captures it; `None` if anything fails.
    pub fn capture(device: Device, step: impl Fn() -> Tensor) -> Option<(Graph, Tensor)> {
        let Device::Cuda(index) = device else {
            return None;
        };
        Graph::capture(index, step)
    }

    #[cfg(gptpipe_cuda_graph)]
    mod ffi {
        use std::ffi::{c_int, c_void};
        extern "C" {
            pub fn gptpipe_graph_new() -> *mut c_void;
            pub fn gptpipe_graph_stream_begin(g: *mut c_void, device: c_int) -> c_int;
            pub fn gptpipe_graph_capture_begin(g: *mut c_void) -> c_int;
            pub fn gptpipe_graph_capture_end(g: *mut c_void) -> c_int;
            pub fn gptpipe_graph_stream_end(g: *mut c_void) -> c_int;
            pub fn gptpipe_graph_replay(g: *mut c_void) -> c_int;
            pub fn gptpipe_graph_free(g: *mut c_void);
        }
    }

    // Without the shim no Graph is ever built.
    #[cfg_attr(not(gptpipe_cuda_graph), allow(dead_code))]
    pub struct Graph {
        #[cfg(gptpipe_cuda_graph)]
        ptr: *mut std::ffi::c_void,
    }

    #[cfg(gptpipe_cuda_graph)]
    impl Graph {
        fn capture(device: usize, step: impl Fn() -> Tensor) -> Option<(Graph, Tensor)> {
            // SAFETY: the shim's functions take the pointer gptpipe_graph_new returned and
            // catch every C++ exception; the graph is freed once, by Drop.
            unsafe {
                let ptr = ffi::gptpipe_graph_new();
                if ptr.is_null() {
                    return None;
                }
                let graph = Graph { ptr };
                if ffi::gptpipe_graph_stream_begin(ptr, device as _) != 0 {
                    return None;
                }
                // Warm-up on the side stream (cuBLAS workspaces, allocator), then capture.
                let _ = step();
                let out = if ffi::gptpipe_graph_capture_begin(ptr) == 0 {
                    let out = step();
                    (ffi::gptpipe_graph_capture_end(ptr) == 0).then_some(out)
                } else {
                    None
                };
                let restored = ffi::gptpipe_graph_stream_end(ptr) == 0;
                match out {
                    Some(out) if restored => Some((graph, out)),
                    _ => None,
                }
            }
        }

        fn replay(&self) -> bool {
            // SAFETY: `ptr` is a live graph (see capture).
            unsafe { ffi::gptpipe_graph_replay(self.ptr) == 0 }
        }
    }

    #[cfg(gptpipe_cuda_graph)]
    impl Drop for Graph {
        fn drop(&mut self) {
            // SAFETY: freed exactly once.
            unsafe { ffi::gptpipe_graph_free(self.ptr) }
        }
    }

    #[cfg(not(gptpipe_cuda_graph))]
    impl Graph {
        fn capture(_device: usize, _step: impl Fn() -> Tensor) -> Option<(Graph, Tensor)> {
            None
        }

        fn replay(&self) -> bool {
            false
        }
    }
}
