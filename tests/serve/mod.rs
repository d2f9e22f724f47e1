//! `gptpipe serve` through the real binary, no mocks.
//!
//! - [`batching`], [`api`], [`faults`]: a plain HTTP client on a TCP socket
//!   (`tests/common/server.rs`) against a tiny random model on both backends: continuous
//!   batching against `gptpipe generate`, gpt-2-cloud-run's API, every 400, the queue,
//!   time limits, clients that leave, SIGTERM; [`deploy`] replays the Dockerfile's image
//!   (ONNX-only build).
//! - [`openai_client`], [`curl`], [`browser`]: real clients, the `openai` Python package,
//!   Debian's `curl` and Debian's chromium driven by Playwright, against the generate stage
//!   of a tiny pipeline finetuned for the occasion ([`project`]).
//!
//! The clients come from `.venv` (scripts/setup.sh installs `openai` and `playwright`) and
//! from Debian (`chromium`, `curl`; `.ci/run` installs them). A test whose client is missing
//! says so and passes, except when `GPTPIPE_TEST_CLIENTS=require` (scripts/test.sh sets it,
//! so CI runs them all): then a missing client fails the test.

mod api;
mod batching;
#[cfg(feature = "worker")]
mod browser;
#[cfg(all(feature = "worker", feature = "onnx"))]
mod curl;
#[cfg(not(feature = "worker"))]
mod deploy;
mod faults;
#[cfg(feature = "worker")]
mod openai_client;

use crate::common::server::{tiny_model, Server};
#[cfg(feature = "worker")]
use crate::common::{missing, python};
#[cfg(feature = "worker")]
use crate::common::{Run, Test};
#[cfg(feature = "worker")]
use serde_json::Value;
use std::path::{Path, PathBuf};
#[cfg(feature = "worker")]
use std::process::Command;
#[cfg(feature = "worker")]
use std::sync::OnceLock;

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

/// The pipeline every test serves: a 1-layer model finetuned for a few steps on CPU, its
/// generate stage (`samples`, whose keys are the served defaults) and its ONNX export.
#[cfg(feature = "worker")]
pub const PIPELINE: &str = r#"
[pipeline]
name = "tiny"
workdir = "work"
seed = 7

[stages.titles]
kind = "prepare"
inputs = ["data/titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 128, dropout = 0.0 }
steps = 10
batch_size = 4
learning_rate = 1e-2
device = "cpu"
sample_every = 0

[stages.samples]
kind = "generate"
model = "@train"
prefix = "<|startoftext|>"
truncate = "<|endoftext|>"
length = 60
nsamples = 3
batch_size = 2
temperature = 0.9
top_k = 20

[stages.onnx]
kind = "export"
model = "@train"
"#;

/// The served stage's sampling keys, as `gptpipe generate` flags (to compare with).
#[cfg(feature = "worker")]
pub const STAGE_SAMPLING: &[&str] = &[
    "--temperature",
    "0.9",
    "--top-k",
    "20",
    "--truncate",
    "<|endoftext|>",
];

/// The name the served stage's model goes by (its upstream stage).
#[cfg(feature = "worker")]
pub const MODEL_NAME: &str = "train";

/// The project folder with [`PIPELINE`] run (trained and exported), made once per run of
/// this test binary under cargo's temp folder for tests.
#[cfg(feature = "worker")]
pub fn project() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One folder per run of this test binary, named by its process id, in a folder of
        // their own: earlier runs' folders go unless their process still runs, and nothing
        // else is ever deleted.
        let runs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-projects");
        for entry in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_ok() && !Path::new("/proc").join(&name).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = runs.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        crate::common::write(&dir.join("p.toml"), PIPELINE);
        crate::common::write(
            &dir.join("data/titles.csv"),
            crate::common::fox_titles_csv(),
        );
        Test::new()
            .dir(&dir)
            .args(["run", "p.toml", "train", "onnx"])
            .run()
            .ok();
        dir
    })
}

/// Runs `script` (a file of this folder) with `python` and `args`; panics with what it
/// printed unless it succeeds, and returns its stdout.
#[cfg(feature = "worker")]
pub fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/serve")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `gptpipe generate --format jsonl` with `args`, in [`project`]: its samples.
#[cfg(feature = "worker")]
pub fn generate_in_project(args: &[&str]) -> Vec<Value> {
    let run: Run = Test::new()
        .dir(project())
        .args(["generate", "--format", "jsonl"])
        .args(args)
        .run()
        .ok();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl samples"))
        .collect()
}
