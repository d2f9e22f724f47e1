//! Hugging Face tokenizer files, so that a saved model folder loads with `transformers`
//! (`GPT2TokenizerFast.from_pretrained(folder)`, `AutoTokenizer`, ...).

use super::{vocab_and_merges, ENCODER_JSON, EOT, VOCAB_BPE};
use anyhow::Context as _;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// GPT-2's context length, the `model_max_length` of the released checkpoints.
const GPT2_MAX_LENGTH: usize = 1024;

/// GPT-2's tokenizer as the `tokenizers` crate builds it: byte-level pre-tokenizer and
/// decoder, BPE model, `<|endoftext|>` as a special token (as in the hub's `gpt2`).
pub(crate) fn hf_tokenizer() -> anyhow::Result<Tokenizer> {
    let (vocab, merges) = vocab_and_merges()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(true, false, true)))
        .with_decoder(Some(ByteLevel::new(true, true, true)));
    tokenizer.add_special_tokens(&[AddedToken::from(EOT, true)]);
    Ok(tokenizer)
}

/// Writes `vocab.json`, `merges.txt`, `tokenizer.json`, `tokenizer_config.json` and
/// `special_tokens_map.json` into `dir` (which must exist), for a 1024-token context.
pub fn write_tokenizer_files(dir: &Path) -> anyhow::Result<()> {
    write_tokenizer_files_with_max_length(dir, GPT2_MAX_LENGTH)
}

/// [`write_tokenizer_files`] for a model whose context is `max_length` tokens.
pub fn write_tokenizer_files_with_max_length(dir: &Path, max_length: usize) -> anyhow::Result<()> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    // GPT-2's encoder.json and vocab.bpe are the hub's vocab.json and merges.txt.
    write("vocab.json", ENCODER_JSON.as_bytes())?;
    write("merges.txt", VOCAB_BPE.as_bytes())?;
    let json = hf_tokenizer()?
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serializing tokenizer.json: {e}"))?;
    write("tokenizer.json", json.as_bytes())?;
    let special = serde_json::json!({
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
    });
    let mut config = serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": max_length,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "errors": "replace",
        "add_bos_token": false,
    });
    config
        .as_object_mut()
        .expect("an object")
        .extend(special.as_object().expect("an object").clone());
    write(
        "special_tokens_map.json",
        &serde_json::to_vec_pretty(&special)?,
    )?;
    write(
        "tokenizer_config.json",
        &serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}
