//! The Slurm executor: a stage runs as a batch job of `gptpipe-worker`, while the runner
//! keeps the DAG, the cache and the lock file, and publishes the job's output as it would a
//! local stage's.
//!
//! The job reads its [`StageRequest`] from a file and writes its events to another, both
//! beside the stage's build folder in the workdir (which the cluster's nodes share). The
//! runner follows the job with `sacct`, or with `scontrol`/`squeue` where accounting
//! storage is disabled, relays the events as they are written, and `scancel`s the job
//! when the run is cancelled.

use crate::config::{Devices, Executor, StageParams};
use crate::events::Event;
use crate::remote::{job_env, StageRequest, LAUNCHER_VARS};
use crate::stage::StageContext;
use crate::Cancelled;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the job's state and events are read.
fn poll_interval() -> Duration {
    let ms = std::env::var("GPTPIPE_SLURM_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u64);
    Duration::from_millis(ms.clamp(50, 60_000))
}

/// What Slurm says of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Pending, running, completing, requeued, suspended...: not over yet.
    Active(String),
    /// Over: the state (`COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, `NODE_FAIL`,
    /// `OUT_OF_MEMORY`, `PREEMPTED`...) and the exit code as `code:signal`.
    Ended { state: String, exit_code: String },
    /// Slurm no longer knows the job (its record expired before it was read).
    Unknown,
}

/// States after which a job does not run again by itself (a preempted job that is requeued
/// comes back as PENDING).
const ENDED: [&str; 10] = [
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
];

fn state_of(state: &str, exit_code: &str) -> JobState {
    // sacct writes "CANCELLED by 0".
    let state = state
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    if ENDED.contains(&state.as_str()) {
        JobState::Ended {
            state,
            exit_code: exit_code.to_owned(),
        }
    } else {
        JobState::Active(state)
    }
}

/// Asks Slurm for job `id`'s state: `sacct` first; where accounting is disabled (or does
/// not know the job yet), `scontrol show job`, then `squeue`.
pub fn job_state(id: &str) -> Result<JobState> {
    let sacct = sacct_line(id, "State,ExitCode");
    if let Some((state, code)) = sacct.as_deref().and_then(|l| l.split_once('|')) {
        return Ok(state_of(state, code.trim()));
    }
    let scontrol = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .context("cannot run scontrol (is Slurm installed here?)")?;
    let text = String::from_utf8_lossy(&scontrol.stdout);
    if scontrol.status.success() {
        if let Some(state) = scontrol_field(&text, "JobState") {
            let exit_code = scontrol_field(&text, "ExitCode").unwrap_or_default();
            return Ok(state_of(state, exit_code));
        }
    }
    let squeue = Command::new("squeue")
        .args(["-h", "-o", "%T", "-j", id])
        .output()
        .context("cannot run squeue")?;
    match String::from_utf8_lossy(&squeue.stdout).lines().next() {
        Some(state) if squeue.status.success() && !state.trim().is_empty() => {
            Ok(state_of(state.trim(), ""))
        }
        _ => Ok(JobState::Unknown),
    }
}

/// The name Slurm knows job `id` by (`sacct`, else `scontrol`); `None` when it does not
/// know the job.
pub fn job_name_of(id: &str) -> Option<String> {
    let sacct = sacct_line(id, "JobName")
        .map(|l| l.trim().to_owned())
        .filter(|n| !n.is_empty());
    sacct.or_else(|| {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        scontrol_field(&String::from_utf8_lossy(&out.stdout), "JobName").map(str::to_owned)
    })
}

