//! What the generation benches of every backend share (`crates/torch/benches/generate.rs`,
//! `crates/onnx/benches/generate.rs` include this file), so their figures sit side by side:
//! an 8-token prompt, top_k = 40, temperature = 0.7, one short warm-up run before each
//! measurement, and transformers' `generate` with the same settings, run by the peer
//! script `benches/peers/hf_generate.py`.

#![allow(dead_code)]

use gptpipe_generate::{generate_range, Backend, Codec, Job, Sample, Sampling};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The value of `--name N` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// The Python with transformers: `GPTPIPE_PYTHON`, else the project's `.venv`.
pub fn python() -> PathBuf {
    std::env::var_os("GPTPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

pub fn sampling() -> Sampling {
    Sampling {
        temperature: 0.7,
        top_k: 40,
        ..Sampling::default()
    }
}

/// GPT-2's tokenizer.
pub fn codec() -> Box<dyn Codec> {
    gptpipe_generate::codec::gpt2().unwrap()
}

/// The tokens of samples `0..rows` (one batch) of `length` new tokens after the prompt.
pub fn tokens(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    sampling: Sampling,
    rows: usize,
    length: usize,
) -> Vec<Vec<u32>> {
    tokens_with(backend, codec, sampling, rows, length, false)
}

/// The benches' job: an 8-token prompt, `length` new tokens; with the stop and shape
/// controls on when `controls` (a stop at `<|endoftext|>`, `min_length = 8`,
/// `no_repeat_ngram_size = 3`, two bad words): what they cost, the fast paths (top-k
/// transfer, device sampling) being off with them.
pub fn job(codec: &dyn Codec, sampling: Sampling, length: usize, controls: bool) -> Job {
    let job = Job {
        prompt: (0..8).map(|i| (i * 977 + 13) % 50257).collect(),
        prefix: String::new(),
        include_prefix: false,
        length,
        sampling,
        seed: 0,
        stops: Vec::new(),
        controls: None,
    };
    if !controls {
        return job;
    }
    let bad = [" the".to_string(), "zz".to_string()];
    Job {
        stops: vec!["<|endoftext|>".into()],
        ..job
    }
    .with_controls(codec, 8, 3, &bad)
    .unwrap()
}

/// Samples `0..rows` of `job`, as one batch.
pub fn samples(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    job: &Job,
    rows: usize,
) -> Vec<Sample> {
    let mut out = Vec::new();
    generate_range(
        backend,
        codec,
        job,
        0..rows,
        rows,
        &mut |_| Ok(()),
        &mut |s| {
            out.extend(s);
            Ok(())
        },
    )
    .unwrap();
    out
}

/// [`tokens`], with the controls of [`job`] when `controls`.
pub fn tokens_with(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    sampling: Sampling,
    rows: usize,
    length: usize,
    controls: bool,
) -> Vec<Vec<u32>> {
    let job = job(codec, sampling, length, controls);
    samples(backend, codec, &job, rows)
        .into_iter()
        .map(|s| s.tokens)
        .collect()
}

/// Tokens/s of ours: `batch` samples of `new` tokens each, after one short warm-up.
pub fn ours(backend: &mut dyn Backend, batch: usize, new: usize) -> f64 {
    ours_with(backend, batch, new, false, false)
}

/// [`ours`], with the controls of [`job`] when `controls`, and each sample scored after
/// its batch (as a jsonl output's `logprob`) when `scores`.
pub fn ours_with(
    backend: &mut dyn Backend,
    batch: usize,
    new: usize,
    controls: bool,
    scores: bool,
) -> f64 {
    let codec = codec();
    let run = |backend: &mut dyn Backend, length: usize| -> usize {
        let job = job(codec.as_ref(), sampling(), length, controls);
        let samples = samples(backend, codec.as_ref(), &job, batch);
        if scores {
            gptpipe_generate::score::score_samples(backend, codec.as_ref(), &job, &samples, batch)
                .unwrap();
        }
        samples.iter().map(|s| s.tokens.len()).sum()
    };
    run(backend, 16);
    let t = Instant::now();
    let n = run(backend, new);
    n as f64 / t.elapsed().as_secs_f64()
}

/// Tokens/s of transformers' `generate` on the model in `dir`, same settings: the peer
/// script `benches/peers/hf_generate.py`, on the CPU with `threads` threads.
pub fn theirs(dir: &Path, batch: usize, new: usize, threads: usize) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/peers/hf_generate.py");
    let out = Command::new(python())
        .arg(script)
        .args(["--device", "cpu", "--model-dir", dir.to_str().unwrap()])
        .args(["--batch", &batch.to_string(), "--new", &new.to_string()])
        .args(["--threads", &threads.to_string()])
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("cannot run the reference python (GPTPIPE_PYTHON or .venv/bin/python)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON line from hf_generate.py");
    line["tokens_per_s"].as_f64().expect("tokens_per_s")
}

/// Saves a random GPT-2 (seed 0, vocab 50257) made by transformers into `dir`.
pub fn save_random_model(dir: &Path, layers: usize, heads: usize, embd: usize) {
    let script = r#"
import sys, torch, transformers
d, L, H, E = sys.argv[1], *map(int, sys.argv[2:5])
torch.manual_seed(0)
transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=L, n_head=H, n_embd=E)).save_pretrained(d)
"#;
    let status = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap()])
        .args([layers, heads, embd].map(|x| x.to_string()))
        .env("TRANSFORMERS_VERBOSITY", "error")
        .status()
        .unwrap();
    assert!(status.success(), "transformers could not save the model");
}
