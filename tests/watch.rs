//! Watch mode, end to end: changes rerun what is stale, a change during a run cancels the
//! stage it touches (old output kept, nothing cached) and re-plans, a broken pipeline file
//! is reported and watch goes on, editors' temp-file-and-rename saves are seen, and outputs
//! written by the run never trigger a cycle.
//!
//! The first tests drive the library with a fake `prepare` stage whose speed the test
//! controls (so cancellation is deterministic); the last ones run the real binary.

use crate::common::Test;
use gptpipe::watch::{watch, Output, WatchOptions};
use gptpipe_core::config::{StageKind, StageParams};
use gptpipe_core::stage::{InputSource, Registry};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A `prepare` stand-in: concatenates its input files into `dataset.txt`. An input that
/// contains "slow" makes it take 3 s, checking for cancellation every 20 ms.
fn fake_registry() -> Registry {
    let mut r = Registry::new();
    r.register(StageKind::Prepare, 1, |ctx| {
        let StageParams::Prepare(p) = ctx.params else {
            unreachable!()
        };
        let mut text = String::new();
        for input in &p.inputs {
            if let InputSource::Path(path) = ctx.resolve_input(input) {
                text.push_str(&std::fs::read_to_string(path)?);
            }
        }
        if text.contains("slow") {
            ctx.progress(0, 1, serde_json::json!({}));
            for _ in 0..150 {
                ctx.check_cancelled()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::fs::write(ctx.out_dir.join("dataset.txt"), text)?;
        Ok(())
    });
    r
}

/// A watch running in a thread, with its JSON objects on a channel.
struct Watching {
    stop: &'static AtomicBool,
    rx: mpsc::Receiver<Value>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Watching {
    fn start(pipeline: &Path) -> Self {
        Self::start_with_jobs(pipeline, 1)
    }

    fn start_with_jobs(pipeline: &Path, jobs: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let options = WatchOptions {
            pipeline: pipeline.to_path_buf(),
            targets: Vec::new(),
            sets: Vec::new(),
            jobs,
            debounce: Duration::from_millis(100),
        };
        let thread = std::thread::spawn(move || {
            watch(&options, &fake_registry(), &Output::channel(tx), stop)
        });
        Self {
            stop,
            rx,
            thread: Some(thread),
        }
    }

    /// The next object with `event == kind`, skipping others.
    #[track_caller]
    fn next(&self, kind: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["event"] == kind => return v,
                Ok(_) => {}
                Err(_) => panic!("no {kind} event within {TIMEOUT:?}"),
            }
        }
    }

    /// Stops the watch (as Ctrl-C does) and waits for it.
    fn stop(mut self) -> Vec<Value> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap().unwrap();
        self.rx.try_iter().collect()
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Writes through a temporary file and a rename, as many editors save.
fn save_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("swp~");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn run_entries(workdir: &Path) -> usize {
    std::fs::read_dir(workdir.join(".gptpipe/cache/runs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn project(stages: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("gptpipe.toml");
    std::fs::write(
        &pipeline,
        format!("[pipeline]\nname = \"w\"\nworkdir = \"work\"\n\n{stages}"),
    )
    .unwrap();
    (dir, pipeline)
}

const TWO_STAGES: &str = "[stages.a]\nkind = \"prepare\"\ninputs = [\"a.txt\"]\n\n\
                          [stages.b]\nkind = \"prepare\"\ninputs = [\"b.txt\"]\n";

#[test]
fn a_change_reruns_only_the_stage_it_touches() {
    let (dir, pipeline) = project(TWO_STAGES);
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "one\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    let w = Watching::start(&pipeline);
    let first = w.next("watch_cycle");
    assert_eq!(names(&first["ran"]), ["a", "b"]);

    save_by_rename(&d.join("a.txt"), "two\n");
    let second = w.next("watch_cycle");
    assert_eq!(names(&second["changed"]), ["a.txt"]);
    assert_eq!(names(&second["ran"]), ["a"]);
    assert_eq!(names(&second["cached"]), ["b"]);
    assert_eq!(
        std::fs::read_to_string(d.join("work/a/dataset.txt")).unwrap(),
        "two\n"
    );

    // Files beside the pipeline that no stage reads start no cycle; nor do the outputs
    // and lock file the cycles wrote. A later real change is the very next cycle.
    std::fs::write(d.join("notes.md"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(d.join("b.txt"), "bee 2\n").unwrap();
    let third = w.next("watch_cycle");
    assert_eq!(names(&third["changed"]), ["b.txt"]);
    assert_eq!(names(&third["ran"]), ["b"]);
    assert_eq!(third["cycle"], 3);
    let rest = w.stop();
    assert!(rest.iter().all(|e| e["event"] != "watch_cycle"), "{rest:?}");
}

#[test]
fn a_broken_pipeline_is_reported_and_watch_resumes_when_it_is_fixed() {
    let (dir, pipeline) = project(TWO_STAGES);
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "one\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    let w = Watching::start(&pipeline);
    w.next("watch_cycle");

    let good = std::fs::read_to_string(&pipeline).unwrap();
    save_by_rename(
        &pipeline,
        &good.replace(
            "kind = \"prepare\"\ninputs = [\"a.txt\"]",
            "kind = \"prepar\"\ninputs = [\"a.txt\"]",
        ),
    );
    let error = w.next("watch_pipeline_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("gptpipe.toml:6:1:"), "{message}");
    assert!(message.contains("unknown kind `prepar`"), "{message}");
    assert_eq!(error["help"], "did you mean `prepare`?");

    // Fixed, with a changed key: the cycle runs a with it.
    save_by_rename(
        &pipeline,
        &good.replace("inputs = [\"a.txt\"]", "inputs = [\"a.txt\", \"b.txt\"]"),
    );
    let fixed = w.next("watch_cycle");
    assert_eq!(names(&fixed["ran"]), ["a"]);
    assert_eq!(
        std::fs::read_to_string(d.join("work/a/dataset.txt")).unwrap(),
        "one\nbee\n"
    );
    w.stop();
}

#[test]
fn a_change_to_a_running_stage_cancels_it_and_replans() {
    let (dir, pipeline) = project(TWO_STAGES);
    let d = dir.path();
    let work = d.join("work");
    std::fs::write(d.join("a.txt"), "fast\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    let w = Watching::start(&pipeline);
    w.next("watch_cycle");
    assert_eq!(run_entries(&work), 2);

    std::fs::write(d.join("a.txt"), "slow\n").unwrap();
    assert_eq!(w.next("stage_started")["stage"], "a");
    w.next("stage_progress");
    std::fs::write(d.join("a.txt"), "fast again\n").unwrap();
    let cancelled = w.next("watch_cycle");
    assert_eq!(names(&cancelled["cancelled"]), ["a"], "{cancelled}");
    assert!(
        cancelled["failed"].as_array().unwrap().is_empty(),
        "{cancelled}"
    );
    assert!(
        cancelled["seconds"].as_f64().unwrap() < 2.0,
        "cancel took {cancelled}"
    );

    let replanned = w.next("watch_cycle");
    assert_eq!(names(&replanned["ran"]), ["a"]);
    assert_eq!(
        std::fs::read_to_string(work.join("a/dataset.txt")).unwrap(),
        "fast again\n"
    );
    // The cancelled run cached nothing: one entry per finished run of a, one of b.
    assert_eq!(run_entries(&work), 3);
    w.stop();
}

#[test]
fn a_change_to_another_stage_does_not_cancel_the_running_one() {
    let (dir, pipeline) = project(TWO_STAGES);
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "fast\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    let w = Watching::start(&pipeline);
    w.next("watch_cycle");

    // b's input says "slow" only briefly: it is what makes b take a while this cycle.
    std::fs::write(d.join("b.txt"), "slow bee\n").unwrap();
    assert_eq!(w.next("stage_started")["stage"], "b");
    let params = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(
        &pipeline,
        params.replace("[\"a.txt\"]", "[\"a.txt\", \"a.txt\"]"),
    )
    .unwrap();
    let cycle = w.next("watch_cycle");
    assert_eq!(names(&cycle["ran"]), ["b"], "{cycle}");
    assert!(cycle["cancelled"].as_array().unwrap().is_empty());
    let next = w.next("watch_cycle");
    assert_eq!(names(&next["ran"]), ["a"]);
    w.stop();
}

#[test]
fn stopping_during_a_run_keeps_the_old_output_and_caches_nothing() {
    let (dir, pipeline) = project("[stages.a]\nkind = \"prepare\"\ninputs = [\"a.txt\"]\n");
    let d = dir.path();
    let work = d.join("work");
    std::fs::write(d.join("a.txt"), "fast\n").unwrap();
    let w = Watching::start(&pipeline);
    w.next("watch_cycle");
    std::fs::write(d.join("a.txt"), "slow\n").unwrap();
    w.next("stage_progress");
    let started = Instant::now();
    let rest = w.stop();
    assert!(started.elapsed() < Duration::from_secs(3));
    let cycle = rest
        .iter()
        .find(|e| e["event"] == "watch_cycle")
        .expect("a last cycle");
    assert_eq!(names(&cycle["stopped"]), ["a"]);
    assert!(names(&cycle["cancelled"]).is_empty(), "{cycle}");
    assert_eq!(rest.last().unwrap()["event"], "watch_stopped");
    assert_eq!(
        std::fs::read_to_string(work.join("a/dataset.txt")).unwrap(),
        "fast\n"
    );
    assert_eq!(run_entries(&work), 1);
    // The lock file still describes the published output: nothing is stale but a.txt.
    let lock = std::fs::read_to_string(d.join("gptpipe.toml.lock")).unwrap();
    let lock: toml::Table = toml::from_str(&lock).unwrap();
    let recorded = lock["stages"]["a"]["outputs"]["dataset.txt"]
        .as_str()
        .unwrap();
    assert_eq!(recorded, gptpipe_core::cache::hash::hash_bytes(b"fast\n"));
}

#[test]
fn with_parallel_stages_a_change_cancels_only_the_stage_it_touches() {
    let (dir, pipeline) = project(TWO_STAGES);
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "slow a\n").unwrap();
    std::fs::write(d.join("b.txt"), "slow b\n").unwrap();
    let w = Watching::start_with_jobs(&pipeline, 2);
    let mut started = std::collections::BTreeSet::new();
    while started.len() < 2 {
        started.insert(
            w.next("stage_progress")["stage"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    std::fs::write(d.join("a.txt"), "slow a, edited\n").unwrap();
    let cycle = w.next("watch_cycle");
    assert_eq!(names(&cycle["cancelled"]), ["a"], "{cycle}");
    assert_eq!(names(&cycle["ran"]), ["b"], "{cycle}");
    let next = w.next("watch_cycle");
    assert_eq!(names(&next["ran"]), ["a"], "{next}");
    assert_eq!(
        std::fs::read_to_string(d.join("work/a/dataset.txt")).unwrap(),
        "slow a, edited\n"
    );
    w.stop();
}

// ---- the real binary ----

/// `gptpipe watch --json` as a child process, its stdout lines on a channel.
struct WatchProcess {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl WatchProcess {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let (child, rx) = Test::new()
            .dir(dir)
            .arg("watch")
            .args(args)
            .args(["--json", "--debounce", "100"])
            .spawn();
        Self { child, rx }
    }

    #[track_caller]
    fn next(&self, kind: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["event"] == kind => return v,
                Ok(_) => {}
                Err(_) => panic!("no {kind} event within {TIMEOUT:?}"),
            }
        }
    }

    /// Ctrl-C; returns the exit code.
    fn interrupt(mut self) -> i32 {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_binary_reruns_on_a_pipeline_edit_and_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("titles.csv"), "title\nhello there world\nhi\n").unwrap();
    std::fs::write(
        d.join("gptpipe.toml"),
        "[pipeline]\nname = \"w\"\n\n[stages.titles]\nkind = \"prepare\"\ninputs = [\"titles.csv\"]\n",
    )
    .unwrap();
    let w = WatchProcess::start(d, &[]);
    w.next("watch_started");
    let first = w.next("watch_cycle");
    assert_eq!(names(&first["ran"]), ["titles"], "{first}");
    let dataset = d.join("runs/w/titles/dataset.txt");
    assert!(std::fs::read_to_string(&dataset).unwrap().contains(">hi<"));

    save_by_rename(
        &d.join("gptpipe.toml"),
        "[pipeline]\nname = \"w\"\n\n[stages.titles]\nkind = \"prepare\"\ninputs = [\"titles.csv\"]\nmin_length = 5\n",
    );
    let second = w.next("watch_cycle");
    assert_eq!(names(&second["changed"]), ["gptpipe.toml"]);
    assert_eq!(names(&second["ran"]), ["titles"]);
    assert!(!std::fs::read_to_string(&dataset).unwrap().contains(">hi<"));
    assert_eq!(w.interrupt(), 0);
}

#[test]
fn a_change_upstream_of_the_running_stage_cancels_it() {
    // b reads a's output; a change to a's input makes b's running work useless.
    let (dir, pipeline) = project(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"a.txt\"]\n\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"@a\", \"b.txt\"]\n",
    );
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "one\n").unwrap();
    std::fs::write(d.join("b.txt"), "bee\n").unwrap();
    let w = Watching::start(&pipeline);
    w.next("watch_cycle");
    std::fs::write(d.join("b.txt"), "slow bee\n").unwrap();
    assert_eq!(w.next("stage_started")["stage"], "b");
    w.next("stage_progress");
    std::fs::write(d.join("a.txt"), "two\n").unwrap();
    let cycle = w.next("watch_cycle");
    assert_eq!(names(&cycle["cancelled"]), ["b"], "{cycle}");
    w.stop();
}
