//! GPT-2's forward pass, as `transformers`' `GPT2LMHeadModel` computes it.

use super::{Config, KvCache};
use std::collections::HashMap;
use tch::{Device, Kind, Reduction, Tensor};

/// A Conv1D of Hugging Face's GPT-2: `y = x @ weight + bias`, weight `[in, out]`.
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// `x [N, in] -> [N, out]` (Conv1D layout: `weight` is `[in, out]`).
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        self.bias.addmm(x, &self.weight)
    }
}

pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

pub(crate) struct Block {
    pub(crate) ln_1: LayerNorm,
    pub(crate) c_attn: Linear,
    pub(crate) attn_c_proj: Linear,
    pub(crate) ln_2: LayerNorm,
    pub(crate) c_fc: Linear,
    pub(crate) mlp_c_proj: Linear,
}

impl Block {
    pub(super) fn tensors(&self) -> [&Tensor; 12] {
        [
            &self.ln_1.weight,
            &self.ln_1.bias,
            &self.c_attn.weight,
            &self.c_attn.bias,
            &self.attn_c_proj.weight,
            &self.attn_c_proj.bias,
            &self.ln_2.weight,
            &self.ln_2.bias,
            &self.c_fc.weight,
            &self.c_fc.bias,
            &self.mlp_c_proj.weight,
            &self.mlp_c_proj.bias,
        ]
    }
}

/// How the queries of one forward may attend to the keys.
pub(super) enum Attend {
    /// Plain causal attention from position 0 (training, a first prompt without padding).
    Causal,
    /// Everything (one new token per row after a cache without padding).
    All,
    /// A boolean mask broadcastable to `[B, n_head, T, len]`, true = may attend.
    Mask(Tensor),
}

/// The tensors one forward pass reads, arranged by layer (also how the generation backend
/// picks its weights out of a model).
pub(crate) struct Weights {
    pub(crate) wte: Tensor,
    pub(crate) wpe: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: LayerNorm,
}

impl Weights {
    /// Every tensor, in a fixed order (embeddings, blocks, final norm).
    pub(super) fn tensors(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.wte, &self.wpe];
        for b in &self.blocks {
            all.extend(b.tensors());
        }
        all.extend([&self.ln_f.weight, &self.ln_f.bias]);
        all
    }

    /// The same arrangement of `f` of each tensor.
    pub(super) fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        let ln = |l: &LayerNorm| LayerNorm {
            weight: f(&l.weight),
            bias: f(&l.bias),
        };
        let lin = |l: &Linear| Linear {
            weight: f(&l.weight),
            bias: f(&l.bias),
        };
        Self {
            wte: f(&self.wte),
            wpe: f(&self.wpe),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    ln_1: ln(&b.ln_1),
                    c_attn: lin(&b.c_attn),
                    attn_c_proj: lin(&b.attn_c_proj),
                    ln_2: ln(&b.ln_2),
                    c_fc: lin(&b.c_fc),
                    mlp_c_proj: lin(&b.mlp_c_proj),
                })
                .collect(),
            ln_f: ln(&self.ln_f),
        }
    }

    /// Arranges the tensors `get` returns for Hugging Face's names.
    pub(crate) fn build(n_layer: usize, get: impl Fn(&str) -> Tensor) -> Self {
        let ln = |n: &str| LayerNorm {
            weight: get(&format!("{n}.weight")),
            bias: get(&format!("{n}.bias")),
        };
        let lin = |n: &str| Linear {
            weight: get(&format!("{n}.weight")),
            bias: get(&format!("{n}.bias")),
        };
        let blocks = (0..n_layer)
            .map(|l| {
                let h = format!("transformer.h.{l}");
                Block {
                    ln_1: ln(&format!("{h}.ln_1")),
                    c_attn: lin(&format!("{h}.attn.c_attn")),
                    attn_c_proj: lin(&format!("{h}.attn.c_proj")),
                    ln_2: ln(&format!("{h}.ln_2")),
                    c_fc: lin(&format!("{h}.mlp.c_fc")),
                    mlp_c_proj: lin(&format!("{h}.mlp.c_proj")),
                }
            })
            .collect();
        Self {
            wte: get("transformer.wte.weight"),
            wpe: get("transformer.wpe.weight"),
            blocks,
            ln_f: ln("transformer.ln_f"),
        }
    }
}

