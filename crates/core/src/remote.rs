//! Running a stage in a worker process.
//!
//! Loading libtorch costs about a second and half a gigabyte before `main` even runs, so
//! the `gptpipe` binary does not link it: stages that need it run in `gptpipe-worker`,
//! which gets a [`StageRequest`] on stdin and sends the stage's events back as JSON lines.
//! A side benefit: a crash or out-of-memory in model code cannot take the runner with it,
//! and cancelling a stage is killing a process.

use crate::cache::hash::hash_file;
use crate::cache::Manifest;
use crate::config::{check_stage_values, Origins, Pipeline, StageKind, StageParams};
use crate::events::{Event, EventSink, JsonSink};
use crate::stage::{Registry, StageContext, Upstream};
use crate::Cancelled;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Everything a [`StageContext`] holds, in a form that crosses a process boundary.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageRequest {
    pub name: String,
    pub pipeline_path: PathBuf,
    pub pipeline_dir: PathBuf,
    pub pipeline_name: String,
    pub workdir: PathBuf,
    pub seed: u64,
    /// Every stage's kind and effective params (stages look up their upstream's params).
    pub stages: BTreeMap<String, (StageKind, serde_json::Value)>,
    pub out_dir: PathBuf,
    pub previous_output: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub upstream: BTreeMap<String, (StageKind, PathBuf)>,
    pub inputs_hash: String,
    /// Set for a detached job whose upstream jobs had not run when it was submitted: the
    /// worker computes `inputs_hash` from their outputs as it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_inputs_hash: Option<DeferredInputsHash>,
}

/// What a stage's `inputs_hash` is made of when some upstream outputs do not exist yet:
/// the input files' hashes, the upstream output hashes known, and the build folders the
/// others are written to (their hash is the one the runner computes when it publishes them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeferredInputsHash {
    pub inputs: BTreeMap<String, String>,
    pub upstream: BTreeMap<String, String>,
    pub pending: BTreeMap<String, PathBuf>,
}

impl DeferredInputsHash {
    /// The `inputs_hash` a run would have given the stage, from the upstream outputs now
    /// in their build folders. The published upstream outputs the job reads (`dirs`, the
    /// request's) must still be those its record names: one replaced since the submission
    /// (a run of the upstream stage after an edit) would make an output that does not
    /// match the key it is adopted under.
    /// `check_published`: whether to check them (rank 0's job alone in a data-parallel
    /// job: it alone publishes).
    pub fn resolve(
        &self,
        dirs: &BTreeMap<String, (StageKind, PathBuf)>,
        check_published: bool,
    ) -> Result<String> {
        for (stage, want) in self.upstream.iter().filter(|_| check_published) {
            let Some((_, dir)) = dirs.get(stage) else {
                continue;
            };
            let now = Manifest::of_dir(dir, hash_file)
                .with_context(|| format!("the output of upstream stage `{stage}`"))?
                .tree_hash();
            if &now != want {
                anyhow::bail!(
                    "the output of upstream stage `{stage}` ({}) changed since this job was \
                     submitted: its output would not be what its stage's key says; run \
                     `gptpipe run` again",
                    dir.display()
                );
            }
        }
        let mut upstream = self.upstream.clone();
        for (stage, dir) in &self.pending {
            let manifest = Manifest::of_dir(dir, hash_file)
                .with_context(|| format!("the output of upstream stage `{stage}`"))?;
            upstream.insert(stage.clone(), manifest.tree_hash());
        }
        Ok(crate::runner::inputs_hash(&self.inputs, &upstream))
    }
}

