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
    cfg.vocab_size as u128 * e
        + cfg.n_ctx as u128 * e
        + cfg.n_layer as u128 * block_parameters(cfg)
        + 2 * e
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

/// What a finetune stage's memory depends on, besides the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    /// Tokens per window.
    pub window: usize,
    pub batch_size: usize,
    /// The compute kind (None: fp32).
    pub compute: Option<Kind>,
    pub optimizer: Optimizer,
    /// Rows of the training-time samples (0 when training does not sample).
    pub sample_num: usize,
    /// Gradient checkpointing (`use_memory_saving_gradients`).
    pub checkpointing: bool,
    /// `only_train_transformer_layers`.
    pub only_blocks: bool,
    /// `num_layers_freeze`.
    pub frozen_blocks: usize,
}

impl Training {
    /// The parameters that train: all but the embeddings and final norm with
    /// `only_train_transformer_layers`, and but the first `num_layers_freeze` blocks.
    pub fn trainable(&self, cfg: &Config) -> u128 {
        let e = cfg.n_embd as u128;
        let mut p = parameters(cfg);
        if self.only_blocks {
            p -= (cfg.vocab_size + cfg.n_ctx) as u128 * e + 2 * e;
        }
        p - self.frozen_blocks.min(cfg.n_layer) as u128 * block_parameters(cfg)
    }

    /// The first block whose activations backward needs: below it nothing trains (frozen
    /// blocks under frozen embeddings save nothing for backward).
    fn first_saved_block(&self) -> usize {
        if self.only_blocks {
            self.frozen_blocks
        } else {
            0
        }
    }
}

/// The parameters of one block.
pub fn block_parameters(cfg: &Config) -> u128 {
    let e = cfg.n_embd as u128;
    let inner = cfg.n_inner as u128;
    4 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * inner + inner) + (inner * e + e)
}

/// Finetuning `cfg` as `t` says: the fp32 weights, the trained ones' gradients and
/// optimizer moments, a half-precision copy of the weights when computing in one, and the
/// larger of one micro-batch's activations and the training-time samples. When it does
/// not fit, [`Need::lower`] lists the settings that lower it, by how much each saves.
pub fn finetune(cfg: &Config, t: &Training) -> Need {
    let (label, state, batch, sampling) = finetune_parts(cfg, t);
    let total = state + batch;
    let moments_label = if t.optimizer == Optimizer::Sgd {
        "fp32 weights and gradients"
    } else {
        "fp32 weights, gradients and optimizer moments"
    };
    Need {
        what: "training",
        parts: vec![(moments_label.into(), state), (label, batch)],
        lower: ways_to_fit(cfg, t, total, sampling),
    }
}

/// `(label of the batch part, weights and optimizer state, batch part, sampling part)`.
fn finetune_parts(cfg: &Config, t: &Training) -> (String, u128, u128, u128) {
    let p = parameters(cfg);
    let trained = t.trainable(cfg);
    let elem = t.compute.map_or(4, elem_bytes);
    let moments = match t.optimizer {
        Optimizer::Sgd => 0,
        Optimizer::Adam | Optimizer::Adamw => 2,
    };
    // fp32 masters, the trained ones' gradient and moments; a half-precision cast for the
    // forward.
    let mut state = 4 * p + (1 + moments) * 4 * trained;
    if t.compute.is_some() {
        state += elem * p;
    }
    let (b, w) = (t.batch_size as u128, t.window as u128);
    let (e, h, l, v) = (
        cfg.n_embd as u128,
        cfg.n_head as u128,
        cfg.n_layer as u128,
        cfg.vocab_size as u128,
    );
    // Per token and block, what backward needs: about 17 activations of width n_embd
    // (Korthikanti et al., 2022) plus a row of attention weights per head. Blocks below the
    // first that trains (under frozen embeddings) keep nothing.
    let block = (17 * e + h * w) * elem;
    let saved = l.saturating_sub(t.first_saved_block() as u128);
    let blocks = if t.checkpointing {
        // Each block's input, and one block's activations while it is recomputed.
        saved * e * elem + block.min(saved * block)
    } else {
        saved * block
    };
    let activations = b * w * (blocks + v * (elem + 8));
    let sampling = match t.sample_num {
        0 => 0,
        n => generation_buffers(cfg, n, 1, elem),
    };
    if sampling > activations {
        (
            format!("samples of sample_num = {} rows", t.sample_num),
            state,
            sampling,
            sampling,
        )
    } else {
        (
            format!(
                "activations of batch_size = {} windows of {} tokens",
                t.batch_size, t.window
            ),
            state,
            activations,
            sampling,
        )
    }
}

