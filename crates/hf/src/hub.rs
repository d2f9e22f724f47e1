//! Hub ids: a GPT-2 repository downloaded once into the standard Hugging Face cache,
//! checked against the hashes the hub gives. Shared by the libtorch and ONNX-only builds.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

use crate::folder::{CONFIG_FILE, TOKENIZER_FILES, WEIGHTS_FILE};
use crate::weights::PICKLE_FILE;

/// Whether `id` is one of OpenAI's GPT-2 repositories (`gpt2`, `gpt2-medium`,
/// `gpt2-large`, `gpt2-xl`, with or without the `openai-community/` prefix), whose weights
/// OpenAI released under the MIT license.
pub fn is_openai_gpt2(id: &str) -> bool {
    let bare = id.strip_prefix("openai-community/").unwrap_or(id);
    matches!(bare, "gpt2" | "gpt2-medium" | "gpt2-large" | "gpt2-xl")
}

/// gpt-2-simple's names of OpenAI's GPT-2 sizes (`download_gpt2(model_name="355M")`) and
/// the hub ids of the same weights.
pub const GPT2_SIMPLE_NAMES: [(&str, &str); 4] = [
    ("124M", "gpt2"),
    ("355M", "gpt2-medium"),
    ("774M", "gpt2-large"),
    ("1558M", "gpt2-xl"),
];

/// The hub id a model name means: gpt-2-simple's size names (`"355M"`) are OpenAI's
/// repositories (`"gpt2-medium"`); any other name is a hub id as written.
pub fn hub_id(name: &str) -> &str {
    GPT2_SIMPLE_NAMES
        .iter()
        .find(|(short, _)| *short == name)
        .map_or(name, |(_, id)| id)
}

/// Downloads `id` into the Hugging Face cache (`HF_HOME`, else `~/.cache/huggingface`)
/// unless it is there already, and returns the snapshot folder.
pub fn hub_folder(id: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_owned());
    if let Some(c) = cached.get(CONFIG_FILE) {
        let dir = c.parent().unwrap();
        if crate::weights::find(dir).is_some() {
            return Ok(dir.to_path_buf());
        }
    }
    let alternative = format!(
        "download it where there is network (e.g. `huggingface-cli download {id}`, which fills \
         the same cache), or point `model` at a local folder holding {CONFIG_FILE} and \
         {WEIGHTS_FILE}, e.g. model = \"./models/{}\"",
        id.rsplit('/').next().unwrap_or(id)
    );
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if offline {
        bail!("model {id:?} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: {alternative}", cache.path().display());
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .with_retries(1)
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    let repo = api.model(id.to_owned());
    let config = repo.get(CONFIG_FILE).map_err(|e| {
        anyhow::anyhow!(
            "cannot download model {id:?} from the Hugging Face hub ({e}): {alternative}"
        )
    })?;
    // A repository of older transformers has only the pickle, which is read as data only.
    let weights = repo.get(WEIGHTS_FILE).or_else(|e| {
        repo.get(PICKLE_FILE).map_err(|_| {
            anyhow::anyhow!(
                "model {id:?} has no downloadable {WEIGHTS_FILE} or {PICKLE_FILE} ({e}): \
                 {alternative}"
            )
        })
    })?;
    verify_blob(&weights)?;
    // Fetched when the repo has them.
    for f in TOKENIZER_FILES {
        let _ = repo.get(f);
    }
    let dir = config.parent().unwrap().to_path_buf();
    if weights.parent() != Some(dir.as_path()) {
        bail!("the Hugging Face cache for {id:?} is inconsistent (config and weights in different snapshots)");
    }
    Ok(dir)
}

/// The hub cache stores a large (LFS) file as `blobs/<sha256 of its content>`, linked from
/// the snapshot: check a freshly downloaded file against that name.
pub(crate) fn verify_blob(path: &std::path::Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(()); // not content-addressed (a small, non-LFS file)
    }
    let mut file =
        std::fs::File::open(&real).with_context(|| format!("cannot read {}", real.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !digest.eq_ignore_ascii_case(name) {
        bail!(
            "{} is corrupt: its sha256 is {digest}, the hub's is {name}; delete it and run again",
            real.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{hub_folder, verify_blob};

    #[test]
    fn an_id_not_in_the_cache_offline_names_the_local_alternative() {
        let tmp = tempfile::tempdir().unwrap();
        // No other test of this crate reads these variables.
        std::env::set_var("HF_HOME", tmp.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let e = format!("{:#}", hub_folder("someone/gpt2-tiny").unwrap_err());
        assert!(
            e.contains("\"someone/gpt2-tiny\" is not in the Hugging Face cache")
                && e.contains("HF_HUB_OFFLINE is set")
                && e.contains("model = \"./models/gpt2-tiny\""),
            "{e}"
        );
    }

    #[test]
    fn blobs_are_checked_against_their_sha256_name() {
        let tmp = tempfile::tempdir().unwrap();
        // sha256("hello")
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        std::fs::write(tmp.path().join(good), b"hello").unwrap();
        std::os::unix::fs::symlink(tmp.path().join(good), tmp.path().join("model.safetensors"))
            .unwrap();
        verify_blob(&tmp.path().join("model.safetensors")).unwrap();
        std::fs::write(tmp.path().join(good), b"hellp").unwrap();
        let e = verify_blob(&tmp.path().join("model.safetensors")).unwrap_err();
        assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
        std::fs::write(tmp.path().join("config.json"), b"{}").unwrap();
        verify_blob(&tmp.path().join("config.json")).unwrap();
    }
}

#[cfg(test)]
mod names {
    #[test]
    fn gpt2_simple_sizes_are_openai_s_repositories() {
        assert_eq!(super::hub_id("124M"), "gpt2");
        assert_eq!(super::hub_id("355M"), "gpt2-medium");
        assert_eq!(super::hub_id("774M"), "gpt2-large");
        assert_eq!(super::hub_id("1558M"), "gpt2-xl");
        assert_eq!(super::hub_id("gpt2-medium"), "gpt2-medium");
        assert_eq!(super::hub_id("org/355M"), "org/355M");
    }
}
