//! The runner: decides per stage whether it is fresh, restorable from the run cache, or
//! must run; runs independent stages in parallel; publishes outputs atomically; keeps the
//! lock file. Stages themselves never see any of this.

mod detach;
mod detached;
mod key;
mod workdir;

pub use key::{inputs_hash, KeyMaterial};
pub use workdir::{tmp_dir_stage, tmp_root, Workdir, META_DIR};

use crate::cache::lock::json_to_toml;
use crate::cache::{LockEntry, LockFile, Manifest, Restore};
use crate::config::{ConfigError, Pipeline};
use crate::dag::Dag;
use crate::events::{Event, EventSink};
use crate::stage::{Registry, StageContext, Upstream};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

/// Each stage's `run --detach` job, whatever its state, for `gptpipe status`.
pub fn detached_jobs(workdir: &Path) -> BTreeMap<String, crate::slurm::ActiveJob> {
    detached::Detached::new(workdir).jobs()
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages to run with their upstream; all when empty.
    pub targets: Vec<String>,
    pub force: bool,
    pub dry_run: bool,
    pub frozen: bool,
    pub jobs: usize,
    pub keep_going: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            force: false,
            dry_run: false,
            frozen: false,
            jobs: 1,
            keep_going: false,
        }
    }
}

/// Stops a run's stages: all of them (Ctrl-C), or single ones (watch mode cancels only
/// the stages a change touched, and lets the others finish).
#[derive(Debug, Default)]
pub struct Cancellation {
    all: AtomicBool,
    stages: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
}

impl Cancellation {
    pub fn cancel_all(&self) {
        let stages = self.stages.lock().unwrap();
        self.all.store(true, Ordering::SeqCst);
        for flag in stages.values() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    pub fn cancel_stage(&self, stage: &str) {
        self.flag(stage).store(true, Ordering::SeqCst);
    }

    /// Whether the whole run was cancelled.
    pub fn all_cancelled(&self) -> bool {
        self.all.load(Ordering::SeqCst)
    }

    /// Whether `stage` was cancelled, alone or with the whole run.
    pub fn is_cancelled(&self, stage: &str) -> bool {
        match self.stages.lock().unwrap().get(stage) {
            Some(flag) => flag.load(Ordering::SeqCst),
            None => self.all_cancelled(),
        }
    }

    /// The flag `stage` polls while it runs.
    fn flag(&self, stage: &str) -> Arc<AtomicBool> {
        let mut stages = self.stages.lock().unwrap();
        let all = self.all.load(Ordering::SeqCst);
        stages
            .entry(stage.to_owned())
            .or_insert_with(|| Arc::new(AtomicBool::new(all)))
            .clone()
    }
}

/// The error of a stage stopped by its [`Cancellation`]: its text is "cancelled". In-process
/// stages return it from [`StageContext::check_cancelled`]; for a stage in `gptpipe-worker`
/// the runner kills the worker and makes it ([`crate::remote::remote_stage`]). The runner
/// recognises it by type, anywhere in an error's chain ([`Cancelled::is_in`]), and says so
/// in its `stage_failed` event ([`Event::StageFailed`]'s `cancelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl Cancelled {
    /// Whether `error`, or an error it wraps, is a cancellation.
    pub fn is_in(error: &anyhow::Error) -> bool {
        error.chain().any(|e| e.is::<Cancelled>())
    }
}

/// One line of `gptpipe status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageStatus {
    pub stage: String,
    pub state: State,
    pub reasons: Vec<String>,
    /// The stage could not be evaluated (a missing input, a path that is not a model
    /// folder): a run would fail it, so `--dry-run` and `--frozen` fail too.
    #[serde(skip)]
    pub broken: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fresh,
    Stale,
}

