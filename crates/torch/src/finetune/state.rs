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
//!
//! A checkpoint in the state folder also holds [`CHECKSUM_FILE`], the blake3 hash of each of
//! its other files, written last before the folder is renamed into place: a resume checks
//! it first ([`Checkpoint::verify`]) and never continues from a damaged checkpoint.

use crate::weights::{self, read_safetensors, write_atomic};
use anyhow::{bail, Context, Result};
use gptpipe_core::cache::hash::hash_file;
use gptpipe_core::config::FinetuneParams;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const TRAINER_FILE: &str = "trainer.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const OUTPUT_STATE_DIR: &str = "training_state";
pub const BEST_FILE: &str = "best_weights.safetensors";
/// A checkpoint's record of its files: `{"blake3": {"<file>": "<hex>", ...}}`.
pub const CHECKSUM_FILE: &str = "checksums.json";
/// The prefix of a checkpoint being written (a leftover of a killed or failed save).
const TMP_PREFIX: &str = ".tmp-";

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
    // Where a run resumed from does not change what it is training, nor (under a constant
    // learning rate) how far it goes: a raised `steps` continues the same run. A decaying
    // schedule reaches 0 at `steps`, so there `steps` changes every step's rate: kept.
    let steps = (p.lr_schedule.is_constant()).then_some("steps");
    for k in steps
        .into_iter()
        // Nor how many threads computed it (only the rounding of sums may differ).
        .chain(["restore_from", "threads"])
        // Nor, without dropout, on how many ranks.
        .chain((!p.devices_change_weights()).then_some("devices"))
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

    /// Checks the checkpoint's files against its [`CHECKSUM_FILE`]: each recorded file
    /// present with its hash, and no other file. A checkpoint of the state folder always
    /// has one (a save writes it last, before the rename that makes the checkpoint
    /// visible); an error names what is wrong.
    pub fn verify(&self) -> Result<()> {
        let path = self.model_dir.join(CHECKSUM_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("it has no {CHECKSUM_FILE}")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let recorded: Checksums = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a checksum record", path.display()))?;
        let found = file_hashes(&self.model_dir)?;
        for (name, hash) in &recorded.blake3 {
            match found.get(name) {
                None => bail!("{name} is missing"),
                Some(h) if h != hash => bail!("{name} does not match its checksum"),
                Some(_) => {}
            }
        }
        if let Some(extra) = found.keys().find(|n| !recorded.blake3.contains_key(*n)) {
            bail!("{extra} is not one of the files it was saved with");
        }
        Ok(())
    }

    /// Whether the checkpoint holds a checksum record ([`Checkpoint::verify`] can check it).
    pub fn has_checksums(&self) -> bool {
        self.model_dir.join(CHECKSUM_FILE).is_file()
    }

    pub fn metrics(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.join(METRICS_FILE)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Checksums {
    blake3: BTreeMap<String, String>,
}

/// The blake3 hash of each file of a checkpoint folder but [`CHECKSUM_FILE`].
fn file_hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == CHECKSUM_FILE {
            continue;
        }
        out.insert(name, hash_file(&entry.path())?);
    }
    Ok(out)
}

/// Records the hash of every file of `dir` in its [`CHECKSUM_FILE`].
fn write_checksums(dir: &Path) -> Result<()> {
    let record = Checksums {
        blake3: file_hashes(dir)?,
    };
    write_atomic(
        &dir.join(CHECKSUM_FILE),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )
}

/// Checkpoints in a state folder, newest step last (those whose training state cannot be
/// read are left out: see [`scan_checkpoints`]).
pub fn list_checkpoints(state_dir: &Path) -> Vec<Checkpoint> {
    scan_checkpoints(state_dir).0
}

/// The checkpoints of a state folder, newest step last, and the `checkpoint-*` folders
/// that are not readable checkpoints, with why.
pub fn scan_checkpoints(state_dir: &Path) -> (Vec<Checkpoint>, Vec<(PathBuf, anyhow::Error)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
    {
        match Checkpoint::open(&entry.path()) {
            Ok(c) => good.push(c),
            Err(e) => bad.push((entry.path(), e)),
        }
    }
    good.sort_by_key(|c: &Checkpoint| c.trainer.step);
    (good, bad)
}

