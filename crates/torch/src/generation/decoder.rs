//! The decoder written for one token per row: the device buffers a step reads and writes
//! (at fixed addresses, so CUDA graphs can replay it), the layers with attention over the
//! [`KvCache`] (FlashAttention or an explicit matmul-softmax-matmul), the logits, and the
//! two steps a graph captures (host-fed tokens, or tokens sampled on the device).

use super::kv_cache::{KvCache, KvLayout, Position};
use super::{flash, sampler, TchBackend, BLOCK};
use gptpipe_generate::Sampling;
use tch::{Device, Kind, Tensor};

/// Where the token of a decoding step sits: known to the host (eager steps), in the
/// device buffers (`Buffers::pos`, `Buffers::used`; graph-replayable steps), or one
/// position per row for rows of different lengths (eager): `pos` Int64 `[b]` on the
/// device, `max` the largest of them (attention reads the cache up to it).
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
    Host(i64),
    Buffers,
    Rows { pos: &'a Tensor, max: i64 },
}

/// Device buffers at fixed addresses (captured graphs read and write them), sized for
/// `cap` rows; rows `..kv.rows()` are in use.
pub(super) struct Buffers {
    pub cap: i64,
    /// Keys and values, [`KvLayout::Positions`] for FlashAttention, else
    /// [`KvLayout::Heads`].
    pub kv: KvCache,
    /// Next-token logits `[cap, padded vocab]` in the compute kind, written by the lm_head
    /// matmul itself; readers drop the padding columns.
    pub logits: Tensor,
    /// The tokens a host-fed step feeds `[cap]`.
    pub ids: Tensor,
    /// The position of the step's token and the block column of the step `[2]` (one
    /// increment advances both).
    pub counters: Tensor,
    /// Filled positions per row after the step's token, Int32 `[cap]` (FlashAttention).
    pub used: Tensor,
    /// A block's uniforms `[cap, BLOCK]` (fp32) and the tokens picked `[cap, BLOCK]`.
    pub uniforms: Tensor,
    pub picked: Tensor,
    /// 0..n_ctx, for masking positions not yet written.
    pub key_positions: Tensor,
    pub flash: Option<flash::Offsets>,
}

impl Buffers {
    /// Zeroed buffers for `cap` rows of `n_layer` layers, `(heads, n_ctx, head_dim)`, and
    /// logits of `logit_cols` columns; `flash`: laid out for FlashAttention.
    pub fn new(
        cap: i64,
        n_layer: usize,
        (h, n_ctx, d): (i64, i64, i64),
        logit_cols: i64,
        flash: bool,
        (kind, device): (Kind, Device),
    ) -> Self {
        let layout = if flash {
            KvLayout::Positions
        } else {
            KvLayout::Heads
        };
        let kv = KvCache::new(n_layer, cap, (h, n_ctx, d), layout, (kind, device));
        let block = BLOCK as i64;
        Self {
            cap,
            kv,
            logits: Tensor::zeros([cap, logit_cols], (kind, device)),
            ids: Tensor::zeros([cap], (Kind::Int64, device)),
            counters: Tensor::zeros([2], (Kind::Int64, device)),
            used: Tensor::zeros([cap], (Kind::Int, device)),
            uniforms: Tensor::zeros([cap, block], (Kind::Float, device)),
            picked: Tensor::zeros([cap, block], (Kind::Int64, device)),
            key_positions: Tensor::arange(n_ctx, (Kind::Int64, device)),
            flash: flash.then(|| flash::Offsets::new(cap, n_ctx, device)),
        }
    }

    pub fn pos(&self) -> Tensor {
        self.counters.narrow(0, 0, 1)
    }

    pub fn column(&self) -> Tensor {
        self.counters.narrow(0, 1, 1)
    }

    /// Puts the step counters at `pos` and block column `column`.
    pub fn seek(&self, pos: i64, column: i64) {
        let _ = self.pos().fill_(pos);
        let _ = self.column().fill_(column);
        let _ = self.used.shallow_clone().fill_(pos + 1);
    }
}

