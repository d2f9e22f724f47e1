//! The libtorch generation backend: GPT-2 decoding with a preallocated KV cache.
//!
//! The prompt of a batch runs through [`Gpt2::hidden_states`] (its keys and values land in
//! the model's own cache and are copied into ours, [`KvCache`]). Each later token runs
//! through a decoder written for one token per row (`decoder`): keys and values are written
//! in place into buffers of `n_ctx` positions (no concatenation per step), with the weights
//! laid out for it (`layout`). Rows can join a running batch with prompts of their own lengths
//! ([`Backend::join`], continuous batching); while rows differ in length each step runs
//! eagerly with a position per row, and the fast paths below need every row at one
//! position. On a GPU ([`DecodeOptions`]):
//! - attention is FlashAttention over each row's filled positions (`flash`), or else an
//!   explicit matmul-softmax-matmul, which beat scaled-dot-product attention for a
//!   one-token query with a growing key length (`benches/README.md`, "The GPU machine");
//! - each step is a CUDA graph replay (`graph`; captured and replayed by
//!   `TchBackend::replay`);
//! - tokens are sampled on the device ([`sampler`]) in blocks, so the host waits for the
//!   GPU once per block instead of once per token.

mod decoder;
mod flash;
mod graph;
pub mod kv_cache;
mod layout;
mod packed_head;
pub mod sampler;

pub use kv_cache::{KvCache, KvLayout};

use crate::device::parse_device;
use crate::model::{Config, Gpt2};
use crate::source::load_model;
use anyhow::{bail, ensure, Context, Result};
use decoder::{At, Buffers};
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{Backend, BackendFactory, Logits, Sampling};
use layout::DecodeWeights;
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
/// as does `GPTPIPE_CUDA_GRAPHS=0` for graphs (and `packed`, the CPU's packed head).
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
        // "packed" is the CPU's packed head (`packed_head`), read where it is made.
        const PARTS: [&str; 4] = ["graphs", "flash", "sample", "packed"];
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