/// The first line `sacct` gives of job `id`'s `fields` (`|`-separated), when it answers
/// (it does not where accounting storage is disabled).
fn sacct_line(id: &str, fields: &str) -> Option<String> {
    let out = Command::new("sacct")
        .args(["-X", "-n", "-P", "-o", fields, "-j", id])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// Field `name` of a job as `scontrol show job -o` writes it (`Name=value`).
fn scontrol_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// `'s'` for a POSIX shell.
fn quoted(s: &Path) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

/// The job name of `stage` in the workdir `workdir`: unique per workdir, so that the jobs
/// a killed runner left behind can be found and cancelled by the next run.
pub fn job_name(workdir: &Path, stage: &str) -> String {
    // The workdir is often written relative ("./work"): its absolute path tells them apart.
    let workdir = std::fs::canonicalize(workdir).unwrap_or_else(|_| workdir.to_path_buf());
    let hash = blake3::hash(workdir.to_string_lossy().as_bytes()).to_hex();
    format!("gptpipe-{}-{stage}", &hash[..10])
}

/// Cancels the jobs of `stage` in the workdir `workdir` that nothing records: left by a
/// runner that was killed, or by a `run --detach` killed before it recorded the job (the
/// workdir's run lock says no other runner uses them).
pub fn cancel_leftovers(workdir: &Path, stage: &str) {
    // Best effort, and quiet: where Slurm cannot be reached there is nothing to cancel.
    let _ = Command::new("scancel")
        .args(["--name", &job_name(workdir, stage)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Cancels job `id`; Slurm's answer does not matter: an ended job stays ended.
fn cancel(id: &str) {
    let _ = Command::new("scancel").arg(id).status();
}

/// The folder of the job that builds into `out_dir`: `<out_dir>.job/`, beside it. It holds
/// the job's request, script, events, log, id and exit code.
pub fn job_dir(out_dir: &Path) -> PathBuf {
    let mut dir = out_dir.as_os_str().to_owned();
    dir.push(".job");
    PathBuf::from(dir)
}

/// A submitted job: its id and its folder ([`job_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub dir: PathBuf,
}

impl Job {
    fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }

    /// The exit code the job's script wrote once the worker ended by itself: what tells
    /// how a job ended once Slurm (without accounting storage) has forgotten it.
    fn recorded_exit_code(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(EXIT_CODE_FILE)).ok()?;
        Some(text.trim().to_owned()).filter(|c| !c.is_empty())
    }
}

/// Runs `ctx`'s stage as a Slurm job of `worker`, relaying its events; returns when the job
/// has ended. Only a job that COMPLETED with exit code 0 succeeds.
pub fn run_in_job(worker: &Path, ctx: &StageContext) -> Result<()> {
    cancel_leftovers(&ctx.pipeline.workdir, ctx.name);
    let job = submit(worker, ctx, &StageRequest::of(ctx), &[])?;
    ctx.log(format!(
        "submitted as Slurm job {} ({})",
        job.id,
        job.dir.display()
    ));
    follow(ctx, &job, true)
}

/// Submits `ctx`'s stage as a Slurm job of `worker` that runs `request`, to start once the
/// jobs `after` have completed (`afterok`; a failed one cancels it), and returns at once.
pub fn submit(
    worker: &Path,
    ctx: &StageContext,
    request: &StageRequest,
    after: &[String],
) -> Result<Job> {
    let dir = job_dir(ctx.out_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut job = Job {
        id: String::new(),
        dir,
    };
    let (request_file, script) = (job.dir.join("request.json"), job.dir.join("job.sh"));
    std::fs::write(&request_file, serde_json::to_vec(request)?)?;
    let mut body = String::from("#!/bin/sh\n# gptpipe: one stage, run by the Slurm executor\n");
    // sbatch exports the submitter's environment: torchrun's variables there are not this
    // job's (a data-parallel job's ranks get theirs from rank.sh).
    body.push_str(&format!("unset {}\n", LAUNCHER_VARS.join(" ")));
    for (key, value) in job_env(ctx.params.threads()) {
        // What the user set is left out of job_env and reaches the job through sbatch's
        // exported environment; the rest is exported as it is (`$(nproc)` runs in the job).
        body.push_str(&format!("export {key}=\"{value}\"\n"));
    }
    let run_stage = |events: &str| {
        format!(
            "{} run-stage < {} > {events}",
            quoted(worker),
            quoted(&request_file)
        )
    };
    let ranks = data_parallel_ranks(ctx);
    let command = if let Some(ranks) = ranks {
        // Only rank 0's events are the stage's; the others' go nowhere (a failed rank ends
        // the job, and its error is in the job's log).
        let rank_script = job.dir.join("rank.sh");
        let rank = rank_script_body(&run_stage(&quoted(&job.events())), &run_stage("/dev/null"));
        std::fs::write(&rank_script, rank)?;
        body.push_str(&ranks_env(ranks));
        // srun does not take sbatch's --cpus-per-task over by itself (Slurm 22.05 on).
        format!(
            "srun --kill-on-bad-exit=1 ${{SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK}} sh {}",
            quoted(&rank_script)
        )
    } else {
        run_stage(&quoted(&job.events()))
    };
    // The exit code is written only when the worker ends by itself (a signal ends the
    // script too): a run can then tell how the job ended after Slurm forgot it.
    body.push_str(&format!(
        "{command}\ncode=$?\necho $code > {}\nexit $code\n",
        quoted(&job.dir.join(EXIT_CODE_FILE)),
    ));
    std::fs::write(&script, body)?;

    let resources = ctx
        .pipeline
        .resources
        .get(ctx.name)
        .cloned()
        .unwrap_or_default();
    let mut sbatch = Command::new("sbatch");
    sbatch
        .arg("--parsable")
        .arg(format!(
            "--job-name={}",
            job_name(&ctx.pipeline.workdir, ctx.name)
        ))
        .arg(format!("--output={}", job.log().display()))
        // Where the runner is: the request's relative paths mean the same in the job.
        .arg(format!("--chdir={}", std::env::current_dir()?.display()));
    if !after.is_empty() {
        // A failed upstream job cancels this one rather than leaving it pending forever.
        sbatch
            .arg(format!("--dependency=afterok:{}", after.join(":")))
            .arg("--kill-on-invalid-dep=yes");
    }
    let out = sbatch
        .args(resources.sbatch_options())
        .args(ranks.map(|n| format!("--ntasks-per-node={n}")))
        .arg(&script)
        .output()
        .context("cannot run sbatch (is Slurm installed here, and SLURM_CONF set if needed?)")?;
    if !out.status.success() {
        bail!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    job.id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !is_job_id(&job.id) {
        bail!(
            "sbatch answered {:?}, not a job id",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // `gptpipe status` reads it to show the job while it is active.
    std::fs::write(job.dir.join(JOB_ID_FILE), &job.id)?;
    Ok(job)
}

/// Whether `id` reads as a Slurm job id (what sbatch answers, what a record may hold).
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// Follows `job` until it ends, relaying its events as `ctx`'s. Only a job that COMPLETED
/// with exit code 0 succeeds; otherwise the error says Slurm's state, the worker's error
/// and the end of the job's log. When `ctx` is cancelled, the job is `scancel`led if
/// `cancel_job` (a job of this run), or left running (a detached job: a later run adopts
/// it), and the error is [`Cancelled`].
pub fn follow(ctx: &StageContext, job: &Job, cancel_job: bool) -> Result<()> {
    let id = &job.id;
    let mut relay = Relay::new(job.events());
    let mut last = String::new();
    let (state, exit_code) = loop {
        relay.forward(ctx);
        if ctx.cancel.load(Ordering::Relaxed) {
            if cancel_job {
                cancel(id);
                wait_until_ended(id, Duration::from_secs(60));
            }
            return Err(Cancelled.into());
        }
        match job_state(id)? {
            JobState::Active(s) => {
                if s != last {
                    ctx.log(format!("Slurm job {id}: {s}"));
                    last = s;
                }
            }
            JobState::Ended { state, exit_code } => break (state, exit_code),
            // Forgotten by Slurm, but its script said how the worker ended (as Slurm
            // would: COMPLETED for exit code 0, FAILED for another).
            JobState::Unknown => match job.recorded_exit_code().as_deref() {
                Some("0") => break ("COMPLETED".to_owned(), "0:0".to_owned()),
                Some(code) => break ("FAILED".to_owned(), format!("{code}:0")),
                None => break ("UNKNOWN".to_owned(), String::new()),
            },
        }
        std::thread::sleep(poll_interval());
    };
    relay.forward(ctx);
    ctx.log(format!("Slurm job {id}: {state} (exit code {exit_code})"));
    if state == "COMPLETED" && exit_code.starts_with("0:") && relay.failure.is_none() {
        return Ok(());
    }
    let ended = match state.as_str() {
        "UNKNOWN" => format!("Slurm no longer knows job {id}"),
        _ => format!("Slurm job {id} ended {state} (exit code {exit_code})"),
    };
    let why = match relay.failure.take() {
        Some(error) => format!("{error}\n({ended})"),
        None => ended,
    };
    Err(anyhow!(
        "{why}; the end of its log ({}):\n{}",
        job.log().display(),
        tail(&job.log(), 20)
    ))
}

/// The data-parallel ranks a finetune runs per node of its job (on each of its `nodes`):
/// `devices`, where `"all"` is the GPUs its `resources` ask for (one without). Each is a
/// task that srun starts. `None` for a stage that runs as one process: any but a finetune, or a finetune of one
/// rank on one node.
fn data_parallel_ranks(ctx: &StageContext) -> Option<usize> {
    let StageParams::Finetune(p) = ctx.params else {
        return None;
    };
    let resources = ctx.pipeline.resources.get(ctx.name);
    let per_node = match p.devices {
        Devices::Count(n) => n.get(),
        Devices::All => resources
            .and_then(|r| r.gpus)
            .map_or(1, |n| n.max(1) as usize),
    };
    let nodes = resources
        .and_then(|r| r.nodes)
        .map_or(1, |n| n.max(1) as usize);
    (per_node * nodes > 1).then_some(per_node)
}

/// The lines of a job script before it starts `ranks` ranks per node with srun: the
/// node's CPU threads shared among them, and where rank 0 serves the rendezvous: the job's
/// first node, at the address Slurm reaches it by (`NodeAddr`, else its name), and a port
/// derived from the job id, below Linux's ephemeral ports (32768 and up). A thread count
/// that is not a number (OpenMP's lists, `4,2`) is read as one thread per rank.
fn ranks_env(ranks: usize) -> String {
    format!(
        "# {ranks} data-parallel ranks per node share its CPUs\n\
         case \"$OMP_NUM_THREADS\" in (''|*[!0-9]*) OMP_NUM_THREADS={ranks} ;; esac\n\
         OMP_NUM_THREADS=$(( OMP_NUM_THREADS / {ranks} ))\n\
         [ \"$OMP_NUM_THREADS\" -ge 1 ] || OMP_NUM_THREADS=1\n\
         export OMP_NUM_THREADS MKL_NUM_THREADS=\"$OMP_NUM_THREADS\"\n\
         first=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n\
         addr=$(scontrol show node \"$first\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')\n\
         export MASTER_ADDR=\"${{addr:-$first}}\"\n\
         export MASTER_PORT=$(( 15000 + SLURM_JOB_ID % 10000 ))\n"
    )
}

/// One rank of a data-parallel job, as srun starts it: the torchrun variables from Slurm's,
/// then `rank0` (rank 0's command) or `others`.
fn rank_script_body(rank0: &str, others: &str) -> String {
    format!(
        "#!/bin/sh\n# gptpipe: one data-parallel rank of the stage (srun starts one per task)\n\
         export RANK=\"$SLURM_PROCID\" LOCAL_RANK=\"$SLURM_LOCALID\" WORLD_SIZE=\"$SLURM_NTASKS\"\n\
         if [ \"$RANK\" = 0 ]; then\n  exec {rank0}\nfi\nexec {others}\n"
    )
}

/// Waits (at most `limit`) until Slurm no longer says job `id` is active; whether it did.
pub fn wait_until_ended(id: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !matches!(job_state(id), Ok(JobState::Active(_))) {
            return true;
        }
        std::thread::sleep(poll_interval());
    }
    false
}

/// The last `n` lines of a file (what a job printed before it ended).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(64 * 1024)..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Forwards the events a job writes to its events file, as they come. A requeued job
/// starts the file over: the relay starts over with it.
struct Relay {
    path: PathBuf,
    offset: u64,
    partial: String,
    failure: Option<String>,
}

impl Relay {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
            failure: None,
        }
    }

    fn forward(&mut self, ctx: &StageContext) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            (self.offset, self.partial) = (0, String::new());
        }
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut new).is_err() {
            return;
        }
        self.offset += new.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&new));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            match serde_json::from_str::<Event>(line.trim()) {
                Ok(Event::StageFailed { error, .. }) => self.failure = Some(error),
                Ok(event) => ctx.events.emit(event),
                Err(_) => {}
            }
        }
    }
}

