//! Finetune checkpoints in `<workdir>/.gptpipe/state/<stage>/`: a damaged one is never
//! resumed from (the run falls back to an older one or starts afresh, and ends with the
//! weights of a straight run), and the leftovers of unfinished saves do not pile up.

use super::gptpipe;
use crate::common::{Run, Test};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl Run {
    /// The step of the "resuming from step N" log line, if the run resumed.
    fn resumed_from(&self) -> Option<u64> {
        self.with("stage_log").iter().find_map(|e| {
            e["message"]
                .as_str()?
                .strip_prefix("resuming from step ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    fn warnings(&self) -> Vec<String> {
        self.with("warning")
            .iter()
            .chain(self.with("stage_warning").iter())
            .map(|e| e.to_string())
            .collect()
    }
}

struct Project {
    dir: tempfile::TempDir,
}

fn text() -> String {
    let words = [
        "what", "is", "the", "best", "thing", "you", "ever", "ate", "why",
    ];
    (0..400)
        .map(|i| {
            let n = 3 + i % 7;
            let row: Vec<&str> = (0..n)
                .map(|w| words[(i * 7 + w * 3) % words.len()])
                .collect();
            format!("{} {i}\n", row.join(" "))
        })
        .collect()
}

impl Project {
    /// A finetune of a tiny model for 100 steps, a checkpoint every 10, the last
    /// `max_checkpoints` kept.
    fn new(max_checkpoints: usize) -> Self {
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        p.write("data.txt", &text());
        p.write(
            "p.toml",
            &format!(
                "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n\
                 [stages.train]\nkind = \"finetune\"\ndataset = \"data.txt\"\n\
                 model = {{ n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }}\n\
                 steps = 100\nsave_every = 10\nmax_checkpoints = {max_checkpoints}\n\
                 sample_every = 0\nbatch_size = 2\naccumulate_gradients = 1\n\
                 device = \"cpu\"\n"
            ),
        );
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.path(rel), content).unwrap();
    }

    fn state(&self) -> PathBuf {
        self.path("work/.gptpipe/state/train")
    }

    fn weights(&self) -> PathBuf {
        self.path("work/train/model.safetensors")
    }

    fn run(&self, args: &[&str]) -> Run {
        gptpipe(self.dir.path(), args)
    }

    /// Runs the pipeline and kills it (SIGKILL) once training is past `step`: its
    /// checkpoints stay in the state folder.
    fn run_and_kill_after(&self, step: u64) {
        let (mut child, rx) = Test::new()
            .dir(self.dir.path())
            .args(["run", "p.toml", "--json"])
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let e = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("no progress past the step");
            if e["event"] == "stage_progress" && e["step"].as_u64().unwrap() > step {
                break;
            }
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the run ended before it was killed"
        );
        assert!(!self.path("work/train").exists());
    }

    /// The checkpoint folders of the state folder, oldest first.
    fn checkpoints(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.state())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("checkpoint-")
            })
            .collect();
        out.sort();
        out
    }
}

fn step_of(checkpoint: &Path) -> u64 {
    let name = checkpoint
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    name.trim_start_matches("checkpoint-").parse().unwrap()
}

/// Flips one bit of a byte in the second half of the file (tensor data): same size, other
/// weights.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
#[cfg(feature = "worker")] // finetune runs in gptpipe-worker, which needs libtorch
fn a_damaged_checkpoint_is_not_resumed_from_and_the_result_equals_a_straight_run() {
    let straight = Project::new(5);
    straight.run(&["run", "p.toml", "--json"]).ok();

    // The newest checkpoint's weights change in place (same size): the run falls back to
    // the one before it, says which checkpoint it refused, and ends where a straight run
    // ends.
    let p = Project::new(5);
    p.run_and_kill_after(25);
    let checkpoints = p.checkpoints();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    let newest = checkpoints.last().unwrap();
    let older = step_of(&checkpoints[checkpoints.len() - 2]);
    flip_a_byte(&newest.join("model.safetensors"));
    // A partial save of a killed run, which the next save removes.
    std::fs::create_dir_all(p.state().join(".tmp-checkpoint-000000099")).unwrap();
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        run.warnings().iter().any(|w| w.contains(&name)),
        "no warning names {name}: {}",
        run.stdout
    );
    assert_eq!(run.resumed_from(), Some(older), "{}", run.stdout);
    crate::common::assert_same_weights(
        &p.weights(),
        &straight.weights(),
        "a run resumed from the older checkpoint against a straight run",
    );
    assert!(!p.state().exists(), "the run left its checkpoints");

    // Every checkpoint truncated to nothing: a fresh start, not a failure.
    let p = Project::new(1);
    p.run_and_kill_after(15);
    let checkpoints = p.checkpoints();
    assert!(!checkpoints.is_empty());
    for c in &checkpoints {
        std::fs::write(c.join("model.safetensors"), b"").unwrap();
    }
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(run.resumed_from(), None, "{}", run.stdout);
    for c in &checkpoints {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            run.warnings().iter().any(|w| w.contains(&name)),
            "no warning names {name}: {}",
            run.stdout
        );
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    crate::common::assert_same_weights(
        &p.weights(),
        &straight.weights(),
        "a fresh start after every checkpoint was emptied against a straight run",
    );
}

#[test]
fn gc_removes_partial_checkpoints_and_keeps_complete_ones() {
    let p = Project::new(1);
    let state = p.state();
    let partial = state.join(".tmp-checkpoint-x");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"half a model").unwrap();
    std::fs::write(state.join(".tmp-stray-file"), b"").unwrap();
    let complete = state.join("checkpoint-000000010");
    std::fs::create_dir_all(&complete).unwrap();
    std::fs::write(complete.join("trainer.json"), b"{}").unwrap();

    p.run(&["gc", "p.toml"]).ok();
    assert!(!partial.exists(), "gc left {}", partial.display());
    assert!(!state.join(".tmp-stray-file").exists());
    assert!(
        complete.join("trainer.json").is_file(),
        "gc removed a checkpoint"
    );
}