/// How a run ended, for the exit code.
#[derive(Debug)]
pub enum RunError {
    Config(ConfigError),
    /// `--frozen` found stale stages.
    Stale(Vec<StageStatus>),
    /// Stages failed (their names).
    Failed(Vec<String>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    /// A [`ConfigError`] keeps its kind (exit 2) through `anyhow`.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ConfigError>() {
            Ok(config) => RunError::Config(config),
            Err(e) => RunError::Other(e),
        }
    }
}

/// What happened to each stage of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fresh,
    Restored,
    Ran,
    Failed,
    Skipped,
    /// Submitted as a detached Slurm job (`run --detach`), or left to the one an earlier
    /// `run --detach` submitted.
    Submitted,
}

pub struct Runner<'a> {
    pipeline: &'a Pipeline,
    registry: &'a Registry,
    dag: Dag,
    workdir: Workdir,
}

/// What a run of a stage is given besides its output folder ([`Runner::given`]).
struct Given {
    /// Its last published output, when it is what the lock file recorded.
    previous_output: Option<PathBuf>,
    upstream: BTreeMap<String, Upstream>,
    inputs_hash: String,
    state_dir: PathBuf,
    cancel: Arc<AtomicBool>,
}

impl Given {
    /// The context of `stage` of `runner`'s pipeline writing into `out_dir`.
    fn context<'a>(
        &'a self,
        runner: &'a Runner,
        stage: &'a str,
        out_dir: &'a Path,
        events: &'a dyn EventSink,
    ) -> StageContext<'a> {
        StageContext {
            name: stage,
            params: &runner.pipeline.stages[stage],
            pipeline: runner.pipeline,
            out_dir,
            previous_output: self.previous_output.as_deref(),
            state_dir: &self.state_dir,
            upstream: &self.upstream,
            inputs_hash: &self.inputs_hash,
            events,
            cancel: &self.cancel,
        }
    }
}

/// The result of evaluating one stage against the lock file.
struct Evaluation {
    material: KeyMaterial,
    key: String,
    /// Empty when fresh.
    reasons: Vec<String>,
}

impl<'a> Runner<'a> {
    pub fn new(pipeline: &'a Pipeline, registry: &'a Registry) -> Result<Self> {
        Ok(Self {
            pipeline,
            registry,
            dag: Dag::new(pipeline),
            workdir: Workdir::open(&pipeline.workdir),
        })
    }

    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// The key material of `stage` given its upstream stages' output hashes.
    fn material(&self, stage: &str, upstream: &BTreeMap<String, String>) -> Result<KeyMaterial> {
        let params = &self.pipeline.stages[stage];
        let files = crate::inputs::stage_inputs(self.pipeline, params)
            .with_context(|| format!("stage `{stage}`"))?;
        let mut inputs = BTreeMap::new();
        for (name, path) in files {
            inputs.insert(name, self.workdir.memo.hash(&path)?);
        }
        Ok(KeyMaterial {
            kind: params.kind().to_string(),
            version: self.registry.version(params.kind()),
            params: params.keyed_json(),
            inputs,
            upstream: upstream.clone(),
        })
    }

    /// Compares a stage with its lock entry and its published output.
    fn evaluate(
        &self,
        stage: &str,
        lock: &LockFile,
        upstream: &BTreeMap<String, String>,
        check_outputs: bool,
    ) -> Result<Evaluation> {
        let material = self.material(stage, upstream)?;
        let key = material.key();
        let reasons = match lock.stages.get(stage) {
            None => vec!["never run".to_owned()],
            Some(entry) => {
                let mut r = key::stale_reasons(entry, &material);
                if r.is_empty() && check_outputs {
                    r.extend(self.output_problem(stage, entry)?);
                }
                r
            }
        };
        Ok(Evaluation {
            material,
            key,
            reasons,
        })
    }

    /// Why the published output no longer matches what the lock file recorded, if it doesn't.
    fn output_problem(&self, stage: &str, entry: &LockEntry) -> Result<Option<String>> {
        let dir = self.workdir.output(stage);
        if !dir.is_dir() {
            return Ok(Some("output missing".into()));
        }
        let manifest = Manifest::of_dir(&dir, |p| self.workdir.memo.hash(p))?;
        Ok((manifest.tree_hash() != entry.output_hash).then(|| "output modified".to_owned()))
    }

