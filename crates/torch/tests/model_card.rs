//! The model card (`README.md`) of a finetune's output: `huggingface_hub.ModelCard` reads
//! its front matter, the body says what prepare kept and how training went, and the folder
//! still loads everywhere a model folder is read.

use crate::common::*;
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::{StageContext, Upstream};
use gptpipe_torch::finetune::{Card, CARD_FILE};
use gptpipe_torch::weights;
use std::sync::atomic::AtomicBool;

const PIPELINE: &str = r#"
[pipeline]
name = "cards"
seed = 3

[stages.prep]
kind = "prepare"
inputs = ["titles.csv"]
min_length = 4

[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }
batch_size = 2
accumulate_gradients = 1
sample_every = 0
save_every = 0
val_split = 0.25
val_every = 1
"#;

/// A harness whose `prep` upstream is a real prepare run over a CSV with one short row,
/// named by an absolute path outside the pipeline's folder (`outside`): the card names it
/// by its file name only.
fn harness(outside: &std::path::Path) -> Harness {
    let mut csv = String::from("title\nno\n");
    for i in 0..40 {
        csv.push_str(&format!("the cat sat on mat number {i}\n"));
    }
    let titles = outside.join("titles.csv");
    std::fs::write(&titles, csv).unwrap();
    let toml = PIPELINE.replace(
        "inputs = [\"titles.csv\"]",
        &format!("inputs = [{:?}]", titles.to_str().unwrap()),
    );
    assert_ne!(toml, PIPELINE);
    let mut h = Harness::new(&toml, &[]);
    let out = h.path("upstream-prep");
    std::fs::create_dir_all(&out).unwrap();
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "prep",
        params: &h.pipeline.stages["prep"],
        pipeline: &h.pipeline,
        out_dir: &out,
        previous_output: None,
        state_dir: &h.path("prep-state"),
        upstream: &Default::default(),
        inputs_hash: "",
        events: &NullSink,
        cancel: &cancel,
    };
    gptpipe_text::prepare::run(&ctx).unwrap();
    h.upstream.insert(
        "prep".into(),
        Upstream {
            kind: gptpipe_core::config::StageKind::Prepare,
            dir: out,
        },
    );
    h
}

const READ_CARDS: &str = r#"
import sys, json, transformers
from huggingface_hub import ModelCard
out = {}
for name, path in zip(["trained", "hub"], sys.argv[1:3]):
    card = ModelCard.load(path)
    out[name] = {"data": card.data.to_dict(), "text": card.text}
folder = sys.argv[3]
transformers.GPT2LMHeadModel.from_pretrained(folder)
transformers.AutoTokenizer.from_pretrained(folder)
out["config"] = transformers.AutoConfig.from_pretrained(folder).model_type
print(json.dumps(out))
"#;

#[test]
fn the_card_reads_in_huggingface_hub_and_the_folder_still_loads() {
    let outside = tempfile::tempdir().unwrap();
    let h = harness(outside.path());
    let out = h.path("o");
    h.run("train", &out, &h.path("s"), None, |p| p.steps = 3)
        .unwrap();
    let card = std::fs::read_to_string(out.join(CARD_FILE)).unwrap();
    // The same card a hub id would get: base model and MIT license (OpenAI's weights).
    let hub = h.path("hub.md");
    let mut hub_card = Card {
        base_model: Some("openai-community/gpt2-medium".into()),
        datasets: vec!["data/a: \"b\".csv".into()],
        ..Card::default()
    };
    hub_card.pipeline = "p".into();
    std::fs::write(&hub, hub_card.render()).unwrap();

    let stdout = run_python(
        READ_CARDS,
        &[
            out.join(CARD_FILE).to_str().unwrap(),
            hub.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(
        v["trained"]["data"],
        serde_json::json!({
            "datasets": ["titles.csv"],
            "library_name": "transformers",
            "tags": ["gptpipe", "gpt2", "text-generation"],
            "pipeline_tag": "text-generation",
        }),
        "{card}"
    );
    assert_eq!(
        v["hub"]["data"]["base_model"],
        "openai-community/gpt2-medium"
    );
    assert_eq!(v["hub"]["data"]["license"], "mit");
    assert_eq!(v["hub"]["data"]["datasets"][0], "data/a: \"b\".csv");
    assert_eq!(v["config"], "gpt2");

    let text = v["trained"]["text"].as_str().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.upstream["prep"].dir.join("report.json")).unwrap())
            .unwrap();
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = &metrics[2];
    let pipeline_hash = gptpipe_core::cache::hash::hash_file(&h.path("gptpipe.toml")).unwrap();
    for line in [
        "# cards / train".to_owned(),
        "- rows: 41 read, 40 kept, 1 dropped".to_owned(),
        "  - too_short: 1".to_owned(),
        format!("- prepared: {} tokens", report["tokens"]),
        "- steps: 3\n".to_owned(),
        format!(
            "- final training loss: {:.4} (smoothed {:.4})",
            last["loss"].as_f64().unwrap(),
            last["avg_loss"].as_f64().unwrap()
        ),
        format!(
            "- final validation loss: {:.4} at step 3",
            last["val_loss"].as_f64().unwrap()
        ),
        "- best validation loss: ".to_owned(),
        format!("- pipeline file: `gptpipe.toml`, blake3 `{pipeline_hash}`"),
        format!("- gptpipe version: {}", gptpipe_core::GPTPIPE_VERSION),
        "Trained with gptpipe".to_owned(),
        "gpt-2-simple".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} not in the card:\n{card}");
    }
    // No machine path: the same training writes the same card.
    assert!(!card.contains(h.tmp.path().to_str().unwrap()), "{card}");
    assert!(!card.contains(outside.path().to_str().unwrap()), "{card}");
    let again = h.path("o2");
    h.run("train", &again, &h.path("s2"), None, |p| p.steps = 3)
        .unwrap();
    assert_eq!(
        std::fs::read(again.join(CARD_FILE)).unwrap(),
        card.as_bytes()
    );

    // A folder with a card is a model folder like any other.
    gptpipe_hf::check_folder(&out).unwrap();
    weights::load_folder(&out, tch::Device::Cpu).unwrap();
}
