//! The Slurm executor against a real one-node Slurm cluster on loopback, started here by
//! `scripts/slurm-cluster.sh` (Debian's slurm-wlm and munge, as root, as CI runs; without
//! accounting storage, so the executor follows jobs through scontrol and squeue): stages
//! run as jobs and publish what a local run publishes; a stage that fails in its job, a
//! job cancelled with scancel, one past its time limit and an interrupted run fail their
//! stage with Slurm's state and publish nothing; `run --detach` submits a chain at once and
//! a later run adopts it (or fails it, when its upstream job failed).

use crate::common::{missing, Run, Test};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cluster's configuration file, once the cluster is up; `None` when Slurm is not
/// installed (a failure under GPTPIPE_TEST_CLIENTS=require, as in CI).
fn cluster() -> Option<&'static Path> {
    static CONF: OnceLock<Option<PathBuf>> = OnceLock::new();
    CONF.get_or_init(|| {
        let has = |cmd: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !["sbatch", "slurmctld", "slurmd", "munged"]
            .iter()
            .all(|c| has(c))
        {
            return missing("Slurm (slurm-wlm, munge: .ci/run installs them)");
        }
        let dir = std::env::temp_dir().join("gptpipe-test-slurm");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh");
        let conf = dir.join("slurm.conf");
        let up = conf.exists()
            && Command::new("sinfo")
                .env("SLURM_CONF", &conf)
                .args(["-h", "-o", "%t"])
                .output()
                .is_ok_and(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle")
                });
        if !up {
            let out = Command::new(&script)
                .args(["start"])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the test cluster did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(conf)
    })
    .as_deref()
}

fn pipeline(steps: u64, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "cluster"
workdir = "work"

[stages.titles]
kind = "prepare"
inputs = ["titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = {{ n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }}
steps = {steps}
batch_size = 2
accumulate_gradients = 1
sample_every = 0
save_every = 5
device = "cpu"
{extra}

[stages.samples]
kind = "generate"
model = "@train"
length = 6
nsamples = 2
"#
    )
}

struct Project {
    dir: tempfile::TempDir,
    conf: &'static Path,
}

impl Project {
    fn new(conf: &'static Path, toml: &str) -> Self {
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
            conf,
        };
        std::fs::write(
            p.dir.path().join("titles.csv"),
            crate::common::fox_titles_csv(),
        )
        .unwrap();
        std::fs::write(p.dir.path().join("p.toml"), toml).unwrap();
        p
    }

    fn test(&self, args: &[&str]) -> Test {
        Test::new()
            .dir(self.dir.path())
            .env("SLURM_CONF", self.conf)
            .env("GPTPIPE_SLURM_POLL_MS", "200")
            .args(args)
    }

    fn run(&self, args: &[&str]) -> Run {
        self.test(args).run()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap()
    }

    fn exists(&self, rel: &str) -> bool {
        self.dir.path().join(rel).exists()
    }
}

/// The Slurm job ids the run's log lines name, by stage.
fn job_ids(run: &Run) -> Vec<(String, String)> {
    run.with("stage_log")
        .iter()
        .filter_map(|e| {
            let id = e["message"]
                .as_str()?
                .strip_prefix("submitted as Slurm job ")?;
            Some((
                e["stage"].as_str()?.to_owned(),
                id.split_whitespace().next()?.to_owned(),
            ))
        })
        .collect()
}