/// Weights that are consecutive views of one buffer ([`Gpt2::flatten_parameters`]).
struct FlatLayout {
    buffer: Tensor,
    names: Vec<String>,
    shapes: Vec<Vec<i64>>,
}

/// GPT-2 with a tied language-model head. Weights are leaf tensors owned by the model, in
/// Hugging Face's names and layouts (see [`Gpt2::named_parameters`]).
pub struct Gpt2 {
    pub config: Config,
    params: Vec<(String, Tensor)>,
    weights: Weights,
    flat: Option<FlatLayout>,
    compute_kind: Option<Kind>,
    pad_vocab: Option<bool>,
    /// Overrides the config's dropout probabilities while training (see
    /// [`Gpt2::set_dropout`]).
    dropout: Option<f64>,
}

/// The language-model head's vocabulary is padded up to a multiple of this many rows (in
/// training and in decoding), so its matmuls have aligned shapes.
pub(crate) const VOCAB_ALIGN: i64 = 64;

/// `params` by name (handles on the same tensors).
fn by_name(params: &[(String, Tensor)]) -> HashMap<&str, Tensor> {
    params
        .iter()
        .map(|(n, t)| (n.as_str(), t.shallow_clone()))
        .collect()
}

/// False when `GPTPIPE_PAD_VOCAB=0` (read once): the default on CUDA is then the unpadded head.
fn pad_vocab_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GPTPIPE_PAD_VOCAB").map_or(true, |v| v.trim() != "0"))
}

impl Gpt2 {
    /// A model with zeroed weights on `device` (to be overwritten by loaded ones).
    pub fn zeros(config: &Config, device: Device) -> Self {
        let c = config;
        let (e, inner) = (c.n_embd as i64, c.n_inner as i64);
        // Hugging Face's order: embeddings, then each block, then the final norm.
        let mut shapes: Vec<(String, Vec<i64>)> = vec![
            (
                "transformer.wte.weight".into(),
                vec![c.vocab_size as i64, e],
            ),
            ("transformer.wpe.weight".into(), vec![c.n_ctx as i64, e]),
        ];
        let mut add = |name: String, weight: Vec<i64>, bias: i64| {
            shapes.push((format!("{name}.weight"), weight));
            shapes.push((format!("{name}.bias"), vec![bias]));
        };
        for l in 0..c.n_layer {
            let h = format!("transformer.h.{l}");
            add(format!("{h}.ln_1"), vec![e], e);
            add(format!("{h}.attn.c_attn"), vec![e, 3 * e], 3 * e);
            add(format!("{h}.attn.c_proj"), vec![e, e], e);
            add(format!("{h}.ln_2"), vec![e], e);
            add(format!("{h}.mlp.c_fc"), vec![e, inner], inner);
            add(format!("{h}.mlp.c_proj"), vec![inner, e], e);
        }
        add("transformer.ln_f".into(), vec![e], e);
        let params: Vec<(String, Tensor)> = shapes
            .into_iter()
            .map(|(n, shape)| (n, Tensor::zeros(shape.as_slice(), (Kind::Float, device))))
            .collect();
        let by_name = by_name(&params);
        let weights = Weights::build(c.n_layer, |n| by_name[n].shallow_clone());
        Self {
            config: c.clone(),
            params,
            weights,
            flat: None,
            compute_kind: None,
            pad_vocab: None,
            dropout: None,
        }
    }

    /// A fresh model initialised as `transformers` does: normal(0, initializer_range) for
    /// embeddings and Conv1D weights, `c_proj` weights scaled by 1/sqrt(2 n_layer), zero
    /// biases, unit layer-norm weights. Drawn on the CPU, so the same seed gives the same
    /// weights on every device.
    pub fn random(config: &Config, device: Device, seed: u64) -> Self {
        let mut model = Self::zeros(config, Device::Cpu);
        let _rng = crate::rng_lock();
        tch::manual_seed(seed as i64);
        let std = config.initializer_range;
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        tch::no_grad(|| {
            for (name, t) in &model.params {
                let mut t = t.shallow_clone();
                if name.ends_with("c_proj.weight") {
                    let _ = t.normal_(0.0, proj_std);
                } else if name.contains(".ln_") && name.ends_with(".weight") {
                    let _ = t.fill_(1.0);
                } else if name.ends_with(".weight") {
                    let _ = t.normal_(0.0, std);
                }
            }
        });
        if device != Device::Cpu {
            model.to_device(device);
        }
        model
    }

