//! A gpt-2-simple checkpoint (`gptpipe_hf::gpt2_simple`) as a libtorch model: its shape
//! from `hparams.json`, checked against the machine's memory before anything is read, its
//! weights copied in by their Hugging Face names, and its vocabulary checked to be GPT-2's
//! (gptpipe's tokenizer is GPT-2's, as gpt-2-simple's always is).

use crate::model::{Config, Gpt2};
use anyhow::{bail, Context, Result};
use gptpipe_hf::gpt2_simple;
use std::path::Path;
use tch::{Device, Tensor};

pub use gpt2_simple::is_checkpoint;

/// The model's config, from `hparams.json` alone.
pub fn config(path: &Path) -> Result<Config> {
    let h = gpt2_simple::hparams(path)?;
    Config::from_json(&h.hf_config())
        .with_context(|| format!("gpt-2-simple checkpoint {}", path.display()))
}

/// Loads the checkpoint `path` names (a run folder's latest step, or `<folder>/model-N`)
/// onto `device`.
pub fn load(path: &Path, device: Device) -> Result<Gpt2> {
    let config = config(path)?;
    crate::memory::ensure_fits(&crate::memory::weights(&config), device)
        .with_context(|| format!("model {}", path.display()))?;
    let ckpt = gpt2_simple::read_checkpoint(path)?;
    gptpipe_text::tokenizer::check_gpt2_vocabulary(&ckpt.encoder_json, &ckpt.vocab_bpe)?;
    let model = Gpt2::zeros(&config, device);
    let mut tensors = ckpt.tensors;
    tch::no_grad(|| -> Result<()> {
        for (name, param) in model.named_parameters() {
            let i = tensors
                .iter()
                .position(|t| &t.name == name)
                .with_context(|| format!("{}: no weights for {name}", path.display()))?;
            let t = tensors.swap_remove(i);
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            if shape != param.size() {
                bail!(
                    "{}: {name} has shape {shape:?}, the model {:?}",
                    path.display(),
                    param.size()
                );
            }
            let value = Tensor::from_slice(&t.data).reshape(shape.as_slice());
            param.shallow_clone().copy_(&value.to_kind(param.kind()));
        }
        Ok(())
    })?;
    Ok(model)
}
