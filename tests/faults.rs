//! Fault tolerance with real processes: `kill -9` during a stage and around the cache
//! writes, leftovers of killed runs, a tampered cache object, two runs on one workdir and
//! a full disk. Each test compares what survives with an uninterrupted run's output.

use crate::common::{Run, Test};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A project folder: `p.toml` with one prepare stage `a` reading `data.csv`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(rows: usize) -> Self {
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        p.write("data.csv", &csv(rows, 1));
        p.pipeline("work");
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.path(rel), content).unwrap();
    }

    fn pipeline(&self, workdir: &str) {
        self.write(
            "p.toml",
            &format!(
                "[pipeline]\nname = \"f\"\nworkdir = \"{workdir}\"\n\n\
                 [stages.a]\nkind = \"prepare\"\ninputs = [\"data.csv\"]\nmin_length = 3\n"
            ),
        );
    }

    fn run(&self, extra: &[&str]) -> Run {
        Test::new()
            .dir(self.dir.path())
            .args(["run", "p.toml", "--json"])
            .args(extra)
            .run()
    }

    /// Starts `gptpipe run --json`; its events arrive on the returned channel.
    fn spawn(&self, extra: &[&str]) -> (Child, mpsc::Receiver<Value>) {
        Test::new()
            .dir(self.dir.path())
            .args(["run", "p.toml", "--json"])
            .args(extra)
            .spawn()
    }

    /// The stage's published files: name -> content.
    fn output(&self, workdir: &str) -> Vec<(String, Vec<u8>)> {
        let dir = self.path(workdir).join("a");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn lock(&self) -> Option<String> {
        std::fs::read_to_string(self.path("p.toml.lock")).ok()
    }

    /// `gptpipe status --json` says every stage is fresh.
    #[track_caller]
    fn assert_fresh(&self) {
        let out = Test::new()
            .dir(self.dir.path())
            .args(["status", "p.toml", "--json"])
            .run();
        let s: Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(
            s.as_array()
                .unwrap()
                .iter()
                .all(|st| st["state"] == "fresh"),
            "{s}"
        );
    }
}

/// A deterministic CSV of `rows` short titles; `variant` changes every row.
fn csv(rows: usize, variant: u64) -> String {
    const WORDS: [&str; 16] = [
        "what", "is", "the", "best", "thing", "you", "ever", "ate", "why", "do", "cats", "sleep",
        "so", "much", "reddit", "ask",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ variant;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut out = String::from("title\n");
    for i in 0..rows {
        let n = 3 + next() % 12;
        for w in 0..n {
            if w > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[next() % WORDS.len()]);
        }
        out.push_str(&format!(" {variant}-{i}\n"));
    }
    out
}

/// Waits for an event of `kind` (panics after 60 s or when the process ends first).
#[track_caller]
fn wait_for(rx: &mpsc::Receiver<Value>, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(v) if v["event"] == kind => return v,
            Ok(_) => {}
            Err(e) => panic!("no {kind} event: {e}"),
        }
    }
}

/// Sends SIGKILL and reaps the child; true when the signal ended it (false when the run
/// had already exited on its own, which a kill aimed near the end can race with).
fn try_kill9(child: &mut Child) -> bool {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL)
}

#[track_caller]
fn kill9(child: &mut Child) {
    assert!(try_kill9(child), "the run ended before it was killed");
}

/// Rows that keep prepare busy for about a second in a debug build.
const BIG: usize = 80_000;

/// The reference: the same project run once, uninterrupted.
fn reference(rows: usize, variant: u64) -> Vec<(String, Vec<u8>)> {
    let p = Project::new(rows);
    p.write("data.csv", &csv(rows, variant));
    p.run(&[]).ok();
    p.output("work")
}

#[test]
fn kill_9_during_prepare_then_the_next_run_equals_an_uninterrupted_one() {
    let p = Project::new(2_000);
    p.run(&[]).ok();
    let before = p.output("work");
    let lock_before = p.lock().unwrap();

    // A new input, big enough that the stage is mid-run when the kill lands.
    p.write("data.csv", &csv(BIG, 2));
    let (mut child, rx) = p.spawn(&[]);
    let progress = wait_for(&rx, "stage_progress");
    assert!(
        progress["step"].as_u64() < progress["total"].as_u64(),
        "{progress}"
    );
    kill9(&mut child);

    // The killed run published nothing and recorded nothing.
    assert!(
        p.output("work") == before,
        "the previous output was touched"
    );
    assert_eq!(p.lock().unwrap(), lock_before);

    let rerun = p.run(&[]).ok();
    assert_eq!(rerun.with("stage_finished").len(), 1, "{}", rerun.stdout);
    assert!(
        p.output("work") == reference(BIG, 2),
        "differs from an uninterrupted run"
    );
    p.assert_fresh();
    // Build folders of the killed run are gone.
    let tmp = p.path("work/.gptpipe/tmp");
    assert!(!tmp.exists() || std::fs::read_dir(tmp).unwrap().count() == 0);
}

