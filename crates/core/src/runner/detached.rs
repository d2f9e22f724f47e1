//! The records of detached stages (`run --detach`): one per stage submitted as a Slurm job
//! that no runner follows, so that a later `run` adopts the job's output (or `status`
//! shows the job). They live in `<workdir>/.gptpipe/detached/`:
//! - `<stage>.json`: the [`Record`], written atomically once sbatch has answered;
//! - `<stage>.<pid>.<n>/`: the job's build folder (named as [`super::Workdir::tmp_dir`]'s,
//!   but out of `tmp/`, which every run clears), and `<stage>.<pid>.<n>.job/` beside it
//!   ([`crate::slurm::job_dir`]).
//!
//! A record is only ever trusted after [`Record::validate`]: its build folder is a name,
//! never a path, and must be one of this stage's build folders in that folder.

use crate::events::{Event, EventSink};
use crate::slurm;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The version of [`Record`]'s format; a record of another version is discarded.
pub const FORMAT: u32 = 1;

/// What a detached stage's cache key was made of when it was submitted: as
/// [`super::KeyMaterial`], but an upstream stage submitted in the same chain is known only
/// by its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamRef {
    /// A published output, by its hash.
    Output(String),
    /// The output the detached job with this id is building.
    Job(String),
}

/// One detached stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub format: u32,
    pub stage: String,
    /// The Slurm job id.
    pub job: String,
    /// The name of the job's build folder in `.gptpipe/detached/`.
    pub build: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub upstream: BTreeMap<String, UpstreamRef>,
    /// The build folders of the upstream jobs the job reads (their names in
    /// `.gptpipe/detached/`): kept, even once their output is published, until this
    /// record goes.
    #[serde(default)]
    pub reads: Vec<String>,
}

/// What a run knows of an upstream stage when it looks at a downstream record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Known {
    /// Its output hash, once it is published.
    pub hash: Option<String>,
    /// Its detached job, while that job has not been adopted.
    pub job: Option<String>,
    /// That job's build folder.
    pub build: Option<PathBuf>,
}

impl Record {
    /// Refuses a record that is not what `run --detach` writes for `stage`: a job id that
    /// is not one, a build folder that is not one of `stage`'s build folder names (a path,
    /// `..`, another stage's).
    pub fn validate(&self, stage: &str) -> Result<()> {
        if self.format != FORMAT {
            bail!("format {} (this gptpipe writes {FORMAT})", self.format);
        }
        if self.stage != stage {
            bail!("it names stage `{}`", self.stage);
        }
        if !slurm::is_job_id(&self.job) {
            bail!("job {:?} is not a Slurm job id", self.job);
        }
        let single = Path::new(&self.build).components().count() == 1
            && !self.build.contains('/')
            && super::tmp_dir_stage(&self.build) == Some(stage);
        if !single {
            bail!("build folder {:?} is not one of `{stage}`'s", self.build);
        }
        for name in &self.reads {
            let theirs = Path::new(name).components().count() == 1
                && !name.contains('/')
                && super::tmp_dir_stage(name).is_some_and(|s| self.upstream.contains_key(s));
            if !theirs {
                bail!("build folder {name:?} is not one of its upstream stages'");
            }
        }
        if let Some((name, _)) = self.upstream.iter().find(|(_, r)| match r {
            UpstreamRef::Job(id) => !slurm::is_job_id(id),
            UpstreamRef::Output(_) => false,
        }) {
            bail!("upstream `{name}`'s job is not a Slurm job id");
        }
        Ok(())
    }

    /// Why this record's job is to be discarded rather than adopted: it no longer
    /// describes the stage as it is now ([`Record::mismatch`]), or `force` runs the stage
    /// again; `None` when it is to be adopted.
    pub fn discard_reason(
        &self,
        now: &super::KeyMaterial,
        upstream: &BTreeMap<String, Known>,
        force: bool,
    ) -> Option<String> {
        match self.mismatch(now, upstream) {
            Some(why) => Some(format!("{why} since it was submitted")),
            None => force.then(|| "--force runs the stage again".to_owned()),
        }
    }

