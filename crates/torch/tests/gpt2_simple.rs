//! gpt-2-simple checkpoints, written by gpt-2-simple's own code and TensorFlow
//! (`tests/fixtures/gpt2_simple/make_checkpoint.py`, run once per test process), read by
//! gptpipe without TensorFlow: TensorFlow's logits, and a clear error for each broken file.

use crate::common::*;
use gptpipe_core::stage::ModelSource;
use gptpipe_torch::source::load_model;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Tensor};

/// Token rows whose logits TensorFlow computes in the fixture.
const ROWS: &[&[i64]] = &[
    &[50256, 464, 2068, 7586, 21831],
    &[40, 1842, 11, 50256, 0, 50255],
];

/// The Python of gpt-2-simple (`$GPTPIPE_TF_PYTHON`, else the workspace's `.tf-venv`);
/// `None` (the test is skipped) when it is missing, unless `GPTPIPE_TEST_CLIENTS=require`.
fn tf_python() -> Option<PathBuf> {
    let python = std::env::var_os("GPTPIPE_TF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tf-venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import gpt_2_simple, tensorflow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let what = format!("gpt-2-simple at {} (scripts/setup.sh)", python.display());
    if std::env::var("GPTPIPE_TEST_CLIENTS").as_deref() == Ok("require") {
        panic!("missing: {what}");
    }
    eprintln!("skipped: {what}");
    None
}

/// The fixture's folder, made once per process.
fn fixture() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = tf_python()?;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt2_simple_fixture");
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/gpt2_simple/make_checkpoint.py");
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(&dir)
            .args(["--ids", &serde_json::to_string(ROWS).unwrap()])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_checkpoint.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dir)
    })
    .as_deref()
}

fn load(path: &Path) -> anyhow::Result<gptpipe_torch::model::Gpt2> {
    load_model(&ModelSource::Folder(path.to_path_buf()), Device::Cpu, 0)
}

fn tensors(model: &gptpipe_torch::model::Gpt2) -> Vec<(String, Tensor)> {
    model
        .named_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

#[test]
fn logits_equal_tensorflows() {
    let Some(dir) = fixture() else { return };
    let out: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out.json")).unwrap()).unwrap();
    let model = load(&dir.join("checkpoint/run1")).unwrap();
    for (row, theirs) in ROWS.iter().zip(out["logits"].as_array().unwrap()) {
        let theirs: Vec<f32> = theirs
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        let ids = Tensor::from_slice(row).reshape([1, row.len() as i64]);
        let ours = tch::no_grad(|| model.forward(&ids, None, false));
        let theirs = Tensor::from_slice(&theirs).reshape(ours.size());
        let d = max_diff(&ours, &theirs);
        assert!(
            d <= 1e-5,
            "logits of {row:?} differ from TensorFlow's by {d}"
        );
    }
}

#[test]
fn a_named_step_an_adam_checkpoint_and_openais_layout_load() {
    let Some(dir) = fixture() else { return };
    let run1 = tensors(&load(&dir.join("checkpoint/run1")).unwrap());
    // The step by name, and the same step saved with Adam's slots and beta powers.
    for other in ["checkpoint/run1/model-2", "checkpoint/adam"] {
        let t = tensors(&load(&dir.join(other)).unwrap());
        for ((n, a), (_, b)) in run1.iter().zip(&t) {
            assert_eq!(max_diff(a, b), 0.0, "{other}: {n}");
        }
    }
    // OpenAI's folder layout (`model.ckpt`): the weights before finetuning.
    let base = tensors(&load(&dir.join("models/tiny")).unwrap());
    let moved = run1
        .iter()
        .zip(&base)
        .any(|((_, a), (_, b))| max_diff(a, b) > 0.0);
    assert!(moved, "two steps of Adam changed no weight");
}

/// A copy of `checkpoint/run1` to break.
fn copy_run(dir: &Path, to: &Path) -> PathBuf {
    let run = to.join("run1");
    std::fs::create_dir_all(&run).unwrap();
    for e in std::fs::read_dir(dir.join("checkpoint/run1")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), run.join(e.file_name())).unwrap();
    }
    run
}

fn error_of(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn each_broken_checkpoint_is_a_clear_error_naming_the_file() {
    let Some(dir) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = "model-2.data-00000-of-00001";
    type Break = fn(&Path);
    let cases: &[(&str, Break, &[&str])] = &[
        (
            "a flipped byte in the data",
            |run| flip(&run.join("model-2.data-00000-of-00001"), 1000),
            &[data, "fails its checksum"],
        ),
        (
            "a truncated data shard",
            |run| truncate(&run.join("model-2.data-00000-of-00001"), 4096),
            &[data, "is truncated"],
        ),
        (
            "a missing data shard",
            |run| std::fs::remove_file(run.join("model-2.data-00000-of-00001")).unwrap(),
            &["cannot open", data],
        ),
        (
            "a truncated index",
            |run| truncate(&run.join("model-2.index"), 500),
            &["model-2.index is not a valid TensorFlow checkpoint index"],
        ),
        (
            "a flipped byte in the index",
            |run| flip(&run.join("model-2.index"), 40),
            &["model-2.index is not a valid", "checksum"],
        ),
        (
            "a missing index",
            |run| std::fs::remove_file(run.join("model-2.index")).unwrap(),
            &["model-2.index not found"],
        ),
        (
            "no checkpoint file",
            |run| std::fs::remove_file(run.join("checkpoint")).unwrap(),
            &["without a readable checkpoint file", "model-N"],
        ),
        (
            "hparams.json of another width",
            |run| edit_hparams(run, "n_embd", 128),
            &[
                "model-2.index: variable model/wte has shape [50257, 64]",
                "[50257, 128]",
            ],
        ),
        (
            "hparams.json with fewer layers",
            |run| edit_hparams(run, "n_layer", 1),
            &["unknown variable model/h1/", "it has 2 layers"],
        ),
        (
            "hparams.json with more layers",
            |run| edit_hparams(run, "n_layer", 3),
            &["model-2.index has no variable model/h2/"],
        ),
        (
            "another vocabulary",
            |run| {
                let path = run.join("encoder.json");
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replacen("\"!\": 0", "\"?\": 0", 1)).unwrap();
            },
            &["encoder.json is not GPT-2's vocabulary"],
        ),
    ];
    for (i, (what, breaks, expected)) in cases.iter().enumerate() {
        let run = copy_run(dir, &tmp.path().join(i.to_string()));
        breaks(&run);
        let err = error_of(&run);
        for e in *expected {
            assert!(err.contains(e), "{what}: {err:?} lacks {e:?}");
        }
    }
    // Written by TensorFlow: a variable no GPT-2 has, and float64 weights.
    let err = error_of(&dir.join("checkpoint/extra"));
    assert!(
        err.contains("unknown variable model/h0/attn/stray"),
        "{err}"
    );
    let err = error_of(&dir.join("checkpoint/float64"));
    assert!(
        err.contains("model-1.index: variable model/wte has TensorFlow dtype 2"),
        "{err}"
    );
    // A step that is not there.
    let err = error_of(&dir.join("checkpoint/run1/model-7"));
    assert!(err.contains("model-7"), "{err}");
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn edit_hparams(run: &Path, key: &str, value: usize) {
    let path = run.join("hparams.json");
    let mut h: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    h[key] = value.into();
    std::fs::write(&path, h.to_string()).unwrap();
}
