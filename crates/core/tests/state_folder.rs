//! A stage's state folder (checkpoints to resume from) survives failed runs and is
//! removed once the stage's output is published and recorded; a cache restore leaves it.

use gptpipe_core::config::{load, LoadOptions, StageKind};
use gptpipe_core::events::NullSink;
use gptpipe_core::runner::{Outcome, RunOptions, Runner};
use gptpipe_core::stage::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const PIPELINE: &str = r#"
[pipeline]
name = "s"
workdir = "work"

[stages.a]
kind = "prepare"
inputs = ["data.txt"]
"#;

#[test]
fn the_state_folder_survives_failures_and_goes_once_the_output_is_published() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "x").unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let pipeline = load(&dir.path().join("p.toml"), &LoadOptions::default()).unwrap();
    let state = dir.path().join("work/.gptpipe/state/a");

    // A stage that leaves a checkpoint, and fails on its first call.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let seen = calls.clone();
    registry.register(StageKind::Prepare, 1, move |ctx| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if n > 0 {
            anyhow::ensure!(
                ctx.state_dir.join("checkpoint").is_file(),
                "the failed run's checkpoint is gone"
            );
        }
        std::fs::write(ctx.state_dir.join("checkpoint"), n.to_string())?;
        anyhow::ensure!(n > 0, "the first call fails");
        std::fs::write(ctx.out_dir.join("out.txt"), "done")?;
        Ok(())
    });
    let runner = Runner::new(&pipeline, &registry).unwrap();
    let run = |force: bool| {
        let options = RunOptions {
            force,
            ..RunOptions::default()
        };
        runner
            .run(&options, &NullSink, &Default::default())
            .map_err(|e| format!("{e:?}"))
    };

    assert!(run(false).is_err());
    assert!(state.join("checkpoint").is_file(), "a failed run keeps it");

    let outcomes = run(false).unwrap();
    assert_eq!(outcomes["a"], Outcome::Ran);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("work/a/out.txt")).unwrap(),
        "done"
    );
    assert!(!state.exists(), "a published run leaves its state folder");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A restore from the cache runs nothing and leaves the state folder alone (it may hold
    // an unfinished run of other parameters).
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("checkpoint"), "other").unwrap();
    std::fs::remove_dir_all(dir.path().join("work/a")).unwrap();
    assert_eq!(run(false).unwrap()["a"], Outcome::Restored);
    assert!(state.join("checkpoint").is_file());
    assert_eq!(run(true).unwrap()["a"], Outcome::Ran);
    assert!(!state.exists());
}