    /// Why this record no longer describes the stage as it is now (its kind, params and
    /// input files as `now` has them, and each upstream stage as `upstream` knows it);
    /// `None` when it still does.
    pub fn mismatch(
        &self,
        now: &super::KeyMaterial,
        upstream: &BTreeMap<String, Known>,
    ) -> Option<String> {
        if self.kind != now.kind || self.version != now.version {
            return Some("its kind or implementation changed".into());
        }
        if self.params != now.params {
            return Some("its params changed".into());
        }
        if self.inputs != now.inputs {
            return Some("its input files changed".into());
        }
        let names: BTreeSet<&String> = self.upstream.keys().collect();
        if names != upstream.keys().collect() {
            return Some("its upstream stages changed".into());
        }
        for (name, recorded) in &self.upstream {
            let known = &upstream[name];
            let same = match recorded {
                UpstreamRef::Output(hash) => known.hash.as_ref() == Some(hash),
                UpstreamRef::Job(id) => known.hash.is_none() && known.job.as_ref() == Some(id),
            };
            if !same {
                return Some(format!("upstream `{name}` changed"));
            }
        }
        None
    }
}

/// The folder of the records and their jobs' folders.
pub struct Detached {
    workdir: PathBuf,
    root: PathBuf,
}

impl Detached {
    /// The folder of the workdir `workdir`.
    pub fn new(workdir: &Path) -> Self {
        Self {
            workdir: workdir.to_path_buf(),
            root: workdir.join(super::META_DIR).join("detached"),
        }
    }

    /// Cancels `stage`'s jobs in this workdir. By name, not by a record's job id: a record
    /// someone else wrote cannot make gptpipe cancel a job that is not this stage's.
    fn cancel(&self, stage: &str) {
        slurm::cancel_leftovers(&self.workdir, stage);
    }

    fn record_path(&self, stage: &str) -> PathBuf {
        self.root.join(format!("{stage}.json"))
    }

    /// `stage`'s record, validated, with its build folder (which exists, and is a folder,
    /// not a link); `Err` says why a record that is there cannot be used.
    pub fn read(&self, stage: &str) -> Result<Option<(Record, PathBuf)>> {
        let path = self.record_path(stage);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let record: Record = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a record gptpipe wrote", path.display()))?;
        record
            .validate(stage)
            .with_context(|| format!("{} is not a record gptpipe wrote", path.display()))?;
        let build = self.root.join(&record.build);
        match std::fs::symlink_metadata(&build) {
            Ok(meta) if meta.is_dir() => Ok(Some((record, build))),
            _ => bail!(
                "{}: its job's build folder {} is missing (or not a folder)",
                path.display(),
                build.display()
            ),
        }
    }

    /// Reads `stage`'s record; one that cannot be used is removed (its job, if it names
    /// one, is cancelled), saying so.
    pub fn read_or_drop(&self, stage: &str, events: &dyn EventSink) -> Option<(Record, PathBuf)> {
        match self.read(stage).and_then(|found| self.ours(stage, found)) {
            Ok(found) => found,
            Err(e) => {
                self.cancel(stage);
                let _ = std::fs::remove_file(self.record_path(stage));
                events.emit(Event::Warning {
                    message: format!("[{stage}] {e:#}; the record was removed"),
                });
                None
            }
        }
    }

    /// `found`, unless Slurm knows its job under another name than `stage`'s: job ids start
    /// again when a cluster's controller loses its state, and another job's end must not
    /// publish this stage's (empty) build folder. A job Slurm forgot passes.
    fn ours(
        &self,
        stage: &str,
        found: Option<(Record, PathBuf)>,
    ) -> Result<Option<(Record, PathBuf)>> {
        if let Some((record, _)) = &found {
            let want = slurm::job_name(&self.workdir, stage);
            if let Some(name) = slurm::job_name_of(&record.job).filter(|n| *n != want) {
                bail!(
                    "Slurm's job {} is not this stage's (Slurm names it {name:?}, not {want:?})",
                    record.job
                );
            }
        }
        Ok(found)
    }

