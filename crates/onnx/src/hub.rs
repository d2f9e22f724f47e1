//! Hub ids for builds without libtorch: the same lookup as `gptpipe-torch`'s (the standard
//! Hugging Face cache, `HF_HOME`, downloading once), kept here so that an ONNX-only build
//! can export and generate from `"gpt2"` too.

use anyhow::{bail, Result};
use std::path::PathBuf;

const FILES: [&str; 4] = [
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The snapshot folder of hub model `id`, downloading `config.json`, `model.safetensors`
/// and the tokenizer files first unless they are cached.
pub fn hub_folder(id: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_owned());
    if let (Some(c), Some(w)) = (cached.get("config.json"), cached.get("model.safetensors")) {
        if c.parent() == w.parent() {
            return Ok(c.parent().unwrap().to_path_buf());
        }
    }
    let alternative = format!(
        "download it where there is network (`huggingface-cli download {id}` fills the same \
         cache), or point `model` at a local folder holding config.json and model.safetensors"
    );
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true") {
        bail!(
            "model {id:?} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: \
             {alternative}",
            cache.path().display()
        );
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .with_retries(1)
        .build()?;
    let repo = api.model(id.to_owned());
    let get = |f: &str| {
        repo.get(f).map_err(|e| {
            anyhow::anyhow!("cannot download {f} of model {id:?} from the hub ({e}): {alternative}")
        })
    };
    let config = get("config.json")?;
    let weights = get("model.safetensors")?;
    for f in FILES {
        let _ = repo.get(f);
    }
    let dir = config.parent().unwrap().to_path_buf();
    if weights.parent() != Some(dir.as_path()) {
        bail!("the Hugging Face cache for {id:?} is inconsistent (config and weights in different snapshots)");
    }
    Ok(dir)
}