fn output_hashes(lock: &str) -> Vec<String> {
    lock.lines()
        .filter(|l| l.starts_with("output_hash"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn stages_run_as_slurm_jobs_and_publish_what_a_local_run_does() {
    let Some(conf) = cluster() else { return };
    let toml = pipeline(10, "[stages.train.resources]\ncpus = 1\ntime = \"10\"");
    let local = Project::new(conf, &toml);
    local.run(&["run", "p.toml", "--json"]).ok();
    let local = output_hashes(&local.read("p.toml.lock"));
    assert_eq!(local.len(), 3);

    let p = Project::new(conf, &toml);
    let run = p
        .run(&["run", "p.toml", "--json", "--executor", "slurm"])
        .ok();
    let jobs = job_ids(&run);
    let mut stages: Vec<&str> = jobs.iter().map(|(s, _)| s.as_str()).collect();
    stages.sort();
    assert_eq!(stages, ["samples", "titles", "train"], "{}", run.stdout);
    // The worker's progress reaches the runner's events, through the job's events file.
    assert!(
        run.stages_with("stage_progress")
            .contains(&"train".to_owned()),
        "{}",
        run.stdout
    );
    assert_eq!(
        output_hashes(&p.read("p.toml.lock")),
        local,
        "a job's output differs from a local run's"
    );
    // Each job ended COMPLETED, as Slurm itself says.
    for (_, id) in &jobs {
        assert!(
            show_job(conf, id).contains("JobState=COMPLETED"),
            "job {id}"
        );
    }
    // Fresh stages submit nothing.
    let again = p
        .run(&["run", "p.toml", "--json", "--executor", "slurm"])
        .ok();
    assert!(job_ids(&again).is_empty(), "{}", again.stdout);
}

#[test]
fn a_stage_that_fails_in_its_job_fails_with_its_error_and_publishes_nothing() {
    let Some(conf) = cluster() else { return };
    // A model folder whose weights are not safetensors: only the worker finds out.
    let p = Project::new(
        conf,
        "[pipeline]\nname = \"c\"\nworkdir = \"work\"\nexecutor = \"slurm\"\n\
         [stages.samples]\nkind = \"generate\"\nmodel = \"./broken\"\nlength = 4\n",
    );
    let broken = p.dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("config.json"),
        r#"{"model_type":"gpt2","n_layer":1,"n_head":2,"n_embd":32,"n_positions":32,"vocab_size":50257}"#,
    )
    .unwrap();
    std::fs::write(broken.join("model.safetensors"), b"not safetensors").unwrap();
    let run = p.run(&["run", "p.toml", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let failed = run.with("stage_failed");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Slurm job") && error.contains("FAILED"),
        "{error}"
    );
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(!p.exists("work/samples"));
}

/// Starts a long finetune as a Slurm job; returns the run and the job's id once training
/// reports progress.
fn long_training(
    p: &Project,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<serde_json::Value>,
    String,
) {
    let (child, rx) = p.test(args).spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut id = None;
    loop {
        let e = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the job never reported progress");
        if let Some(m) = e["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("submitted as Slurm job "))
        {
            id = m.split_whitespace().next().map(str::to_owned);
        }
        if e["event"] == "stage_progress" && e["stage"] == "train" {
            break;
        }
    }
    (child, rx, id.expect("no job id"))
}

fn wait_for(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "the run did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn failure(rx: &std::sync::mpsc::Receiver<serde_json::Value>) -> String {
    rx.try_iter()
        .find(|e| e["event"] == "stage_failed")
        .map(|e| e["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn job_state(conf: &Path, id: &str) -> String {
    show_job(conf, id)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_job_cancelled_with_scancel_or_past_its_time_limit_fails_its_stage() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(conf, &pipeline(1_000_000, ""));
    let (mut child, rx, id) =
        long_training(&p, &["run", "p.toml", "--json", "--executor", "slurm"]);
    // While it runs, `gptpipe status` (from another shell) names the job and its state.
    let status = p.run(&["status", "p.toml", "--json"]).ok();
    let statuses: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let train = statuses
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "train")
        .unwrap();
    assert_eq!(train["jobs"][0]["id"], id.as_str(), "{}", status.stdout);
    assert_eq!(train["jobs"][0]["state"], "RUNNING", "{}", status.stdout);
    let text = p.run(&["status", "p.toml"]).ok();
    assert!(
        text.stdout.contains(&format!("(Slurm job {id}: RUNNING)")),
        "{}",
        text.stdout
    );
    let status = Command::new("scancel")
        .env("SLURM_CONF", conf)
        .arg(&id)
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_for(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    let error = failure(&rx);
    assert!(
        error.contains(&format!("Slurm job {id} ended CANCELLED")),
        "{error}"
    );
    assert!(!p.exists("work/train"));
    // An ended job is no longer shown.
    let status = p.run(&["status", "p.toml", "--json"]).ok();
    assert!(!status.stdout.contains("\"jobs\""), "{}", status.stdout);

    // One minute, Slurm's smallest limit: the job ends TIMEOUT, its checkpoints stay.
    let p = Project::new(
        conf,
        &pipeline(1_000_000, "[stages.train.resources]\ntime = \"1\""),
    );
    let (mut child, rx, id) =
        long_training(&p, &["run", "p.toml", "--json", "--executor", "slurm"]);
    let status = wait_for(&mut child, Duration::from_secs(240));
    assert_eq!(status.code(), Some(1));
    let error = failure(&rx);
    assert!(
        error.contains(&format!("Slurm job {id} ended TIMEOUT")),
        "{error}"
    );
    assert!(!p.exists("work/train"));
    assert!(
        p.exists("work/.gptpipe/state/train"),
        "the checkpoints of the timed-out job are gone"
    );
}

#[test]
fn an_interrupted_run_cancels_its_jobs() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(conf, &pipeline(1_000_000, ""));
    let (mut child, _rx, id) =
        long_training(&p, &["run", "p.toml", "--json", "--executor", "slurm"]);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_for(&mut child, Duration::from_secs(60));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGINT),
        "{status:?}"
    );
    assert_eq!(job_state(conf, &id), "CANCELLED");
    assert!(!p.exists("work/train"));
}

#[test]
fn a_data_parallel_finetune_runs_its_ranks_as_srun_tasks_and_trains_what_one_process_does() {
    let Some(conf) = cluster() else { return };
    // Two ranks per node through srun (the torchrun variables from Slurm's), against one
    // local process training the whole batch: the same weights within float tolerance.
    let toml = pipeline(
        4,
        "dropout = 0.0\ndevices = 2\n[stages.train.resources]\ntime = \"10\"",
    )
    .replace("batch_size = 2", "batch_size = 4");
    let cluster = Project::new(conf, &toml);
    let run = cluster
        .test(&["run", "p.toml", "train", "--executor", "slurm", "--json"])
        .env("OMP_NUM_THREADS", "1")
        // sbatch passes it on: ranks that cannot meet fail in a minute, not half an hour.
        .env("GPTPIPE_DIST_TIMEOUT", "60")
        .run()
        .ok();
    let logs: Vec<String> = run
        .with("stage_log")
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("rank 0 of 2, started by a launcher")),
        "{logs:?}"
    );
    let jobs = job_ids(&run);
    let (_, id) = jobs
        .iter()
        .find(|(s, _)| s == "train")
        .expect("train's job");
    let show = show_job(conf, id);
    assert!(show.contains("NumTasks=2"), "{show}");
    let local = Project::new(conf, &toml.replace("devices = 2", "devices = 1"));
    local
        .test(&["run", "p.toml", "train"])
        .env("OMP_NUM_THREADS", "1")
        .run()
        .ok();
    crate::common::assert_same_weights(
        &cluster.dir.path().join("work/train/model.safetensors"),
        &local.dir.path().join("work/train/model.safetensors"),
        "2 srun ranks against 1 local process",
    );
}

const DETACH: [&str; 7] = [
    "run",
    "p.toml",
    "train",
    "--json",
    "--executor",
    "slurm",
    "--detach",
];

/// A `stage_submitted` event of `run --detach`: stage, job, the jobs it waits for, and
/// whether an earlier `run --detach` submitted it.
struct Submitted {
    stage: String,
    job: String,
    after: Vec<String>,
    already: bool,
}

fn submitted(run: &Run) -> Vec<Submitted> {
    run.with("stage_submitted")
        .iter()
        .map(|e| Submitted {
            stage: e["stage"].as_str().unwrap().to_owned(),
            job: e["job"].as_str().unwrap().to_owned(),
            after: e["after"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j.as_str().unwrap().to_owned())
                .collect(),
            already: e.get("already").is_some(),
        })
        .collect()
}

fn show_job(conf: &Path, id: &str) -> String {
    let out = Command::new("scontrol")
        .env("SLURM_CONF", conf)
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_detached_chain_is_submitted_at_once_and_a_later_run_adopts_it() {
    let Some(conf) = cluster() else { return };
    let toml = pipeline(10, "");
    let local = Project::new(conf, &toml);
    local.run(&["run", "p.toml", "train", "--json"]).ok();
    let local = output_hashes(&local.read("p.toml.lock"));
    assert_eq!(local.len(), 2);

    let p = Project::new(conf, &toml);
    let start = Instant::now();
    let run = p.run(&DETACH).ok();
    assert!(start.elapsed() < Duration::from_secs(10), "it waited");
    let jobs = submitted(&run);
    let stages: Vec<&str> = jobs.iter().map(|j| j.stage.as_str()).collect();
    assert_eq!(stages, ["titles", "train"], "{}", run.stdout);
    let (titles, train) = (&jobs[0].job, &jobs[1].job);
    assert!(jobs[0].after.is_empty() && !jobs[0].already);
    assert_eq!(jobs[1].after, [titles.as_str()]);
    assert!(!p.exists("work/titles"), "nothing is published yet");
    // Slurm holds train until titles completed, and cancels it if titles fails.
    let show = show_job(conf, train);
    assert!(
        show.contains(&format!("Dependency=afterok:{titles}")),
        "{show}"
    );
    assert!(show.contains("KillOInInvalidDependent=Yes"), "{show}");

    // `gptpipe status` (after logging out and in again) names the detached jobs.
    let status = p.run(&["status", "p.toml", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let row = |stage: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["stage"] == stage)
            .unwrap()
            .clone()
    };
    let job = &row("train")["jobs"][0];
    assert_eq!(job["id"], train.as_str(), "{}", status.stdout);
    assert_eq!(job["detached"], true, "{}", status.stdout);
    assert!(
        ["PENDING", "RUNNING"].contains(&job["state"].as_str().unwrap()),
        "{}",
        status.stdout
    );
    assert_eq!(row("titles")["jobs"][0]["id"], titles.as_str());
    let text = p.run(&["status", "p.toml"]).ok();
    assert!(
        text.stdout
            .contains(&format!("(detached Slurm job {train}: ")),
        "{}",
        text.stdout
    );

    // Again while they are active: nothing is submitted twice.
    let again = p.run(&DETACH).ok();
    let jobs_again = submitted(&again);
    assert!(jobs_again.iter().all(|j| j.already), "{}", again.stdout);
    assert!(
        jobs_again
            .iter()
            .any(|j| j.stage == "train" && j.job == *train),
        "{}",
        again.stdout
    );

    // A later run follows the jobs, publishes what a local run does, and runs nothing.
    let adopt = p
        .run(&["run", "p.toml", "train", "--json", "--executor", "slurm"])
        .ok();
    assert!(job_ids(&adopt).is_empty(), "{}", adopt.stdout);
    assert!(
        adopt
            .stdout
            .contains(&format!("adopting detached Slurm job {train}")),
        "{}",
        adopt.stdout
    );
    assert_eq!(
        output_hashes(&p.read("p.toml.lock")),
        local,
        "a detached job's output differs from a local run's"
    );
    let left = std::fs::read_dir(p.dir.path().join("work/.gptpipe/detached")).unwrap();
    assert_eq!(left.count(), 0, "records or build folders left");
    let fresh = p
        .run(&["run", "p.toml", "train", "--json", "--executor", "slurm"])
        .ok();
    let finished = &fresh.with("run_finished")[0];
    assert_eq!(
        (finished["ran"].as_u64(), finished["cached"].as_u64()),
        (Some(0), Some(2)),
        "{}",
        fresh.stdout
    );
}

#[test]
fn a_detached_chain_whose_upstream_fails_publishes_nothing_and_is_submitted_again() {
    let Some(conf) = cluster() else { return };
    // Only the worker finds out that the column is not there.
    let toml = pipeline(10, "").replace(
        "inputs = [\"titles.csv\"]",
        "inputs = [\"titles.csv\"]\ncolumn = \"nope\"",
    );
    let p = Project::new(conf, &toml);
    let run = p.run(&DETACH).ok();
    let jobs = submitted(&run);
    assert_eq!(jobs.len(), 2, "{}", run.stdout);
    let (titles, train) = (jobs[0].job.clone(), jobs[1].job.clone());
    // Slurm cancels train (--kill-on-invalid-dep) once titles has failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_state(conf, &train) != "CANCELLED" {
        assert!(Instant::now() < deadline, "{}", show_job(conf, &train));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(job_state(conf, &titles), "FAILED");

    let later = p.run(&["run", "p.toml", "train", "--json", "--executor", "slurm"]);
    assert_eq!(later.code, 1, "{}", later.stdout);
    let failed = later.with("stage_failed");
    assert_eq!(failed[0]["stage"], "titles", "{}", later.stdout);
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("Slurm job {titles} ended FAILED")),
        "{error}"
    );
    assert!(error.contains("nope"), "{error}");
    // The log it names is still there to read.
    let log = error
        .split_once("the end of its log (")
        .and_then(|(_, rest)| rest.split_once("):"))
        .map(|(log, _)| log)
        .unwrap_or_else(|| panic!("{error}"));
    assert!(p.exists(log), "{log}");
    assert_eq!(later.stages_with("stage_skipped"), ["train"]);
    assert!(job_ids(&later).is_empty(), "{}", later.stdout);
    assert!(!p.exists("work/titles") && !p.exists("work/train"));
    assert!(!p.exists("p.toml.lock") || !p.read("p.toml.lock").contains("output_hash"));

    // A record cut short (a kill during its write cannot do that, an editor can) and one
    // that names a folder outside the workdir are dropped with a warning, not trusted.
    let records = p.dir.path().join("work/.gptpipe/detached");
    std::fs::write(records.join("titles.json"), r#"{"format":1,"stage":"tit"#).unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_str(&p.read("work/.gptpipe/detached/train.json")).unwrap();
    forged["build"] = "../../../outside".into();
    std::fs::create_dir_all(p.dir.path().join("outside")).unwrap();
    std::fs::write(records.join("train.json"), forged.to_string()).unwrap();

    // The next one submits both again.
    let again = p.run(&DETACH).ok();
    let warnings = again.with("warning");
    assert_eq!(warnings.len(), 2, "{}", again.stdout);
    assert!(p.exists("outside"));
    let jobs = submitted(&again);
    assert_eq!(jobs.len(), 2, "{}", again.stdout);
    assert!(jobs
        .iter()
        .all(|j| !j.already && j.job != titles && j.job != train));
    for j in &jobs {
        let _ = Command::new("scancel")
            .env("SLURM_CONF", conf)
            .arg(&j.job)
            .status();
    }
}

#[test]
fn a_record_naming_another_job_is_dropped_not_adopted() {
    let Some(conf) = cluster() else { return };
    // Slurm's job ids start again when its controller loses its state: a record's id may
    // then be someone else's job, whose end must not publish the stage's build folder.
    let foreign = Command::new("sbatch")
        .env("SLURM_CONF", conf)
        .args([
            "--parsable",
            "--job-name=someone-else",
            "--output=/dev/null",
            "--wrap",
            "true",
        ])
        .output()
        .unwrap();
    let foreign = String::from_utf8_lossy(&foreign.stdout).trim().to_owned();
    assert!(
        !foreign.is_empty() && foreign.chars().all(|c| c.is_ascii_digit()),
        "{foreign}"
    );
    let p = Project::new(conf, &pipeline(10, ""));
    let mut detach = DETACH;
    detach[2] = "titles";
    p.run(&detach).ok();
    let path = "work/.gptpipe/detached/titles.json";
    let mut record: serde_json::Value = serde_json::from_str(&p.read(path)).unwrap();
    record["job"] = foreign.clone().into();
    std::fs::write(p.dir.path().join(path), record.to_string()).unwrap();

    let later = p
        .run(&["run", "p.toml", "titles", "--json", "--executor", "slurm"])
        .ok();
    let warnings = later.with("warning");
    assert!(
        warnings
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains(&format!(
                "Slurm's job {foreign} is not this stage's (Slurm names it \"someone-else\""
            ))),
        "{}",
        later.stdout
    );
    // The stage ran as a job of its own, and published what it made.
    assert_eq!(job_ids(&later).len(), 1, "{}", later.stdout);
    assert!(p.exists("work/titles/tokens.bin"));
}

