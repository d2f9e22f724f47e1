//! How much memory a model needs, estimated from its shape before any tensor is
//! allocated, and checked against what the device has: an absurd size is a clear error
//! ("this needs N GB, the machine has M GB: lower X") instead of an allocation failure deep
//! in libtorch (a panic with a C++ backtrace, or an abort).
//!
//! The estimates are rough upper figures of what libtorch holds at the peak (weights,
//! gradients, Adam moments and one micro-batch of activations for training; weights, the
//! KV cache, the prompt pass and the logits for generation). They are compared with the
//! whole machine (RAM plus swap) rather than with the memory free at the moment, so only
//! what cannot fit at all is refused. GPU memory is not checked: neither tch nor
//! torch-sys exposes the device's total memory.
//!
//! Every size is computed in `u128`, so no shape within
//! [`gptpipe_hf::SHAPE_LIMITS`] (nor far beyond) overflows.

use crate::model::Config;
use anyhow::{bail, Result};
use gptpipe_core::config::Optimizer;
use tch::{Device, Kind};

/// What an allocation needs, by part, and which key lowers it most.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// What the memory is for ("training", "generation", "loading the model").
    pub what: &'static str,
    /// `(part, bytes)`, largest contributions first once [`Need::total`] is taken.
    pub parts: Vec<(String, u128)>,
    /// The advice when it does not fit: which key or setting to lower.
    pub lower: String,
}

impl Need {
    pub fn total(&self) -> u128 {
        self.parts.iter().map(|(_, b)| b).sum()
    }
}

/// Bytes of one element of `kind`.
pub fn elem_bytes(kind: Kind) -> u128 {
    match kind {
        Kind::Half | Kind::BFloat16 => 2,
        Kind::Double | Kind::Int64 => 8,
        _ => 4,
    }
}

/// The parameter count of `cfg` (the tied head once), in `u128`.
pub fn parameters(cfg: &Config) -> u128 {
    let e = cfg.n_embd as u128;
    let inner = cfg.n_inner as u128;
    let per_layer =
        4 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * inner + inner) + (inner * e + e);
    cfg.vocab_size as u128 * e + cfg.n_ctx as u128 * e + cfg.n_layer as u128 * per_layer + 2 * e
}

/// The fp32 weights of `cfg`: what loading or creating the model allocates.
pub fn weights(cfg: &Config) -> Need {
    Need {
        what: "loading the model",
        parts: vec![("fp32 weights".into(), 4 * parameters(cfg))],
        lower: smaller_model(),
    }
}

fn smaller_model() -> String {
    "use a smaller model (lower n_layer, n_embd, n_ctx or vocab_size)".into()
}

/// Finetuning `cfg` on windows of `window` tokens, `batch_size` per micro-batch, computing
/// in `compute` (None: fp32), with `optimizer`; training-time samples of `sample_num` rows
/// (0 when training does not sample).
pub fn finetune(
    cfg: &Config,
    window: usize,
    batch_size: usize,
    compute: Option<Kind>,
    optimizer: Optimizer,
    sample_num: usize,
) -> Need {
    let p = parameters(cfg);
    let elem = compute.map_or(4, elem_bytes);
    let moments = match optimizer {
        Optimizer::Sgd => 0,
        Optimizer::Adam | Optimizer::Adamw => 2,
    };
    // fp32 masters, their gradient and the moments; a half-precision cast for the forward.
    let mut state = (2 + moments) * 4 * p;
    if compute.is_some() {
        state += elem * p;
    }
    let (b, t) = (batch_size as u128, window as u128);
    let (e, h, l, v) = (
        cfg.n_embd as u128,
        cfg.n_head as u128,
        cfg.n_layer as u128,
        cfg.vocab_size as u128,
    );
    // Per token and layer, what backward needs: about 17 activations of width n_embd
    // (Korthikanti et al., 2022) plus a row of attention weights per head.
    let activations = b * t * (l * (17 * e + h * t) * elem + v * (elem + 8));
    let sampling = match sample_num {
        0 => 0,
        n => generation_buffers(cfg, n, 1, elem),
    };
    let (label, batch) = if sampling > activations {
        (
            format!("samples of sample_num = {sample_num} rows"),
            sampling,
        )
    } else {
        (
            format!("activations of batch_size = {batch_size} windows of {window} tokens"),
            activations,
        )
    };
    let lower = if batch > state {
        if sampling > activations {
            "lower sample_num".to_string()
        } else {
            "lower batch_size (raise accumulate_gradients to keep the tokens per step)".into()
        }
    } else {
        smaller_model()
    };
    let moments_label = if moments > 0 {
        "fp32 weights, gradients and optimizer moments"
    } else {
        "fp32 weights and gradients"
    };
    Need {
        what: "training",
        parts: vec![(moments_label.into(), state), (label, batch)],
        lower,
    }
}