impl StageRequest {
    pub fn of(ctx: &StageContext) -> Self {
        let p = ctx.pipeline;
        Self {
            name: ctx.name.to_owned(),
            pipeline_path: p.path.clone(),
            pipeline_dir: p.dir.clone(),
            pipeline_name: p.name.clone(),
            workdir: p.workdir.clone(),
            seed: p.seed,
            stages: p
                .stages
                .iter()
                .map(|(n, s)| (n.clone(), (s.kind(), s.to_json())))
                .collect(),
            out_dir: ctx.out_dir.to_path_buf(),
            previous_output: ctx.previous_output.map(Path::to_path_buf),
            state_dir: ctx.state_dir.to_path_buf(),
            upstream: ctx
                .upstream
                .iter()
                .map(|(n, u)| (n.clone(), (u.kind, u.dir.clone())))
                .collect(),
            inputs_hash: ctx.inputs_hash.to_owned(),
            deferred_inputs_hash: None,
        }
    }

    fn pipeline(&self) -> Result<Pipeline> {
        let mut stages = BTreeMap::new();
        for (name, (kind, value)) in &self.stages {
            let params = StageParams::from_json(*kind, value.clone())?;
            // The runner validated them; a request from anything else gets the same checks,
            // since the stages do not repeat them.
            check_stage_values(&params)
                .map_err(|(key, message)| anyhow!("stage `{name}`: `{key}`: {message}"))?;
            stages.insert(name.clone(), params);
        }
        Ok(Pipeline {
            path: self.pipeline_path.clone(),
            dir: self.pipeline_dir.clone(),
            name: self.pipeline_name.clone(),
            workdir: self.workdir.clone(),
            seed: self.seed,
            stages,
            origins: Origins::default(),
            executor: Default::default(),
            resources: Default::default(),
        })
    }
}

/// The worker side: reads one request from `input`, runs the stage with `registry`,
/// prints its events as JSON lines, and returns the exit code (a failure is reported as
/// a `stage_failed` event first).
pub fn serve(registry: &Registry, mut input: impl Read) -> i32 {
    // A data-parallel rank other than 0, as its launcher numbers it.
    let other_rank = std::env::var("RANK").ok().filter(|r| r.trim() != "0");
    let mut text = String::new();
    let result = input
        .read_to_string(&mut text)
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(serde_json::from_str::<StageRequest>(&text)?))
        .and_then(|mut request| {
            if let Some(deferred) = &request.deferred_inputs_hash {
                // The other ranks would each read every published upstream output again.
                request.inputs_hash = deferred.resolve(&request.upstream, other_rank.is_none())?;
            }
            let pipeline = request.pipeline()?;
            let params = pipeline
                .stages
                .get(&request.name)
                .ok_or_else(|| anyhow!("no stage {} in request", request.name))?;
            let upstream = request
                .upstream
                .iter()
                .map(|(n, (kind, dir))| {
                    (
                        n.clone(),
                        Upstream {
                            kind: *kind,
                            dir: dir.clone(),
                        },
                    )
                })
                .collect();
            let cancel = AtomicBool::new(false);
            let ctx = StageContext {
                name: &request.name,
                params,
                pipeline: &pipeline,
                out_dir: &request.out_dir,
                previous_output: request.previous_output.as_deref(),
                state_dir: &request.state_dir,
                upstream: &upstream,
                inputs_hash: &request.inputs_hash,
                events: &JsonSink,
                cancel: &cancel,
            };
            let run = registry.get(params.kind())?;
            run(&ctx)
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            // A data-parallel rank other than 0 has its events thrown away (only rank 0
            // reports the stage): its error goes to the job's log.
            if let Some(rank) = &other_rank {
                eprintln!("gptpipe-worker (rank {rank}): {e:#}");
            }
            JsonSink.emit(Event::StageFailed {
                stage: String::new(),
                error: format!("{e:#}"),
                cancelled: Cancelled::is_in(&e),
            });
            1
        }
    }
}

