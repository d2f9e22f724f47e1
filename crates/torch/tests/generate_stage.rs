//! The generate stage on a model the finetune stage trained: gpt-2-simple's short-text
//! recipe (wrapped rows, start-token prefix, end-token truncate, prefix dropped).

use crate::common::*;
use gptpipe_core::config::{StageKind, StageParams};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::{StageContext, Upstream};
use gptpipe_generate::stage::run_stage;
use gptpipe_generate::Backends;
use std::sync::atomic::AtomicBool;

const PIPELINE: &str = r#"
[pipeline]
name = "t"
seed = 5

[stages.prep]
kind = "prepare"
inputs = ["data.csv"]

[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 2, n_head = 2, n_embd = 64, n_ctx = 64 }
batch_size = 4
accumulate_gradients = 1
learning_rate = 0.003
sample_every = 0
save_every = 0

[stages.samples]
kind = "generate"
model = "@train"
prefix = "<|startoftext|>"
truncate = "<|endoftext|>"
include_prefix = false
nsamples = 12
batch_size = 5
length = 40
temperature = 0.7
format = "jsonl"
output = "samples.jsonl"
"#;

const ROWS: [&str; 8] = [
    "red fox",
    "blue whale",
    "green frog",
    "small cat",
    "big dog",
    "old owl",
    "fast hare",
    "slow snail",
];

#[test]
fn wrapped_rows_give_samples_without_start_or_end_tokens() {
    let mut h = Harness::new(PIPELINE, &[("data.csv", b"x")]);
    // What the prepare stage makes of a CSV with wrap = true.
    let text: String = ROWS
        .iter()
        .cycle()
        .take(400)
        .map(|r| format!("<|startoftext|>{r}<|endoftext|>\n"))
        .collect();
    h.fake_prepare("prep", &encode(&text));
    let model = h.path("train-out");
    h.run("train", &model, &h.path("train-state"), None, |p| {
        p.steps = 120
    })
    .unwrap();
    h.upstream.insert(
        "train".into(),
        Upstream {
            kind: StageKind::Finetune,
            dir: model,
        },
    );

    let out = h.path("samples-out");
    std::fs::create_dir_all(&out).unwrap();
    let params: &StageParams = &h.pipeline.stages["samples"];
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "samples",
        params,
        pipeline: &h.pipeline,
        out_dir: &out,
        previous_output: None,
        state_dir: &h.path("samples-state"),
        upstream: &h.upstream,
        inputs_hash: "test",
        events: &NullSink,
        cancel: &cancel,
    };
    let backends = Backends {
        tch: Some(gptpipe_torch::generation::factory()),
        onnx: None,
    };
    let codec = gptpipe_generate::codec::gpt2().unwrap();
    run_stage(&ctx, &backends, codec.as_ref()).unwrap();

    let lines = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let samples: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 12);
    let mut truncated = 0;
    for s in &samples {
        let text = s["text"].as_str().unwrap();
        assert!(
            !text.contains("<|endoftext|>") && !text.contains("<|startoftext|>"),
            "{text:?}"
        );
        assert!(
            !text.contains("<|"),
            "a partial start token leaked: {text:?}"
        );
        truncated += s["truncated"].as_bool().unwrap() as usize;
    }
    // The model learned to end rows: truncate fired, so the check above was not vacuous.
    assert!(
        truncated >= 9,
        "only {truncated} of 12 samples ended with <|endoftext|>: {lines}"
    );
}