/// Removes the temporary folders of saves that did not finish (killed, or failed on a full
/// disk). Only one run of a stage writes its state folder at a time (the workdir's run
/// lock), so every one of them is stale when a save starts.
fn remove_stale_tmp(state_dir: &Path) {
    for entry in std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
    {
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
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
    remove_stale_tmp(state_dir);
    let name = format!("checkpoint-{:09}", trainer.step);
    let tmp = state_dir.join(format!("{TMP_PREFIX}{name}"));
    let dest = state_dir.join(&name);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        weights::save_folder(model, &tmp)?;
        write_state_files(&tmp, files)?;
        // Last: a checkpoint with its checksums is complete.
        write_checksums(&tmp)?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))
    })();
    if let Err(e) = written {
        // A partial checkpoint (a full disk, say) is never resumed from: do not keep it.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Gpt2};
    use gptpipe_core::config::InlineModel;

    fn model() -> Gpt2 {
        let m = InlineModel {
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            n_ctx: 8,
            vocab_size: 50257,
            dropout: 0.0,
        };
        Gpt2::random(&Config::from_inline(&m).unwrap(), tch::Device::Cpu, 1)
    }

    fn trainer(step: u64) -> TrainerState {
        TrainerState {
            identity: "id".into(),
            step,
            avg_loss: (0.0, 0.0),
            best_val_loss: None,
            best_step: None,
            evals_without_improvement: 0,
            stopped_early: false,
            loss_scale: 1.0,
            good_steps: 0,
        }
    }

    fn save(dir: &Path, model: &Gpt2, step: u64) -> Result<PathBuf> {
        let trainer = trainer(step);
        let files = StateFiles {
            trainer: &trainer,
            optimizer: Vec::new(),
            best: Vec::new(),
            metrics: &[],
        };
        save_checkpoint(dir, model, &files, 3)
    }

    #[test]
    fn a_saved_checkpoint_verifies_and_a_damaged_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let model = model();
        let saved = save(dir.path(), &model, 10).unwrap();
        let c = Checkpoint::open(&saved).unwrap();
        c.verify().unwrap();

        // One bit of the weights, same size.
        let weights = saved.join(weights::WEIGHTS_FILE);
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&weights, &bytes).unwrap();
        let e = c.verify().unwrap_err().to_string();
        assert!(e.contains("model.safetensors does not match"), "{e}");

        // Truncated, missing, an extra file, no record at all.
        std::fs::write(&weights, b"").unwrap();
        assert!(c.verify().is_err());
        std::fs::remove_file(&weights).unwrap();
        assert!(c.verify().unwrap_err().to_string().contains("missing"));
        let saved = save(dir.path(), &model, 20).unwrap();
        let c = Checkpoint::open(&saved).unwrap();
        std::fs::write(saved.join(BEST_FILE), b"planted").unwrap();
        assert!(c.verify().unwrap_err().to_string().contains(BEST_FILE));
        std::fs::remove_file(saved.join(BEST_FILE)).unwrap();
        c.verify().unwrap();
        std::fs::remove_file(saved.join(CHECKSUM_FILE)).unwrap();
        assert!(c.verify().unwrap_err().to_string().contains(CHECKSUM_FILE));
    }

    #[test]
    fn a_save_removes_stale_partial_saves_and_a_failed_one_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let model = model();
        let stale = dir.path().join(".tmp-checkpoint-000000005");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join(weights::WEIGHTS_FILE), b"half").unwrap();
        save(dir.path(), &model, 10).unwrap();
        assert!(!stale.exists(), "a stale partial save survived a save");

        // The rename into place fails (a file is in the way): no partial folder stays.
        std::fs::write(dir.path().join("checkpoint-000000020"), b"in the way").unwrap();
        assert!(save(dir.path(), &model, 20).is_err());
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