    /// Fresh or stale, and why, for the selected stages, without running anything.
    pub fn status(&self, targets: &[String]) -> Result<Vec<StageStatus>, RunError> {
        let selected = self.dag.select(targets).map_err(RunError::Config)?;
        self.preflight(&selected)?;
        self.statuses(&selected, true)
    }

    /// The statuses of `selected` stages, already checked by [`Self::preflight`]. Without
    /// `check_outputs`, whether the lock file still describes the pipeline and its inputs,
    /// ignoring published outputs, which a fresh CI checkout does not have (`--frozen`).
    fn statuses(
        &self,
        selected: &[String],
        check_outputs: bool,
    ) -> Result<Vec<StageStatus>, RunError> {
        let lock = LockFile::read(&self.pipeline.lock_path())?;
        let mut out: Vec<StageStatus> = Vec::new();
        let mut stale = BTreeSet::new();
        for stage in selected {
            let deps = &self.dag.deps[stage];
            let stale_deps: Vec<&String> = deps.iter().filter(|d| stale.contains(*d)).collect();
            let mut broken = false;
            let mut reasons = if !stale_deps.is_empty() {
                stale_deps
                    .iter()
                    .map(|d| format!("upstream {d} is stale"))
                    .collect()
            } else {
                let upstream = deps
                    .iter()
                    .map(|d| (d.clone(), lock.stages[d].output_hash.clone()))
                    .collect();
                match self.evaluate(stage, &lock, &upstream, check_outputs) {
                    Ok(e) => e.reasons,
                    Err(e) => {
                        broken = true;
                        vec![format!("{e:#}")]
                    }
                }
            };
            if !reasons.is_empty() {
                stale.insert(stage.clone());
                // A run would stop at a folder it must not replace: say so now.
                if let Err(e) = self
                    .workdir
                    .check_publishable(stage, lock.stages.get(stage))
                {
                    broken = true;
                    reasons.push(format!("{e:#}"));
                }
            }
            out.push(StageStatus {
                stage: stage.clone(),
                state: if reasons.is_empty() {
                    State::Fresh
                } else {
                    State::Stale
                },
                reasons,
                broken,
            });
        }
        // Read-only: the memo is saved by runs only, so `status` writes nothing.
        Ok(out)
    }

    /// The stage kinds' own checks of the selected stages, before any work starts.
    fn preflight(&self, selected: &[String]) -> Result<(), RunError> {
        for stage in selected {
            self.registry
                .preflight(self.pipeline, stage)
                .map_err(RunError::Config)?;
        }
        Ok(())
    }