    /// A new, empty build folder for a detached job of `stage`: never one that exists (a
    /// recycled pid must not reuse the folder a downstream job still reads).
    pub fn new_build(&self, stage: &str) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = self
                .root
                .join(format!("{stage}.{}.{n}", std::process::id()));
            if std::fs::symlink_metadata(slurm::job_dir(&dir)).is_ok() {
                continue;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()))
                }
            }
        }
    }

    /// Writes `record` atomically: a kill leaves the old record or the new one.
    pub fn write(&self, record: &Record) -> Result<()> {
        crate::fsutil::write_atomic(
            &self.record_path(&record.stage),
            &serde_json::to_vec_pretty(record)?,
        )
    }

    /// Whether a job recorded here reads the build folder named `build`.
    pub fn is_read(&self, build: &str) -> bool {
        self.stages().iter().any(|stage| {
            matches!(self.read(stage), Ok(Some((r, _))) if r.reads.iter().any(|b| b == build))
        })
    }

    /// Removes `record`, its job's folders, and the upstream build folders it alone read
    /// (a build folder stays while another record's job reads it).
    pub fn remove(&self, record: &Record) -> Result<()> {
        self.drop_record(record, false)
    }

    /// As [`Detached::remove`], but for a job that failed: its job folder stays, so that
    /// the log its error names is there until the next run tidies it away.
    pub fn remove_keeping_log(&self, record: &Record) -> Result<()> {
        self.drop_record(record, true)
    }

    fn drop_record(&self, record: &Record, keep_log: bool) -> Result<()> {
        let path = self.record_path(&record.stage);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => {}
        }
        let build = self.root.join(&record.build);
        if !keep_log {
            let _ = std::fs::remove_dir_all(slurm::job_dir(&build));
        }
        for folder in record.reads.iter().chain([&record.build]) {
            if !self.in_use(folder) {
                let _ = std::fs::remove_dir_all(self.root.join(folder));
            }
        }
        Ok(())
    }

    /// Whether a record names the build folder `name` as its job's or as one its job reads.
    fn in_use(&self, name: &str) -> bool {
        self.stages().iter().any(|stage| match self.read(stage) {
            Ok(Some((r, _))) => r.build == name || r.reads.iter().any(|b| b == name),
            _ => false,
        })
    }

    /// Cancels `record`'s stage's job and removes the record: the stage no longer wants that
    /// job's output. A job that has not ended a minute after `scancel` keeps its record and
    /// fails the stage: it may still write checkpoints into the stage's state folder, which
    /// a run of the stage would resume from.
    pub fn discard(&self, record: &Record, why: &str, events: &dyn EventSink) -> Result<()> {
        self.cancel(&record.stage);
        if !slurm::wait_until_ended(&record.job, std::time::Duration::from_secs(60)) {
            bail!(
                "detached Slurm job {} is to be discarded ({why}) but has not ended a minute \
                 after scancel; run again once it has (`squeue -j {}`)",
                record.job,
                record.job
            );
        }
        events.emit(Event::Warning {
            message: format!(
                "[{}] detached Slurm job {} discarded, not adopted: {why}",
                record.stage, record.job
            ),
        });
        self.remove(record)
    }

    /// Once `stage` is published from its detached job `job` with output `hash`, the
    /// records that wait for that job's output name the output instead: their keys are
    /// settled, and a later run adopts them whatever it runs first.
    pub fn settle(&self, stage: &str, job: &str, hash: &str) -> Result<()> {
        // A run adopts independent stages in parallel: two settling the same downstream
        // record would each write it with only their own upstream settled.
        static SETTLING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = SETTLING.lock().unwrap_or_else(|e| e.into_inner());
        for name in self.stages() {
            let Ok(Some((mut record, _))) = self.read(&name) else {
                continue;
            };
            if record.upstream.get(stage) == Some(&UpstreamRef::Job(job.to_owned())) {
                record
                    .upstream
                    .insert(stage.to_owned(), UpstreamRef::Output(hash.to_owned()));
                self.write(&record)?;
            }
        }
        Ok(())
    }

    /// The stages that have a record file (valid or not).
    pub fn stages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut stages: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
            .collect();
        stages.sort();
        stages
    }

    /// Under the run lock, before a run looks at any record: drops the records that cannot
    /// be used and those of stages the pipeline no longer has (cancelling their jobs), and
    /// removes what no record uses (the folders of a `run --detach` killed before it wrote
    /// its record, half-written temporary files).
    pub fn tidy(&self, stages: &BTreeSet<&str>, events: &dyn EventSink) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        // Records of stages this pipeline does not have are left alone: another pipeline
        // may share the workdir, and they are its own.
        let mut used = BTreeSet::new();
        let mut recorded = BTreeSet::new();
        for stage in self.stages() {
            if !stages.contains(stage.as_str()) {
                continue;
            }
            if let Some((record, build)) = self.read_or_drop(&stage, events) {
                recorded.insert(record.stage.clone());
                used.insert(build.clone());
                used.insert(slurm::job_dir(&build));
                used.insert(self.record_path(&record.stage));
                used.extend(record.reads.iter().map(|r| self.root.join(r)));
            }
        }
        let entries = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot read {}", self.root.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stage) = owner(&name, stages) else {
                continue;
            };
            if used.contains(&path) {
                continue;
            }
            // A build folder without a record: its job was submitted by a run killed before
            // it wrote the record. The job (named after the stage) must not outlive it.
            if !recorded.contains(stage) {
                self.cancel(stage);
            }
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            removed.with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// Each stage's detached job and what Slurm says of it now, for `gptpipe status`
    /// (read-only: a record that cannot be used is left for the next run to drop).
    pub fn jobs(&self) -> BTreeMap<String, slurm::ActiveJob> {
        let mut jobs = BTreeMap::new();
        for stage in self.stages() {
            let Ok(Some((record, _))) = self.read(&stage) else {
                continue;
            };
            let state = match slurm::job_state(&record.job) {
                Ok(slurm::JobState::Active(s)) => s,
                Ok(slurm::JobState::Ended { state, .. }) => state,
                Ok(slurm::JobState::Unknown) | Err(_) => "UNKNOWN".into(),
            };
            jobs.insert(
                stage,
                slurm::ActiveJob {
                    id: record.job,
                    state,
                    detached: true,
                },
            );
        }
        jobs
    }
}