#[test]
fn run_force_and_detach_force_cancel_a_detached_job_and_run_its_stage_again() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(conf, &pipeline(10, ""));
    let mut detach = DETACH;
    detach[2] = "titles";
    let discarded = |run: &Run, job: &str| {
        run.with("warning").iter().any(|w| {
            w["message"].as_str().unwrap().contains(&format!(
                "detached Slurm job {job} discarded, not adopted: --force runs the stage again"
            ))
        })
    };
    let first = submitted(&p.run(&detach).ok())[0].job.clone();
    // `run --detach --force` submits the stage again rather than leave it to its job.
    let again = p.run(&[&detach[..], &["--force"]].concat()).ok();
    assert!(discarded(&again, &first), "{}", again.stdout);
    let again = submitted(&again);
    assert_eq!(again.len(), 1);
    assert!(!again[0].already);
    let old = again[0].job.clone();
    assert_ne!(old, first);
    let forced = p
        .run(&[
            "run",
            "p.toml",
            "titles",
            "--force",
            "--json",
            "--executor",
            "slurm",
        ])
        .ok();
    assert!(discarded(&forced, &old), "{}", forced.stdout);
    let ran = job_ids(&forced);
    assert_eq!(ran.len(), 1, "{}", forced.stdout);
    assert_ne!(ran[0].1, old);
    assert!(p.exists("work/titles/tokens.bin"));
}

