//! Hugging Face model folders as gptpipe reads them: `config.json` + one
//! `model.safetensors`. Shared by the libtorch and ONNX-only builds, so both explain a
//! folder they cannot load the same way.

use anyhow::{bail, Result};
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Checks that `dir` holds a loadable model, with an error that says what is missing.
pub fn check_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist", dir.display());
    }
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        if dir.join("pytorch_model.bin").exists() {
            bail!(
                "{} holds only pytorch_model.bin, a pickle checkpoint: loading pickle can run \
                 arbitrary code, so gptpipe refuses it. Convert it once with transformers \
                 (`GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder, \
                 safe_serialization=True)`) to get model.safetensors",
                dir.display()
            );
        }
        if dir.join("model.safetensors.index.json").exists() {
            bail!(
                "{} holds a sharded checkpoint (model.safetensors.index.json); save it as \
                 one model.safetensors file",
                dir.display()
            );
        }
        bail!(
            "model folder {} has no {WEIGHTS_FILE} (a Hugging Face folder needs {CONFIG_FILE} \
             and {WEIGHTS_FILE})",
            dir.display()
        );
    }
    if !dir.join(CONFIG_FILE).is_file() {
        bail!(
            "model folder {} has no {CONFIG_FILE} (a Hugging Face folder needs {CONFIG_FILE} \
             and {WEIGHTS_FILE})",
            dir.display()
        );
    }
    Ok(())
}

/// The largest GPT-2 shapes gptpipe accepts, far beyond any real model (GPT-2 XL: 48 layers,
/// 25 heads, width 1600, context 1024, vocabulary 50257) yet small enough that no product
/// of them (a weight's element count, a KV cache's) overflows 64 bits before memory is
/// estimated. Shared by the pipeline check of an inline model, libtorch's and the ONNX
/// exporter's reading of `config.json`.
pub const SHAPE_LIMITS: [(&str, usize); 5] = [
    ("n_layer", 1 << 10),
    ("n_head", 1 << 12),
    ("n_embd", 1 << 16),
    ("n_ctx", 1 << 20),
    ("vocab_size", 1 << 24),
];

/// Width of the MLP at most (`n_inner`, 4 * n_embd by default).
pub const MAX_N_INNER: usize = 4 << 16;

/// The first of `n_layer`, `n_head`, `n_embd`, `n_ctx` (`n_positions`) and `vocab_size`
/// above [`SHAPE_LIMITS`], as `(key, message)`.
pub fn check_shape(
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_ctx: usize,
    vocab_size: usize,
) -> Result<(), (&'static str, String)> {
    let values = [n_layer, n_head, n_embd, n_ctx, vocab_size];
    for ((key, max), value) in SHAPE_LIMITS.into_iter().zip(values) {
        if value > max {
            return Err((
                key,
                format!(
                    "{key} = {value} is more than gptpipe's limit of {max} (GPT-2 XL has \
                     n_layer = 48, n_head = 25, n_embd = 1600, n_ctx = 1024, vocab_size = \
                     50257); no machine has the memory for such a model"
                ),
            ));
        }
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
        assert!(error_of(&[CONFIG_FILE, "pytorch_model.bin"]).contains("pickle"));
        assert!(error_of(&[CONFIG_FILE, "model.safetensors.index.json"]).contains("sharded"));
        assert!(error_of(&[WEIGHTS_FILE]).contains("has no config.json"));
        assert!(error_of(&[]).contains("has no model.safetensors"));
    }
}