#[test]
fn kill_9_at_many_points_of_a_run_never_leaves_a_wrong_result() {
    let rows = BIG / 2;
    let expected = reference(rows, 3);
    // How long an uninterrupted run takes here, to aim kills around its end, where the
    // output is hashed, stored in the cache, published and recorded.
    let timing = Project::new(rows);
    timing.write("data.csv", &csv(rows, 3));
    let start = Instant::now();
    timing.run(&[]).ok();
    let mut full = start.elapsed();

    let p = Project::new(rows);
    p.write("data.csv", &csv(rows, 3));
    let mut killed = 0;
    // The planned points, then more at 50% until three runs were killed: the timing run
    // may have been slowed by the tests beside it, so a run that ends before its kill
    // aims the next kills earlier.
    let points = [50u32, 80, 90, 95, 98, 100, 102, 105];
    for round in 0..points.len() + 16 {
        if round >= points.len() && killed >= 3 {
            break;
        }
        let percent = points.get(round).copied().unwrap_or(50);
        let (mut child, _rx) = p.spawn(&[]);
        std::thread::sleep(full * percent / 100);
        if try_kill9(&mut child) {
            killed += 1;
        } else if percent < 100 {
            full = full * 3 / 4;
        }
        // Whatever survived is complete: either no output, or exactly the right one.
        if p.path("work/a").exists() {
            assert!(
                p.output("work") == expected,
                "a killed run left a wrong output ({percent}%)"
            );
        }
        // Start again from scratch, so the next run stores its result in the cache again
        // (build folders and trash of the killed run stay, as they would).
        let _ = std::fs::remove_dir_all(p.path("work/a"));
        let _ = std::fs::remove_dir_all(p.path("work/.gptpipe/cache"));
        let _ = std::fs::remove_file(p.path("p.toml.lock"));
    }
    assert!(killed >= 3, "only {killed} runs were killed");
    p.run(&[]).ok();
    assert!(p.output("work") == expected);
    p.assert_fresh();
}

