//! The finetune stage's training options on tiny models: learning-rate schedules equal to
//! transformers', gradient checkpointing (the same weights), freezing blocks, dropout and
//! gpt-2-simple's summed gradient accumulation.

use crate::common::*;
use gptpipe_core::config::{Accumulate, FinetuneParams, LrSchedule, Optimizer};
use gptpipe_torch::model::{Config, Gpt2};
use gptpipe_torch::weights;
use std::path::Path;

const PIPELINE: &str = r#"
[pipeline]
name = "t"
seed = 5

[stages.prep]
kind = "prepare"
inputs = ["data.txt"]

[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 3, n_head = 2, n_embd = 32, n_ctx = 32 }
batch_size = 2
accumulate_gradients = 2
learning_rate = 0.003
sample_every = 0
save_every = 0
"#;

fn harness(toml: &str) -> Harness {
    let mut h = Harness::new(toml, &[("data.txt", b"x")]);
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(30);
    h.fake_prepare("prep", &encode(&text));
    h
}

fn weights_of(dir: &Path) -> Vec<(String, tch::Tensor)> {
    weights::read_safetensors(&dir.join("model.safetensors")).unwrap()
}

/// The largest difference between the weights of two model folders, and per weight.
fn weight_diffs(a: &Path, b: &Path) -> Vec<(String, f64)> {
    weights_of(a)
        .iter()
        .zip(weights_of(b))
        .map(|((n, x), (m, y))| {
            assert_eq!(n, &m);
            (n.clone(), max_diff(x, &y))
        })
        .collect()
}

fn max_of(diffs: &[(String, f64)]) -> f64 {
    diffs.iter().map(|(_, d)| *d).fold(0.0, f64::max)
}

fn train(h: &Harness, name: &str, edit: impl FnOnce(&mut FinetuneParams)) -> std::path::PathBuf {
    let out = h.path(name);
    h.run("train", &out, &h.path(&format!("{name}-state")), None, edit)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    out
}

#[test]
fn learning_rate_schedules_equal_transformers_step_by_step() {
    // transformers' rate after N calls of scheduler.step() (get_last_lr), for N = 0..T+1.
    let script = r#"
import json, sys, torch
from transformers import (get_constant_schedule_with_warmup,
    get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup)
out = {}
for w, t in json.loads(sys.argv[1]):
    for name in ["constant", "linear", "cosine"]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=3e-4)
        if name == "constant":
            s = get_constant_schedule_with_warmup(opt, w)
        elif name == "linear":
            s = get_linear_schedule_with_warmup(opt, w, t)
        else:
            s = get_cosine_schedule_with_warmup(opt, w, t)
        lrs = []
        for n in range(t + 2):
            lrs.append(s.get_last_lr()[0])
            opt.step()
            s.step()
        out[f"{name} {w} {t}"] = lrs
