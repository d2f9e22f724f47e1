//! The finetune stage end to end on tiny models: learning, outputs, exact resume.

mod common;

use common::*;
use gptpipe_torch::weights;

const PIPELINE: &str = r#"
[pipeline]
name = "t"
seed = 3

[stages.prep]
kind = "prepare"
inputs = ["data.txt"]

[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 2, n_head = 2, n_embd = 32, n_ctx = 32 }
batch_size = 4
accumulate_gradients = 1
learning_rate = 0.003
sample_every = 0
save_every = 0
"#;

fn harness() -> Harness {
    let mut h = Harness::new(PIPELINE, &[("data.txt", b"x")]);
    let text = "the cat sat on the mat. ".repeat(40);
    h.fake_prepare("prep", &encode(&text));
    h
}

fn read_metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn learns_a_repetitive_dataset_and_writes_outputs() {
    let h = harness();
    let out = h.path("out");
    h.run("train", &out, &h.path("state"), None, |p| p.steps = 150)
        .unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "loss.svg",
        "vocab.json",
        "merges.txt",
        "training_state/trainer.json",
        "training_state/optimizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let m = read_metrics(&out);
    assert_eq!(m.len(), 150);
    let first = m[0]["loss"].as_f64().unwrap();
    let last = m[149]["loss"].as_f64().unwrap();
    assert!(first > 8.0, "a fresh model starts near ln(50257): {first}");
    assert!(
        last < 0.3,
        "the repetitive text is not learned: loss {first} -> {last}"
    );
    for k in ["step", "loss", "avg_loss", "val_loss", "tokens_per_s", "lr"] {
        assert!(m[149].get(k).is_some(), "metrics lack {k}");
    }
}