    /// Runs the selected stages that are stale.
    pub fn run(
        &self,
        options: &RunOptions,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<BTreeMap<String, Outcome>, RunError> {
        let start = Instant::now();
        let selected = self
            .dag
            .select(&options.targets)
            .map_err(RunError::Config)?;
        self.preflight(&selected)?;
        // First, before the wait for another run's lock and its warning (events.md).
        events.emit(Event::Plan {
            stages: selected.clone(),
        });
        if options.frozen || options.dry_run {
            // The same frame as a real run (plan first, run_finished last); stages that
            // would run count as skipped. --frozen ignores missing outputs (a fresh CI
            // checkout has none).
            let statuses = self.statuses(&selected, !options.frozen)?;
            let (stale, fresh): (Vec<StageStatus>, Vec<StageStatus>) =
                statuses.into_iter().partition(|s| s.state == State::Stale);
            let mut broken = Vec::new();
            for s in &stale {
                if s.broken {
                    events.emit(Event::StageFailed {
                        stage: s.stage.clone(),
                        error: format!("would fail: {}", s.reasons.join("; ")),
                        cancelled: false,
                    });
                    broken.push(s.stage.clone());
                } else {
                    events.emit(Event::StageLog {
                        stage: s.stage.clone(),
                        message: format!("would run: {}", s.reasons.join("; ")),
                    });
                }
            }
            events.emit(Event::RunFinished {
                ran: 0,
                cached: fresh.len(),
                failed: broken.len(),
                skipped: stale.len() - broken.len(),
                submitted: 0,
                seconds: start.elapsed().as_secs_f64(),
            });
            if !broken.is_empty() {
                return Err(RunError::Failed(broken));
            }
            if options.frozen && !stale.is_empty() {
                return Err(RunError::Stale(stale));
            }
            return Ok(BTreeMap::new());
        }
        let _guard = self.workdir.lock(events)?;
        self.workdir.clear_tmp()?;
        // Every lock file write happens in this run, under the run lock: recording the lock
        // file here (also when nothing turns out stale) lets `gc` from another pipeline
        // sharing the workdir keep what it references.
        self.workdir.remember_lock(&self.pipeline.lock_path())?;
        self.detached().tidy(&self.stage_names(), events)?;

        let lock = Mutex::new(LockFile::read(&self.pipeline.lock_path())?);
        let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        let mut stop = false;
        let mut started = BTreeSet::new();
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(String, Result<(Outcome, String)>)>();
            let mut running = 0usize;
            loop {
                for stage in &selected {
                    if outcomes.contains_key(stage) || started.contains(stage) {
                        continue;
                    }
                    let deps = &self.dag.deps[stage];
                    if let Some(bad) = deps.iter().find(|d| {
                        matches!(outcomes.get(*d), Some(Outcome::Failed | Outcome::Skipped))
                    }) {
                        events.emit(Event::StageSkipped {
                            stage: stage.clone(),
                            reason: format!("upstream {bad} did not finish"),
                        });
                        outcomes.insert(stage.clone(), Outcome::Skipped);
                        continue;
                    }
                    if stop || running >= options.jobs.max(1) {
                        continue;
                    }
                    if deps.iter().all(|d| hashes.contains_key(d)) {
                        let upstream: BTreeMap<String, String> = deps
                            .iter()
                            .map(|d| (d.clone(), hashes[d].clone()))
                            .collect();
                        started.insert(stage.clone());
                        running += 1;
                        let tx = tx.clone();
                        let lock = &lock;
                        let stage = stage.clone();
                        scope.spawn(move || {
                            // A panic becomes the stage's error: the loop below waits for
                            // every stage it started, and would wait forever.
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                self.process(&stage, upstream, lock, options, events, cancel)
                            }))
                            .unwrap_or_else(|panic| Err(panic_error(panic)));
                            let _ = tx.send((stage, r));
                        });
                    }
                }
                if running == 0 {
                    break;
                }
                let (stage, result) = rx.recv().expect("a stage thread reports");
                running -= 1;
                match result {
                    Ok((outcome, hash)) => {
                        hashes.insert(stage.clone(), hash);
                        outcomes.insert(stage, outcome);
                    }
                    Err(e) => {
                        events.emit(Event::StageFailed {
                            stage: stage.clone(),
                            error: format!("{e:#}"),
                            cancelled: Cancelled::is_in(&e),
                        });
                        outcomes.insert(stage, Outcome::Failed);
                        stop |= !options.keep_going;
                    }
                }
            }
        });
        // Stages a failure stopped the run before (without --keep-going) are reported too,
        // so every planned stage has an outcome.
        for stage in &selected {
            if !outcomes.contains_key(stage) {
                events.emit(Event::StageSkipped {
                    stage: stage.clone(),
                    reason: "the run stopped after a failure (--keep-going runs the independent \
                             stages)"
                        .into(),
                });
                outcomes.insert(stage.clone(), Outcome::Skipped);
            }
        }
        self.workdir.memo.save()?;
        self.finish(start, outcomes, events)
    }

    /// Reports the end of a run (`run_finished`); the run failed if a stage did.
    fn finish(
        &self,
        start: Instant,
        outcomes: BTreeMap<String, Outcome>,
        events: &dyn EventSink,
    ) -> Result<BTreeMap<String, Outcome>, RunError> {
        let count = |o: &[Outcome]| outcomes.values().filter(|x| o.contains(x)).count();
        events.emit(Event::RunFinished {
            ran: count(&[Outcome::Ran]),
            cached: count(&[Outcome::Fresh, Outcome::Restored]),
            failed: count(&[Outcome::Failed]),
            skipped: count(&[Outcome::Skipped]),
            submitted: count(&[Outcome::Submitted]),
            seconds: start.elapsed().as_secs_f64(),
        });
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| **o == Outcome::Failed)
            .map(|(s, _)| s.clone())
            .collect();
        if !failed.is_empty() {
            return Err(RunError::Failed(failed));
        }
        Ok(outcomes)
    }

    /// The names of the pipeline's stages.
    fn stage_names(&self) -> BTreeSet<&str> {
        self.pipeline.stages.keys().map(String::as_str).collect()
    }

    /// Brings one stage up to date: fresh, restored from the run cache, or run.
    /// Returns what happened and the output hash.
    fn process(
        &self,
        stage: &str,
        upstream: BTreeMap<String, String>,
        lock: &Mutex<LockFile>,
        options: &RunOptions,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<(Outcome, String)> {
        let params = &self.pipeline.stages[stage];
        let eval = self.evaluate_against(stage, lock, &upstream)?;
        // A detached job of this stage, as it is now, is adopted rather than run again
        // (under --force, cancelled and run again).
        let adopted =
            self.adopt_detached(stage, &eval, &upstream, options.force, lock, events, cancel)?;
        if let Some(adopted) = adopted {
            return Ok(adopted);
        }
        if !options.force {
            if let Some(reused) = self.reuse(stage, &eval, lock, events)? {
                return Ok(reused);
            }
        }

        let run = self.registry.get(params.kind())?;
        let started = self.start(stage, lock, events)?;
        let out_dir = self.workdir.tmp_dir(stage)?;
        let given = self.given(
            stage,
            &eval.material,
            |d| self.workdir.output(d),
            lock,
            cancel,
            events,
        )?;
        let ctx = given.context(self, stage, &out_dir, events);
        if let Err(e) = run(&ctx) {
            let _ = std::fs::remove_dir_all(&out_dir);
            return Err(e);
        }
        let manifest = Manifest::of_dir(&out_dir, |p| self.workdir.memo.hash(p))?;
        self.workdir.store.save(&eval.key, &out_dir, &manifest)?;
        self.publish(stage, &out_dir, &manifest, lock, events)?;
        let hash = self.record(stage, &eval, Some(&manifest), lock)?;
        Ok(self.ran(stage, started, hash, events))
    }

    /// The end of a stage this run ran (or adopted), once its output `hash` is cached,
    /// published and recorded. What the stage kept to resume an unfinished run (a
    /// finetune's checkpoints) is no longer needed: the output holds whatever continuing
    /// from it needs. Not before: a run killed between the stage's return and this point
    /// (the output in `tmp` is then lost) resumes from the state folder. Not after a cache
    /// restore either: the folder may then hold an unfinished run of other parameters.
    /// Failing here loses nothing.
    fn ran(
        &self,
        stage: &str,
        started: Instant,
        hash: String,
        events: &dyn EventSink,
    ) -> (Outcome, String) {
        if let Err(e) = self.workdir.clear_state(stage) {
            events.emit(Event::Warning {
                message: format!("[{stage}] {e:#}"),
            });
        }
        events.emit(Event::StageFinished {
            stage: stage.into(),
            seconds: started.elapsed().as_secs_f64(),
            output_hash: hash.clone(),
        });
        (Outcome::Ran, hash)
    }

    /// `stage`'s output without running it: fresh (its lock entry matches `eval`), or
    /// restored from the run cache. `None` when it must run.
    fn reuse(
        &self,
        stage: &str,
        eval: &Evaluation,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
    ) -> Result<Option<(Outcome, String)>> {
        if eval.reasons.is_empty() {
            let hash = lock.lock().unwrap().stages[stage].output_hash.clone();
            self.record(stage, eval, None, lock)?;
            events.emit(Event::StageCached {
                stage: stage.into(),
                restored: false,
            });
            return Ok(Some((Outcome::Fresh, hash)));
        }
        // Before any work: a folder that is not ours would only be refused at the end.
        self.workdir
            .check_publishable(stage, self.recorded(stage, lock).as_ref())?;
        let tmp = self.workdir.tmp_dir(stage)?;
        let restored = self.workdir.store.restore(&eval.key, &tmp);
        if restored.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        match restored? {
            Restore::Restored(manifest) => {
                self.publish(stage, &tmp, &manifest, lock, events)?;
                let hash = self.record(stage, eval, Some(&manifest), lock)?;
                events.emit(Event::StageCached {
                    stage: stage.into(),
                    restored: true,
                });
                return Ok(Some((Outcome::Restored, hash)));
            }
            Restore::Corrupt(why) => events.emit(Event::Warning {
                message: format!("[{stage}] {why}; running the stage again"),
            }),
            Restore::Missing => {}
        }
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(None)
    }

    /// Publishes `built`, which holds `manifest`, as `stage`'s output (see
    /// [`Workdir::publish`]), saying where files added by hand to the old one were kept.
    fn publish(
        &self,
        stage: &str,
        built: &Path,
        manifest: &Manifest,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
    ) -> Result<()> {
        let recorded = self.recorded(stage, lock);
        let displaced =
            self.workdir
                .publish(stage, built, &manifest.tree_hash(), recorded.as_ref())?;
        if let Some(kept) = displaced {
            events.emit(Event::Warning {
                message: format!(
                    "[{stage}] the old output held files the stage did not write; it was \
                     replaced, and kept whole in {}",
                    kept.display()
                ),
            });
        }
        Ok(())
    }

    /// What the lock file records for `stage`.
    fn recorded(&self, stage: &str, lock: &Mutex<LockFile>) -> Option<LockEntry> {
        lock.lock().unwrap().stages.get(stage).cloned()
    }

    /// [`Runner::evaluate`] against the lock file as it is now.
    fn evaluate_against(
        &self,
        stage: &str,
        lock: &Mutex<LockFile>,
        upstream: &BTreeMap<String, String>,
    ) -> Result<Evaluation> {
        let snapshot = lock.lock().unwrap().clone();
        self.evaluate(stage, &snapshot, upstream, true)
    }

    /// Checks that `stage` may be published and says it starts; when it started.
    fn start(
        &self,
        stage: &str,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
    ) -> Result<Instant> {
        self.workdir
            .check_publishable(stage, self.recorded(stage, lock).as_ref())?;
        events.emit(Event::StageStarted {
            stage: stage.into(),
            kind: self.pipeline.stages[stage].kind().to_string(),
        });
        Ok(Instant::now())
    }

    /// What a run of `stage` (key material `material`) is given besides its output folder,
    /// each upstream stage's output read from `upstream_dir`.
    fn given(
        &self,
        stage: &str,
        material: &KeyMaterial,
        upstream_dir: impl Fn(&str) -> PathBuf,
        lock: &Mutex<LockFile>,
        cancel: &Cancellation,
        events: &dyn EventSink,
    ) -> Result<Given> {
        let previous_output = self
            .reusable_output(stage, lock, events)?
            .then(|| self.workdir.output(stage));
        let upstream = self.dag.deps[stage]
            .iter()
            .map(|d| {
                let up = Upstream {
                    kind: self.pipeline.stages[d].kind(),
                    dir: upstream_dir(d),
                };
                (d.clone(), up)
            })
            .collect();
        Ok(Given {
            previous_output,
            upstream,
            inputs_hash: material.inputs_hash(),
            state_dir: self.workdir.state_dir(stage)?,
            cancel: cancel.flag(stage),
        })
    }

    /// Whether `stage`'s published output is exactly what the lock file recorded, so that
    /// the stage may build on it (a finetune resumes from it, a generate stage keeps its
    /// samples). An output edited by hand is never reused: it is not what its hash says.
    fn reusable_output(
        &self,
        stage: &str,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
    ) -> Result<bool> {
        let dir = self.workdir.output(stage);
        if !dir.is_dir() {
            return Ok(false);
        }
        let recorded = lock
            .lock()
            .unwrap()
            .stages
            .get(stage)
            .map(|e| e.output_hash.clone());
        let Some(recorded) = recorded else {
            return Ok(false);
        };
        let actual = Manifest::of_dir(&dir, |p| self.workdir.memo.hash(p))?.tree_hash();
        if actual != recorded {
            events.emit(Event::Warning {
                message: format!(
                    "[{stage}] the published output was modified since it was recorded; not \
                     reusing it"
                ),
            });
        }
        Ok(actual == recorded)
    }

    /// Writes the stage's lock entry (a new output when `manifest` is given) and returns
    /// its output hash.
    fn record(
        &self,
        stage: &str,
        eval: &Evaluation,
        manifest: Option<&Manifest>,
        lock: &Mutex<LockFile>,
    ) -> Result<String> {
        let params = &self.pipeline.stages[stage];
        let mut lock = lock.lock().unwrap();
        let (output_hash, outputs) = match (manifest, lock.stages.get(stage)) {
            (Some(m), _) => (m.tree_hash(), m.files.clone()),
            (None, Some(e)) => (e.output_hash.clone(), e.outputs.clone()),
            (None, None) => unreachable!("a fresh stage has a lock entry"),
        };
        let entry = LockEntry {
            kind: eval.material.kind.clone(),
            version: eval.material.version,
            key: eval.key.clone(),
            params: json_to_toml(&params.to_json()),
            inputs: eval.material.inputs.clone(),
            upstream: eval.material.upstream.clone(),
            output_hash: output_hash.clone(),
            outputs,
            links: crate::inputs::symlink_targets(self.pipeline, params),
        };
        if lock.stages.get(stage) != Some(&entry) {
            lock.stages.insert(stage.to_owned(), entry);
            lock.stages
                .retain(|s, _| self.pipeline.stages.contains_key(s));
            lock.write(&self.pipeline.lock_path())?;
        }
        Ok(output_hash)
    }

    /// Drops cache entries that no lock file using the workdir references: this pipeline's
    /// and those of other pipelines that ran in the same workdir (see [`Workdir::gc`]).
    /// Returns (entries removed, objects removed).
    pub fn gc(&self, events: &dyn EventSink) -> Result<(usize, usize)> {
        // Nothing to collect, and nothing to create.
        if !self.workdir.exists() {
            return Ok((0, 0));
        }
        let _guard = self.workdir.lock(events)?;
        self.workdir.gc(&self.pipeline.lock_path(), events)
    }

    /// Removes the workdir's cached novelty indexes, all of them (a run rebuilds the one
    /// it needs; see [`Workdir::remove_novelty_indexes`]). Returns (files, bytes freed).
    pub fn gc_novelty(&self, events: &dyn EventSink) -> Result<(usize, u64)> {
        if !self.workdir.exists() {
            return Ok((0, 0));
        }
        let _guard = self.workdir.lock(events)?;
        self.workdir.remove_novelty_indexes()
    }
}

/// A stage thread's panic as an error: its message, where it said one.
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    anyhow::anyhow!("internal error (a bug in gptpipe, please report it): {message}")
}
