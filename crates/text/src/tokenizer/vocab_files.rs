//! Whether a model's own vocabulary files (gpt-2-simple's `encoder.json` and `vocab.bpe`,
//! a Hugging Face folder's `vocab.json` and `merges.txt` under other names) are GPT-2's,
//! the only vocabulary gptpipe's tokenizer has. Compared by content, not bytes: copies
//! differ in JSON formatting.

use super::{ENCODER_JSON, VOCAB_BPE};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// Fails, naming the file, unless `encoder` maps GPT-2's tokens to GPT-2's ids
/// (`<|endoftext|>` 50256 included) and `merges` lists GPT-2's merges in GPT-2's order.
pub fn check_gpt2_vocabulary(encoder: &Path, merges: &Path) -> Result<()> {
    let text = std::fs::read_to_string(encoder)
        .with_context(|| format!("cannot read {}", encoder.display()))?;
    let theirs: HashMap<String, u32> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a token -> id JSON object", encoder.display()))?;
    let ours: HashMap<String, u32> =
        serde_json::from_str(ENCODER_JSON).context("the embedded encoder.json")?;
    if theirs != ours {
        bail!(
            "{} is not GPT-2's vocabulary ({} tokens; GPT-2 has {}): gptpipe's tokenizer is \
             GPT-2's only",
            encoder.display(),
            theirs.len(),
            ours.len()
        );
    }
    let text = std::fs::read_to_string(merges)
        .with_context(|| format!("cannot read {}", merges.display()))?;
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("#version"))
            .map(str::to_owned)
            .collect()
    };
    if lines(&text) != lines(VOCAB_BPE) {
        bail!(
            "{} is not GPT-2's merges: gptpipe's tokenizer is GPT-2's only",
            merges.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2s_files_pass_in_any_formatting_and_others_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (enc, bpe) = (
            dir.path().join("encoder.json"),
            dir.path().join("vocab.bpe"),
        );
        // OpenAI's formatting: one line, ", " between entries.
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(ENCODER_JSON).unwrap();
        std::fs::write(&enc, serde_json::to_string(&map).unwrap()).unwrap();
        std::fs::write(&bpe, VOCAB_BPE).unwrap();
        check_gpt2_vocabulary(&enc, &bpe).unwrap();

        let mut other = map.clone();
        other.insert("<|endoftext|>".into(), 0.into());
        std::fs::write(&enc, serde_json::to_string(&other).unwrap()).unwrap();
        let err = check_gpt2_vocabulary(&enc, &bpe).unwrap_err().to_string();
        assert!(
            err.contains("encoder.json is not GPT-2's vocabulary"),
            "{err}"
        );

        std::fs::write(&enc, serde_json::to_string(&map).unwrap()).unwrap();
        let mut swapped: Vec<&str> = VOCAB_BPE.lines().collect();
        swapped.swap(1, 2);
        std::fs::write(&bpe, swapped.join("\n")).unwrap();
        let err = check_gpt2_vocabulary(&enc, &bpe).unwrap_err().to_string();
        assert!(err.contains("vocab.bpe is not GPT-2's merges"), "{err}");
    }
}