/// A command that starts `worker`, with the environment its math needs to be repeatable.
/// MKL, which libtorch uses for matrix products on the CPU, may take another code path
/// (another thread count, another order of sums, depending on the buffers' alignment) from
/// one run to the next on a busy machine; a finetune then differs from run to run in the
/// last bits, and a resumed run from a straight one (about one run in eight on a loaded
/// 2-core machine). Its conditional numerical reproducibility mode (`MKL_CBWR`, strict)
/// and fixed thread count (`MKL_DYNAMIC`) make it repeatable. A user's own setting wins.
/// The OpenMP threads wait passively and their count is chosen here too
/// ([`crate::threads`]), for a stage whose `threads` key is `threads`.
pub fn worker_command(worker: &Path, threads: Option<NonZeroUsize>) -> Command {
    let mut command = Command::new(worker);
    command.envs(worker_env(threads));
    // A run starts its data-parallel ranks itself: torchrun's variables left in the user's
    // shell must not make its worker wait for ranks that never come.
    for var in LAUNCHER_VARS {
        command.env_remove(var);
    }
    command
}

/// torchrun's variables, which tell a worker it is one data-parallel rank of several
/// (`gptpipe_torch::dist`); only gptpipe's own launchers set them for a worker.
pub const LAUNCHER_VARS: [&str; 5] = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// What [`worker_command`] adds to this process's environment for a worker.
pub fn worker_env(threads: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
    let mut env = mkl_env();
    env.extend(crate::threads::worker_env(threads));
    env
}

/// [`MKL_ENV`] less what the user has set.
fn mkl_env() -> Vec<(&'static str, String)> {
    MKL_ENV
        .iter()
        .filter(|(key, _)| std::env::var_os(key).is_none())
        .map(|&(key, value)| (key, value.to_string()))
        .collect()
}

/// What a Slurm job's script sets where the job's environment has not: [`worker_env`] but
/// for the default thread count, which is the job's machine's.
pub fn job_env(threads: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
    let mut env = mkl_env();
    env.extend(crate::threads::job_env(threads));
    env
}

/// Whether this process lacks what [`worker_env`] gives and libraries read only as they
/// load (MKL's reproducibility mode, OpenMP's wait policy): a worker started by hand
/// restarts itself with them.
pub fn worker_env_missing() -> bool {
    std::env::var_os(MKL_ENV[0].0).is_none() || crate::threads::missing_in_this_process()
}

/// MKL's settings for repeatable math (see [`worker_command`]).
const MKL_ENV: [(&str, &str); 2] = [("MKL_CBWR", "AUTO,STRICT"), ("MKL_DYNAMIC", "FALSE")];

/// The runner side: a stage function that runs the stage in `worker` and relays its
/// events. Cancelling the run kills the worker.
pub fn remote_stage(worker: PathBuf) -> impl Fn(&StageContext) -> Result<()> + Send + Sync {
    move |ctx| {
        let request = serde_json::to_vec(&StageRequest::of(ctx))?;
        let mut command = worker_command(&worker, ctx.params.threads());
        let mut child = start_run_stage(&mut command, &request)?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            }
        });
        let mut failure = None;
        let status = loop {
            while let Ok(event) = rx.try_recv() {
                match event {
                    Event::StageFailed { error, .. } => failure = Some(error),
                    other => ctx.events.emit(other),
                }
            }
            if ctx.cancel.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Cancelled.into());
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::StageFailed { error, .. }) => failure = Some(error),
                Ok(other) => ctx.events.emit(other),
                Err(_) => {}
            }
        };
        let _ = reader.join();
        for event in rx.try_iter() {
            match event {
                Event::StageFailed { error, .. } => failure = Some(error),
                other => ctx.events.emit(other),
            }
        }
        match (status.success(), failure) {
            (true, _) => Ok(()),
            (false, Some(error)) => Err(anyhow!(error)),
            (false, None) => Err(anyhow!(
                "the stage's worker process ended ({})",
                ended_how(status)
            )),
        }
    }
}

