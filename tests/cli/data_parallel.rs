//! Issue 13's data-parallel finetuning on the CPU, through the binary: `devices = 2` starts
//! two ranks joined by libtorch's own Gloo collectives, which train what one process
//! trains on the whole batch (within float tolerance), resume from their checkpoint, and
//! fail their stage at once, naming the rank, when one of them is killed.

use super::Project;
use crate::common::{assert_same_weights, missing, Test};
use serde_json::Value;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// A pipeline training a tiny model on `devices` ranks; the batch of 4 windows is shared.
fn pipeline(devices: usize, steps: u64, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"dp\"\nworkdir = \"work\"\n\n\
         [stages.titles]\nkind = \"prepare\"\ninputs = [\"data/titles.csv\"]\n\n\
         [stages.train]\nkind = \"finetune\"\ndataset = \"@titles\"\n\
         model = {{ n_layer = 2, n_head = 2, n_embd = 32, n_ctx = 32 }}\nsteps = {steps}\n\
         batch_size = 4\naccumulate_gradients = 2\nlearning_rate = 0.001\ndevice = \"cpu\"\n\
         dropout = 0.0\nval_split = 0.1\nval_every = 2\nsample_every = 0\n\
         devices = {devices}\n{extra}"
    )
}

/// Whether this build has the collectives: gloo's headers at build time (libgloo-dev, which
/// .ci/run installs; a missing one fails the test under GPTPIPE_TEST_CLIENTS=require).
fn collectives() -> Option<()> {
    if Path::new("/usr/include/gloo/config.h").exists()
        || std::env::var_os("GPTPIPE_GLOO_INCLUDE").is_some()
    {
        return Some(());
    }
    missing("gloo's headers (Debian's libgloo-dev) when gptpipe was built")
}

fn project(toml: &str) -> Project {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file("p.toml", toml);
    p
}

/// One thread per rank: rounding then depends on the data split alone. torchrun's
/// variables left in the user's shell (here, pointing at nothing) must change nothing: a
/// run starts its ranks itself.
fn run(p: &Project, args: &[&str]) -> crate::common::Run {
    Test::new()
        .dir(p.dir.path())
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("WORLD_SIZE", "3")
        .env("RANK", "2")
        .env("MASTER_PORT", "1")
        .run()
}

/// The training losses of an output's metrics.
fn losses(p: &Project) -> Vec<f64> {
    p.read("work/train/metrics.jsonl")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{what}: {a:?} vs {b:?}");
    }
}

#[test]
fn two_ranks_train_what_one_process_trains_on_the_whole_batch() {
    let Some(()) = collectives() else { return };
    let two = project(&pipeline(2, 4, ""));
    let out = run(&two, &["run", "p.toml"]).ok();
    assert!(
        out.stderr.contains("2 ranks on this machine"),
        "{}",
        out.stderr
    );
    let one = project(&pipeline(1, 4, ""));
    run(&one, &["run", "p.toml"]).ok();
    assert_same_weights(
        &two.path("work/train/model.safetensors"),
        &one.path("work/train/model.safetensors"),
        "2 ranks x 2 windows against 1 rank x 4",
    );
    assert_close(&losses(&two), &losses(&one), "losses");
    // The loss fell: the ranks trained (a run whose gradients were lost would not move).
    let l = losses(&two);
    assert!(l[3] < l[0], "{l:?}");

    // `devices` is how, not what: another count leaves the stage fresh.
    two.file("p.toml", pipeline(1, 4, ""));
    let again = run(&two, &["run", "p.toml", "--json"]).ok();
    assert!(
        again.stages_with("stage_finished").is_empty(),
        "{}",
        again.stdout
    );
}

