//! Hugging Face model folders as gptpipe reads them: `config.json` + one
//! `model.safetensors` (or a `pytorch_model.bin`, read by [`crate::pickle`]). Shared by the libtorch and ONNX-only builds, so both explain a
//! folder they cannot load the same way.

use anyhow::{bail, Result};
use std::path::Path;

use crate::weights::PICKLE_FILE;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// An exported model (the layout of Hugging Face Optimum's ONNX exports), which the
/// generate stage tells from safetensors weights.
pub const ONNX_FILE: &str = "model.onnx";
/// An ONNX model's weights when they went to external data (over 2 GiB).
pub const ONNX_DATA_FILE: &str = "model.onnx.data";
/// Generation defaults, copied along with a model when the source has them.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer files a GPT-2 folder may hold: fetched from the hub, and copied into a
/// finetuned or exported model, when the source has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
];

/// Checks that `dir` holds a loadable model, with an error that says what is missing.
pub fn check_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist", dir.display());
    }
    if crate::weights::find(dir).is_none() {
        if dir.join("model.safetensors.index.json").exists() {
            bail!(
                "{} holds a sharded checkpoint (model.safetensors.index.json); save it as \
                 one model.safetensors file",
                dir.display()
            );
        }
        bail!(
            "model folder {} has no {WEIGHTS_FILE} (a Hugging Face folder needs {CONFIG_FILE} \
             and {WEIGHTS_FILE}, or the {PICKLE_FILE} of older transformers)",
            dir.display()
        );
    }
    if !dir.join(CONFIG_FILE).is_file() {
        bail!(
            "model folder {} has no {CONFIG_FILE} (a Hugging Face folder needs {CONFIG_FILE} \
             and {WEIGHTS_FILE} or {PICKLE_FILE})",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(files: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        match check_folder(dir.path()) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_incomplete_folder_says_what_is_missing() {
        assert_eq!(error_of(&[CONFIG_FILE, WEIGHTS_FILE]), "ok");
        // A pickle is a model folder; whether it is a safe one is known when it is read.
        assert_eq!(error_of(&[CONFIG_FILE, PICKLE_FILE]), "ok");
        assert!(error_of(&[CONFIG_FILE, "model.safetensors.index.json"]).contains("sharded"));
        assert!(error_of(&[WEIGHTS_FILE]).contains("has no config.json"));
        assert!(error_of(&[]).contains("has no model.safetensors"));
    }
}