/// Starts `command` (a worker) on `request`: `run-stage` with the request on its stdin, its
/// events on a piped stdout (the caller takes it), its stderr this process's, and killed
/// when this process dies.
pub fn start_run_stage(command: &mut Command, request: &[u8]) -> Result<std::process::Child> {
    command
        .arg("run-stage")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))?;
    let sent = child.stdin.take().expect("piped").write_all(request);
    if let Err(e) = sent {
        // A worker that does not take its request has ended (or shut its input): how it
        // ended is the error worth reading, not the broken pipe.
        let _ = child.kill();
        return Err(match child.wait() {
            Ok(status) => anyhow!("ended before it read its request ({})", ended_how(status)),
            Err(_) => anyhow!(e).context("cannot send the worker its request"),
        });
    }
    Ok(child)
}

/// How a process ended, in the words errors use: `exit code N` or `killed by signal N`.
pub fn ended_how(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Asks Linux to kill the worker when the runner dies, so a killed run leaves no
/// orphan writing into the workdir.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FinetuneParams;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn a_detached_job_refuses_an_upstream_output_replaced_since_it_was_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("up");
        std::fs::create_dir_all(&up).unwrap();
        std::fs::write(up.join("tokens.bin"), b"old").unwrap();
        let hash = Manifest::of_dir(&up, hash_file).unwrap().tree_hash();
        let deferred = DeferredInputsHash {
            inputs: BTreeMap::new(),
            upstream: BTreeMap::from([("up".to_owned(), hash.clone())]),
            pending: BTreeMap::new(),
        };
        let dirs = BTreeMap::from([("up".to_owned(), (StageKind::Prepare, up.clone()))]);
        let resolved = deferred.resolve(&dirs, true).unwrap();
        assert_eq!(
            resolved,
            crate::runner::inputs_hash(&BTreeMap::new(), &deferred.upstream)
        );
        std::fs::write(up.join("tokens.bin"), b"new").unwrap();
        let e = deferred.resolve(&dirs, true).unwrap_err().to_string();
        assert!(
            e.contains("upstream stage `up`") && e.contains("changed"),
            "{e}"
        );
        // A rank other than 0 leaves the check to rank 0.
        assert_eq!(deferred.resolve(&dirs, false).unwrap(), resolved);
    }

    #[test]
    fn a_worker_that_ends_before_reading_its_request_is_reported_by_how_it_ended() {
        // More than a pipe holds, so the write waits for the worker, which never reads.
        let request = vec![b'x'; 1 << 20];
        for (script, how) in [
            ("kill -9 $$", "killed by signal 9"),
            ("exit 3", "exit code 3"),
        ] {
            let mut command = Command::new("sh");
            command.args(["-c", script]);
            let e = start_run_stage(&mut command, &request).unwrap_err();
            assert_eq!(
                format!("{e:#}"),
                format!("ended before it read its request ({how})")
            );
        }
    }

    /// A request to run finetune stage `t` for `steps` steps.
    fn request(steps: u64) -> String {
        let params = FinetuneParams {
            steps,
            dataset: "data.txt".into(),
            ..Default::default()
        };
        let value = StageParams::Finetune(params).to_json();
        serde_json::json!({
            "name": "t", "pipeline_path": "/p/p.toml", "pipeline_dir": "/p",
            "pipeline_name": "p", "workdir": "/p/runs", "seed": 1,
            "stages": {"t": ["finetune", value]},
            "out_dir": "/p/out", "previous_output": null, "state_dir": "/p/state",
            "upstream": {}, "inputs_hash": ""
        })
        .to_string()
    }

    /// The stages do not check their params: the worker does, as the runner does, so a
    /// request from anything else than the runner cannot run a stage on values it refuses.
    #[test]
    fn the_worker_checks_params_before_running_a_stage() {
        let ran = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::new();
        let counter = ran.clone();
        registry.register(StageKind::Finetune, 1, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        // steps = 0 is refused by validate.rs.
        assert_eq!(serve(&registry, request(0).as_bytes()), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(serve(&registry, request(1).as_bytes()), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