/// What to change for training `cfg` as `t` to need less than `total`, the largest saving
/// first, each with what it saves; a smaller model last.
fn ways_to_fit(cfg: &Config, t: &Training, total: u128, sampling: u128) -> String {
    let mut options: Vec<(String, Training)> = Vec::new();
    let with = |f: &dyn Fn(&mut Training)| {
        let mut alt = t.clone();
        f(&mut alt);
        alt
    };
    if t.batch_size > 1 {
        options.push((
            "lower batch_size to 1 (raise accumulate_gradients to keep the tokens per step)".into(),
            with(&|a| a.batch_size = 1),
        ));
    }
    if !t.checkpointing {
        options.push((
            "set use_memory_saving_gradients = true (gradient checkpointing: recomputes \
             activations, about a third slower)"
                .into(),
            with(&|a| a.checkpointing = true),
        ));
    }
    if !t.only_blocks {
        options.push((
            "set only_train_transformer_layers = true".into(),
            with(&|a| a.only_blocks = true),
        ));
    }
    let half = cfg.n_layer / 2;
    if t.frozen_blocks < half {
        options.push((
            format!("set num_layers_freeze = {half} (of {} blocks)", cfg.n_layer),
            with(&|a| a.frozen_blocks = half),
        ));
    }
    if t.optimizer != Optimizer::Sgd {
        options.push((
            "set optimizer = \"sgd\" (no moments)".into(),
            with(&|a| a.optimizer = Optimizer::Sgd),
        ));
    }
    if t.compute.is_none() {
        options.push((
            "set precision = \"bf16\" (half-precision activations)".into(),
            with(&|a| a.compute = Some(Kind::BFloat16)),
        ));
    }
    if sampling > 0 && t.sample_num > 1 {
        options.push(("lower sample_num to 1".into(), with(&|a| a.sample_num = 1)));
    }
    let mut savings: Vec<(u128, String)> = options
        .into_iter()
        .filter_map(|(what, alt)| {
            let (_, state, batch, _) = finetune_parts(cfg, &alt);
            let saved = total.saturating_sub(state + batch);
            (saved > 0).then(|| (saved, format!("{what}: saves {}", gb(saved))))
        })
        .collect();
    savings.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut ways: Vec<String> = savings.into_iter().map(|(_, w)| w).collect();
    ways.push(smaller_model_for(cfg));
    format!("to fit, {}", ways.join("; "))
}

