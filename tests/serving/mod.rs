//! `gptpipe serve` through the real binary and a plain HTTP client: continuous batching
//! against `gptpipe generate`, gpt-2-cloud-run's API, limits, faults and shutdown. (The
//! real clients, the `openai` Python package and a headless browser, are in `serve/`.)

mod api;
mod batching;
#[cfg(not(feature = "worker"))]
mod deploy;
mod faults;

use crate::common::server::{tiny_model, Server};
use std::path::{Path, PathBuf};

/// The backends this build serves with.
pub fn backends() -> &'static [&'static str] {
    if cfg!(feature = "worker") {
        &["tch", "onnx"]
    } else {
        &["onnx"]
    }
}

/// A server on the tiny model (context of 64) with `backend`, on the CPU.
pub fn serve_tiny(backend: &str, extra: &[&str]) -> Option<(Server, PathBuf)> {
    let model = tiny_model(64)?;
    let dir = model.parent().unwrap().to_path_buf();
    let model_arg = model.to_str().unwrap().to_owned();
    let mut args = vec![
        "--model",
        &model_arg,
        "--backend",
        backend,
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    Some((Server::start(&dir, &args), model))
}

/// What `gptpipe generate` writes for these flags, one text per sample (jsonl).
pub fn generate(model: &Path, backend: &str, flags: &[String]) -> Vec<String> {
    let out = crate::common::gptpipe()
        .args(["generate", "--model"])
        .arg(model)
        .args(["--backend", backend, "--device", "cpu", "--format", "jsonl"])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gptpipe generate {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_owned()
        })
        .collect()
}