    /// Weights in Hugging Face's names (`transformer.h.0.attn.c_attn.weight`, ...) and
    /// layouts (Conv1D `[in, out]`), embedding first. `lm_head.weight` is `wte` (tied).
    pub fn named_parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn device(&self) -> Device {
        self.weights.wte.device()
    }

    /// Computes in `kind` (e.g. bf16) while the weights keep their own kind (fp32 master
    /// weights): each weight is cast where it is used, so gradients reach the fp32 tensors.
    /// `None` computes in the weights' kind.
    pub fn set_compute_kind(&mut self, kind: Option<Kind>) {
        self.compute_kind = kind;
    }

    pub fn compute_kind(&self) -> Kind {
        self.compute_kind.unwrap_or(self.weights.wte.kind())
    }

    /// Whether [`Gpt2::loss`] computes its logits over a vocabulary padded with zero rows to
    /// a multiple of 64 (then narrowed back; the result is the same). `None` (the default):
    /// on CUDA unless `GPTPIPE_PAD_VOCAB=0`; `Some(_)` forces it either way (tests on CPU).
    pub fn set_pad_vocab(&mut self, pad: Option<bool>) {
        self.pad_vocab = pad;
    }

    /// Trains with dropout probability `p` everywhere (embeddings, attention, residuals)
    /// instead of the config's `embd_pdrop`, `attn_pdrop` and `resid_pdrop`; `None`: the
    /// config's. The config (and so the saved `config.json`) is left as it is.
    pub fn set_dropout(&mut self, p: Option<f64>) {
        self.dropout = p;
    }

    /// The dropout probability used where the config says `configured`.
    fn pdrop(&self, configured: f64) -> f64 {
        self.dropout.unwrap_or(configured)
    }

    /// Whether [`Gpt2::loss`] pads the head's vocabulary (see [`Gpt2::set_pad_vocab`]).
    pub fn pad_vocab(&self) -> bool {
        self.pad_vocab
            .unwrap_or_else(|| self.device().is_cuda() && pad_vocab_env())
    }

    /// Converts the weights themselves (e.g. to bf16 for generation). Not for training.
    pub fn convert_weights(&mut self, kind: Kind) {
        self.map_weights(|t| t.to_kind(kind));
    }

    /// Moves the weights to `device`.
    pub fn to_device(&mut self, device: Device) {
        self.map_weights(|t| t.to_device(device));
    }

    fn map_weights(&mut self, f: impl Fn(&Tensor) -> Tensor) {
        let old: std::collections::HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        tch::no_grad(|| self.rebind(|n| f(&old[n]).detach()));
    }

    /// Moves the weights named in `names` (in that order) into one contiguous fp32 buffer
    /// and makes them views of it; returns the buffer. An optimizer can then update them
    /// all with a handful of kernels instead of a dozen per tensor.
    pub fn flatten_parameters(&mut self, names: &[String]) -> Tensor {
        let old: std::collections::HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let shapes: Vec<Vec<i64>> = names.iter().map(|n| old[n].size()).collect();
        let total: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
        let flat = Tensor::zeros([total], (Kind::Float, self.device()));
        // The views are made in grad mode, so that they stay usable (as differentiable
        // views) once the buffer requires grad.
        let views: std::collections::HashMap<&str, Tensor> = names
            .iter()
            .map(String::as_str)
            .zip(super::tile(&flat, &shapes))
            .collect();
        tch::no_grad(|| {
            for (n, view) in &views {
                view.shallow_clone().copy_(&old[*n]);
            }
        });
        self.rebind(|n| {
            views
                .get(n)
                .map_or_else(|| old[n].shallow_clone(), |v| v.shallow_clone())
        });
        self.flat = Some(FlatLayout {
            buffer: flat.shallow_clone(),
            names: names.to_vec(),
            shapes,
        });
        flat
    }

