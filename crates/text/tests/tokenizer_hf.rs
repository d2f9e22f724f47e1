//! The Hugging Face side: the `tokenizers` pipeline we build and the files we write for
//! `transformers`.

use crate::common;

use gptpipe_text::{write_tokenizer_files, Gpt2Tokenizer};

/// Texts both sides must agree on (tiktoken-equal ids are checked elsewhere).
fn samples() -> Vec<String> {
    let mut texts: Vec<String> = common::TRICKY.iter().map(|s| format!("x {s} y")).collect();
    texts.push(common::tricky_text(3, 20_000));
    // Fixed text only, so the test does not depend on what this machine has installed.
    texts.push(common::tricky_text(4, 50_000));
    texts.push(
        "GPT-2 is a large transformer-based language model with 1.5 billion parameters, \
         trained on a dataset of 8 million web pages. It's trained simply to predict the \
         next word in 40GB of Internet text.\n\n    Indented  code();\t// comment\r\n"
            .repeat(50),
    );
    texts.push("<|startoftext|>A title<|endoftext|>\n<|startoftext|>Another".into());
    texts
}

#[test]
fn tokenizers_pipeline_agrees_with_fast_path() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let hf = tok.hf_tokenizer().unwrap();
    for (i, text) in samples().iter().enumerate() {
        let enc = hf.encode(text.as_str(), false).unwrap();
        assert_eq!(
            enc.get_ids(),
            tok.encode(text),
            "sample {i}: {:?}",
            &text[..text.len().min(80)]
        );
    }
}

#[test]
fn transformers_loads_written_files_and_agrees() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer_files(dir.path()).unwrap();
    for f in [
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let texts = samples();
    let input = dir.path().join("texts.json");
    std::fs::write(&input, serde_json::to_string(&texts).unwrap()).unwrap();
    let script = r#"
import json, sys
from transformers import AutoTokenizer, GPT2TokenizerFast
folder, texts = sys.argv[1], json.load(open(sys.argv[2]))
fast = GPT2TokenizerFast.from_pretrained(folder)
auto = AutoTokenizer.from_pretrained(folder)
out = {
    "fast": [fast(t)["input_ids"] for t in texts],
    "auto": [auto(t)["input_ids"] for t in texts],
    "eos": fast.eos_token_id, "bos": fast.bos_token_id, "len": len(fast),
    "max": fast.model_max_length,
    "decoded": fast.decode(fast("Hello <|endoftext|> world")["input_ids"]),
}
print(json.dumps(out))
"#;
    let out = common::run_python(
        script,
        &[dir.path().to_str().unwrap(), input.to_str().unwrap()],
    );
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let tok = Gpt2Tokenizer::new().unwrap();
    for which in ["fast", "auto"] {
        let ids: Vec<Vec<u32>> = serde_json::from_value(out[which].clone()).unwrap();
        for (i, (text, ids)) in texts.iter().zip(&ids).enumerate() {
            assert_eq!(ids, &tok.encode(text), "{which} tokenizer, sample {i}");
        }
    }
    assert_eq!(out["eos"], 50256);
    assert_eq!(out["bos"], 50256);
    assert_eq!(out["len"], 50257);
    assert_eq!(out["max"], 1024);
    assert_eq!(out["decoded"], "Hello <|endoftext|> world");
}
