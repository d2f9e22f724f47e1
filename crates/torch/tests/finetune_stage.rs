//! The finetune stage end to end on tiny models: learning, outputs, exact resume.

use crate::common::*;
use gptpipe_torch::weights;
use std::path::Path;

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
    for k in ["step", "loss", "avg_loss", "val_loss", "lr"] {
        assert!(m[149].get(k).is_some(), "metrics lack {k}");
    }
    // No timing: the same training writes the same metrics (the speed is in the progress
    // events).
    assert!(m[149].get("tokens_per_s").is_none(), "{}", m[149]);
}

fn weights_of(dir: &Path) -> Vec<(String, tch::Tensor)> {
    weights::read_safetensors(&dir.join("model.safetensors")).unwrap()
}

fn same_weights(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights_of(a), weights_of(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            max_diff(x, y)
        })
        .fold(0.0, f64::max)
}

fn losses(dir: &Path) -> Vec<f64> {
    read_metrics(dir)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn resuming_equals_training_straight() {
    let h = harness();
    let n = 4;
    // Dropout stays on (0.1) and validation runs in between: neither may disturb resumes.
    let setup = |p: &mut gptpipe_core::config::FinetuneParams, steps: u64| {
        p.steps = steps;
        p.accumulate_gradients = 2;
        p.batch_size = 2;
        p.val_split = 0.1;
        p.val_every = 3;
    };
    h.run("train", &h.path("straight"), &h.path("s1"), None, |p| {
        setup(p, 2 * n)
    })
    .unwrap();

    // Raising `steps` continues from the previous output (fresh state folder).
    h.run("train", &h.path("half"), &h.path("s2"), None, |p| {
        setup(p, n)
    })
    .unwrap();
    h.run(
        "train",
        &h.path("continued"),
        &h.path("s3"),
        Some(&h.path("half")),
        |p| setup(p, 2 * n),
    )
    .unwrap();
    let d = same_weights(&h.path("straight"), &h.path("continued"));
    assert!(
        d <= 1e-6,
        "continued run differs from the straight one by {d}"
    );
    assert_eq!(losses(&h.path("straight")), losses(&h.path("continued")));

    // A run killed after its checkpoint resumes from the state folder.
    h.run("train", &h.path("killed"), &h.path("s4"), None, |p| {
        setup(p, n)
    })
    .unwrap();
    assert!(std::fs::read_dir(h.path("s4")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("checkpoint-")));
    h.run("train", &h.path("resumed"), &h.path("s4"), None, |p| {
        setup(p, 2 * n)
    })
    .unwrap();
    let d = same_weights(&h.path("straight"), &h.path("resumed"));
    assert!(
        d <= 1e-6,
        "resumed run differs from the straight one by {d}"
    );
    let val: Vec<bool> = read_metrics(&h.path("resumed"))
        .iter()
        .map(|m| m["val_loss"].is_number())
        .collect();
    assert_eq!(
        val,
        vec![false, false, true, false, false, true, false, false]
    );

    // Another learning rate is another training: no reuse of the previous output.
    h.run(
        "train",
        &h.path("other"),
        &h.path("s5"),
        Some(&h.path("half")),
        |p| {
            setup(p, 2 * n);
            p.learning_rate = 0.001;
        },
    )
    .unwrap();
    assert_eq!(read_metrics(&h.path("other")).len(), 2 * n as usize);
    assert!(same_weights(&h.path("straight"), &h.path("other")) > 1e-4);

    // restore_from = "fresh" ignores the checkpoints.
    h.run(
        "train",
        &h.path("fresh"),
        &h.path("s4"),
        Some(&h.path("half")),
        |p| {
            setup(p, 2 * n);
            p.restore_from = "fresh".into();
        },
    )
    .unwrap();
    assert!(
        same_weights(&h.path("straight"), &h.path("fresh")) <= 1e-6,
        "training is deterministic"
    );
}

#[test]
fn max_checkpoints_bounds_the_state_folder() {
    let h = harness();
    h.run("train", &h.path("o"), &h.path("s"), None, |p| {
        p.steps = 5;
        p.save_every = 1;
        p.max_checkpoints = 2;
    })
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(h.path("s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["checkpoint-000000004", "checkpoint-000000005"]);
}

#[test]
fn bad_settings_fail_before_training() {
    let h = harness();
    let out = h.path("o");
    // Values no training can use are the config layer's to refuse (the stage does not
    // check them again).
    let p = gptpipe_core::config::FinetuneParams {
        steps: 0,
        dataset: "@prep".into(),
        ..Default::default()
    };
    let (key, message) =
        gptpipe_core::config::check_stage_values(&gptpipe_core::config::StageParams::Finetune(p))
            .unwrap_err();
    assert_eq!(key, "steps");
    assert!(message.contains("steps must be at least 1"), "{message}");
    let err = h
        .run("train", &out, &h.path("s"), None, |p| {
            p.model = gptpipe_core::config::ModelRef::Inline(gptpipe_core::config::InlineModel {
                n_layer: 1,
                n_head: 3,
                n_embd: 32,
                n_ctx: 16,
                vocab_size: 50257,
                dropout: 0.0,
            })
        })
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("n_embd (32) must be divisible by n_head (3)"),
        "{err:#}"
    );
    if !tch::Cuda::is_available() {
        let err = h
            .run("train", &out, &h.path("s"), None, |p| {
                p.device = "cuda".into()
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("no CUDA GPU"), "{err:#}");
    }
    let err = h
        .run("train", &out, &h.path("s"), None, |p| {
            p.model = gptpipe_core::config::ModelRef::from("./nowhere")
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing was written"
    );
}

#[test]
fn bf16_compute_with_fp32_master_weights_trains() {
    let h = harness();
    let out = h.path("o");
    h.run("train", &out, &h.path("s"), None, |p| {
        p.steps = 30;
        p.precision = gptpipe_core::config::Precision::Bf16;
        p.device = "cpu".into();
    })
    .unwrap();
    let l = losses(&out);
    assert!(l.iter().all(|x| x.is_finite()));
    assert!(
        l[29] < l[0] - 3.0,
        "bf16 training does not learn: {} -> {}",
        l[0],
        l[29]
    );
    // The saved weights stay fp32.
    assert!(weights_of(&out)
        .iter()
        .all(|(_, t)| t.kind() == tch::Kind::Float));
    let err = h
        .run("train", &h.path("o2"), &h.path("s2"), None, |p| {
            p.precision = gptpipe_core::config::Precision::Fp16;
            p.device = "cpu".into();
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("fp16"), "{err:#}");
}

#[test]
fn a_text_file_shorter_than_one_window_still_trains() {
    let toml = r#"
[pipeline]
name = "short"

[stages.train]
kind = "finetune"
dataset = "tiny.txt"
model = { n_layer = 1, n_head = 2, n_embd = 16, n_ctx = 1024 }
steps = 3
sample_every = 2
sample_length = 5
"#;
    let h = Harness::new(toml, &[("tiny.txt", b"Hello there, general.")]);
    let out = h.path("o");
    h.run("train", &out, &h.path("s"), None, |_| {}).unwrap();
    let m = read_metrics(&out);
    assert_eq!(m.len(), 3);
    // 5 tokens plus the <|endoftext|> gpt-2-simple appends to a file below `combine`
    // characters: windows of 6 tokens instead of n_ctx = 1024.
    assert_eq!(encode("Hello there, general.").len(), 5);
    assert!(m.iter().all(|x| x["loss"].as_f64().unwrap().is_finite()));
    let h2 = Harness::new(toml, &[("tiny.txt", b"")]);
    let err = h2
        .run("train", &h2.path("o"), &h2.path("s"), None, |_| {})
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("fewer than 2 tokens"),
        "{err:#}"
    );
}

#[test]
fn only_train_transformer_layers_freezes_embeddings_and_final_norm() {
    let h = harness();
    h.run("train", &h.path("b"), &h.path("s2"), None, |p| {
        p.steps = 3;
        p.only_train_transformer_layers = true;
    })
    .unwrap();
    // The stage's initial weights: a random model of the pipeline's seed (3).
    let cfg = gptpipe_torch::model::Config::from_inline(&gptpipe_core::config::InlineModel {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_ctx: 32,
        vocab_size: 50257,
        dropout: 0.1,
    })
    .unwrap();
    let init = gptpipe_torch::model::Gpt2::random(&cfg, tch::Device::Cpu, 3);
    let trained: std::collections::HashMap<String, tch::Tensor> =
        weights_of(&h.path("b")).into_iter().collect();
    for (n, t0) in init.named_parameters() {
        let d = max_diff(t0, &trained[n]);
        if n.starts_with("transformer.h.") {
            assert!(d > 1e-4, "{n} did not train");
        } else {
            assert_eq!(d, 0.0, "{n} is frozen but changed");
        }
    }
}

#[test]
fn early_stopping_stops_when_validation_stops_improving() {
    let h = harness();
    let out = h.path("o");
    // A learning rate this high makes the validation loss climb after a few steps.
    h.run("train", &out, &h.path("s"), None, |p| {
        p.steps = 60;
        p.learning_rate = 0.5;
        p.val_split = 0.2;
        p.val_every = 1;
        p.early_stopping_patience = 2;
    })
    .unwrap();
    let m = read_metrics(&out);
    assert!(m.len() < 60, "ran all {} steps", m.len());
    let val: Vec<f64> = m.iter().map(|x| x["val_loss"].as_f64().unwrap()).collect();
    let n = val.len();
    let best_before = val[..n - 2].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        val[n - 2] >= best_before && val[n - 1] >= best_before,
        "{val:?}"
    );
    let trainer = std::fs::read_to_string(out.join("training_state/trainer.json")).unwrap();
    assert!(trainer.contains("\"stopped_early\": true"), "{trainer}");
}

/// The validation loss of the model saved in `dir`, on the harness' data as `train` splits it.
fn saved_val_loss(h: &Harness, dir: &Path, val_split: f64, batch_size: usize) -> f64 {
    use gptpipe_torch::finetune::{validation_loss, Dataset};
    let model = weights::load_folder(dir, tch::Device::Cpu).unwrap();
    let chunks = Dataset::load(
        &gptpipe_core::stage::InputSource::Stage {
            name: "prep".into(),
            kind: gptpipe_core::config::StageKind::Prepare,
            dir: h.upstream["prep"].dir.clone(),
        },
        50000,
        &h.pipeline,
    )
    .unwrap();
    let data = Dataset::new(
        chunks,
        model.config.n_ctx,
        val_split,
        model.config.vocab_size,
    )
    .unwrap();
    validation_loss(&model, &data, batch_size)
}

#[test]
fn early_stopping_saves_the_best_weights_and_resumes_to_the_same_ones() {
    let h = harness();
    let setup = |p: &mut gptpipe_core::config::FinetuneParams, steps: u64| {
        p.steps = steps;
        p.learning_rate = 0.5;
        p.val_split = 0.2;
        p.val_every = 1;
        p.early_stopping_patience = 3;
    };
    let out = h.path("o");
    h.run("train", &out, &h.path("s"), None, |p| setup(p, 60))
        .unwrap();
    let m = read_metrics(&out);
    let val: Vec<f64> = m.iter().map(|x| x["val_loss"].as_f64().unwrap()).collect();
    let (stop, last) = (m.len() as u64, val[val.len() - 1]);
    assert!(stop < 60, "ran all {stop} steps");
    let (best_i, best) =
        val.iter().copied().enumerate().fold(
            (0, f64::INFINITY),
            |a, (i, v)| if v < a.1 { (i, v) } else { a },
        );
    let best_step = best_i as u64 + 1;
    assert_eq!(stop, best_step + 3, "{val:?}");
    assert!(last > best + 1e-3, "the last weights are no worse: {val:?}");
    let trainer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("training_state/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(trainer["stopped_early"], true, "{trainer}");
    assert_eq!(trainer["best_step"], best_step, "{trainer}");
    assert_eq!(trainer["step"], stop, "{trainer}");
    // The output's final state is not a resumable middle: it has no best-weights copy.
    assert!(!out.join("training_state/best_weights.safetensors").exists());

    // The saved model is the best one, not the last.
    let saved = saved_val_loss(&h, &out, 0.2, 4);
    assert!(
        (saved - best).abs() < 1e-5,
        "saved model: val_loss {saved}, best {best}, last {last}"
    );

    // A run that ends after the best step (no early stop yet) keeps its last weights and
    // saves the best ones beside them; continuing it stops at the same step with the same
    // weights as the straight run.
    let mid = h.path("mid");
    h.run("train", &mid, &h.path("s2"), None, |p| {
        setup(p, best_step + 2)
    })
    .unwrap();
    assert!((saved_val_loss(&h, &mid, 0.2, 4) - val[best_step as usize + 1]).abs() < 1e-5);
    assert!(mid
        .join("training_state/best_weights.safetensors")
        .is_file());
    let resumed = h.path("resumed");
    h.run("train", &resumed, &h.path("s3"), Some(&mid), |p| {
        setup(p, 60)
    })
    .unwrap();
    assert_eq!(read_metrics(&resumed).len() as u64, stop);
    let d = same_weights(&out, &resumed);
    assert!(d == 0.0, "the resumed run saved other weights ({d})");

    // Without early stopping the same training keeps the last weights.
    let plain = h.path("plain");
    h.run("train", &plain, &h.path("s4"), None, |p| {
        setup(p, stop);
        p.early_stopping_patience = 0;
    })
    .unwrap();
    assert!((saved_val_loss(&h, &plain, 0.2, 4) - last).abs() < 1e-5);
}

#[test]
fn the_output_loads_in_transformers_with_its_tokenizer() {
    let h = harness();
    let out = h.path("o");
    h.run("train", &out, &h.path("s"), None, |p| p.steps = 2)
        .unwrap();
    let text = "the cat sat on the mat.";
    let script = r#"
import sys, json, torch, transformers
m = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok(sys.argv[2])["input_ids"]
with torch.no_grad():
    logits = m(torch.tensor([ids])).logits[0, -1]
print(json.dumps({"ids": ids, "logits": logits[:50].tolist()}))
"#;
    let stdout = run_python(script, &[out.to_str().unwrap(), text]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let ids: Vec<i64> = serde_json::from_value(v["ids"].clone()).unwrap();
    let ours_ids: Vec<i64> = encode(text).iter().map(|&x| x as i64).collect();
    assert_eq!(ids, ours_ids, "transformers' tokenizer from our folder");
    let model = weights::load_folder(&out, tch::Device::Cpu).unwrap();
    let logits =
        tch::no_grad(|| model.forward(&tch::Tensor::from_slice(&ids).unsqueeze(0), None, false));
    let ours = logits.get(0).get(ids.len() as i64 - 1).narrow(0, 0, 50);
    let theirs: Vec<f32> = serde_json::from_value(v["logits"].clone()).unwrap();
    let d = max_diff(&ours, &tch::Tensor::from_slice(&theirs));
    assert!(d < 1e-4, "logits differ by {d}");
}
