//! The contract between the runner and stage implementations.
//!
//! A stage gets typed parameters and a [`StageContext`], writes files into `out_dir`, and
//! returns. It never reads TOML and never decides whether it runs: the runner does that,
//! publishes `out_dir` atomically on success and records it in the cache.

use crate::config::{InlineModel, InputRef, ModelRef, Pipeline, StageKind, StageParams};
use crate::events::{Event, EventSink};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A finished upstream stage.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub kind: StageKind,
    /// Its published output folder.
    pub dir: PathBuf,
}

/// Where a model comes from, with `@stage` and relative paths already resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A Hugging Face hub id such as `"gpt2"` or `"org/repo"`.
    Hub(String),
    /// A local folder in Hugging Face layout.
    Folder(PathBuf),
    /// The output of another stage.
    Stage {
        name: String,
        kind: StageKind,
        dir: PathBuf,
    },
    /// A fresh model with random weights.
    Inline(InlineModel),
}

/// A string input (`dataset`, an entry of `inputs`) with `@stage` resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    Stage {
        name: String,
        kind: StageKind,
        dir: PathBuf,
    },
    Path(PathBuf),
}

/// Everything a stage may use while it runs.
pub struct StageContext<'a> {
    pub name: &'a str,
    pub params: &'a StageParams,
    pub pipeline: &'a Pipeline,
    /// An empty folder; what is in it when the stage returns `Ok` is published.
    pub out_dir: &'a Path,
    /// This stage's last published output, if any. It may come from other parameters:
    /// a stage that reuses it (to continue training, or to keep earlier samples) checks
    /// that it is compatible first.
    pub previous_output: Option<&'a Path>,
    /// A folder that survives failed and killed runs (checkpoints to resume from). The
    /// runner removes it once this run's output is published and recorded, so what a later
    /// run needs from a finished one belongs in the output (see `previous_output`).
    pub state_dir: &'a Path,
    /// Upstream stages this stage references, by name.
    pub upstream: &'a BTreeMap<String, Upstream>,
    /// A hash of the stage's inputs (files and upstream outputs), without its params.
    pub inputs_hash: &'a str,
    pub events: &'a dyn EventSink,
    pub cancel: &'a AtomicBool,
}

impl StageContext<'_> {
    /// The effective seed (the stage's, or the pipeline's).
    pub fn seed(&self) -> u64 {
        self.params.seed().unwrap_or(self.pipeline.seed)
    }

    pub fn resolve_model(&self, model: &ModelRef) -> ModelSource {
        resolve_model(self.pipeline, self.upstream, model)
    }

    pub fn resolve_input(&self, value: &InputRef) -> InputSource {
        match value {
            InputRef::Stage(r) => match self.upstream.get(r.name()) {
                Some(up) => InputSource::Stage {
                    name: r.name().to_owned(),
                    kind: up.kind,
                    dir: up.dir.clone(),
                },
                // Not an upstream stage (the runner always passes those): as before types,
                // a path of that name.
                None => InputSource::Path(self.pipeline.resolve_path(&r.to_string())),
            },
            InputRef::Path(p) => InputSource::Path(self.pipeline.resolve(p)),
        }
    }

    pub fn progress(&self, step: u64, total: u64, fields: serde_json::Value) {
        let fields = match fields {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        self.events.emit(Event::StageProgress {
            stage: self.name.to_owned(),
            step,
            total,
            fields,
        });
    }

    pub fn log(&self, message: impl Into<String>) {
        self.events.emit(Event::StageLog {
            stage: self.name.to_owned(),
            message: message.into(),
        });
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.events.emit(Event::Warning {
            message: format!("[{}] {}", self.name, message.into()),
        });
    }

    /// A [`Cancelled`](crate::Cancelled) error once the run has been cancelled (Ctrl-C,
    /// watch mode re-planning): long stages call it between steps and return the error.
    pub fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(crate::Cancelled.into());
        }
        Ok(())
    }
}

/// Resolves a `model` value: `@stage`, a local folder ([`Pipeline::model_folder`]), else
/// a hub id.
pub fn resolve_model(
    pipeline: &Pipeline,
    upstream: &BTreeMap<String, Upstream>,
    model: &ModelRef,
) -> ModelSource {
    match model {
        ModelRef::Inline(m) => ModelSource::Inline(m.clone()),
        ModelRef::Stage(r) => {
            let name = r.name();
            let up = upstream.get(name);
            ModelSource::Stage {
                name: name.to_owned(),
                kind: up.map_or(StageKind::Finetune, |u| u.kind),
                dir: up.map_or_else(|| pipeline.workdir.join(name), |u| u.dir.clone()),
            }
        }
        ModelRef::Folder(_) | ModelRef::Name(_) => match pipeline.model_folder(model) {
            Some(dir) => ModelSource::Folder(dir),
            // gpt-2-simple's size names ("355M") are OpenAI's repositories ("gpt2-medium").
            None => {
                let written = model.as_written().unwrap_or_default();
                ModelSource::Hub(gptpipe_hf::hub::hub_id(&written).to_owned())
            }
        },
    }
}

