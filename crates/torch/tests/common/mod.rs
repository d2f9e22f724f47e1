//! Shared helpers: the reference Python (transformers) and tiny random models it makes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$GPTPIPE_PYTHON`, else the workspace's `.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GPTPIPE_PYTHON") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join(".venv/bin/python")
}

/// Runs a Python script (with `args`) and returns its stdout; panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("cannot run the reference python (set GPTPIPE_PYTHON or run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates a random GPT2LMHeadModel with transformers (seeded) and saves it into `dir`.
pub fn make_hf_model(
    dir: &Path,
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_ctx: usize,
    vocab: usize,
    seed: u64,
) {
    let script = r#"
import sys, torch, transformers
d, L, H, E, C, V, seed = sys.argv[1], *map(int, sys.argv[2:8])
torch.manual_seed(seed)
cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=E, n_positions=C, vocab_size=V,
    layer_norm_epsilon=1e-5)
m = transformers.GPT2LMHeadModel(cfg)
m.save_pretrained(d)
"#;
    let a: Vec<String> = [n_layer, n_head, n_embd, n_ctx, vocab, seed as usize]
        .iter()
        .map(|x| x.to_string())
        .collect();
    let mut args = vec![dir.to_str().unwrap()];
    args.extend(a.iter().map(String::as_str));
    run_python(script, &args);
}

/// Int64 token ids `[rows, cols]` from a simple deterministic formula.
pub fn ids(rows: i64, cols: i64, vocab: i64, salt: i64) -> Vec<Vec<i64>> {
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| (r * 7919 + c * 104729 + salt * 31 + c * c) % vocab)
                .collect()
        })
        .collect()
}

pub fn ids_tensor(ids: &[Vec<i64>]) -> tch::Tensor {
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    tch::Tensor::from_slice(&flat).reshape([ids.len() as i64, ids[0].len() as i64])
}

pub fn ids_json(ids: &[Vec<i64>]) -> String {
    serde_json::to_string(ids).unwrap()
}

/// Max |a - b| of two tensors of the same shape.
pub fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
