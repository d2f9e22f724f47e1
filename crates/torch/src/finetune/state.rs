//! The training state that makes a resume exact: weights (fp32 masters), optimizer
//! moments, the step, the smoothed loss, early-stopping counters and the metrics so far.
//! The data position and dropout randomness are functions of (seed, step), so the step is
//! all a resume needs of them.
//!
//! A checkpoint folder holds `config.json` + `model.safetensors` (a loadable model),
//! `optimizer.safetensors`, `trainer.json` and `metrics.jsonl`, plus, with early stopping
//! on, `best_weights.safetensors` (the trained weights of the best validation loss so far)
//! when those are not the checkpoint's own weights. Checkpoints live in the stage's state
//! folder as `checkpoint-<step>` and, for the finished run, in the output's
//! `training_state/` (weights at the output's root). The runner empties the state folder
//! once the output is published (see `StageContext::state_dir`): from then on the output
//! is what a raised `steps` continues from.

use crate::weights::{self, read_safetensors, write_atomic};
use anyhow::{Context, Result};
use gptpipe_core::config::FinetuneParams;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const TRAINER_FILE: &str = "trainer.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const OUTPUT_STATE_DIR: &str = "training_state";
pub const BEST_FILE: &str = "best_weights.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Hash of everything that shapes the weights except `steps`; a state is reused only
    /// when it matches.
    pub identity: String,
    pub step: u64,
    /// gpt-2-simple's smoothed loss: `(sum, count)`, both decayed by 0.99 per step.
    pub avg_loss: (f64, f64),
    pub best_val_loss: Option<f64>,
    /// The step whose weights gave `best_val_loss` (absent from states of earlier versions).
    /// After an early stop, the weights saved are this step's, while `step`, the metrics
    /// and the optimizer moments are those of the step that stopped.
    #[serde(default)]
    pub best_step: Option<u64>,
    pub evals_without_improvement: u64,
    pub stopped_early: bool,
    /// fp16 only: the dynamic loss scale.
    pub loss_scale: f64,
    pub good_steps: u64,
}

/// The training identity: every weight-affecting parameter except `steps`, plus the
/// inputs' hash and this implementation's version.
pub fn identity(p: &FinetuneParams, inputs_hash: &str, version: u32) -> String {
    let mut v = serde_json::to_value(p).expect("params serialize");
    let obj = v.as_object_mut().expect("params are a table");
    // Where a run resumed from does not change what it is training.
    for k in ["steps", "restore_from"]
        .into_iter()
        .chain(FinetuneParams::REPORTING_KEYS)
    {
        obj.remove(k);
    }
    let text = format!(
        "{version}\n{inputs_hash}\n{}",
        serde_json::to_string(&v).unwrap()
    );
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// Reads `trainer.json` of a checkpoint folder.
pub fn read_trainer(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a training state", path.display()))
}

/// Where a checkpoint's pieces are: the weights folder and the state folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub model_dir: PathBuf,
    pub state_dir: PathBuf,
    pub trainer: TrainerState,
}

impl Checkpoint {
    /// A checkpoint folder, or a finished output (weights at the root, state in
    /// `training_state/`).
    pub fn open(dir: &Path) -> Result<Self> {
        let state_dir = if dir.join(OUTPUT_STATE_DIR).join(TRAINER_FILE).is_file() {
            dir.join(OUTPUT_STATE_DIR)
        } else {
            dir.to_path_buf()
        };
        let trainer = read_trainer(&state_dir)
            .with_context(|| format!("{} is not a finetune checkpoint", dir.display()))?;
        weights::check_folder(dir)?;
        Ok(Self {
            model_dir: dir.to_path_buf(),
            state_dir,
            trainer,
        })
    }

    pub fn optimizer_tensors(&self) -> Result<Vec<(String, tch::Tensor)>> {
        let path = self.state_dir.join(OPTIMIZER_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_safetensors(&path)
    }

    /// The saved best weights (see [`BEST_FILE`]), when the checkpoint has them.
    pub fn best_tensors(&self) -> Result<Option<Vec<(String, tch::Tensor)>>> {
        let path = self.state_dir.join(BEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_safetensors(&path).map(Some)
    }

    pub fn metrics(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.join(METRICS_FILE)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Checkpoints in a state folder, newest step last.
pub fn list_checkpoints(state_dir: &Path) -> Vec<Checkpoint> {
    let mut out: Vec<Checkpoint> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .filter_map(|e| Checkpoint::open(&e.path()).ok())
        .collect();
    out.sort_by_key(|c| c.trainer.step);
    out
}

/// What a checkpoint holds besides the model.
pub struct StateFiles<'a> {
    pub trainer: &'a TrainerState,
    /// The optimizer moments (none for SGD).
    pub optimizer: Vec<(String, tch::Tensor)>,
    /// The trained weights at the best validation loss, when early stopping may still
    /// restore them and they differ from the model's; empty otherwise.
    pub best: Vec<(String, tch::Tensor)>,
    pub metrics: &'a [serde_json::Value],
}

/// Writes the state files into `dir` (which must exist).
pub fn write_state_files(dir: &Path, files: &StateFiles) -> Result<()> {
    let (trainer, metrics) = (files.trainer, files.metrics);
    if !files.optimizer.is_empty() {
        weights::write_safetensors(&files.optimizer, &dir.join(OPTIMIZER_FILE))?;
    }
    if !files.best.is_empty() {
        weights::write_safetensors(&files.best, &dir.join(BEST_FILE))?;
    }
    let mut lines = String::new();
    for m in metrics {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    write_atomic(&dir.join(METRICS_FILE), lines.as_bytes())?;
    write_atomic(
        &dir.join(TRAINER_FILE),
        serde_json::to_string_pretty(trainer)?.as_bytes(),
    )
}

/// Writes a whole checkpoint into `state_dir/checkpoint-<step>` atomically (a temporary
/// folder renamed into place), then keeps only the newest `keep` checkpoints of this
/// identity and drops those of other identities.
pub fn save_checkpoint(
    state_dir: &Path,
    model: &crate::model::Gpt2,
    files: &StateFiles,
    keep: usize,
) -> Result<PathBuf> {
    let trainer = files.trainer;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let name = format!("checkpoint-{:09}", trainer.step);
    let tmp = state_dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    weights::save_folder(model, &tmp)?;
    write_state_files(&tmp, files)?;
    let dest = state_dir.join(&name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let all = list_checkpoints(state_dir);
    let mine: Vec<&Checkpoint> = all
        .iter()
        .filter(|c| c.trainer.identity == trainer.identity)
        .collect();
    let drop_mine = mine.len().saturating_sub(keep.max(1));
    for c in mine.iter().take(drop_mine) {
        let _ = std::fs::remove_dir_all(&c.model_dir);
    }
    for c in all
        .iter()
        .filter(|c| c.trainer.identity != trainer.identity)
    {
        let _ = std::fs::remove_dir_all(&c.model_dir);
    }
    Ok(dest)
}