/// The KV cache of `rows` rows over the whole context, the prompt pass of `prompt` tokens
/// per row and the logits, in elements of `elem` bytes.
fn generation_buffers(cfg: &Config, rows: usize, prompt: usize, elem: u128) -> u128 {
    let (b, t) = (rows as u128, prompt as u128);
    let (e, h, l, v, n) = (
        cfg.n_embd as u128,
        cfg.n_head as u128,
        cfg.n_layer as u128,
        cfg.vocab_size as u128,
        cfg.n_ctx as u128,
    );
    let kv = b * l * 2 * n * e * elem;
    // The prompt pass keeps its own keys and values and one layer's intermediates.
    let prompt_pass = b * t * (l * 2 * e + 16 * e + h * t) * elem;
    // Logits in the compute kind, their fp32 copy and the host's.
    let logits = b * v * (elem + 8);
    kv + prompt_pass + logits
}

/// Generating a batch of `rows` rows from a prompt of `prompt` tokens with the model of
/// `cfg` (weights in `kind`) already loaded.
pub fn generation(cfg: &Config, rows: usize, prompt: usize, kind: Kind) -> Need {
    let elem = elem_bytes(kind);
    let batch = generation_buffers(cfg, rows, prompt, elem);
    let weights = elem * parameters(cfg);
    let lower = if batch > weights {
        "lower batch_size".to_string()
    } else {
        smaller_model()
    };
    Need {
        what: "generation",
        parts: vec![
            ("weights".into(), weights),
            (
                format!(
                    "KV cache and logits of batch_size = {rows} rows of {} tokens",
                    cfg.n_ctx
                ),
                batch,
            ),
        ],
        lower,
    }
}

/// The memory `device` has in all: `(bytes, description)`; `None` when unknown (CUDA, or
/// no `/proc/meminfo`), and then nothing is checked.
pub fn capacity(device: Device) -> Option<(u128, String)> {
    if device != Device::Cpu {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line[name.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    let ram = field("MemTotal")?;
    let swap = field("SwapTotal").unwrap_or(0);
    let description = if swap > 0 {
        format!("{} of RAM and {} of swap", gb(ram), gb(swap))
    } else {
        format!("{} of RAM", gb(ram))
    };
    Some((ram + swap, description))
}

/// `bytes` in GB (10^9 bytes), with one decimal.
pub fn gb(bytes: u128) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Fails with "this needs N GB, the machine has M GB" when `need` exceeds what `device`
/// has in all; passes when the device's memory is unknown.
pub fn ensure_fits(need: &Need, device: Device) -> Result<()> {
    let Some((have, description)) = capacity(device) else {
        return Ok(());
    };
    check(need, have, &description)
}

/// [`ensure_fits`] against `have` bytes described as `description`.
pub fn check(need: &Need, have: u128, description: &str) -> Result<()> {
    let total = need.total();
    if total <= have {
        return Ok(());
    }
    let mut parts = need.parts.clone();
    parts.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let parts: Vec<String> = parts
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(name, b)| format!("{name}: {}", gb(*b)))
        .collect();
    bail!(
        "{} needs about {} of memory ({}), but the machine has {} ({description}): {}",
        need.what,
        gb(total),
        parts.join(", "),
        gb(have),
        need.lower
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_fits_a_laptop_and_an_absurd_context_does_not() {
        let cfg = Config::gpt2();
        assert_eq!(parameters(&cfg), cfg.num_parameters() as u128);
        let laptop = 16 * 1_000_000_000u128;
        check(&weights(&cfg), laptop, "16 GB").unwrap();
        let train = finetune(&cfg, 1024, 1, None, Optimizer::Adam, 1);
        check(&train, laptop, "16 GB").unwrap();
        check(&generation(&cfg, 20, 1, Kind::Float), laptop, "16 GB").unwrap();

        let e = check(
            &generation(&cfg, 1_000_000, 1, Kind::Float),
            laptop,
            "16 GB",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lower batch_size"), "{e}");
        assert!(e.contains("the machine has 16.0 GB"), "{e}");

        let mut huge = cfg.clone();
        (huge.n_layer, huge.n_embd, huge.n_inner, huge.vocab_size) =
            (1 << 10, 1 << 16, 4 << 16, 1 << 24);
        let e = check(&weights(&huge), laptop, "16 GB")
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaller model"), "{e}");
        let e = check(
            &finetune(&cfg, 1024, 1 << 30, None, Optimizer::Adam, 1),
            laptop,
            "16 GB",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lower batch_size"), "{e}");
    }
}
