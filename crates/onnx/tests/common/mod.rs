//! Shared helpers of the integration tests: the reference Python, tiny random models saved
//! by transformers, and running the Python oracles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$GPTPIPE_PYTHON`, else the workspace's `.venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("GPTPIPE_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv/bin/python"),
    }
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs a Python script and returns its stdout, failing the test with stderr on error.
pub fn run_py(name: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(script(name))
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The last line of a script's stdout, as JSON.
pub fn run_py_json(name: &str, args: &[&str]) -> serde_json::Value {
    let out = run_py(name, args);
    let line = out.lines().last().expect("no output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: bad JSON {line:?}: {e}"))
}

/// Runs a Python script with `stdin` and returns the last stdout line as JSON.
pub fn run_py_stdin(name: &str, args: &[&str], stdin: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(script(name))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("no output")).unwrap()
}

/// transformers' logits `[position][vocab]` of each row.
pub fn reference_logits(hf: &Path, rows: &[Vec<i64>]) -> Vec<Vec<Vec<f32>>> {
    let input = serde_json::json!({ "ids": rows }).to_string();
    let json = run_py_stdin("logits.py", &[hf.to_str().unwrap()], &input);
    serde_json::from_value(json["logits"].clone()).unwrap()
}

/// A tiny GPT-2 with random weights, saved by transformers (seeded, so deterministic).
pub struct TinyModel {
    pub seed: u64,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub n_positions: usize,
    pub vocab: usize,
    pub untied: bool,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            seed: 1,
            n_layer: 2,
            n_head: 4,
            n_embd: 64,
            n_positions: 64,
            vocab: 1000,
            untied: false,
        }
    }
}

impl TinyModel {
    /// Saves the model into `dir` (which must not exist yet).
    pub fn save(&self, dir: &Path) {
        let nums = [
            self.seed as usize,
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.n_positions,
            self.vocab,
        ]
        .map(|n| n.to_string());
        let mut args: Vec<&str> = vec![dir.to_str().unwrap()];
        args.extend(nums.iter().map(String::as_str));
        if self.untied {
            args.push("untied");
        }
        run_py("make_model.py", &args);
    }

    /// The model's folder in a cache shared by all tests and runs (under cargo's
    /// `CARGO_TARGET_TMPDIR`), made once: saving a model costs a Python start-up with
    /// torch and transformers, and a seeded model is the same every time. The key covers
    /// the parameters and the script, so editing either makes a new model.
    pub fn cached(&self) -> PathBuf {
        let script_text = std::fs::read(script("make_model.py")).unwrap();
        let key = format!(
            "s{}-l{}-h{}-e{}-p{}-v{}-{}-{:016x}",
            self.seed,
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.n_positions,
            self.vocab,
            if self.untied { "untied" } else { "tied" },
            fnv1a(&script_text)
        );
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gptpipe-onnx-models");
        let dir = root.join(key);
        if dir.join("model.safetensors").is_file() {
            return dir;
        }
        std::fs::create_dir_all(&root).unwrap();
        // Save beside and rename, so a concurrent test never sees a half-written folder.
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&root)
            .unwrap();
        let staged = tmp.path().join("m");
        self.save(&staged);
        if std::fs::rename(&staged, &dir).is_err() {
            assert!(
                dir.join("model.safetensors").is_file(),
                "cannot cache a model"
            );
        }
        dir
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