/// GPT-2 decoding on libtorch, batched, with rows that can leave and join the batch.
pub struct TchBackend {
    model: Gpt2,
    cfg: Config,
    kind: Kind,
    opts: DecodeOptions,
    weights: DecodeWeights,
    /// On the CPU, the head's `wte` packed once for MKL (`packed_head`).
    packed: Option<packed_head::PackedHead>,
    /// The KV cache and step buffers, from the first `start` on.
    bufs: Option<Buffers>,
    graphs: graph::Graphs,
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
        let weights = DecodeWeights::new(&model, kind);
        let packed = packed_head::PackedHead::new(&weights.lm_head);
        let cfg = model.config.clone();
        Self {
            weights,
            packed,
            cfg,
            kind,
            opts,
            model,
            bufs: None,
            graphs: graph::Graphs::default(),
        }
    }

    /// Tokens each row holds in the cache. Rows of a batch from `start` decode in step and
    /// hold as many; rows added by `join` hold their own count.
    fn lens(&self) -> &[i64] {
        self.bufs.as_ref().map_or(&[], |bufs| bufs.kv.lens())
    }

    /// The one count of tokens of every row (0 without rows); `None` while rows differ:
    /// steps then run eagerly with a position per row, as graph-replayed steps and device
    /// sampling put every row at one position.
    fn uniform_len(&self) -> Option<i64> {
        match self.lens().split_first() {
            None => Some(0),
            Some((first, rest)) => rest.iter().all(|l| l == first).then_some(*first),
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

    /// Rows of the batch in use.
    fn rows(&self) -> i64 {
        self.bufs.as_ref().map_or(0, |bufs| bufs.kv.rows())
    }

    fn graphs_on(&self) -> bool {
        self.opts.graphs && self.rows() <= GRAPH_MAX_ROWS && self.graphs.usable(self.device())
    }

    fn ids(&self, tokens: &[u32], rows: i64) -> Tensor {
        let flat: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        Tensor::from_slice(&flat)
            .reshape([rows, -1])
            .to_device(self.device())
    }

    /// (Re)allocates the KV cache and buffers for `b` rows when they do not fit, dropping
    /// the rows in use (`start` replaces them).
    fn reserve(&mut self, b: i64) {
        if self.bufs.as_ref().is_some_and(|bufs| bufs.cap >= b) {
            return;
        }
        self.graphs.clear();
        // The old buffers go first: the new ones need their memory.
        self.bufs = None;
        self.bufs = Some(self.new_buffers(b));
    }

    /// Zeroed buffers for `cap` rows.
    fn new_buffers(&self, cap: i64) -> Buffers {
        let dims = (
            self.cfg.n_head as i64,
            self.cfg.n_ctx as i64,
            self.cfg.head_dim() as i64,
        );
        Buffers::new(
            cap,
            self.cfg.n_layer,
            dims,
            self.weights.lm_head.size()[0],
            self.opts.flash,
            (self.kind, self.device()),
        )
    }

    /// Makes room for `b` rows, keeping the rows in use: their keys, values and logits
    /// move to the new buffers (old and new are briefly both held). The capacity at least
    /// doubles when that fits, so rows joining one at a time do not copy the cache each
    /// time. `prompt`: the longest prompt about to run, for the memory check.
    fn grow(&mut self, b: i64, prompt: usize) -> Result<()> {
        let cap = self.bufs.as_ref().map_or(0, |bufs| bufs.cap);
        if cap >= b {
            return Ok(());
        }
        let device = self.device();
        let need =
            |rows: i64| crate::memory::generation(&self.cfg, rows as usize, prompt, self.kind);
        let doubled = b.max(2 * cap);
        let cap = if crate::memory::ensure_fits(&need(doubled), device).is_ok() {
            doubled
        } else {
            crate::memory::ensure_fits(&need(b), device)?;
            b
        };
        if self.rows() == 0 {
            self.reserve(cap);
            return Ok(());
        }
        let mut new = self.new_buffers(cap);
        let old = self.bufs();
        let n = old.kv.rows();
        new.kv.copy_rows_from(&old.kv)?;
        tch::no_grad(|| {
            new.logits
                .narrow(0, 0, n)
                .copy_(&old.logits.narrow(0, 0, n))
        });
        // Graphs captured on the old buffers must never replay.
        self.graphs.clear();
        self.bufs = Some(new);
        Ok(())
    }

    /// Runs prompts of one length through the model: the hidden state of each one's last
    /// token `[n, n_embd]` (compute kind) and the keys and values the model cached.
    fn prefill(&self, rows: &[Vec<u32>]) -> (Tensor, crate::model::KvCache) {
        let t = rows.first().map_or(0, Vec::len) as i64;
        let ids = self.ids(&rows.concat(), rows.len() as i64);
        let mut cache = self.model.new_cache();
        let hidden = tch::no_grad(|| {
            self.model
                .hidden_states(&ids, None, Some(&mut cache), false)
        });
        (hidden.select(1, t - 1).to_kind(self.kind), cache)
    }

    /// Appends the rows of a [`TchBackend::prefill`] cache to ours.
    fn push_prefilled(&mut self, cache: &crate::model::KvCache) -> Result<()> {
        let prompt = cache
            .layers
            .iter()
            .map(|kv| kv.as_ref().map(|(k, v)| (k, v)))
            .collect::<Option<Vec<_>>>()
            .context("the model filled no cache")?;
        let bufs = self.bufs.as_mut().context("no buffers")?;
        bufs.kv.push_rows(&prompt)
    }

    /// On the CPU in fp32, the logits of each row in use as slices of the buffer (without
    /// the padding columns); `None` elsewhere.
    fn host_logits(&self) -> Option<impl Iterator<Item = &[f32]> + '_> {
        let logits = &self.bufs.as_ref()?.logits;
        if logits.device() != Device::Cpu || logits.kind() != Kind::Float || !logits.is_contiguous()
        {
            return None;
        }
        let (stride, vocab) = (logits.size()[1] as usize, self.cfg.vocab_size);
        let base = logits.data_ptr() as *const f32;
        Some((0..self.rows() as usize).map(move |r| {
            // SAFETY: the buffer is a contiguous fp32 [cap, stride] CPU tensor owned by
            // `self` (borrowed for the slices' lifetime), with vocab <= stride and r < cap.
            unsafe { std::slice::from_raw_parts(base.add(r * stride), vocab) }
        }))
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
        let (last, cache) = self.prefill(rows);
        // Keep the buffers (and the graphs captured on them) when the batch fits.
        self.reserve(b);
        self.bufs.as_mut().expect("reserved").kv.clear();
        self.push_prefilled(&cache)?;
        tch::no_grad(|| self.write_logits(&last, b));
        Ok(())
    }

    fn can_join(&self) -> bool {
        true
    }

    fn join(&mut self, prompts: &[Vec<u32>]) -> Result<()> {
        let n_ctx = self.cfg.n_ctx;
        for (i, p) in prompts.iter().enumerate() {
            ensure!(
                (1..=n_ctx).contains(&p.len()),
                "a joining row needs 1..=n_ctx ({n_ctx}) tokens, not {} (prompt {i})",
                p.len()
            );
        }
        let Some(longest) = prompts.iter().map(Vec::len).max() else {
            return Ok(());
        };
        let mut at = self.rows();
        self.grow(at + prompts.len() as i64, longest)?;
        // Consecutive prompts of one length run through the model together.
        for run in prompts.chunk_by(|a, b| a.len() == b.len()) {
            let (last, cache) = self.prefill(run);
            self.push_prefilled(&cache)?;
            let n = run.len() as i64;
            tch::no_grad(|| self.write_logits_at(&last, at, n));
            at += n;
        }
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<()> {
        ensure!(
            tokens.len() as i64 == self.rows(),
            "{} tokens for {} rows",
            tokens.len(),
            self.rows()
        );
        ensure!(self.bufs.is_some(), "step before start");
        let longest = self.lens().iter().copied().max().unwrap_or(0);
        ensure!(
            (longest as usize) < self.cfg.n_ctx,
            "the cache is full (a row holds {longest} tokens)"
        );
        let b = self.rows();
        let ids = self.ids(tokens, b).reshape([-1]);
        let Some(len) = self.uniform_len() else {
            // Rows of different lengths: each token at its row's own position, eagerly.
            let pos = Tensor::from_slice(self.lens()).to_device(self.device());
            tch::no_grad(|| {
                let at = At::Rows {
                    pos: &pos,
                    max: longest,
                };
                let hidden = self.decode(b, &ids, at);
                self.write_logits(&hidden, b);
            });
            self.bufs.as_mut().expect("started").kv.advance(1);
            return Ok(());
        };
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
        self.bufs.as_mut().expect("started").kv.advance(1);
        Ok(())
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let Some(bufs) = self.bufs.as_mut() else {
            // Nothing to keep of nothing: an empty batch stays empty.
            ensure!(keep.is_empty(), "retain before start");
            return Ok(());
        };
        let rows = bufs.kv.rows();
        // In place, so the buffers (and any captured graph) keep their addresses.
        bufs.kv.retain(keep)?;
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(bufs.logits.device());
        kv_cache::retain_rows(std::slice::from_ref(&bufs.logits), 0, rows, &idx);
        Ok(())
    }

    fn logits(&mut self) -> Result<Logits> {
        ensure!(self.bufs.is_some(), "logits before start");
        let last = self.logits_of(self.rows()).to_kind(Kind::Float);
        let data: Vec<f32> = Vec::<f32>::try_from(last.to_device(Device::Cpu).reshape([-1]))?;
        Ok(Logits::new(self.rows() as usize, self.cfg.vocab_size, data))
    }

    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
        ensure!(self.bufs.is_some(), "logits before start");
        if let Some(rows) = self.host_logits() {
            // The logits are in host memory already: a one-pass top-k of each row where it
            // lies (libtorch's topk copies each row and heap-sorts it: a quarter of a
            // batch-20 step on the CPU, issue 16). The same candidates, by the trait's
            // order.
            return Ok(rows
                .map(|row| gptpipe_generate::sampling::top_k_of(row, k))
                .collect());
        }
        let last = self.logits_of(self.rows());
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

    /// One forward pass per window of [`gptpipe_generate::score::windows`] over all its rows,
    /// right-padded (causal attention: padding after a token cannot change its logits),
    /// then `log_softmax` in fp32 at the scored positions only, a chunk at a time so the
    /// logits never take `rows x length x vocab`. The batch in use is left untouched. On a
    /// GPU the model runs in bf16, so the figures are bf16's.
    fn token_log_probs(&mut self, rows: &[Vec<u32>], from: &[usize]) -> Result<Vec<Vec<f32>>> {
        let plan = gptpipe_generate::score::windows(rows, from, self.cfg.n_ctx)?;
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
        for w in &plan {
            let inputs: Vec<&[u32]> = w.parts.iter().map(|p| p.input(rows, w.start)).collect();
            let t = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
            let b = inputs.len();
            crate::memory::ensure_fits(
                &crate::memory::generation(&self.cfg, b, t, self.kind),
                self.device(),
            )?;
            let mut ids = vec![0i64; b * t];
            // Flat positions [row * t + i] whose logits predict a scored token, and it.
            let (mut at, mut targets) = (Vec::new(), Vec::new());
            for (k, (part, input)) in w.parts.iter().zip(&inputs).enumerate() {
                for (i, &tok) in input.iter().enumerate() {
                    ids[k * t + i] = tok as i64;
                }
                for j in part.score.clone() {
                    at.push((k * t + j - 1 - w.start) as i64);
                    targets.push(rows[part.row][j] as i64);
                }
            }
            let log_probs: Vec<f32> = tch::no_grad(|| -> Result<Vec<f32>> {
                let ids = Tensor::from_slice(&ids)
                    .reshape([b as i64, t as i64])
                    .to_device(self.device());
                let hidden = self.model.hidden_states(&ids, None, None, false);
                let e = hidden.size()[2];
                let hidden = hidden
                    .reshape([-1, e])
                    .index_select(0, &Tensor::from_slice(&at).to_device(self.device()))
                    .to_kind(self.kind);
                let targets = Tensor::from_slice(&targets).to_device(self.device());
                let wte = self.weights.wte.tr();
                const CHUNK: i64 = 512;
                let n = at.len() as i64;
                let mut got = Vec::with_capacity(at.len());
                for c in (0..n).step_by(CHUNK as usize) {
                    let len = CHUNK.min(n - c);
                    let lp = hidden
                        .narrow(0, c, len)
                        .matmul(&wte)
                        .to_kind(Kind::Float)
                        .log_softmax(-1, Kind::Float)
                        .gather(1, &targets.narrow(0, c, len).unsqueeze(1), false);
                    got.extend(Vec::<f32>::try_from(
                        lp.reshape([-1]).to_device(Device::Cpu),
                    )?);
                }
                Ok(got)
            })?;
            let mut rest = log_probs.as_slice();
            for part in &w.parts {
                let (mine, tail) = rest.split_at(part.score.len());
                out[part.row].extend_from_slice(mine);
                rest = tail;
            }
        }
        Ok(out)
    }

    fn sample_ahead_limit(&self, sampling: &Sampling) -> usize {
        // Device sampling feeds every row at one position.
        if self.opts.sample_on_device && !sampling.penalizes() && self.uniform_len().is_some() {
            BLOCK
        } else {
            0
        }
    }

    fn sample_ahead(&mut self, s: &Sampling, uniforms: &[Vec<f64>]) -> Result<Vec<Vec<u32>>> {
        let Some(len) = self.uniform_len() else {
            bail!("rows of different lengths cannot sample ahead");
        };
        let b = self.rows();
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
        self.bufs.as_mut().expect("started").kv.advance(n as i64);
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
