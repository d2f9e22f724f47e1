//! Where a model comes from: a hub id (downloaded once into the standard Hugging Face
//! cache), a local folder, another stage's output, or a fresh random model.

use crate::model::{Config, Gpt2};
use crate::weights;
use anyhow::{bail, Context, Result};
use gptpipe_core::config::StageKind;
use gptpipe_core::stage::ModelSource;
use std::path::PathBuf;
use tch::Device;

/// The Hugging Face folder of `source`, downloading a hub model first; `None` for an
/// inline random model.
pub fn model_folder(source: &ModelSource) -> Result<Option<PathBuf>> {
    match source {
        ModelSource::Inline(_) => Ok(None),
        ModelSource::Folder(dir) if crate::gpt2_simple::is_checkpoint(dir) => Ok(Some(dir.clone())),
        ModelSource::Folder(dir) => {
            weights::check_folder(dir)?;
            Ok(Some(dir.clone()))
        }
        ModelSource::Stage { name, kind, dir } => {
            if *kind != StageKind::Finetune {
                bail!(
                    "model \"@{name}\" is a {kind} stage; libtorch loads a finetune stage's \
                     output or a Hugging Face folder"
                );
            }
            weights::check_folder(dir).with_context(|| format!("output of stage {name}"))?;
            Ok(Some(dir.clone()))
        }
        ModelSource::Hub(id) => hub_folder(id).map(Some),
    }
}

/// Loads the model of `source` on `device`; an inline model is initialised from `seed`.
pub fn load_model(source: &ModelSource, device: Device, seed: u64) -> Result<Gpt2> {
    match source {
        ModelSource::Inline(m) => {
            let config = Config::from_inline(m)?;
            crate::memory::ensure_fits(&crate::memory::weights(&config), device)
                .context("inline model")?;
            Ok(Gpt2::random(&config, device, seed))
        }
        other => {
            let dir = model_folder(other)?.expect("not inline");
            weights::load_folder(&dir, device)
        }
    }
}

pub use gptpipe_hf::hub_folder;
