//! Known answers: the exact cache key of a fixed stage. The other tests check that keys
//! change when they should; this one pins the value, so a change to what goes into a key
//! (the params' JSON, a new default, the hashing, the key's JSON layout), which would
//! silently re-run or orphan every cached result of every workdir, fails here.
//!
//! The expected values were computed by this code as of the commit that added this file
//! (prepare version 1) and printed by the failing assertions. A deliberate change pins the
//! new values and says so in its commit: existing caches go stale once.

use gptpipe_core::cache::lock::LockFile;
use gptpipe_core::config::{load, LoadOptions, StageKind};
use gptpipe_core::events::NullSink;
use gptpipe_core::runner::{RunOptions, Runner};
use gptpipe_core::stage::{versions, Registry};

const PIPELINE: &str = r#"[pipeline]
name = "known"
seed = 7

[stages.data]
kind = "prepare"
inputs = ["titles.csv"]
min_length = 3
"#;

const TITLES: &str = "title\nhello there world\nsecond row, with a comma\n";

#[track_caller]
fn pinned(what: &str, actual: &str, expected: &str) {
    assert!(
        actual == expected,
        "KNOWN ANSWER CHANGED: {what}\n  expected (pinned): {expected}\n  actual:            {actual}\n\
         Every cached result of this kind in every workdir is now stale (or, if the key should \
         have changed and did not, wrongly reused). If that is intended, pin the new value here."
    );
}

#[test]
fn the_cache_key_of_a_fixed_prepare_stage_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("titles.csv"), TITLES).unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let pipeline = load(&dir.path().join("p.toml"), &LoadOptions::default()).unwrap();
    // The key does not depend on what the stage writes, only on its kind, version, params
    // and inputs: a stand-in writes the output and the runner records the real key.
    let mut registry = Registry::new();
    registry.register(StageKind::Prepare, versions::PREPARE, |ctx| {
        std::fs::write(ctx.out_dir.join("out.txt"), "x")?;
        Ok(())
    });
    Runner::new(&pipeline, &registry)
        .unwrap()
        .run(&RunOptions::default(), &NullSink, &Default::default())
        .unwrap();
    let lock = LockFile::read(&dir.path().join("p.toml.lock")).unwrap();
    let entry = &lock.stages["data"];

    assert_eq!(
        versions::PREPARE,
        1,
        "prepare's version changed: pin the new key below"
    );
    pinned(
        "blake3 of titles.csv (the input's content hash in the key)",
        &entry.inputs["titles.csv"],
        "20d1decec75169810a472da052ce607a813c0f2473f510d5d1255e60deac1bee",
    );
    pinned(
        "cache key of stage `data` (prepare, titles.csv)",
        &entry.key,
        "783b53cdc928036efe043d12efa60c3e2f8ba6f71664b78150d73d5d91d1aaf2",
    );
}
