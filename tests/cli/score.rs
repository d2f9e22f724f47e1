//! `gptpipe score` through the binary (and the worker): perplexities equal transformers'
//! `exp(loss)`, a finetuned model prefers its training rows, and bad input names its line.

use super::Project;
use crate::common::server::tiny_model;
use serde_json::Value;

fn rows(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// transformers' `exp(loss)` of each row of token ids (labels = the ids, as the docs'
/// perplexity recipe does).
const EXP_LOSS: &str = r#"
import sys, json, torch, transformers
m = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    print(json.dumps([torch.exp(m(torch.tensor([r]), labels=torch.tensor([r])).loss).item()
                      for r in json.load(open(sys.argv[2]))]))
"#;

#[test]
fn perplexities_equal_transformers_exp_loss_in_input_or_score_order() {
    let Some(model) = tiny_model(64) else { return };
    let Some(python) = crate::common::python(&["torch", "transformers"]) else {
        return;
    };
    let p = Project::new();
    let texts = [
        "The fox jumps over the lazy dog",
        "a",
        "Ünïcödé and emoji 🦊 too",
        "What is the best thing you have ever eaten at a restaurant, and why?",
    ];
    p.file(
        "texts.txt",
        format!("{}\n\n{}\n{}\n{}\n", texts[0], texts[1], texts[2], texts[3]),
    );
    let model = model.to_str().unwrap();
    let run = p
        .run(&[
            "score",
            "--model",
            model,
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "texts.txt",
        ])
        .ok();
    let got = rows(&run.stdout);
    assert_eq!(got.len(), 4, "{}", run.stdout);
    // Line numbers skip the blank line and count it.
    let lines: Vec<u64> = got.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 3, 4, 5]);

    // The reference scores the same tokens: the start token, then the text's.
    let tokenizer = gptpipe_text::Gpt2Tokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| [vec![50256], tokenizer.encode(t)].concat())
        .collect();
    let ids_file = p.path("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .args(["-c", EXP_LOSS, model, ids_file.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    for ((row, text), (w, ids)) in got.iter().zip(texts).zip(want.iter().zip(&ids)) {
        assert_eq!(row["text"], text);
        assert_eq!(row["tokens"].as_u64().unwrap() as usize, ids.len() - 1);
        let ppl = row["perplexity"].as_f64().unwrap();
        assert!(
            (ppl - w).abs() / w < 1e-4,
            "{text:?}: {ppl} vs transformers {w}"
        );
        let lp = row["logprob"].as_f64().unwrap();
        assert!((lp + w.ln()).abs() < 1e-4, "{text:?}: logprob {lp}");
    }

    // --sort: best (highest logprob) first, the same rows.
    let sorted = rows(
        &p.run(&[
            "score",
            "--model",
            model,
            "--device",
            "cpu",
            "--sort",
            "texts.txt",
        ])
        .ok()
        .stdout,
    );
    let lp: Vec<f64> = sorted
        .iter()
        .map(|r| r["logprob"].as_f64().unwrap())
        .collect();
    assert!(lp.windows(2).all(|w| w[0] >= w[1]), "{lp:?}");
    let mut a: Vec<u64> = sorted.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    a.sort();
    assert_eq!(a, [1, 3, 4, 5]);
    assert_ne!(
        sorted
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        lines,
        "these texts are not already in score order, so sorting must move them"
    );
}

#[test]
fn bad_input_is_an_error_naming_the_file_and_line_before_the_model_loads() {
    let p = Project::new();
    p.file(
        "a.jsonl",
        "{\"text\": \"fine\"}\n{\"title\": \"no text field\"}\n",
    );
    p.file("b.txt", b"fine\nnot \xff utf-8\n");
    // The model does not exist: the input is checked first.
    let run = p.run(&["score", "--model", "./no-model", "a.jsonl"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("a.jsonl:2: no field \"text\""),
        "{}",
        run.stderr
    );
    let run = p.run(&["score", "--model", "./no-model", "b.txt"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("b.txt:2: invalid UTF-8"),
        "{}",
        run.stderr
    );
}

const FINETUNE: &str = r#"
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
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32, dropout = 0.0 }
steps = 40
batch_size = 4
accumulate_gradients = 1
learning_rate = 1e-2
device = "cpu"
sample_every = 0
"#;

#[test]
fn a_finetuned_model_scores_its_training_rows_above_the_same_words_shuffled() {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file("p.toml", FINETUNE);
    p.run(&["run", "p.toml"]).ok();
    let titles: Vec<String> = crate::common::fox_titles_csv()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    // The same words in another order: a model that learnt nothing of the rows' order
    // scores both alike.
    let shuffled: Vec<String> = titles
        .iter()
        .map(|t| {
            let mut w: Vec<&str> = t.split(' ').collect();
            w.rotate_left(3);
            w.swap(0, 4);
            w.join(" ")
        })
        .collect();
    assert_ne!(titles, shuffled);
    p.file("train.txt", titles.join("\n"));
    p.file(
        "shuffled.jsonl",
        shuffled
            .iter()
            .map(|t| format!("{}\n", serde_json::json!({ "body": t })))
            .collect::<String>(),
    );
    let run = p
        .run(&[
            "score",
            "--model",
            "work/train",
            "--device",
            "cpu",
            "--field",
            "body",
            "train.txt",
            "shuffled.jsonl",
        ])
        .ok();
    let got = rows(&run.stdout);
    assert_eq!(got.len(), 2 * titles.len());
    let (train, other) = got.split_at(titles.len());
    assert!(train.iter().all(|r| r["file"] == "train.txt"));
    assert!(other.iter().all(|r| r["file"] == "shuffled.jsonl"));
    for (a, b) in train.iter().zip(other) {
        let (a, b) = (
            a["logprob"].as_f64().unwrap(),
            b["logprob"].as_f64().unwrap(),
        );
        assert!(
            a > b + 0.5,
            "training row {a} vs shuffled {b}:\n{}",
            run.stdout
        );
    }
}