#[test]
fn a_detached_job_whose_stage_was_edited_is_discarded_not_published() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(conf, &pipeline(10, ""));
    let mut detach = DETACH;
    detach[2] = "titles";
    let run = p.run(&detach).ok();
    let old = submitted(&run)[0].job.clone();
    let mut csv = crate::common::fox_titles_csv();
    csv.push_str("One more title\n");
    std::fs::write(p.dir.path().join("titles.csv"), csv).unwrap();

    let later = p
        .run(&["run", "p.toml", "titles", "--json", "--executor", "slurm"])
        .ok();
    let warnings = later.with("warning");
    assert!(
        warnings[0]["message"].as_str().unwrap().contains(&format!(
            "[titles] detached Slurm job {old} discarded, not adopted: its input files changed"
        )),
        "{}",
        later.stdout
    );
    let ran = job_ids(&later);
    assert_eq!(ran.len(), 1, "{}", later.stdout);
    assert_ne!(ran[0].1, old);
    assert!(p.read("work/titles/dataset.txt").contains("One more title"));
}

#[test]
fn detach_needs_the_slurm_executor() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("titles.csv"),
        crate::common::fox_titles_csv(),
    )
    .unwrap();
    std::fs::write(dir.path().join("p.toml"), pipeline(10, "")).unwrap();
    let run = Test::new()
        .dir(dir.path())
        .args(["run", "p.toml", "--detach"])
        .run();
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("--detach") && run.stderr.contains("executor"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("work").exists());
}
