//! The model card: `README.md` in a finetune's model folder, with the Hugging Face front
//! matter the hub and `huggingface_hub.ModelCard` read (base model, license, datasets,
//! library, tags), then what the model was trained on and how, and where it came from.
//!
//! It holds no time, host or machine path, so training the same weights from the same
//! pipeline file writes the same card (the output stays byte-identical). It does hold the
//! pipeline file's hash, which the cache key does not: a retrain forced after an edit
//! elsewhere in the file writes another card.

use super::{Dataset, StateFiles};
use anyhow::{Context as _, Result};
use gptpipe_core::config::FinetuneParams;
use gptpipe_core::stage::{InputSource, ModelSource, StageContext};
use gptpipe_core::GPTPIPE_VERSION;
use std::fmt::Write as _;

/// The card's file name: the one the hub and `transformers` read as a model card.
pub const CARD_FILE: &str = "README.md";

/// What the card says.
#[derive(Debug, Clone, Default)]
pub struct Card {
    pub pipeline: String,
    pub stage: String,
    /// blake3 of the pipeline file.
    pub pipeline_hash: String,
    /// The pipeline file's name.
    pub pipeline_file: String,
    /// `model` as written.
    pub model: String,
    /// The hub id the training started from, when it did.
    pub base_model: Option<String>,
    /// `dataset` as written, and the files a prepare stage read for it.
    pub dataset: String,
    pub datasets: Vec<String>,
    /// The prepare stage's `report.json`, when the dataset is a prepare stage.
    pub prepare_report: Option<serde_json::Value>,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub steps: u64,
    pub steps_requested: u64,
    pub stopped_early: bool,
    /// `metrics.jsonl`'s lines.
    pub metrics: Vec<serde_json::Value>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
}