/// The stage of `stages` a detached entry belongs to: its record `<stage>.json`, or its
/// build folder `<stage>.<pid>.<n>` and job folder `<stage>.<pid>.<n>.job` (stage names may
/// hold dots, so the numbers are matched from the end).
fn owner<'a>(name: &str, stages: &BTreeSet<&'a str>) -> Option<&'a str> {
    let numbered = |rest: &str| {
        let rest = rest.strip_suffix(".job").unwrap_or(rest);
        let mut parts = rest.split('.');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
    };
    stages.iter().copied().find(|stage| {
        name.strip_prefix(stage)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| rest == "json" || numbered(rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NullSink;

    fn record(stage: &str) -> Record {
        Record {
            format: FORMAT,
            stage: stage.into(),
            job: "42".into(),
            build: format!("{stage}.100.0"),
            kind: "prepare".into(),
            version: 3,
            params: serde_json::json!({"inputs": ["a.csv"]}),
            inputs: BTreeMap::from([("a.csv".into(), "h1".into())]),
            upstream: BTreeMap::from([("up".into(), UpstreamRef::Job("41".into()))]),
            reads: vec!["up.100.0".into()],
        }
    }

    fn material(r: &Record) -> super::super::KeyMaterial {
        super::super::KeyMaterial {
            kind: r.kind.clone(),
            version: r.version,
            params: r.params.clone(),
            inputs: r.inputs.clone(),
            upstream: BTreeMap::new(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record("train[lr=0.1]");
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""up":{"job":"41"}"#), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        r.validate("train[lr=0.1]").unwrap();
    }

    #[test]
    fn records_that_gptpipe_did_not_write_are_refused() {
        let bad = |f: &dyn Fn(&mut Record)| {
            let mut r = record("train");
            f(&mut r);
            r.validate("train").unwrap_err().to_string()
        };
        assert!(bad(&|r| r.format = 2).contains("format"));
        assert!(bad(&|r| r.stage = "other".into()).contains("other"));
        assert!(bad(&|r| r.job = "1; rm -rf /".into()).contains("job id"));
        assert!(bad(&|r| r.job = String::new()).contains("job id"));
        for build in [
            "../../train.1.2",
            "/etc/train.1.2",
            "x/train.1.2",
            "other.1.2",
            "train",
            "..",
            "train.1.2/..",
        ] {
            assert!(
                bad(&|r| r.build = build.into()).contains("build folder"),
                "{build}"
            );
        }
        assert!(bad(&|r| {
            r.upstream.insert("up".into(), UpstreamRef::Job("x".into()));
        })
        .contains("upstream"));
        for read in ["../up.1.2", "train.1.2", "up", "/up.1.2"] {
            assert!(
                bad(&|r| r.reads = vec![read.into()]).contains("upstream"),
                "{read}"
            );
        }
        // Unknown fields and broken JSON do not parse at all.
        let mut value = serde_json::to_value(record("train")).unwrap();
        value["path"] = "/etc".into();
        assert!(serde_json::from_value::<Record>(value).is_err());
        assert!(serde_json::from_str::<Record>(r#"{"format":1,"stage":"tr"#).is_err());
    }

    #[test]
    fn a_record_matches_only_the_stage_it_was_submitted_for() {
        let r = record("train");
        let pending = |job: &str| Known {
            job: Some(job.into()),
            ..Known::default()
        };
        let ups = BTreeMap::from([("up".to_owned(), pending("41"))]);
        assert_eq!(r.mismatch(&material(&r), &ups), None);
        // Another job of the upstream, or its output published by another run.
        let other = BTreeMap::from([("up".to_owned(), pending("40"))]);
        assert!(r.mismatch(&material(&r), &other).is_some());
        let published = BTreeMap::from([(
            "up".to_owned(),
            Known {
                hash: Some("h".into()),
                ..Known::default()
            },
        )]);
        assert!(r.mismatch(&material(&r), &published).is_some());
        let mut m = material(&r);
        m.params = serde_json::json!({"inputs": ["b.csv"]});
        assert_eq!(r.mismatch(&m, &ups).as_deref(), Some("its params changed"));
        let mut m = material(&r);
        m.inputs.insert("a.csv".into(), "h2".into());
        assert!(r.mismatch(&m, &ups).is_some());
        assert!(r.mismatch(&material(&r), &BTreeMap::new()).is_some());

        // Settled: the upstream's output, by hash.
        let mut settled = r.clone();
        settled
            .upstream
            .insert("up".into(), UpstreamRef::Output("h".into()));
        assert_eq!(settled.mismatch(&material(&r), &published), None);
    }

    #[test]
    fn records_on_disk_are_validated_and_tidied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Detached::new(&dir.path().join("work"));
        let r = record("train");
        std::fs::create_dir_all(store.root.join(&r.build)).unwrap();
        std::fs::create_dir_all(store.root.join("up.100.0")).unwrap();
        store.write(&r).unwrap();
        let (read, build) = store.read("train").unwrap().unwrap();
        assert_eq!((read, build), (r.clone(), store.root.join(&r.build)));
        assert!(store.read("samples").unwrap().is_none());

        // A half-written record, a folder no record uses, a link as a build folder.
        std::fs::write(store.record_path("samples"), b"{\"format\":1,").unwrap();
        std::fs::create_dir_all(store.root.join("samples.7.7")).unwrap();
        let mut linked = record("eval");
        linked.build = "eval.1.1".into();
        std::os::unix::fs::symlink(dir.path(), store.root.join("eval.1.1")).unwrap();
        store.write(&linked).unwrap();
        assert!(store.read("eval").is_err());
        // Another pipeline's record and folders in the same workdir (its stage is not
        // ours, and its name holds a dot, as a matrix stage's may).
        let theirs = Record {
            reads: Vec::new(),
            ..record("other[lr=0.1]")
        };
        std::fs::create_dir_all(store.root.join(&theirs.build)).unwrap();
        std::fs::create_dir_all(store.root.join("other[lr=0.1].9.9.job")).unwrap();
        store.write(&theirs).unwrap();
        store
            .tidy(&BTreeSet::from(["train", "samples", "eval"]), &NullSink)
            .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&store.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other[lr=0.1].100.0",
                "other[lr=0.1].9.9.job",
                "other[lr=0.1].json",
                "train.100.0",
                "train.json",
                "up.100.0"
            ]
        );
        assert!(store.is_read("up.100.0") && !store.is_read("train.100.0"));
        assert!(dir.path().exists(), "a link's target was removed");

        // A new build folder never reuses one that is there.
        let fresh = store.new_build("up").unwrap();
        assert!(fresh.starts_with(&store.root) && fresh != store.root.join("up.100.0"));
        std::fs::remove_dir(&fresh).unwrap();

        // Settling replaces the job by the output it published.
        store.settle("up", "41", "h").unwrap();
        let (settled, _) = store.read("train").unwrap().unwrap();
        assert_eq!(settled.upstream["up"], UpstreamRef::Output("h".into()));

        // A failed job's record goes, its log stays until the next tidy.
        let job = slurm::job_dir(&store.root.join(&r.build));
        std::fs::create_dir_all(&job).unwrap();
        store.remove_keeping_log(&settled).unwrap();
        assert_eq!(store.stages(), ["other[lr=0.1]"]);
        assert!(!store.root.join(&r.build).exists() && job.exists());
        // What it read went with it: no record reads it any more.
        assert!(!store.root.join("up.100.0").exists());
        store.tidy(&BTreeSet::from(["train"]), &NullSink).unwrap();
        assert!(!job.exists());
    }
}