    /// What an optimizer over one buffer takes: the weights named in `names` flattened
    /// ([`Self::flatten_parameters`]) into a buffer that requires grad (the leaf autograd
    /// fills), and those weights, views of it, in the model's order.
    pub fn flatten_for_training(&mut self, names: &[String]) -> (Tensor, Vec<(String, Tensor)>) {
        let flat = self.flatten_parameters(names).set_requires_grad(true);
        let views = self
            .params
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        (flat, views)
    }

    /// Points every field at `f(name)`.
    pub(crate) fn rebind(&mut self, f: impl Fn(&str) -> Tensor) {
        let new: Vec<(String, Tensor)> =
            self.params.iter().map(|(n, _)| (n.clone(), f(n))).collect();
        let by_name = by_name(&new);
        self.weights = Weights::build(self.config.n_layer, |n| by_name[n].shallow_clone());
        self.params = new;
        // Rebound weights are no longer views of the buffer.
        self.flat = None;
    }

    /// The weights a forward pass reads, in the compute kind. When the trained weights are
    /// one buffer that requires grad (see [`Gpt2::flatten_parameters`]), the buffer is cast
    /// once and split into views: one cast kernel forward and one concatenation backward,
    /// and the gradient lands in the buffer's `grad` as one tensor. Otherwise each weight
    /// is cast once per pass (so a tied weight is not cast twice).
    pub(super) fn compute_weights(&self) -> Weights {
        let cast = |t: &Tensor| match self.compute_kind {
            Some(k) if k != t.kind() => t.to_kind(k),
            _ => t.shallow_clone(),
        };
        let mut weights = by_name(&self.params);
        if let Some(flat) = self.flat.as_ref().filter(|f| f.buffer.requires_grad()) {
            // Cast, then split: one cast kernel forward; backward, one concatenation
            // gathers the pieces' gradients into the buffer's.
            let sizes: Vec<i64> = flat.shapes.iter().map(|s| s.iter().product()).collect();
            let pieces = cast(&flat.buffer).split_with_sizes(sizes.as_slice(), 0);
            for ((n, piece), shape) in flat.names.iter().zip(pieces).zip(&flat.shapes) {
                weights.insert(n, piece.view(shape.as_slice()));
            }
        }
        Weights::build(self.config.n_layer, |n| cast(&weights[n]))
    }