#[test]
fn leftovers_of_a_killed_cache_write_are_harmless() {
    let p = Project::new(500);
    let first = p.run(&[]).ok();
    assert_eq!(first.with("stage_finished").len(), 1);
    let expected = p.output("work");
    let cache = p.path("work/.gptpipe/cache");
    let runs: Vec<PathBuf> = std::fs::read_dir(cache.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);

    // What a run killed inside `Store::save` and `publish` leaves behind: a half-copied
    // object under its temporary name, a build folder, an old output in the trash, and
    // (a filesystem that lost the rename's data) a truncated run manifest.
    let shard = std::fs::read_dir(cache.join("objects"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(shard.join(".deadbeef.999999.tmp"), "half an obj").unwrap();
    std::fs::create_dir_all(p.path("work/.gptpipe/tmp/a.999999.0")).unwrap();
    std::fs::write(
        p.path("work/.gptpipe/tmp/a.999999.0/dataset.txt"),
        "partial",
    )
    .unwrap();
    std::fs::create_dir_all(p.path("work/.gptpipe/trash/a.999999")).unwrap();
    let manifest = std::fs::read(&runs[0]).unwrap();
    std::fs::write(&runs[0], &manifest[..manifest.len() / 2]).unwrap();
    std::fs::remove_dir_all(p.path("work/a")).unwrap();

    // The entry cannot be read: a warning, the stage runs again, the result is right.
    let rerun = p.run(&[]).ok();
    let warnings = rerun.with("warning");
    assert_eq!(warnings.len(), 1, "{}", rerun.stdout);
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{warnings:?}"
    );
    assert_eq!(rerun.with("stage_finished").len(), 1);
    assert!(p.output("work") == expected);
    assert!(!p.path("work/.gptpipe/tmp/a.999999.0").exists());
    assert!(!p.path("work/.gptpipe/trash").exists());
    // The rewritten entry restores cleanly next time.
    std::fs::remove_dir_all(p.path("work/a")).unwrap();
    let restored = p.run(&[]).ok();
    assert_eq!(
        restored.with("stage_cached")[0]["restored"],
        true,
        "{}",
        restored.stdout
    );
    assert!(p.output("work") == expected);
    // gc drops the stray temporary object.
    Test::new()
        .dir(p.dir.path())
        .args(["gc", "p.toml"])
        .run()
        .ok();
    assert!(!shard.join(".deadbeef.999999.tmp").exists());

    // A lock file that lags behind the published output (killed between publishing and
    // recording): the output is seen as modified and restored from the cache.
    let lock_a = p.lock().unwrap();
    p.run(&["--set", "stages.a.min_length=30"]).ok();
    p.write("p.toml.lock", &lock_a);
    let lagging = p.run(&[]).ok();
    assert_eq!(
        lagging.with("stage_cached")[0]["restored"],
        true,
        "{}",
        lagging.stdout
    );
    assert!(p.output("work") == expected);
    p.assert_fresh();
}

#[test]
fn a_tampered_cache_object_is_detected_by_its_hash_and_rebuilt() {
    let p = Project::new(500);
    p.run(&[]).ok();
    let expected = p.output("work");
    let lock: toml::Table = toml::from_str(&p.lock().unwrap()).unwrap();
    let hash = lock["stages"]["a"]["outputs"]["dataset.txt"]
        .as_str()
        .unwrap()
        .to_owned();
    let object = p
        .path("work/.gptpipe/cache/objects")
        .join(&hash[..2])
        .join(&hash);
    assert!(object.is_file());

    // Flip bytes in place (as a failing disk would), then lose the published output.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&object)
            .unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"XXXX").unwrap();
    }
    std::fs::remove_dir_all(p.path("work/a")).unwrap();

    let rerun = p.run(&[]).ok();
    let warnings = rerun.with("warning");
    assert_eq!(warnings.len(), 1, "{}", rerun.stdout);
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(message.contains("does not match its hash"), "{message}");
    assert!(message.contains("dataset.txt"), "{message}");
    assert_eq!(
        rerun.with("stage_finished").len(),
        1,
        "the stage was not rebuilt"
    );
    assert!(p.output("work") == expected);
    // The object is whole again.
    assert_eq!(gptpipe_core::cache::hash::hash_file(&object).unwrap(), hash);
    p.assert_fresh();
}

#[test]
fn two_runs_on_one_workdir_wait_for_each_other_and_both_are_right() {
    let p = Project::new(BIG);
    // A second pipeline sharing the workdir, with its own stage and lock file.
    p.write("small.csv", &csv(300, 7));
    p.write(
        "q.toml",
        "[pipeline]\nname = \"q\"\nworkdir = \"work\"\n\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"small.csv\"]\n",
    );
    let (mut first, rx) = p.spawn(&[]);
    wait_for(&rx, "stage_started");
    let same = std::thread::scope(|s| {
        let same = s.spawn(|| p.run(&[]));
        let other = Test::new()
            .dir(p.dir.path())
            .args(["run", "q.toml", "--json"])
            .run()
            .ok();
        let w = other.with("warning");
        assert!(
            w.iter().any(|e| e["message"]
                .as_str()
                .unwrap()
                .contains("another gptpipe run")),
            "{}",
            other.stdout
        );
        assert_eq!(other.with("stage_finished").len(), 1);
        same.join().unwrap().ok()
    });
    assert!(first.wait().unwrap().success());
    // The same pipeline waited, then found its stage already up to date.
    assert!(same
        .with("warning")
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("waiting")));
    assert_eq!(same.with("stage_cached").len(), 1, "{}", same.stdout);
    assert!(same.with("stage_started").is_empty());
    assert!(p.output("work") == reference(BIG, 1));
    let b = std::fs::read_to_string(p.path("work/b/dataset.txt")).unwrap();
    assert!(b.contains("7-299"));
    p.assert_fresh();
}