/// A smaller model, by GPT-2 size name when `cfg` is one of the larger ones.
fn smaller_model_for(cfg: &Config) -> String {
    let sizes = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];
    let smaller = sizes
        .iter()
        .position(|name| Config::preset(name).is_some_and(|p| &p == cfg))
        .filter(|&i| i > 0)
        .map(|i| sizes[i - 1]);
    match smaller {
        Some(name) => format!("or use a smaller model (model = \"{name}\")"),
        None => format!("or {}", smaller_model()),
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

/// Caps the memory gptpipe plans with (`GPTPIPE_MEMORY_LIMIT`, bytes or with a unit: "8GB",
/// "512MiB"), for a machine shared with other work, and for tests of the refusals.
pub const MEMORY_LIMIT_ENV: &str = "GPTPIPE_MEMORY_LIMIT";

/// `GPTPIPE_MEMORY_LIMIT` in bytes, when set.
fn memory_limit() -> Result<Option<u128>> {
    let Ok(text) = std::env::var(MEMORY_LIMIT_ENV) else {
        return Ok(None);
    };
    parse_size(&text).map(Some).ok_or_else(|| {
        anyhow::anyhow!(
            "{MEMORY_LIMIT_ENV} = {text:?} is not a size (bytes, or a number with KB, MB, GB, \
             TB, KiB, MiB, GiB or TiB)"
        )
    })
}

/// "8GB", "1.5 GiB", "1048576" as bytes.
pub fn parse_size(text: &str) -> Option<u128> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let n: f64 = number.parse().ok()?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024f64,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some((n * scale) as u128)
}

/// What `device` has and `GPTPIPE_MEMORY_LIMIT` allows: the smaller, described.
fn limited(found: Option<(u128, String)>) -> Result<Option<(u128, String)>> {
    Ok(match (found, memory_limit()?) {
        (Some((have, d)), Some(limit)) if limit < have => {
            Some((limit, format!("{MEMORY_LIMIT_ENV} = {} of {d}", gb(limit))))
        }
        (None, Some(limit)) => Some((limit, format!("{MEMORY_LIMIT_ENV} = {}", gb(limit)))),
        (found, _) => found,
    })
}

/// The memory of training `device`: [`capacity`] on the CPU, the GPU's own memory on CUDA
/// (through [`crate::device::cuda_properties`]), capped by `GPTPIPE_MEMORY_LIMIT`.
pub fn training_capacity(device: Device) -> Result<Option<(u128, String)>> {
    let found = match device {
        Device::Cuda(i) => crate::device::cuda_properties(i).map(|p| {
            (
                p.total_memory,
                format!("{} of GPU memory on cuda:{i}", gb(p.total_memory)),
            )
        }),
        _ => machine_capacity(device),
    };
    limited(found)
}

/// Fails as [`ensure_fits`] does, against [`training_capacity`] (the GPU's memory on CUDA).
pub fn ensure_training_fits(need: &Need, device: Device) -> Result<()> {
    let Some((have, description)) = training_capacity(device)? else {
        return Ok(());
    };
    check(need, have, &description)
}

/// The memory `device` has in all: `(bytes, description)`, capped by
/// `GPTPIPE_MEMORY_LIMIT`; `None` when unknown (CUDA, or no `/proc/meminfo`, without the
/// variable), and then nothing is checked.
pub fn capacity(device: Device) -> Option<(u128, String)> {
    limited(machine_capacity(device)).ok().flatten()
}