impl Card {
    /// The card of the run that `files` describe.
    pub fn of_run(
        ctx: &StageContext,
        p: &FinetuneParams,
        source: &ModelSource,
        data: &Dataset,
        files: &StateFiles,
    ) -> Result<Self> {
        let pipeline = ctx.pipeline;
        let bytes = std::fs::read(&pipeline.path)
            .with_context(|| format!("cannot read {}", pipeline.path.display()))?;
        let dataset = p.dataset.as_written().into_owned();
        // A prepare stage's report names the files it read (relative to the pipeline
        // file); a path dataset is named as written.
        let prepare_report: Option<serde_json::Value> = match ctx.resolve_input(&p.dataset) {
            InputSource::Stage { dir, .. } => std::fs::read(dir.join("report.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            InputSource::Path(_) => None,
        };
        let datasets = match &prepare_report {
            Some(r) => r["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["path"].as_str().map(public_name))
                .collect(),
            None => vec![public_name(&dataset)],
        };
        let dataset = if dataset.starts_with('@') {
            dataset
        } else {
            public_name(&dataset)
        };
        let tokens = |chunks: &[Vec<u32>]| chunks.iter().map(Vec::len).sum();
        Ok(Self {
            pipeline: pipeline.name.clone(),
            stage: ctx.name.to_owned(),
            pipeline_hash: gptpipe_core::cache::hash::hash_bytes(&bytes),
            pipeline_file: pipeline
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model: serde_json::to_string(&p.model).expect("a model serializes"),
            base_model: match source {
                ModelSource::Hub(id) => Some(id.clone()),
                _ => None,
            },
            dataset,
            datasets,
            prepare_report,
            train_tokens: tokens(&data.train),
            val_tokens: tokens(&data.val),
            steps: files.trainer.step,
            steps_requested: p.steps,
            stopped_early: files.trainer.stopped_early,
            metrics: files.metrics.to_vec(),
            best_val_loss: files.trainer.best_val_loss,
            best_step: files.trainer.best_step,
        })
    }

    /// `license`: MIT for OpenAI's GPT-2 weights (released under it); none otherwise, as
    /// gptpipe cannot know the license of other weights or of the data.
    fn license(&self) -> Option<&'static str> {
        self.base_model
            .as_deref()
            .filter(|id| gptpipe_hf::hub::is_openai_gpt2(id))
            .map(|_| "mit")
    }

    /// The card's text.
    pub fn render(&self) -> String {
        let mut s = String::from("---\n");
        if let Some(base) = &self.base_model {
            let _ = writeln!(s, "base_model: {}", yaml(base));
        }
        if let Some(license) = self.license() {
            let _ = writeln!(s, "license: {license}");
        }
        if !self.datasets.is_empty() {
            s.push_str("datasets:\n");
            for d in &self.datasets {
                let _ = writeln!(s, "- {}", yaml(d));
            }
        }
        s.push_str(
            "library_name: transformers\ntags:\n- gptpipe\n- gpt2\n- text-generation\n\
             pipeline_tag: text-generation\n---\n\n",
        );
        let _ = writeln!(s, "# {} / {}\n", self.pipeline, self.stage);
        let from = match &self.base_model {
            Some(id) => format!("the Hugging Face model `{id}`"),
            None => format!("`model = {}`", self.model),
        };
        let _ = writeln!(
            s,
            "A GPT-2 model finetuned from {from} on the dataset `{}` by stage `{}` of the pipeline `{}`.\n",
            self.dataset, self.stage, self.pipeline
        );
        self.data_section(&mut s);
        self.training_section(&mut s);
        let _ = write!(
            s,
            "## Provenance\n\n\
             - pipeline file: `{}`, blake3 `{}`\n\
             - stage: `{}`\n\
             - gptpipe version: {GPTPIPE_VERSION}\n\n\
             Trained with gptpipe, which finetunes GPT-2 the way \
             [gpt-2-simple](https://github.com/minimaxir/gpt-2-simple) does, on \
             [OpenAI's GPT-2](https://github.com/openai/gpt-2). Text generated with this model \
             should say so.\n",
            self.pipeline_file, self.pipeline_hash, self.stage
        );
        s
    }

    fn data_section(&self, s: &mut String) {
        s.push_str("## Training data\n\n");
        if let Some(r) = &self.prepare_report {
            let n = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let _ = writeln!(
                s,
                "- rows: {} read, {} kept, {} dropped",
                n("rows_read"),
                n("rows_kept"),
                n("rows_dropped")
            );
            if let Some(dropped) = r.get("dropped").and_then(|d| d.as_object()) {
                for (why, count) in dropped {
                    let _ = writeln!(s, "  - {why}: {count}");
                }
            }
            let _ = writeln!(
                s,
                "- prepared: {} tokens, {} bytes",
                n("tokens"),
                n("bytes")
            );
        }
        let _ = writeln!(
            s,
            "- trained on {} tokens, {} held out for validation\n",
            self.train_tokens, self.val_tokens
        );
    }

    fn training_section(&self, s: &mut String) {
        s.push_str("## Training\n\n");
        let stop = if self.stopped_early {
            format!(" (of {}; stopped early)", self.steps_requested)
        } else {
            String::new()
        };
        let _ = writeln!(s, "- steps: {}{stop}", self.steps);
        let field = |m: &serde_json::Value, k: &str| m.get(k).and_then(serde_json::Value::as_f64);
        if let Some(last) = self.metrics.last() {
            if let (Some(loss), Some(avg)) = (field(last, "loss"), field(last, "avg_loss")) {
                let _ = writeln!(s, "- final training loss: {loss:.4} (smoothed {avg:.4})");
            }
        }
        let best = self
            .metrics
            .iter()
            .filter_map(|m| Some((field(m, "avg_loss")?, m.get("step")?.as_u64()?)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((loss, step)) = best {
            let _ = writeln!(
                s,
                "- best training loss (smoothed): {loss:.4} at step {step}"
            );
        }
        let last_val = self
            .metrics
            .iter()
            .rev()
            .find_map(|m| Some((field(m, "val_loss")?, m.get("step")?.as_u64()?)));
        if let Some((loss, step)) = last_val {
            let _ = writeln!(s, "- final validation loss: {loss:.4} at step {step}");
        }
        if let (Some(loss), Some(step)) = (self.best_val_loss, self.best_step) {
            let kept = if self.stopped_early {
                " (these are the weights saved)"
            } else {
                ""
            };
            let _ = writeln!(s, "- best validation loss: {loss:.4} at step {step}{kept}");
        }
        s.push('\n');
    }
}

/// A YAML scalar that reads back as `text`: JSON's string syntax is YAML's double-quoted
/// style.
/// A data file's name as the card shows it: as written when relative and inside the
/// pipeline file's folder, else its file name only (the card holds no machine path:
/// `/tmp/review/titles.csv`, `../data/titles.csv` and `~/titles.csv` are `titles.csv`).
fn public_name(path: &str) -> String {
    let p = std::path::Path::new(path);
    let outside = p.is_absolute()
        || path.starts_with('~')
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    match p.file_name() {
        Some(name) if outside => name.to_string_lossy().into_owned(),
        _ => path.to_owned(),
    }
}

fn yaml(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Card {
        Card {
            pipeline: "askreddit".into(),
            stage: "train".into(),
            pipeline_hash: "abc".into(),
            pipeline_file: "p.toml".into(),
            model: "\"gpt2\"".into(),
            base_model: Some("openai-community/gpt2".into()),
            dataset: "@titles".into(),
            datasets: vec!["data/a: b \"c\".csv".into()],
            prepare_report: Some(serde_json::json!({
                "rows_read": 10, "rows_kept": 8, "rows_dropped": 2,
                "dropped": {"too_short": 2}, "tokens": 99, "bytes": 300
            })),
            train_tokens: 90,
            val_tokens: 9,
            steps: 3,
            steps_requested: 5,
            stopped_early: true,
            metrics: vec![
                serde_json::json!({"step": 1, "loss": 3.0, "avg_loss": 3.0, "val_loss": 2.5}),
                serde_json::json!({"step": 2, "loss": 2.0, "avg_loss": 2.5}),
                serde_json::json!({"step": 3, "loss": 2.2, "avg_loss": 2.6, "val_loss": 2.7}),
            ],
            best_val_loss: Some(2.5),
            best_step: Some(1),
        }
    }

    #[test]
    fn front_matter_then_the_facts() {
        let text = card().render();
        let (front, body) = text
            .strip_prefix("---\n")
            .and_then(|t| t.split_once("\n---\n"))
            .unwrap();
        assert!(front.starts_with("base_model: \"openai-community/gpt2\"\nlicense: mit\n"));
        assert!(
            front.contains("datasets:\n- \"data/a: b \\\"c\\\".csv\"\n"),
            "{front}"
        );
        assert!(front.contains("pipeline_tag: text-generation"));
        for line in [
            "- rows: 10 read, 8 kept, 2 dropped",
            "  - too_short: 2",
            "- steps: 3 (of 5; stopped early)",
            "- final training loss: 2.2000 (smoothed 2.6000)",
            "- best training loss (smoothed): 2.5000 at step 2",
            "- final validation loss: 2.7000 at step 3",
            "- best validation loss: 2.5000 at step 1 (these are the weights saved)",
            "- pipeline file: `p.toml`, blake3 `abc`",
            "Trained with gptpipe, which finetunes GPT-2 the way [gpt-2-simple]",
        ] {
            assert!(body.contains(line), "{line:?} not in\n{body}");
        }
    }

    #[test]
    fn data_files_outside_the_pipeline_folder_are_named_by_file_name() {
        for (written, shown) in [
            ("/tmp/review/p1/titles.csv", "titles.csv"),
            ("../data/titles.csv", "titles.csv"),
            ("~/titles.csv", "titles.csv"),
            ("data/titles.csv", "data/titles.csv"),
            ("titles.csv", "titles.csv"),
        ] {
            assert_eq!(public_name(written), shown, "{written}");
        }
    }

    #[test]
    fn no_license_nor_base_model_for_other_weights() {
        let mut c = card();
        c.base_model = Some("someone/gpt2-poems".into());
        assert!(!c.render().contains("license:"));
        c.base_model = None;
        c.datasets.clear();
        let text = c.render();
        assert!(
            !text.contains("base_model:") && !text.contains("datasets:"),
            "{text}"
        );
        assert!(text.contains("finetuned from `model = \"gpt2\"`"), "{text}");
    }
}