/// A small tmpfs mounted for the test's life (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Checks the promise of a full disk: a clear error, the previous output and lock intact.
fn assert_full_disk_is_handled(p: &Project, workdir: &str, run: impl Fn() -> Run, needle: &str) {
    let before = p.output(workdir);
    let lock = p.lock().unwrap();
    p.write("data.csv", &csv(BIG, 9));
    let failed = run();
    assert_eq!(
        failed.code, 1,
        "stdout: {}\nstderr: {}",
        failed.stdout, failed.stderr
    );
    let error = failed.with("stage_failed");
    assert_eq!(error.len(), 1, "{}", failed.stdout);
    let message = error[0]["error"].as_str().unwrap();
    assert!(message.contains(needle), "unclear error: {message}");
    assert!(
        message.contains("dataset.txt") || message.contains("tokens.bin"),
        "{message}"
    );
    assert!(
        p.output(workdir) == before,
        "the previous output was damaged"
    );
    assert_eq!(p.lock().unwrap(), lock);
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_the_previous_outputs() {
    let p = Project::new(500);
    let Some(_mount) = Tmpfs::mount(&p.path("disk"), "2m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); the simulated test covers it");
        return;
    };
    p.pipeline("disk/work");
    p.run(&[]).ok();
    assert_full_disk_is_handled(&p, "disk/work", || p.run(&[]), "No space left on device");
    // With room again, the same run succeeds.
    p.pipeline("work");
    p.run(&[]).ok();
    assert!(p.output("work") == reference(BIG, 9));
}

#[test]
fn a_simulated_full_disk_gives_a_clear_error_and_keeps_the_previous_outputs() {
    // RLIMIT_FSIZE makes writes past 2 MB fail (EFBIG) as a full disk would (ENOSPC).
    let p = Project::new(500);
    p.run(&[]).ok();
    let limited = || {
        let mut cmd = Test::new()
            .dir(p.dir.path())
            .args(["run", "p.toml", "--json"])
            .command();
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: 2 << 20,
                    rlim_max: 2 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Run::from(cmd.output().unwrap())
    };
    assert_full_disk_is_handled(&p, "work", limited, "File too large");
    p.run(&[]).ok();
    assert!(p.output("work") == reference(BIG, 9));
    p.assert_fresh();
}

#[test]
#[cfg(feature = "worker")] // finetune runs in gptpipe-worker, which needs libtorch
fn kill_9_during_finetune_resumes_from_the_checkpoint_and_equals_a_straight_run() {
    let text: String = csv(400, 5)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    let pipeline = "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n\
                    [stages.train]\nkind = \"finetune\"\ndataset = \"data.txt\"\n\
                    model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
                    steps = 100\nsave_every = 10\nsample_every = 0\nbatch_size = 2\n\
                    accumulate_gradients = 1\ndevice = \"cpu\"\n";
    let project = || {
        let p = Project::new(1);
        p.write("data.txt", &text);
        p.write("p.toml", pipeline);
        p
    };
    let straight = project();
    straight.run(&[]).ok();
    let weights = |p: &Project| p.path("work/train/model.safetensors");
    // A finished run's checkpoints go once its output is published: the output holds the
    // final training state.
    let state = |p: &Project| p.path("work/.gptpipe/state/train");
    assert!(
        !state(&straight).exists(),
        "a finished run left its checkpoints"
    );

    let p = project();
    let (mut child, rx) = p.spawn(&[]);
    loop {
        let e = wait_for(&rx, "stage_progress");
        if e["step"].as_u64().unwrap() > 15 {
            break;
        }
    }
    kill9(&mut child);
    assert!(!p.path("work/train").exists());
    let checkpoints = std::fs::read_dir(state(&p)).unwrap().count();
    assert!(checkpoints > 0, "no checkpoint survived the kill");

    // The kill lands after step 16 (checkpoint 10 is saved); on a busy machine the run
    // may have gone on past the next checkpoints, so the resume point is one of them.
    let resumed = p.run(&[]).ok();
    let resumed_from = resumed
        .with("stage_log")
        .iter()
        .filter_map(|e| {
            e["message"]
                .as_str()?
                .strip_prefix("resuming from step ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no resume: {}", resumed.stdout));
    assert!(
        (10..100).contains(&resumed_from) && resumed_from % 10 == 0,
        "resumed from step {resumed_from}"
    );
    let first_step = resumed.with("stage_progress")[0]["step"].as_u64().unwrap();
    assert_eq!(
        first_step,
        resumed_from + 1,
        "training did not continue from the checkpoint"
    );
    crate::common::assert_same_weights(
        &weights(&p),
        &weights(&straight),
        "a resumed run against a straight run",
    );
    assert!(!state(&p).exists(), "the resumed run left its checkpoints");
    p.assert_fresh();
}