print(json.dumps(out))
"#;
    let pairs = [
        (0u64, 10u64),
        (3, 10),
        (10, 10),
        (4, 7),
        (12, 9),
        (1, 1),
        (100, 1000),
    ];
    let arg = serde_json::to_string(&pairs).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&run_python(script, &[&arg])).unwrap();
    let mut checked = 0;
    for (w, t) in pairs {
        for (name, schedule) in [
            ("constant", LrSchedule::Constant),
            ("linear", LrSchedule::Linear),
            ("cosine", LrSchedule::Cosine),
        ] {
            let p = FinetuneParams {
                learning_rate: 3e-4,
                warmup_steps: w,
                steps: t,
                lr_schedule: schedule,
                ..FinetuneParams::default()
            };
            let theirs = reference[format!("{name} {w} {t}")].as_array().unwrap();
            for (n, lr) in theirs.iter().enumerate() {
                let (ours, theirs) = (
                    gptpipe_torch::finetune::learning_rate(&p, n as u64),
                    lr.as_f64().unwrap(),
                );
                assert!(
                    (ours - theirs).abs() <= 1e-12 * theirs.abs().max(1e-12),
                    "{name} warmup {w} steps {t}, step {n}: ours {ours}, transformers {theirs}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 3000, "{checked}");
}

#[test]
fn a_decaying_schedule_trains_to_zero_and_keeps_steps_in_its_resume_identity() {
    let h = harness(PIPELINE);
    let out = train(&h, "linear", |p| {
        p.steps = 4;
        p.lr_schedule = LrSchedule::Linear;
    });
    let lrs: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let expected = [0.00225, 0.0015, 0.00075, 0.0];
    assert!(
        lrs.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-15),
        "{lrs:?}"
    );
    // The rate of every step depends on `steps`: a raised `steps` is another run (it does
    // not continue from the 4-step output), unlike under a constant rate.
    let mut a = FinetuneParams {
        lr_schedule: LrSchedule::Cosine,
        steps: 4,
        ..FinetuneParams::default()
    };
    let id4 = gptpipe_torch::finetune::identity(&a, "x", 1);
    a.steps = 8;
    assert_ne!(id4, gptpipe_torch::finetune::identity(&a, "x", 1));
    a.lr_schedule = LrSchedule::Constant;
    let id8 = gptpipe_torch::finetune::identity(&a, "x", 1);
    a.steps = 4;
    assert_eq!(id8, gptpipe_torch::finetune::identity(&a, "x", 1));
}

#[test]
fn gradient_checkpointing_trains_the_same_weights() {
    let h = harness(PIPELINE);
    // Without dropout, the recomputation gives the same gradients: the same weights.
    for optimizer in [Optimizer::Adam, Optimizer::Sgd] {
        let setup = |p: &mut FinetuneParams| {
            p.steps = 6;
            p.dropout = Some(0.0);
            p.optimizer = optimizer;
            p.num_layers_freeze = 0;
        };
        let plain = train(&h, &format!("plain-{optimizer:?}"), setup);
        let ckpt = train(&h, &format!("ckpt-{optimizer:?}"), |p| {
            setup(p);
            p.use_memory_saving_gradients = Some(true);
        });
        let diffs = weight_diffs(&plain, &ckpt);
        eprintln!(
            "{optimizer:?}: checkpointing changes the weights by at most {:e}",
            max_of(&diffs)
        );
        assert!(max_of(&diffs) <= 1e-6, "{diffs:?}");
        let before = weight_diffs(
            &plain,
            &train(&h, &format!("short-{optimizer:?}"), |p| {
                setup(p);
                p.steps = 1;
            }),
        );
        assert!(max_of(&before) > 1e-4, "the runs did train");
    }
    // With frozen blocks too (the backward stops below the lowest trained block).
    let frozen = |p: &mut FinetuneParams| {
        p.steps = 4;
        p.dropout = Some(0.0);
        p.num_layers_freeze = 2;
        p.only_train_transformer_layers = true;
    };
    let plain = train(&h, "plain-frozen", frozen);
    let ckpt = train(&h, "ckpt-frozen", |p| {
        frozen(p);
        p.use_memory_saving_gradients = Some(true);
    });
    assert!(max_of(&weight_diffs(&plain, &ckpt)) <= 1e-6);

    // With dropout (0.1 by default), each block's masks are re-drawn from a per-block seed
    // in the recomputation: the run is deterministic, learns, and resumes exactly.
    let with = |p: &mut FinetuneParams, steps: u64| {
        p.steps = steps;
        p.use_memory_saving_gradients = Some(true);
    };
    let a = train(&h, "dropout-a", |p| with(p, 6));
    let b = train(&h, "dropout-b", |p| with(p, 6));
    assert_eq!(max_of(&weight_diffs(&a, &b)), 0.0);
    let half = train(&h, "dropout-half", |p| with(p, 3));
    let resumed = h.path("dropout-resumed");
    h.run(
        "train",
        &resumed,
        &h.path("dropout-resumed-state"),
        Some(&half),
        |p| with(p, 6),
    )
    .unwrap();
    assert!(max_of(&weight_diffs(&a, &resumed)) <= 1e-5);
}

/// A source model folder of `config` with random weights, for runs whose starting weights
/// the test knows.
fn source_model(h: &Harness, config: &Config) -> String {
    let dir = h.path("source-model");
    if !dir.is_dir() {
        let m = Gpt2::random(config, tch::Device::Cpu, 11);
        weights::save_folder(&m, &dir).unwrap();
    }
    dir.to_str().unwrap().to_owned()
}

fn tiny() -> Config {
    let mut c = Config::gpt2();
    (c.n_layer, c.n_head, c.n_embd, c.n_inner, c.n_ctx) = (3, 2, 32, 128, 32);
    c
}

#[test]
fn frozen_blocks_keep_their_weights_and_have_no_optimizer_state() {
    let h = harness(PIPELINE);
    let source = source_model(&h, &tiny());
    for (freeze, only_blocks) in [(1, false), (2, true), (0, true)] {
        let out = train(&h, &format!("freeze-{freeze}-{only_blocks}"), |p| {
            p.model = source.as_str().into();
            p.steps = 3;
            p.num_layers_freeze = freeze;
            p.only_train_transformer_layers = only_blocks;
        });
        let moments: Vec<String> =
            weights::read_safetensors(&out.join("training_state/optimizer.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
        for (name, diff) in weight_diffs(Path::new(&source), &out) {
            let block = gptpipe_torch::finetune::options::block_of(&name);
            let frozen = match block {
                Some(l) => l < freeze,
                None => only_blocks,
            };
            let has_state = moments.contains(&format!("exp_avg.{name}"));
            if frozen {
                assert_eq!(diff, 0.0, "{name} is frozen but changed by {diff}");
                assert!(!has_state, "{name} is frozen but has optimizer moments");
            } else {
                // Layer-norm biases may stay near zero, but every trained weight moves.
                assert!(diff > 0.0, "{name} trains but did not change");
                assert!(has_state, "{name} trains but has no optimizer moments");
            }
        }
    }
    // Freezing every block with only the blocks training leaves nothing: refused.
    let e = h
        .run("train", &h.path("none"), &h.path("none-state"), None, |p| {
            p.model = source.as_str().into();
            p.num_layers_freeze = 3;
            p.only_train_transformer_layers = true;
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("nothing would train"), "{e:#}");
    let e = h
        .run("train", &h.path("deep"), &h.path("deep-state"), None, |p| {
            p.model = source.as_str().into();
            p.num_layers_freeze = 4;
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("the model has 3 blocks"), "{e:#}");
}

#[test]
fn summed_accumulation_with_sgd_equals_the_mean_at_accumulate_times_the_rate() {
    let h = harness(PIPELINE);
    for accum in [2usize, 4] {
        let base = |p: &mut FinetuneParams| {
            p.steps = 3;
            p.optimizer = Optimizer::Sgd;
            p.accumulate_gradients = accum;
            p.learning_rate = 0.01;
        };
        let sum = train(&h, &format!("sum-{accum}"), |p| {
            base(p);
            p.accumulate = Accumulate::Sum;
        });
        let mean = train(&h, &format!("mean-{accum}"), |p| {
            base(p);
            p.learning_rate = 0.01 * accum as f64;
        });
        let diffs = weight_diffs(&sum, &mean);
        eprintln!(
            "accumulate_gradients = {accum}: sum vs mean differ by {:e}",
            max_of(&diffs)
        );
        assert!(max_of(&diffs) <= 1e-7, "{diffs:?}");
        // And it is not the mean at the same rate.
        let same_rate = train(&h, &format!("mean-same-{accum}"), base);
        assert!(max_of(&weight_diffs(&sum, &same_rate)) > 1e-5);
    }
}

#[test]
fn the_dropout_key_overrides_the_model_s_and_keeps_its_config() {
    let h = harness(PIPELINE);
    let source = source_model(&h, &tiny());
    let run = |name: &str, dropout: Option<f64>| {
        train(&h, name, |p| {
            p.model = source.as_str().into();
            p.steps = 2;
            p.dropout = dropout;
        })
    };
    let default = run("drop-default", None);
    let explicit = run("drop-0.1", Some(0.1));
    let none = run("drop-0", Some(0.0));
    // The model's own is 0.1: the same as saying so.
    assert_eq!(max_of(&weight_diffs(&default, &explicit)), 0.0);
    assert!(max_of(&weight_diffs(&default, &none)) > 1e-6);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(none.join("config.json")).unwrap()).unwrap();
    for k in ["attn_pdrop", "resid_pdrop", "embd_pdrop"] {
        assert_eq!(config[k], 0.1, "{k}: the saved config is the model's");
    }
}
