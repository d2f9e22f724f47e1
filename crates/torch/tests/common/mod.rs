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

use gptpipe_core::config::{load, LoadOptions, Pipeline, StageKind};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::{StageContext, Upstream};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// A pipeline in a temporary folder, and stage runs against it without the runner.
pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub pipeline: Pipeline,
    pub upstream: BTreeMap<String, Upstream>,
}

impl Harness {
    /// `toml` is the whole pipeline file; `files` are written beside it first.
    pub fn new(toml: &str, files: &[(&str, &[u8])]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(tmp.path().join(name), bytes).unwrap();
        }
        let path = tmp.path().join("gptpipe.toml");
        std::fs::write(&path, toml).unwrap();
        let pipeline = load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e:?}"));
        Self {
            tmp,
            pipeline,
            upstream: BTreeMap::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Pretends stage `name` is a finished prepare stage whose tokens.bin holds `tokens`.
    pub fn fake_prepare(&mut self, name: &str, tokens: &[u32]) {
        let dir = self.path(&format!("upstream-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| (t as u16).to_le_bytes())
            .collect();
        std::fs::write(dir.join("tokens.bin"), bytes).unwrap();
        self.upstream.insert(
            name.into(),
            Upstream {
                kind: StageKind::Prepare,
                dir,
            },
        );
    }

    /// Runs stage `name` with `--set`-like overrides applied to its params.
    pub fn run(
        &self,
        name: &str,
        out: &Path,
        state: &Path,
        previous: Option<&Path>,
        edit: impl FnOnce(&mut gptpipe_core::config::FinetuneParams),
    ) -> anyhow::Result<()> {
        let mut params = self.pipeline.stages[name].clone();
        if let gptpipe_core::config::StageParams::Finetune(p) = &mut params {
            edit(p);
        }
        std::fs::create_dir_all(out).unwrap();
        std::fs::create_dir_all(state).unwrap();
        let cancel = AtomicBool::new(false);
        let ctx = StageContext {
            name,
            params: &params,
            pipeline: &self.pipeline,
            out_dir: out,
            previous_output: previous,
            state_dir: state,
            upstream: &self.upstream,
            inputs_hash: "test-inputs",
            events: &NullSink,
            cancel: &cancel,
        };
        gptpipe_torch::finetune::run(&ctx)
    }
}

/// GPT-2 ids of a text (the project's tokenizer).
pub fn encode(text: &str) -> Vec<u32> {
    gptpipe_text::Gpt2Tokenizer::new().unwrap().encode(text)
}