    /// A cache for [`Gpt2::forward`] / [`Gpt2::forward_masked`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer)
    }

    /// Logits `[B, T, vocab]` (compute kind) for `input_ids` `[B, T]` (Int64, on the
    /// model's device). With a cache, the tokens follow those already in it and their keys
    /// and values are appended. `train` enables dropout.
    pub fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>, train: bool) -> Tensor {
        self.forward_masked(input_ids, None, cache, train)
    }

    /// [`Gpt2::forward`] for rows with padding, as `transformers`' `generate` treats a
    /// left-padded batch: `attention_mask` `[B, T]` (1 = real token, 0 = padding) covers the
    /// new tokens (`None`: all real); the cache remembers it for later calls. Position ids
    /// count real tokens only (`cumsum(mask) - 1`), so a row left-padded with p tokens gives
    /// the same logits as the row alone. Padding keys are never attended to.
    pub fn forward_masked(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let w = self.compute_weights();
        let h = self.hidden_states_with(&w, input_ids, attention_mask, cache, train);
        self.lm_head(&w, &h)
    }

    /// Mean next-token cross-entropy (fp32 scalar) of `input_ids` `[B, T]`, predicting
    /// tokens 1..T from 0..T-1, as `GPT2LMHeadModel(input_ids, labels=input_ids)`.
    pub fn loss(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids must be [B, T]");
        assert!(t >= 2, "the loss needs at least 2 tokens per row");
        let w = self.compute_weights();
        let h = self.hidden_states_with(&w, input_ids, None, None, train);
        self.head_loss(&w, &h, input_ids)
    }

    /// The loss of [`Gpt2::loss`] from the final hidden states `h` `[B, T, n_embd]` (after
    /// `ln_f`) of `input_ids` `[B, T]`.
    pub(super) fn head_loss(&self, w: &Weights, h: &Tensor, input_ids: &Tensor) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids must be [B, T]");
        let h = h.narrow(1, 0, t - 1);
        let h = &h;
        let logits = if self.pad_vocab() {
            self.lm_head_padded(w, h)
        } else {
            self.lm_head(w, h)
        }
        .to_kind(Kind::Float);
        let targets = input_ids.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
        logits
            .reshape([b * (t - 1), self.config.vocab_size as i64])
            .cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0)
    }

    fn lm_head(&self, w: &Weights, h: &Tensor) -> Tensor {
        h.matmul(&w.wte.tr())
    }

    /// [`Gpt2::lm_head`] over `wte` padded with zero rows to a multiple of [`VOCAB_ALIGN`]
    /// (GPT-2: 50257 -> 50304), narrowed back to the real vocabulary. Why: with 50257
    /// columns the logits' leading dimension is not a multiple of 8 elements, so cuBLAS
    /// falls back to slow unaligned bf16 kernels for the forward matmul and both backward
    /// ones. The padding is made per call from the (cast) weight, so only the real rows get
    /// gradients; the padded logits are never read.
    fn lm_head_padded(&self, w: &Weights, h: &Tensor) -> Tensor {
        let vocab = self.config.vocab_size as i64;
        let pad = (VOCAB_ALIGN - vocab % VOCAB_ALIGN) % VOCAB_ALIGN;
        if pad == 0 {
            return self.lm_head(w, h);
        }
        // Pad spec runs from the last dimension: [E: 0, 0], [vocab: 0, pad].
        let padded = w.wte.constant_pad_nd([0, 0, 0, pad]);
        h.matmul(&padded.tr()).narrow(-1, 0, vocab)
    }

    fn linear(&self, x: &Tensor, l: &Linear) -> Tensor {
        let mut shape = x.size();
        let inner = *shape.last().unwrap();
        let out = l.weight.size()[1];
        let y = l.apply(&x.reshape([-1, inner]));
        *shape.last_mut().unwrap() = out;
        y.reshape(shape)
    }

    /// Token plus position embeddings of `input_ids` at `positions`, with embedding dropout
    /// when training: the first block's input.
    pub(super) fn embed(
        &self,
        w: &Weights,
        input_ids: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Tensor {
        // On the CPU the embedding's gradient is sparse (the rows of the tokens seen), added
        // to the head's dense one, instead of a dense vocab x n_embd tensor of zeros summed
        // with it (issue 16).
        let sparse = w.wte.device() == Device::Cpu;
        let tok = Tensor::embedding(&w.wte, input_ids, -1, false, sparse);
        let pos = Tensor::embedding(&w.wpe, positions, -1, false, false);
        (tok + pos).dropout(self.pdrop(self.config.embd_pdrop), train)
    }

    /// Block `l` on the residual stream `x`: attention, then the MLP, each added to it.
    pub(super) fn block(
        &self,
        x: &Tensor,
        block: &Block,
        l: usize,
        attend: &Attend,
        layer_cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Tensor {
        let c = &self.config;
        let a = self.attention(
            &self.layer_norm(x, &block.ln_1),
            block,
            l,
            attend,
            layer_cache,
            train,
        );
        // Not `+=`: layer_norm saved `x` for backward, an in-place add would break it.
        let x = x + a;
        let m = self.linear(&self.layer_norm(&x, &block.ln_2), &block.c_fc);
        let m = if c.gelu_tanh {
            m.gelu("tanh")
        } else {
            m.gelu("none")
        };
        let m = self
            .linear(&m, &block.mlp_c_proj)
            .dropout(self.pdrop(c.resid_pdrop), train);
        x + m
    }

    pub(crate) fn layer_norm(&self, x: &Tensor, ln: &LayerNorm) -> Tensor {
        let e = self.config.n_embd as i64;
        x.layer_norm(
            [e],
            Some(&ln.weight),
            Some(&ln.bias),
            self.config.layer_norm_epsilon,
            true,
        )
    }

    /// The final hidden states `[B, T, n_embd]` (after `ln_f`).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let w = self.compute_weights();
        self.hidden_states_with(&w, input_ids, attention_mask, cache, train)
    }

    fn hidden_states_with(
        &self,
        w: &Weights,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let c = &self.config;
        let (b, t) = input_ids.size2().expect("input_ids must be [B, T]");
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len);
        assert!(
            past + t <= c.n_ctx as i64,
            "{} tokens exceed the model's context of {} (n_ctx)",
            past + t,
            c.n_ctx
        );
        // The mask over all tokens (cached and new), if any row has padding.
        let past_mask = cache
            .as_ref()
            .and_then(|c| c.mask.as_ref().map(|m| m.shallow_clone()));
        let full_mask = match (past_mask, attention_mask) {
            (None, None) => None,
            (pm, am) => {
                let pm = pm.unwrap_or_else(|| Tensor::ones([b, past], (Kind::Int64, device)));
                let am = am.map_or_else(
                    || Tensor::ones([b, t], (Kind::Int64, device)),
                    |m| m.to_kind(Kind::Int64),
                );
                Some(Tensor::cat(&[pm, am], 1))
            }
        };
        let positions = match &full_mask {
            None => Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(0),
            Some(m) => {
                let pos = m.cumsum(-1, Kind::Int64) - 1;
                pos.masked_fill(&m.eq(0), 1).narrow(1, past, t)
            }
        };
        let attend = match &full_mask {
            None if past == 0 => Attend::Causal,
            None if t == 1 => Attend::All,
            m => {
                // Query i (absolute index past+i) sees keys j <= past+i that are real; it
                // always sees itself, so a padding query never has an empty row (NaN).
                let len = past + t;
                let q = Tensor::arange_start(past, len, (Kind::Int64, device)).unsqueeze(1);
                let k = Tensor::arange(len, (Kind::Int64, device)).unsqueeze(0);
                let causal = k.le_tensor(&q); // [T, len]
                let mask = match m {
                    None => causal.unsqueeze(0).unsqueeze(0),
                    Some(m) => {
                        let valid = m.ne(0).unsqueeze(1).unsqueeze(1); // [B,1,1,len]
                        let diag = k.eq_tensor(&q).unsqueeze(0).unsqueeze(0);
                        causal
                            .unsqueeze(0)
                            .unsqueeze(0)
                            .logical_and(&valid)
                            .logical_or(&diag)
                    }
                };
                Attend::Mask(mask)
            }
        };

        let mut x = self.embed(w, input_ids, &positions, train);
        for (l, block) in w.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[l]);
            x = self.block(&x, block, l, &attend, layer_cache, train);
        }
        if let Some(cache) = cache {
            cache.len = past + t;
            cache.mask = full_mask;
        }
        let _ = b;
        self.layer_norm(&x, &w.ln_f)
    }

    fn attention(
        &self,
        x: &Tensor,
        block: &Block,
        layer: usize,
        attend: &Attend,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Tensor {
        let c = &self.config;
        let (b, t, e) = x.size3().unwrap();
        let (h, d) = (c.n_head as i64, c.head_dim() as i64);
        let qkv = self.linear(x, &block.c_attn);
        let parts = qkv.split(e, 2);
        let heads = |x: &Tensor| x.reshape([b, t, h, d]).transpose(1, 2);
        let q = heads(&parts[0]);
        let (mut k, mut v) = (heads(&parts[1]), heads(&parts[2]));
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let mut scale = if c.scale_attn_weights {
            1.0 / (d as f64).sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        let p = if train { self.pdrop(c.attn_pdrop) } else { 0.0 };
        let y = match attend {
            Attend::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, p, true, scale, false,
            ),
            Attend::All => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, p, false, scale, false,
            ),
            Attend::Mask(m) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), p, false, scale, false)
            }
        };
        let y = y.transpose(1, 2).reshape([b, t, e]);
        self.linear(&y, &block.attn_c_proj)
            .dropout(self.pdrop(c.resid_pdrop), train)
    }
}