fn machine_capacity(device: Device) -> Option<(u128, String)> {
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
    let Some((have, description)) = limited(machine_capacity(device))? else {
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
        let train = finetune(&cfg, &training(1024, 1));
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
        let e = check(&finetune(&cfg, &training(1024, 1 << 30)), laptop, "16 GB")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lower batch_size"), "{e}");
    }

    fn training(window: usize, batch_size: usize) -> Training {
        Training {
            window,
            batch_size,
            compute: None,
            optimizer: Optimizer::Adam,
            sample_num: 1,
            checkpointing: false,
            only_blocks: false,
            frozen_blocks: 0,
        }
    }

    #[test]
    fn gpt2_sizes_have_their_known_parameter_counts() {
        // transformers' GPT2Config(n_layer, n_head, n_embd) with the tied head counted once
        // (`sum(p.numel() for p in GPT2LMHeadModel(config).parameters())`).
        for (name, count) in [
            ("gpt2", 124_439_808u128),
            ("gpt2-medium", 354_823_168),
            ("gpt2-large", 774_030_080),
            ("gpt2-xl", 1_557_611_200),
        ] {
            let cfg = Config::preset(name).unwrap();
            assert_eq!(parameters(&cfg), count, "{name}");
            assert_eq!(cfg.num_parameters() as u128, count, "{name}");
        }
    }

    #[test]
    fn the_training_estimate_adds_up_and_each_option_lowers_it() {
        let cfg = Config::preset("gpt2-medium").unwrap();
        let p = 354_823_168u128;
        let t = training(1024, 1);
        let need = finetune(&cfg, &t);
        // fp32 weights, gradient and two Adam moments.
        assert_eq!(need.parts[0].1, 16 * p);
        // 24 blocks of (17 * 1024 + 16 * 1024) fp32 values per token, and the logits
        // (fp32, their log-softmax and the host's): 1024 tokens.
        let per_token = 24 * (17 * 1024 + 16 * 1024) * 4 + 50257 * 12;
        assert_eq!(need.parts[1].1, 1024 * per_token);

        let total = need.total();
        let lower = |f: &dyn Fn(&mut Training)| {
            let mut alt = t.clone();
            f(&mut alt);
            finetune(&cfg, &alt).total()
        };
        let ckpt = lower(&|a| a.checkpointing = true);
        assert_eq!(
            total - ckpt,
            1024 * (24 * (17 * 1024 + 16 * 1024) * 4 - (24 * 1024 * 4 + (17 + 16) * 1024 * 4))
        );
        // Only the blocks train: no gradient or moments for the embeddings and final norm.
        let embeddings = (50257 + 1024) * 1024 + 2 * 1024;
        assert_eq!(total - lower(&|a| a.only_blocks = true), 12 * embeddings);
        // 12 frozen blocks: their gradients and moments, and (only the blocks training)
        // their activations too.
        let block = block_parameters(&cfg);
        assert_eq!(block, 12_596_224);
        assert_eq!(total - lower(&|a| a.frozen_blocks = 12), 12 * 12 * block);
        let both = lower(&|a| {
            a.frozen_blocks = 12;
            a.only_blocks = true
        });
        assert_eq!(
            total - both,
            12 * embeddings + 12 * 12 * block + 1024 * 12 * (17 * 1024 + 16 * 1024) * 4
        );
        assert_eq!(total - lower(&|a| a.optimizer = Optimizer::Sgd), 8 * p);
        assert!(lower(&|a| a.batch_size = 4) > total);
    }

    #[test]
    fn a_training_that_does_not_fit_lists_the_ways_to_fit_by_saving() {
        let cfg = Config::preset("gpt2-medium").unwrap();
        let mut t = training(1024, 4);
        t.sample_num = 0;
        let e = check(&finetune(&cfg, &t), 4_000_000_000, "4 GB")
            .unwrap_err()
            .to_string();
        let order: Vec<usize> = [
            "lower batch_size to 1",
            "use_memory_saving_gradients = true",
            "only_train_transformer_layers = true",
            "num_layers_freeze = 12",
            "optimizer = \"sgd\"",
            "precision = \"bf16\"",
            "model = \"gpt2\"",
        ]
        .iter()
        .map(|k| e.find(k).unwrap_or_else(|| panic!("{k} missing: {e}")))
        .collect();
        // Largest saving first: the savings printed are in decreasing order.
        let saves: Vec<f64> = e
            .split("saves ")
            .skip(1)
            .map(|s| s.split(" GB").next().unwrap().parse().unwrap())
            .collect();
        assert!(saves.windows(2).all(|w| w[0] >= w[1]), "{e}");
        assert_eq!(saves.len(), 6, "{e}");
        assert!(order.iter().all(|&i| i > 0));
        assert!(
            e.ends_with("or use a smaller model (model = \"gpt2\")"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("8GB"), Some(8_000_000_000));
        assert_eq!(parse_size(" 1.5 GiB"), Some(1_610_612_736));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        assert_eq!(parse_size("512 MiB"), Some(536_870_912));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("4 GiBs"), None);
    }
}
