//! GPT-2 (transformers' GPT2LMHeadModel) as an ONNX graph with a KV cache.
//!
//! Interface of the graph (names and order follow transformers/optimum's GPT-2 export):
//! - `input_ids`: int64 `[batch, seq]`;
//! - `attention_mask`: int64 `[batch, past_seq + seq]`, 1 where a column (past or this
//!   call's) holds a real token of the row, 0 for padding; masked columns add exactly
//!   nothing to attention (their scores become the float type's lowest finite value before
//!   Softmax, so a fully masked row gives finite values, never NaN);
//! - `position_ids`: int64 `[batch, seq]`, each token's position (its index in the row's
//!   own sequence, which padding does not advance);
//! - `past_key_values.{i}.key` / `.value`: `[batch, n_head, past_seq, head_dim]` in the
//!   model's float type (float32, or float16 for an fp16 export); `past_seq` may be 0 (an
//!   empty tensor) for the first call;
//! - `logits`: float32 `[batch, seq, vocab]` in both precisions (fp16 exports cast the
//!   final projection, so callers never handle half floats);
//! - `present.{i}.key` / `.value`: the past with this call's keys and values appended,
//!   `[batch, n_head, past_seq + seq, head_dim]`, in the model's float type;
//! - `last_logits`: float32 `[batch, vocab]`, the logits of each row's last position (an
//!   extra output: a caller that fetches it instead of `logits` lets ONNX Runtime skip the
//!   head on every other position, which matters for long prompts at large batch).
//!
//! Token `j` of the call sits in column `past_seq + j` and attends to the columns up to
//! its own that `attention_mask` marks. With an all-ones mask and positions
//! `past_seq + j` this is plain GPT-2; rows of different lengths share a batch by padding
//! (the ONNX Runtime backend's `join`).
//!
//! Exports made before these two inputs existed (and [`build`] with `mask_inputs` off,
//! kept so that tests cover such folders) have neither: token `j` is at position
//! `past_seq + j` and attends to every earlier column, so all rows of a batch share
//! `past_seq`.

use crate::config::{Activation, Gpt2Config};
use crate::graph::{attr_float, attr_int, attr_ints, value_info, Dim, Float, GraphBuilder};
use crate::proto::data_type;
use crate::weights::Weights;
use anyhow::{ensure, Result};

/// Name of the extra output with each row's last-position logits.
pub const LAST_LOGITS: &str = "last_logits";

pub fn past_key_name(layer: usize) -> String {
    format!("past_key_values.{layer}.key")
}
pub fn past_value_name(layer: usize) -> String {
    format!("past_key_values.{layer}.value")
}
pub fn present_key_name(layer: usize) -> String {
    format!("present.{layer}.key")
}
pub fn present_value_name(layer: usize) -> String {
    format!("present.{layer}.value")
}

/// Names of the inputs that let rows of different lengths share a batch.
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";