/// The file of a stage's job folder that holds its Slurm job id.
const JOB_ID_FILE: &str = "job_id";

/// The file of a stage's job folder that holds the worker's exit code, once it ended.
const EXIT_CODE_FILE: &str = "exit_code";

/// A Slurm job of a stage, pending or running now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActiveJob {
    pub id: String,
    pub state: String,
    /// Submitted by `run --detach`: no runner follows it, a later run adopts it (its
    /// state may then be an ended one).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
}

/// The Slurm jobs, by stage, that runs of the pipeline whose workdir is `workdir`
/// submitted and that are still pending or running (Slurm is asked about each; a job it
/// no longer knows, or a machine without Slurm, gives none). A job's folder lies beside
/// its stage's build folder, `<build folder>.job/`, and keeps the job's id.
pub fn active_jobs(workdir: &Path) -> BTreeMap<String, Vec<ActiveJob>> {
    let mut jobs: BTreeMap<String, Vec<ActiveJob>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(crate::runner::tmp_root(workdir)) else {
        return jobs;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stage) = name
            .strip_suffix(".job")
            .and_then(crate::runner::tmp_dir_stage)
        else {
            continue;
        };
        let Ok(id) = std::fs::read_to_string(entry.path().join(JOB_ID_FILE)) else {
            continue;
        };
        let id = id.trim().to_owned();
        if !is_job_id(&id) {
            continue;
        }
        if let Ok(JobState::Active(state)) = job_state(&id) {
            jobs.entry(stage.to_owned()).or_default().push(ActiveJob {
                id,
                state,
                detached: false,
            });
        }
    }
    for list in jobs.values_mut() {
        list.sort_by(|a, b| a.id.cmp(&b.id));
    }
    jobs
}

/// Whether the pipeline runs its stages as Slurm jobs.
pub fn is_slurm(ctx: &StageContext) -> bool {
    ctx.pipeline.executor == Executor::Slurm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_active_or_ended() {
        assert_eq!(state_of("RUNNING", ""), JobState::Active("RUNNING".into()));
        assert_eq!(
            state_of("PENDING", "0:0"),
            JobState::Active("PENDING".into())
        );
        assert_eq!(
            state_of("CANCELLED by 0", "0:15"),
            JobState::Ended {
                state: "CANCELLED".into(),
                exit_code: "0:15".into()
            }
        );
        assert!(matches!(state_of("TIMEOUT", "0:0"), JobState::Ended { .. }));
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(quoted(Path::new("/a b/it's")), "'/a b/it'\\''s'");
    }
}