impl TchBackend {
    /// One token per row (`ids` `[b]`) at position `at`: writes its keys and values into the
    /// cache and returns the final hidden states `[b, n_embd]`.
    pub(super) fn decode(&self, b: i64, ids: &Tensor, at: At) -> Tensor {
        let bufs = self.bufs();
        let w = &self.weights;
        let tok = w.wte.index_select(0, ids);
        let mut x = match at {
            At::Host(p) => tok + w.wpe.get(p),
            At::Buffers => tok + w.wpe.index_select(0, &bufs.pos()),
            At::Rows { pos, .. } => tok + w.wpe.index_select(0, pos),
        };
        // Per step, shared by the layers: the filled length of each row (FlashAttention),
        // or the positions not yet written (masked attention over the whole cache).
        let used = self.opts.flash.then(|| match at {
            At::Host(p) => Tensor::full([b], p + 1, (Kind::Int, self.device())),
            At::Buffers => bufs.used.narrow(0, 0, b),
            At::Rows { pos, .. } => (pos + 1).to_kind(Kind::Int),
        });
        let later = match at {
            At::Buffers if !self.opts.flash => Some(bufs.key_positions.gt_tensor(&bufs.pos())),
            // `[b, 1, 1, max + 1]`: each row masks the positions after its own token.
            At::Rows { pos, max } if !self.opts.flash => Some(
                bufs.key_positions
                    .narrow(0, 0, max + 1)
                    .unsqueeze(0)
                    .gt_tensor(&pos.unsqueeze(1))
                    .view([b, 1, 1, max + 1]),
            ),
            _ => None,
        };
        let gelu = if self.cfg.gelu_tanh { "tanh" } else { "none" };
        for (l, layer) in w.layers.iter().enumerate() {
            let a = self.model.layer_norm(&x, &layer.ln_1);
            let qkv = layer.c_attn_scaled.apply(&a);
            let y = match &used {
                Some(used) => self.attend_flash(l, &qkv, b, at, used),
                None => self.attend_matmul(l, &qkv, b, at, later.as_ref()),
            };
            x += layer.attn_proj.apply(&y);
            let m = layer
                .c_fc
                .apply(&self.model.layer_norm(&x, &layer.ln_2))
                .gelu(gelu);
            x += layer.mlp_proj.apply(&m);
        }
        self.model.layer_norm(&x, &w.ln_f)
    }

    /// Writes the step's keys and values `new` of layer `l` into the cache at `at`;
    /// returns the layer's rows `..b`.
    fn write_kv(&self, l: usize, b: i64, new: &Tensor, at: At) -> Tensor {
        let bufs = self.bufs();
        match at {
            At::Host(p) => bufs.kv.write(l, b, new, Position::Host(p)),
            At::Buffers => bufs.kv.write(l, b, new, Position::Device(&bufs.pos())),
            At::Rows { pos, .. } => bufs.kv.write(l, b, new, Position::Rows(pos)),
        }
    }

    /// Attention with the [`KvLayout::Heads`] cache: over the filled positions (host
    /// position), over all of them with the unwritten ones masked (device position), or
    /// over those of the longest row with each row's unwritten ones masked (per row).
    fn attend_matmul(
        &self,
        l: usize,
        qkv: &Tensor,
        b: i64,
        at: At,
        later: Option<&Tensor>,
    ) -> Tensor {
        let (h, d, e) = self.dims();
        let qkv = qkv.reshape([b, 3, h, 1, d]);
        let new = qkv.narrow(1, 1, 2).transpose(0, 1);
        let kv = self.write_kv(l, b, &new, at);
        let kv = match at {
            At::Host(p) => kv.narrow(3, 0, p + 1),
            At::Rows { max, .. } => kv.narrow(3, 0, max + 1),
            At::Buffers => kv,
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

    /// Attention with the [`KvLayout::Positions`] cache through FlashAttention, each row
    /// over its first `used` positions.
    fn attend_flash(&self, l: usize, qkv: &Tensor, b: i64, at: At, used: &Tensor) -> Tensor {
        let (h, d, e) = self.dims();
        let n_ctx = self.cfg.n_ctx as i64;
        let qkv = qkv.reshape([b, 3, 1, h, d]);
        let new = qkv.narrow(1, 1, 2).transpose(0, 1);
        let kv = self.write_kv(l, b, &new, at);
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
    pub(super) fn write_logits(&self, hidden: &Tensor, b: i64) {
        self.write_logits_at(hidden, 0, b);
    }

    /// Next-token logits of rows `start..start + b` (rows joining after those in use).
    pub(super) fn write_logits_at(&self, hidden: &Tensor, start: i64, b: i64) {
        let rows = self.bufs().logits.narrow(0, start, b);
        if let Some(packed) = &self.packed {
            if packed.logits_into(hidden, &rows) {
                return;
            }
        }
        let _ = hidden.mm_out(&rows, &self.weights.lm_head.tr());
    }

    /// The logits of the first `b` rows, without the padding columns.
    pub(super) fn logits_of(&self, b: i64) -> Tensor {
        self.bufs()
            .logits
            .narrow(0, 0, b)
            .narrow(1, 0, self.cfg.vocab_size as i64)
    }

    /// The step a graph captures with host-fed tokens: token ids and position from the
    /// buffers, logits into the buffer.
    pub(super) fn fed_step(&self, b: i64) {
        let hidden = self.decode(b, &self.bufs().ids.narrow(0, 0, b), At::Buffers);
        self.write_logits(&hidden, b);
    }

    /// The step that samples on the device: picks each row's token from the logits with the
    /// uniform of the current column, records it, feeds it, and advances position and column.
    pub(super) fn sampled_step(&self, b: i64, s: &Sampling) {
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
}
