//! `run --detach`: the selected stages that must run are submitted at once as Slurm jobs
//! chained with `--dependency=afterok`, each with a record ([`super::detached`]), and the
//! runner exits. Adoption: a later run (or `run --detach`) finds a stage's record, follows
//! its job if it is still active, and publishes its output as if it had run the stage
//! itself; a failed job fails the stage, and its record goes so that the next run
//! submits it again.
//!
//! A stage's cache key includes its upstream's output hashes, which a chained job's
//! runner cannot know: the record keeps the upstream's job instead, and the key is settled
//! when the upstream's output is published ([`Detached::settle`]). The job itself computes
//! the `inputs_hash` its stage sees once its upstream has run
//! ([`crate::remote::DeferredInputsHash`]), so its output is what a run would make.

use super::detached::{Detached, Known, Record, UpstreamRef, FORMAT};
use super::{Cancellation, Evaluation, Outcome, RunError, RunOptions, Runner};
use crate::cache::{LockFile, Manifest, Restore};
use crate::events::{Event, EventSink};
use crate::remote::{DeferredInputsHash, StageRequest};
use crate::slurm::{self, JobState};
use crate::stage::StageContext;
use crate::Cancelled;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

impl Runner<'_> {
    pub(super) fn detached(&self) -> Detached {
        Detached::new(&self.pipeline.workdir)
    }

    /// Submits the selected stages that must run as chained Slurm jobs, and returns
    /// without waiting for them. Fresh stages and those the run cache restores are done
    /// here; an earlier `run --detach`'s jobs that are still active are not submitted
    /// again, and those that ended are adopted.
    pub fn detach(
        &self,
        options: &RunOptions,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<BTreeMap<String, Outcome>, RunError> {
        let start = Instant::now();
        let worker = self.registry.slurm_worker().ok_or_else(|| {
            RunError::Other(anyhow!(
                "run --detach submits Slurm jobs of gptpipe-worker, which this gptpipe \
                 (built without libtorch) does not have"
            ))
        })?;
        let selected = self
            .dag
            .select(&options.targets)
            .map_err(RunError::Config)?;
        self.preflight(&selected)?;
        events.emit(Event::Plan {
            stages: selected.clone(),
        });
        let _guard = self.workdir.lock(events)?;
        self.workdir.clear_tmp()?;
        self.workdir.remember_lock(&self.pipeline.lock_path())?;
        let store = self.detached();
        store.tidy(&self.stage_names(), events)?;

        let lock = Mutex::new(LockFile::read(&self.pipeline.lock_path())?);
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        let mut stop = false;
        for stage in &selected {
            let deps = &self.dag.deps[stage];
            let reason = match deps.iter().find(|d| !known.contains_key(*d)) {
                Some(bad) => Some(format!("upstream {bad} did not finish")),
                None if stop => Some(
                    "the run stopped after a failure (--keep-going submits the independent \
                     stages)"
                        .to_owned(),
                ),
                None => None,
            };
            if let Some(reason) = reason {
                events.emit(Event::StageSkipped {
                    stage: stage.clone(),
                    reason,
                });
                outcomes.insert(stage.clone(), Outcome::Skipped);
                continue;
            }
            let upstream: BTreeMap<String, Known> =
                deps.iter().map(|d| (d.clone(), known[d].clone())).collect();
            let done = self.detach_stage(stage, &upstream, &lock, worker, options, events, cancel);
            match done {
                Ok((outcome, k)) => {
                    known.insert(stage.clone(), k);
                    outcomes.insert(stage.clone(), outcome);
                }
                Err(e) => {
                    events.emit(Event::StageFailed {
                        stage: stage.clone(),
                        error: format!("{e:#}"),
                        cancelled: Cancelled::is_in(&e),
                    });
                    outcomes.insert(stage.clone(), Outcome::Failed);
                    stop |= !options.keep_going;
                }
            }
        }
        self.workdir.memo.save()?;
        self.finish(start, outcomes, events)
    }

    /// Brings one stage of a `run --detach` as far as it goes without waiting: fresh,
    /// restored, adopted from an ended job, left to its active job, or submitted.
    #[allow(clippy::too_many_arguments)]
    fn detach_stage(
        &self,
        stage: &str,
        upstream: &BTreeMap<String, Known>,
        lock: &Mutex<LockFile>,
        worker: &Path,
        options: &RunOptions,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<(Outcome, Known)> {
        let hashes: BTreeMap<String, String> = upstream
            .iter()
            .filter_map(|(name, k)| Some((name.clone(), k.hash.clone()?)))
            .collect();
        let pending: BTreeMap<&String, &Known> =
            upstream.iter().filter(|(_, k)| k.hash.is_none()).collect();
        let after: Vec<String> = pending.values().filter_map(|k| k.job.clone()).collect();
        let material = self.material(stage, &hashes)?;
        let store = self.detached();
        if let Some((record, build)) = store.read_or_drop(stage, events) {
            match record.discard_reason(&material, upstream, options.force) {
                Some(why) => store.discard(&record, &why, events)?,
                None => match slurm::job_state(&record.job)? {
                    JobState::Active(state) => {
                        events.emit(Event::StageSubmitted {
                            stage: stage.to_owned(),
                            job: record.job.clone(),
                            after,
                            already: Some(state),
                        });
                        let known = Known {
                            hash: None,
                            job: Some(record.job),
                            build: Some(build),
                        };
                        return Ok((Outcome::Submitted, known));
                    }
                    // Its upstream is published: adopt it, as a run would.
                    _ if pending.is_empty() => {
                        let eval = self.evaluate_against(stage, lock, &hashes)?;
                        let (outcome, hash) =
                            self.adopt(stage, &eval, &record, &build, lock, events, cancel)?;
                        return Ok((outcome, Known::published(hash)));
                    }
                    // Cancelled by hand while its upstream job is still to finish.
                    _ => store.discard(&record, "it ended before its upstream job", events)?,
                },
            }
        }
        if pending.is_empty() && !options.force {
            let eval = self.evaluate_against(stage, lock, &hashes)?;
            if let Some((outcome, hash)) = self.reuse(stage, &eval, lock, events)? {
                return Ok((outcome, Known::published(hash)));
            }
        }

        self.workdir
            .check_publishable(stage, self.recorded(stage, lock).as_ref())?;
        // A job of this stage that nothing records (a `run --detach` killed between sbatch
        // and its record) would otherwise run beside the new one.
        slurm::cancel_leftovers(&self.pipeline.workdir, stage);
        let build = store.new_build(stage)?;
        // A pending upstream's output is read where its job writes it.
        let upstream_dir = |name: &str| {
            upstream[name]
                .build
                .clone()
                .unwrap_or_else(|| self.workdir.output(name))
        };
        let given = self.given(stage, &material, upstream_dir, lock, cancel, events)?;
        let ctx = given.context(self, stage, &build, events);
        let mut request = StageRequest::of(&ctx);
        // Always: the job also checks that the published upstream outputs it reads are
        // still those of `hashes` when it starts.
        request.deferred_inputs_hash = Some(DeferredInputsHash {
            inputs: material.inputs.clone(),
            upstream: hashes,
            pending: pending
                .iter()
                .filter_map(|(name, k)| Some(((*name).clone(), k.build.clone()?)))
                .collect(),
        });
        let job = match slurm::submit(worker, &ctx, &request, &after) {
            Ok(job) => job,
            Err(e) => {
                let _ = std::fs::remove_dir_all(slurm::job_dir(&build));
                let _ = std::fs::remove_dir_all(&build);
                return Err(e);
            }
        };
        let record = Record {
            format: FORMAT,
            stage: stage.to_owned(),
            job: job.id.clone(),
            build: build
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: material.kind,
            version: material.version,
            params: material.params,
            inputs: material.inputs,
            upstream: upstream
                .iter()
                .map(|(name, k)| {
                    let r = match (&k.hash, &k.job) {
                        (Some(hash), _) => UpstreamRef::Output(hash.clone()),
                        (None, job) => UpstreamRef::Job(job.clone().unwrap_or_default()),
                    };
                    (name.clone(), r)
                })
                .collect(),
            reads: pending
                .values()
                .filter_map(|k| k.build.as_ref()?.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
        };
        if let Err(e) = store.write(&record) {
            // A job no record names would never be adopted.
            slurm::cancel_leftovers(&self.pipeline.workdir, stage);
            return Err(e);
        }
        events.emit(Event::StageSubmitted {
            stage: stage.to_owned(),
            job: job.id.clone(),
            after,
            already: None,
        });
        let known = Known {
            hash: None,
            job: Some(job.id),
            build: Some(build),
        };
        Ok((Outcome::Submitted, known))
    }

    /// Adopts `stage`'s detached job if a record of it matches the stage as it is now
    /// (with `upstream`'s published outputs): waits for it if it is still active, then
    /// publishes its output or fails with its error. A record that no longer matches, or
    /// any under `force`, is discarded (its job cancelled); `None` then, and the stage runs
    /// as usual.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adopt_detached(
        &self,
        stage: &str,
        eval: &Evaluation,
        upstream: &BTreeMap<String, String>,
        force: bool,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<Option<(Outcome, String)>> {
        let store = self.detached();
        let Some((record, build)) = store.read_or_drop(stage, events) else {
            return Ok(None);
        };
        let known: BTreeMap<String, Known> = upstream
            .iter()
            .map(|(name, hash)| (name.clone(), Known::published(hash.clone())))
            .collect();
        if let Some(why) = record.discard_reason(&eval.material, &known, force) {
            store.discard(&record, &why, events)?;
            return Ok(None);
        }
        self.adopt(stage, eval, &record, &build, lock, events, cancel)
            .map(Some)
    }

    /// Follows `record`'s job until it ends, then publishes its output (in `build`) and
    /// records it in the lock file as if this run had run the stage. A job that failed
    /// fails the stage and its record is removed (the next run submits it again); one this
    /// run stopped following (Ctrl-C) keeps running, and its record stays.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &self,
        stage: &str,
        eval: &Evaluation,
        record: &Record,
        build: &Path,
        lock: &Mutex<LockFile>,
        events: &dyn EventSink,
        cancel: &Cancellation,
    ) -> Result<(Outcome, String)> {
        let params = &self.pipeline.stages[stage];
        let started = self.start(stage, lock, events)?;
        let state_dir = self.workdir.state_dir(stage)?;
        let ctx = StageContext {
            name: stage,
            params,
            pipeline: self.pipeline,
            out_dir: build,
            previous_output: None,
            state_dir: &state_dir,
            upstream: &BTreeMap::new(),
            inputs_hash: "",
            events,
            cancel: &cancel.flag(stage),
        };
        ctx.log(format!(
            "adopting detached Slurm job {} ({})",
            record.job,
            build.display()
        ));
        let job = slurm::Job {
            id: record.job.clone(),
            dir: slurm::job_dir(build),
        };
        let store = self.detached();
        if let Err(e) = slurm::follow(&ctx, &job, false) {
            if !Cancelled::is_in(&e) {
                store.remove_keeping_log(record)?;
            }
            return Err(e);
        }
        let manifest = Manifest::of_dir(build, |p| self.workdir.memo.hash(p))?;
        self.workdir.store.save(&eval.key, build, &manifest)?;
        if store.is_read(&record.build) {
            // A downstream job reads its input there: publish a copy (from the cache, as
            // a restore does), and leave the folder to that job.
            let copy = self.workdir.tmp_dir(stage)?;
            match self.workdir.store.restore(&eval.key, &copy)? {
                Restore::Restored(restored) => {
                    self.publish(stage, &copy, &restored, lock, events)?
                }
                Restore::Corrupt(why) => bail!("{why}"),
                Restore::Missing => bail!("the run cache lost the output it was given"),
            }
        } else {
            self.publish(stage, build, &manifest, lock, events)?;
        }
        let hash = self.record(stage, eval, Some(&manifest), lock)?;
        // Downstream records name this job: they now name its output. A kill before this
        // only makes them be discarded (and submitted again).
        store.settle(stage, &record.job, &hash)?;
        store.remove(record)?;
        Ok(self.ran(stage, started, hash, events))
    }
}

impl Known {
    fn published(hash: String) -> Self {
        Self {
            hash: Some(hash),
            ..Self::default()
        }
    }
}