/// Implementation versions of the stage kinds, part of every cache key: bump one when a
/// change to that stage changes its outputs. They live here, not in the stage crates, so
/// that a runner which delegates a stage to another process keys it the same way.
pub mod versions {
    pub const PREPARE: u32 = 1;
    /// 3: on the CPU, the fused Adam(W) update and a sparse embedding gradient (the last
    /// bits of the weights differ, so a run of version 2 is not resumed).
    pub const FINETUNE: u32 = 3;
    /// 2: no `sample_delim` after the only sample of `nsamples = 1` (gpt-2-simple's).
    pub const GENERATE: u32 = 2;
    /// 2: the graph takes `attention_mask` and `position_ids`.
    pub const EXPORT: u32 = 2;

    /// The version of `kind`.
    pub fn of(kind: crate::config::StageKind) -> u32 {
        use crate::config::StageKind::*;
        match kind {
            Prepare => PREPARE,
            Finetune => FINETUNE,
            Generate => GENERATE,
            Export => EXPORT,
        }
    }
}

/// Runs one stage kind.
pub type StageFn = Arc<dyn Fn(&StageContext) -> anyhow::Result<()> + Send + Sync>;

/// Checks a stage's parameters against the pipeline before anything runs, for what the
/// config layer cannot judge on its own (a prefix needs the tokenizer to be measured):
/// `Err((key, message))` names the offending key.
pub type CheckFn =
    Arc<dyn Fn(&Pipeline, &StageParams) -> Result<(), (&'static str, String)> + Send + Sync>;

/// The stage kinds this build can run, each with the version of its implementation (part
/// of every cache key, so a changed implementation invalidates old results).
#[derive(Clone, Default)]
pub struct Registry {
    runners: BTreeMap<StageKind, (u32, StageFn)>,
    missing: BTreeMap<StageKind, String>,
    checks: BTreeMap<StageKind, CheckFn>,
    /// The worker Slurm jobs run, when this build has the Slurm executor.
    slurm_worker: Option<std::path::PathBuf>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(
        &mut self,
        kind: StageKind,
        version: u32,
        run: impl Fn(&StageContext) -> anyhow::Result<()> + Send + Sync + 'static,
    ) {
        self.runners.insert(kind, (version, Arc::new(run)));
    }

    /// Adds a check that stages of `kind` must pass before any stage of a run starts.
    pub fn check(
        &mut self,
        kind: StageKind,
        check: impl Fn(&Pipeline, &StageParams) -> Result<(), (&'static str, String)>
            + Send
            + Sync
            + 'static,
    ) {
        self.checks.insert(kind, Arc::new(check));
    }

    /// Runs the check of stage `name`'s kind, if there is one; the error points at its key.
    pub fn preflight(
        &self,
        pipeline: &Pipeline,
        name: &str,
    ) -> Result<(), crate::config::ConfigError> {
        let params = &pipeline.stages[name];
        match self.checks.get(&params.kind()) {
            Some(check) => check(pipeline, params).map_err(|(key, message)| {
                pipeline.origins.error_at(
                    &["stages".to_owned(), name.to_owned(), key.to_owned()],
                    crate::config::ConfigError::new(format!("stage `{name}`: {message}")),
                )
            }),
            None => Ok(()),
        }
    }

    /// Makes every kind run as a Slurm job of `worker` when the pipeline's executor is
    /// "slurm" (each kind still runs as before under "local").
    pub fn with_slurm_executor(&mut self, worker: std::path::PathBuf) {
        self.slurm_worker = Some(worker.clone());
        for (_, run) in self.runners.values_mut() {
            let (local, worker) = (run.clone(), worker.clone());
            *run = Arc::new(move |ctx: &StageContext| {
                if crate::slurm::is_slurm(ctx) {
                    crate::slurm::run_in_job(&worker, ctx)
                } else {
                    local(ctx)
                }
            });
        }
    }

    /// The worker Slurm jobs run (`run --detach` submits jobs of it without a runner to
    /// follow them), when this build has the Slurm executor.
    pub fn slurm_worker(&self) -> Option<&std::path::Path> {
        self.slurm_worker.as_deref()
    }

    /// Records why this build cannot run `kind` (for example: built without libtorch).
    pub fn unavailable(&mut self, kind: StageKind, why: impl Into<String>) {
        self.missing.insert(kind, why.into());
    }

    /// The implementation version of `kind`; for a kind this build cannot run, the version
    /// the builds that can run it use, so their cache keys and lock files agree.
    pub fn version(&self, kind: StageKind) -> u32 {
        self.runners
            .get(&kind)
            .map_or_else(|| versions::of(kind), |r| r.0)
    }

    pub fn get(&self, kind: StageKind) -> anyhow::Result<&StageFn> {
        match self.runners.get(&kind) {
            Some((_, f)) => Ok(f),
            None => match self.missing.get(&kind) {
                Some(why) => anyhow::bail!("{kind} stages are not available in this build: {why}"),
                None => anyhow::bail!("{kind} stages are not available in this build"),
            },
        }
    }
}