/// Builds the whole graph; weights are converted to `float` as they are added.
/// `mask_inputs` adds `attention_mask` and `position_ids` (what every export writes; off
/// only to reproduce older exports).
pub fn build(
    cfg: &Gpt2Config,
    w: &Weights,
    float: Float,
    mask_inputs: bool,
) -> Result<GraphBuilder> {
    ensure!(cfg.n_layer > 0, "config.json has n_layer = 0");
    let mut g = GraphBuilder::new(float);
    let (e, h, d) = (cfg.n_embd, cfg.n_head, cfg.head_dim());
    let ft = float.onnx_type();

    g.inputs.push(value_info(
        "input_ids",
        data_type::INT64,
        &[Dim::Named("batch"), Dim::Named("seq")],
    ));
    if mask_inputs {
        g.inputs.push(value_info(
            ATTENTION_MASK,
            data_type::INT64,
            &[Dim::Named("batch"), Dim::Named("total_seq")],
        ));
        g.inputs.push(value_info(
            POSITION_IDS,
            data_type::INT64,
            &[Dim::Named("batch"), Dim::Named("seq")],
        ));
    }
    for i in 0..cfg.n_layer {
        for name in [past_key_name(i), past_value_name(i)] {
            g.inputs.push(value_info(
                &name,
                ft,
                &[
                    Dim::Named("batch"),
                    Dim::Fixed(h),
                    Dim::Named("past_seq"),
                    Dim::Fixed(d),
                ],
            ));
        }
    }
    g.outputs.push(value_info(
        "logits",
        data_type::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("seq"),
            Dim::Fixed(cfg.vocab_size),
        ],
    ));
    g.outputs.push(value_info(
        LAST_LOGITS,
        data_type::FLOAT,
        &[Dim::Named("batch"), Dim::Fixed(cfg.vocab_size)],
    ));
    for i in 0..cfg.n_layer {
        for name in [present_key_name(i), present_value_name(i)] {
            g.outputs.push(value_info(
                &name,
                ft,
                &[
                    Dim::Named("batch"),
                    Dim::Fixed(h),
                    Dim::Named("total_seq"),
                    Dim::Fixed(d),
                ],
            ));
        }
    }

    // Sizes: seq and past_seq as scalars, positions past..past+seq, and the causal mask.
    let ids_shape = g.node("Shape", &["input_ids"], vec![]);
    let seq = g.node("Shape", &["input_ids"], vec![attr_int("start", 1)]);
    let past0 = past_key_name(0);
    let past = g.node(
        "Shape",
        &[&past0],
        vec![attr_int("start", 2), attr_int("end", 3)],
    );
    let axis0 = g.const_i64(&[0], &[1]);
    let seq_s = g.node("Squeeze", &[&seq, &axis0], vec![]);
    let past_s = g.node("Squeeze", &[&past, &axis0], vec![]);
    let total_s = g.node("Add", &[&past_s, &seq_s], vec![]);
    let zero = g.const_i64(&[0], &[]);
    let one = g.const_i64(&[1], &[]);
    let positions = g.node("Range", &[&past_s, &total_s, &one], vec![]);
    let rows = g.node("Range", &[&zero, &seq_s, &one], vec![]);
    let cols = g.node("Range", &[&zero, &total_s, &one], vec![]);
    let axis1 = g.const_i64(&[1], &[1]);
    let rows_col = g.node("Unsqueeze", &[&rows, &axis1], vec![]);
    let last_visible = g.node("Add", &[&rows_col, &past_s], vec![]); // [seq, 1]
    let cols_row = g.node("Unsqueeze", &[&cols, &axis0], vec![]); // [1, total]
    let causal = g.node("LessOrEqual", &[&cols_row, &last_visible], vec![]); // [seq, total]
    let (mask, positions) = if mask_inputs {
        // [batch, 1, 1, total] of the row's real columns, and the causal mask over them.
        let to_bool = vec![attr_int("to", data_type::BOOL as i64)];
        let real = g.node("Cast", &[ATTENTION_MASK], to_bool);
        let axes12 = g.const_i64(&[1, 2], &[2]);
        let real = g.node("Unsqueeze", &[&real, &axes12], vec![]);
        let mask = g.node("And", &[&causal, &real], vec![]); // [batch, 1, seq, total]
        (mask, POSITION_IDS.to_owned())
    } else {
        (causal, positions)
    };
    let masked_value = g.const_float(float.lowest());

    // Embeddings.
    let wte = g.weight(
        "transformer.wte.weight",
        &[cfg.vocab_size, e],
        &w.get("wte.weight", &[cfg.vocab_size, e])?,
    );
    let wpe = g.weight(
        "transformer.wpe.weight",
        &[cfg.n_positions, e],
        &w.get("wpe.weight", &[cfg.n_positions, e])?,
    );
    let tok = g.node("Gather", &[&wte, "input_ids"], vec![attr_int("axis", 0)]);
    let pos = g.node("Gather", &[&wpe, &positions], vec![attr_int("axis", 0)]);
    let mut hidden = g.node("Add", &[&tok, &pos], vec![]);

    let heads_shape = g.const_i64(&[0, 0, h as i64, d as i64], &[4]);
    let merged_shape = g.const_i64(&[0, 0, e as i64], &[3]);
    let split_sizes = g.const_i64(&[e as i64; 3], &[3]);
    let base_scale = if cfg.scale_attn_weights {
        1.0 / (d as f64).sqrt()
    } else {
        1.0
    };

    for i in 0..cfg.n_layer {
        let p = format!("h.{i}");
        let ln1 = layer_norm(&mut g, w, cfg, &format!("{p}.ln_1"), &hidden)?;
        let qkv = linear(&mut g, w, &format!("{p}.attn.c_attn"), &ln1, e, 3 * e)?;
        let parts = g.node_n("Split", &[&qkv, &split_sizes], 3, vec![attr_int("axis", 2)]);
        let mut heads = Vec::new();
        for part in &parts {
            let r = g.node("Reshape", &[part, &heads_shape], vec![]);
            heads.push(g.node("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])]));
        }
        let (pk, pv) = (past_key_name(i), past_value_name(i));
        let (k_all, v_all) = (present_key_name(i), present_value_name(i));
        g.node_to(
            "Concat",
            &[&pk, &heads[1]],
            &[&k_all],
            vec![attr_int("axis", 2)],
        );
        g.node_to(
            "Concat",
            &[&pv, &heads[2]],
            &[&v_all],
            vec![attr_int("axis", 2)],
        );

        let k_t = g.node(
            "Transpose",
            &[&k_all],
            vec![attr_ints("perm", &[0, 1, 3, 2])],
        );
        let scores = g.node("MatMul", &[&heads[0], &k_t], vec![]);
        let mut scale = base_scale;
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        let scores = if scale != 1.0 {
            let c = g.const_float(scale as f32);
            g.node("Mul", &[&scores, &c], vec![])
        } else {
            scores
        };
        let scores = g.node("Where", &[&mask, &scores, &masked_value], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
        let ctx = g.node("MatMul", &[&probs, &v_all], vec![]);
        let ctx = g.node("Transpose", &[&ctx], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let ctx = g.node("Reshape", &[&ctx, &merged_shape], vec![]);
        let attn = linear(&mut g, w, &format!("{p}.attn.c_proj"), &ctx, e, e)?;
        hidden = g.node("Add", &[&hidden, &attn], vec![]);

        let ln2 = layer_norm(&mut g, w, cfg, &format!("{p}.ln_2"), &hidden)?;
        let fc = linear(&mut g, w, &format!("{p}.mlp.c_fc"), &ln2, e, 4 * e)?;
        let act = gelu(&mut g, cfg.activation, &fc);
        let mlp = linear(&mut g, w, &format!("{p}.mlp.c_proj"), &act, 4 * e, e)?;
        hidden = g.node("Add", &[&hidden, &mlp], vec![]);
    }

    let hidden = layer_norm(&mut g, w, cfg, "ln_f", &hidden)?;
    // The head as Gemm with transB on the [vocab, n_embd] matrix: a tied head reuses wte
    // as stored, so the file holds the embedding once.
    let head = if cfg.tie_word_embeddings || !w.has("lm_head.weight") {
        wte
    } else {
        g.weight(
            "lm_head.weight",
            &[cfg.vocab_size, e],
            &w.get("lm_head.weight", &[cfg.vocab_size, e])?,
        )
    };
    let flat_shape = g.const_i64(&[-1, e as i64], &[2]);
    let flat = g.node("Reshape", &[&hidden, &flat_shape], vec![]);
    let logits2d = g.node("Gemm", &[&flat, &head], vec![attr_int("transB", 1)]);
    let vocab = g.const_i64(&[cfg.vocab_size as i64], &[1]);
    let out_shape = g.node("Concat", &[&ids_shape, &vocab], vec![attr_int("axis", 0)]);
    let last_index = g.const_i64(&[-1], &[]);
    let last_hidden = g.node("Gather", &[&hidden, &last_index], vec![attr_int("axis", 1)]);
    let last = g.node("Gemm", &[&last_hidden, &head], vec![attr_int("transB", 1)]);
    match float {
        Float::F32 => {
            g.node_to("Reshape", &[&logits2d, &out_shape], &["logits"], vec![]);
            g.node_to("Identity", &[&last], &[LAST_LOGITS], vec![]);
        }
        Float::F16 => {
            let l = g.node("Reshape", &[&logits2d, &out_shape], vec![]);
            let to_float = || vec![attr_int("to", data_type::FLOAT as i64)];
            g.node_to("Cast", &[&l], &["logits"], to_float());
            g.node_to("Cast", &[&last], &[LAST_LOGITS], to_float());
        }
    }
    Ok(g)
}

/// `LayerNormalization` over the last axis; statistics in float32 (stash_type 1) in both
/// precisions.
fn layer_norm(
    g: &mut GraphBuilder,
    w: &Weights,
    cfg: &Gpt2Config,
    prefix: &str,
    x: &str,
) -> Result<String> {
    let e = cfg.n_embd;
    let gamma = g.weight(
        &format!("transformer.{prefix}.weight"),
        &[e],
        &w.get(&format!("{prefix}.weight"), &[e])?,
    );
    let beta = g.weight(
        &format!("transformer.{prefix}.bias"),
        &[e],
        &w.get(&format!("{prefix}.bias"), &[e])?,
    );
    Ok(g.node(
        "LayerNormalization",
        &[x, &gamma, &beta],
        vec![
            attr_int("axis", -1),
            attr_float("epsilon", cfg.layer_norm_epsilon as f32),
            attr_int("stash_type", 1),
        ],
    ))
}

/// transformers' Conv1D: `x @ weight + bias` with weight `[in, out]`.
fn linear(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
    n_in: usize,
    n_out: usize,
) -> Result<String> {
    let weight = g.weight(
        &format!("transformer.{prefix}.weight"),
        &[n_in, n_out],
        &w.get(&format!("{prefix}.weight"), &[n_in, n_out])?,
    );
    let bias = g.weight(
        &format!("transformer.{prefix}.bias"),
        &[n_out],
        &w.get(&format!("{prefix}.bias"), &[n_out])?,
    );
    let y = g.node("MatMul", &[x, &weight], vec![]);
    Ok(g.node("Add", &[&y, &bias], vec![]))
}

/// GELU spelled with basic ops (opset 17 has no Gelu): ONNX Runtime's optimizer fuses
/// both patterns into its own kernels.
fn gelu(g: &mut GraphBuilder, act: Activation, x: &str) -> String {
    let half = g.const_float(0.5);
    let one = g.const_float(1.0);
    let inner = match act {
        Activation::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let c = g.const_float(0.044715);
            let k = g.const_float((2.0 / std::f64::consts::PI).sqrt() as f32);
            let x2 = g.node("Mul", &[x, x], vec![]);
            let x3 = g.node("Mul", &[&x2, x], vec![]);
            let cx3 = g.node("Mul", &[&x3, &c], vec![]);
            let s = g.node("Add", &[x, &cx3], vec![]);
            let ks = g.node("Mul", &[&s, &k], vec![]);
            g.node("Tanh", &[&ks], vec![])
        }
        Activation::GeluErf => {
            // 0.5 x (1 + erf(x / sqrt(2)))
            let r = g.const_float(std::f32::consts::SQRT_2);
            let xs = g.node("Div", &[x, &r], vec![]);
            g.node("Erf", &[&xs], vec![])
        }
    };
    let t1 = g.node("Add", &[&inner, &one], vec![]);
    let hx = g.node("Mul", &[x, &half], vec![]);
    g.node("Mul", &[&hx, &t1], vec![])
}