#[test]
fn a_data_parallel_run_resumes_from_its_last_state() {
    let Some(()) = collectives() else { return };
    let p = project(&pipeline(2, 2, ""));
    run(&p, &["run", "p.toml"]).ok();
    // More steps: the two ranks continue from the output's state (rank 0 reads it and gives
    // it to rank 1), as a straight run of 4 steps would have trained.
    p.file("p.toml", pipeline(2, 4, ""));
    let resumed = run(&p, &["run", "p.toml"]).ok();
    assert!(
        resumed.stderr.contains("resuming from step 2"),
        "{}",
        resumed.stderr
    );
    let straight = project(&pipeline(2, 4, ""));
    run(&straight, &["run", "p.toml"]).ok();
    assert_same_weights(
        &p.path("work/train/model.safetensors"),
        &straight.path("work/train/model.safetensors"),
        "resumed at step 2 against straight",
    );
}

#[test]
fn a_batch_the_ranks_cannot_share_is_a_config_error_at_its_key() {
    let Some(()) = collectives() else { return };
    let p = project(&pipeline(3, 2, ""));
    let out = run(&p, &["run", "p.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("devices") && out.stderr.contains("multiple of devices"),
        "{}",
        out.stderr
    );
    // More ranks than the machine has CPUs: refused before any is started.
    p.file(
        "p.toml",
        pipeline(512, 2, "").replace("batch_size = 4", "batch_size = 512"),
    );
    let out = run(&p, &["run", "p.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("devices = 512, but this machine has")
            && out.stderr.contains("one rank per device"),
        "{}",
        out.stderr
    );
    // Under Slurm, devices on each of several nodes: the batch is shared by all of them.
    p.file(
        "p.toml",
        pipeline(2, 2, "[stages.train.resources]\nnodes = 3\n"),
    );
    let out = run(&p, &["run", "p.toml", "--executor", "slurm"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot be shared by its 6 ranks") && out.stderr.contains("nodes = 3"),
        "{}",
        out.stderr
    );
    for bad in ["0", "-1", "\"some\""] {
        p.file(
            "p.toml",
            pipeline(1, 2, "").replace("devices = 1", &format!("devices = {bad}")),
        );
        let out = run(&p, &["run", "p.toml"]);
        assert_eq!(out.code, 2, "devices = {bad}: {}", out.stderr);
        assert!(out.stderr.contains("devices"), "{bad}: {}", out.stderr);
    }
}

/// The pids of `gptpipe-worker` processes working in `dir`: those of rank `rank`, or all of
/// them (rank 0 is the stage's own worker, which has no `RANK`).
fn worker_pids(dir: &Path, rank: Option<usize>) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let want = rank.map(|r| format!("RANK={r}"));
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let proc = entry.path();
        let is_worker = std::fs::read_link(proc.join("exe")).is_ok_and(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gptpipe-worker"))
        });
        let cwd = std::fs::read_link(proc.join("cwd")).ok();
        let environ = std::fs::read(proc.join("environ")).unwrap_or_default();
        let is_rank = want
            .as_ref()
            .is_none_or(|want| environ.split(|&b| b == 0).any(|v| v == want.as_bytes()));
        if is_worker && cwd.as_deref() == Some(dir.as_path()) && is_rank {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_rank_that_is_killed_fails_the_stage_at_once_naming_it() {
    let Some(()) = collectives() else { return };
    let p = project(&pipeline(2, 100_000, "print_every = 1\n"));
    let (child, events) = spawn_run(&p);
    // Training has started when rank 0 reports a step.
    let start = Instant::now();
    loop {
        let e = events
            .recv_timeout(Duration::from_secs(120))
            .expect("no progress within 2 minutes");
        if e["event"] == "stage_progress" && e["stage"] == "train" {
            break;
        }
    }
    assert_eq!(worker_pids(p.dir.path(), None).len(), 2, "the two ranks");
    let pids = worker_pids(p.dir.path(), Some(1));
    assert_eq!(pids.len(), 1, "rank 1's process: {pids:?}");
    let took = kill_rank_1_and_expect_the_stage_to_fail(&p, pids[0], child, events);
    // Rank 0's process is gone too, with the run.
    let left = worker_pids(p.dir.path(), None);
    assert!(left.is_empty(), "workers left: {left:?}");
    eprintln!(
        "failed {took:?} after the kill ({:?} in all)",
        start.elapsed()
    );
}

/// `gptpipe run --json` of `p` in the background, one thread per rank.
fn spawn_run(p: &Project) -> (Child, Receiver<Value>) {
    Test::new()
        .dir(p.dir.path())
        .args(["run", "p.toml", "--json"])
        .env("OMP_NUM_THREADS", "1")
        .spawn()
}

/// Kills rank 1 (process `pid`) of the run `child` reports `events` of, and checks that the
/// stage fails at once naming it, with nothing published; returns how long it took.
fn kill_rank_1_and_expect_the_stage_to_fail(
    p: &Project,
    pid: u32,
    mut child: Child,
    events: Receiver<Value>,
) -> Duration {
    let killed = Instant::now();
    // SAFETY: kill(2) on a pid this test found running in its own temp folder.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut failure = None;
    while let Ok(e) = events.recv_timeout(Duration::from_secs(90)) {
        if e["event"] == "stage_failed" {
            failure = Some(e["error"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(!child.wait().unwrap().success());
    let error = failure.expect("a stage_failed event");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the stage took {:?} to fail",
        killed.elapsed()
    );
    // `rank 1 of 2 ended (killed by signal 9)`, or, killed before it read its request,
    // `rank 1 of 2: ended before it read its request (killed by signal 9)`.
    assert!(
        error.contains("rank 1 of 2") && error.contains("(killed by signal 9)"),
        "{error}"
    );
    assert!(!p.path("work/train").exists(), "nothing is published");
    killed.elapsed()
}

#[test]
fn ranks_that_start_from_a_folder_with_frozen_weights_train_what_one_process_does() {
    let Some(()) = collectives() else { return };
    // Rank 0 loads the folder; the others must get its frozen weights (the embeddings) as
    // well as the trained ones, or they train another model.
    let stages = |devices: usize| {
        pipeline(1, 2, "")
            + &format!(
                "\n[stages.tuned]\nkind = \"finetune\"\ndataset = \"@titles\"\n\
                 model = {{ n_layer = 2, n_head = 2, n_embd = 32, n_ctx = 32 }}\n\
                 restore_from = \"start\"\nonly_train_transformer_layers = true\n\
                 steps = 4\nbatch_size = 4\naccumulate_gradients = 1\ndevice = \"cpu\"\n\
                 dropout = 0.0\nsample_every = 0\nseed = 9\ndevices = {devices}\n"
            )
    };
    let start = |p: &Project| {
        run(p, &["run", "p.toml", "train"]).ok();
        let copied = std::process::Command::new("cp")
            .args(["-r", "work/train", "start"])
            .current_dir(p.dir.path())
            .status()
            .unwrap();
        assert!(copied.success());
        run(p, &["run", "p.toml", "tuned"]).ok();
    };
    let two = project(&stages(2));
    start(&two);
    let one = project(&stages(1));
    start(&one);
    assert_same_weights(
        &two.path("work/tuned/model.safetensors"),
        &one.path("work/tuned/model.safetensors"),
        "2 ranks from a folder, embeddings frozen, against 1",
    );
}

#[test]
fn a_rank_killed_before_the_ranks_meet_fails_the_stage_at_once() {
    let Some(()) = collectives() else { return };
    let p = project(&pipeline(2, 4, ""));
    run(&p, &["run", "p.toml", "titles"]).ok();
    let (child, events) = spawn_run(&p);
    // Rank 1 is killed as soon as it exists: before it has loaded libtorch, so before the
    // ranks meet (which would otherwise wait for it until GPTPIPE_DIST_TIMEOUT).
    let start = Instant::now();
    let pid = loop {
        if let Some(&pid) = worker_pids(p.dir.path(), Some(1)).first() {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rank 1 never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    kill_rank_1_and_expect_the_stage_to_fail(&p, pid, child, events);
}
