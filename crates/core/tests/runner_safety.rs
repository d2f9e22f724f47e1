//! What the runner promises a hostile user (issue 10): it never publishes over a folder it
//! did not make, never lets an edit of a published file reach the cache, never hands a
//! stage an output that differs from its record, never writes outside a stage folder for a
//! crafted cache entry, never hangs on a stage that panics, never takes a failure for a
//! cancellation, and never writes from a read-only command.

use gptpipe_core::config::{load, LoadOptions, Pipeline, StageKind};
use gptpipe_core::events::{Event, EventSink};
use gptpipe_core::runner::{Cancellation, Outcome, RunError, RunOptions, Runner};
use gptpipe_core::stage::Registry;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn warnings(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    /// A pipeline with one prepare stage `a` reading data.txt, in workdir `work`.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::write(dir.join("data.txt"), "x").unwrap();
        let p = Self { _tmp: tmp, dir };
        p.pipeline("min_length = 1");
        p
    }

    fn pipeline(&self, extra: &str) {
        let text = format!(
            "[pipeline]\nname = \"s\"\nworkdir = \"work\"\n[stages.a]\nkind = \"prepare\"\n\
             inputs = [\"data.txt\"]\n{extra}\n"
        );
        std::fs::write(self.dir.join("p.toml"), text).unwrap();
    }

    fn load(&self) -> Pipeline {
        load(&self.dir.join("p.toml"), &LoadOptions::default()).unwrap()
    }

    fn out(&self, file: &str) -> PathBuf {
        self.dir.join("work/a").join(file)
    }
}

/// Whether the file system under `dir` keeps birth times. Without them, gptpipe knows its
/// own output folder only by its recorded content, so an output edited by hand is refused
/// rather than replaced, and the parts of tests that edit outputs do not apply.
fn keeps_birth_times(dir: &Path) -> bool {
    let keeps = std::fs::metadata(dir).and_then(|m| m.created()).is_ok();
    if !keeps {
        eprintln!("note: no birth times on this file system; skipping the edits by hand");
    }
    keeps
}

/// Runs `pipeline` with `registry` on another thread, failing the test if it hangs.
fn run_with(
    pipeline: &Pipeline,
    registry: Registry,
    force: bool,
) -> (Result<Outcome, String>, Recorder) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pipeline = pipeline.clone();
    std::thread::spawn(move || {
        let events = Recorder::default();
        let runner = Runner::new(&pipeline, &registry).unwrap();
        let options = RunOptions {
            force,
            ..RunOptions::default()
        };
        let result = runner
            .run(&options, &events, &Default::default())
            .map(|o| o["a"].clone())
            .map_err(|e| match e {
                RunError::Failed(f) => format!("failed: {f:?}"),
                other => format!("{other:?}"),
            });
        let _ = tx.send((result, events));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run hung")
}

/// A stage that writes `out.txt`: the previous output's text (when the runner hands one
/// over, as generate keeps earlier samples) followed by "new".
fn appending_stage() -> Registry {
    let mut registry = Registry::new();
    registry.register(StageKind::Prepare, 1, |ctx| {
        let before = match ctx.previous_output {
            Some(prev) => std::fs::read_to_string(prev.join("out.txt"))?,
            None => String::new(),
        };
        std::fs::write(ctx.out_dir.join("out.txt"), format!("{before}new"))?;
        Ok(())
    });
    registry
}

#[test]
fn an_output_edited_by_hand_is_neither_reused_nor_able_to_damage_the_cache() {
    let p = Project::new();
    let (r, _) = run_with(&p.load(), appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Ran);
    assert_eq!(std::fs::read_to_string(p.out("out.txt")).unwrap(), "new");

    if !keeps_birth_times(&p.dir) {
        return;
    }
    // An edit in place, same size, the mtime set back: the cache object is a separate
    // file, so the next run restores the recorded output instead of warning that the
    // cache is damaged.
    let file = p.out("out.txt");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "BAD").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (r, events) = run_with(&p.load(), appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Restored, "{:?}", events.warnings());
    assert!(events.warnings().is_empty(), "{:?}", events.warnings());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");

    // A stage that builds on its previous output never gets an edited one, even with
    // --force (a model truncated to 0 bytes made every finetune fail).
    std::fs::write(&file, "BAD").unwrap();
    let (r, events) = run_with(&p.load(), appending_stage(), true);
    assert_eq!(r.unwrap(), Outcome::Ran);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
    let warnings = events.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("was modified")),
        "{warnings:?}"
    );

    // An untouched output is handed over as before.
    let (r, _) = run_with(&p.load(), appending_stage(), true);
    assert_eq!(r.unwrap(), Outcome::Ran);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "newnew");
}

#[test]
fn a_folder_gptpipe_did_not_make_is_never_published_over() {
    let p = Project::new();
    std::fs::create_dir_all(p.dir.join("work/a")).unwrap();
    std::fs::write(p.out("mine.txt"), "the user's own file").unwrap();
    let (r, events) = run_with(&p.load(), appending_stage(), false);
    let e = format!("{:?}", events.0.lock().unwrap());
    assert!(r.unwrap_err().starts_with("failed"), "{e}");
    assert!(e.contains("cannot tell it made it"), "{e}");
    assert_eq!(
        std::fs::read_to_string(p.out("mine.txt")).unwrap(),
        "the user's own file"
    );

    // Once it is moved away, the stage publishes, and replaces its own folder later (after
    // a parameter change, and after an edit by hand).
    std::fs::rename(p.dir.join("work/a"), p.dir.join("mine")).unwrap();
    assert_eq!(
        run_with(&p.load(), appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    p.pipeline("min_length = 2");
    assert_eq!(
        run_with(&p.load(), appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    if !keeps_birth_times(&p.dir) {
        return;
    }
    // An edit of the stage's own file is replaced; a file added by hand is not lost: the
    // old folder is kept whole, and a warning says where.
    std::fs::write(p.out("out.txt"), "edited").unwrap();
    std::fs::write(p.out("extra.txt"), "added by hand").unwrap();
    let (r, events) = run_with(&p.load(), appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Restored);
    assert!(!p.out("extra.txt").exists());
    assert_eq!(std::fs::read_to_string(p.out("out.txt")).unwrap(), "newnew");
    let warnings = events.warnings();
    let kept = warnings
        .iter()
        .find_map(|w| w.split("kept whole in ").nth(1))
        .unwrap_or_else(|| panic!("{warnings:?}"));
    let kept = Path::new(kept);
    assert_eq!(
        std::fs::read_to_string(kept.join("extra.txt")).unwrap(),
        "added by hand"
    );
    assert_eq!(
        std::fs::read_to_string(kept.join("out.txt")).unwrap(),
        "edited"
    );
}

#[test]
fn links_planted_among_gptpipes_own_folders_stop_runs_and_gc() {
    for planted in [
        ".gptpipe",
        ".gptpipe/tmp",
        ".gptpipe/cache/runs",
        ".gptpipe/published",
        ".gptpipe/novelty",
    ] {
        let p = Project::new();
        let elsewhere = p.dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("precious.txt"), "keep me").unwrap();
        let link = p.dir.join("work").join(planted);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let pipeline = p.load();
        let (r, events) = run_with(&pipeline, appending_stage(), false);
        let e = format!("{r:?} {:?}", events.0.lock().unwrap());
        assert!(e.contains("is not a folder of gptpipe's"), "{planted}: {e}");
        let registry = appending_stage();
        let runner = Runner::new(&pipeline, &registry).unwrap();
        assert!(runner.gc(&Recorder::default()).is_err(), "{planted}");
        let left: Vec<_> = std::fs::read_dir(&elsewhere)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["precious.txt"], "{planted}");
    }
}

#[test]
fn gc_removes_the_cached_novelty_indexes_and_nothing_else() {
    let p = Project::new();
    let pipeline = p.load();
    let (r, _) = run_with(&pipeline, appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Ran);
    let dir = p.dir.join("work/.gptpipe/novelty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{}.idx", "a".repeat(64))), [0u8; 100]).unwrap();
    std::fs::write(dir.join(format!("{}.idx", "b".repeat(64))), [0u8; 23]).unwrap();
    // Not an index: kept (and a link's target is never touched).
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let elsewhere = p.dir.join("precious.idx");
    std::fs::write(&elsewhere, "keep me").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("link.idx")).unwrap();
    let registry = appending_stage();
    let runner = Runner::new(&pipeline, &registry).unwrap();
    assert_eq!(runner.gc_novelty(&Recorder::default()).unwrap(), (2, 123));
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["link.idx", "notes.txt"]);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep me");
    assert_eq!(runner.gc_novelty(&Recorder::default()).unwrap(), (0, 0));
}

#[test]
fn a_crafted_cache_entry_writes_nothing_outside_and_the_stage_runs_again() {
    for (name, hash) in [
        ("../../escaped.txt", "a".repeat(64)),
        ("/tmp/gptpipe-escaped-absolute.txt", "b".repeat(64)),
        ("out.txt", "abc".to_owned()),
        ("out.txt", "é".repeat(32)),
    ] {
        let p = Project::new();
        let pipeline = p.load();
        let (r, _) = run_with(&pipeline, appending_stage(), false);
        assert_eq!(r.unwrap(), Outcome::Ran);
        let runs = p.dir.join("work/.gptpipe/cache/runs");
        let entry = std::fs::read_dir(&runs)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let crafted = serde_json::json!({ "files": { name: hash } });
        std::fs::write(&entry, crafted.to_string()).unwrap();
        std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();

        let (r, events) = run_with(&pipeline, appending_stage(), false);
        assert_eq!(r.unwrap(), Outcome::Ran, "{name} {hash}");
        let warnings = events.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("is invalid")),
            "{name} {hash}: {warnings:?}"
        );
        assert!(!p.dir.join("escaped.txt").exists());
        assert!(!p.dir.join("work/escaped.txt").exists());
        assert!(!Path::new("/tmp/gptpipe-escaped-absolute.txt").exists());
        assert_eq!(std::fs::read_to_string(p.out("out.txt")).unwrap(), "new");
    }
}

#[test]
fn a_stage_that_panics_fails_the_run_instead_of_hanging_it() {
    let p = Project::new();
    let mut registry = Registry::new();
    registry.register(StageKind::Prepare, 1, |_| panic!("a planted bug"));
    let (r, events) = run_with(&p.load(), registry, false);
    assert!(r.unwrap_err().starts_with("failed"));
    let e = format!("{:?}", events.0.lock().unwrap());
    assert!(e.contains("a planted bug"), "{e}");
}

/// A stage stopped by its cancellation is reported as cancelled, recognised by the error's
/// type through any context; a failure whose text merely says "cancelled" is a failure. The
/// JSON of both is `stage` and `error` only.
#[test]
fn a_cancelled_stage_is_told_from_a_failure_by_its_error_type() {
    use anyhow::Context;
    for cancel_first in [true, false] {
        let p = Project::new();
        let mut registry = Registry::new();
        registry.register(StageKind::Prepare, 1, |ctx| {
            ctx.check_cancelled().context("stopping early")?;
            anyhow::bail!("the upload was cancelled by the server")
        });
        let pipeline = p.load();
        let runner = Runner::new(&pipeline, &registry).unwrap();
        let cancel = Cancellation::default();
        if cancel_first {
            cancel.cancel_stage("a");
        }
        let events = Recorder::default();
        let r = runner.run(&RunOptions::default(), &events, &cancel);
        assert!(
            matches!(r, Err(RunError::Failed(ref f)) if f == &["a"]),
            "{r:?}"
        );
        let events = events.0.into_inner().unwrap();
        let failed: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::StageFailed { .. }))
            .collect();
        let [Event::StageFailed {
            stage, cancelled, ..
        }] = failed[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!((stage.as_str(), *cancelled), ("a", cancel_first));
        let error = if cancel_first {
            "stopping early: cancelled"
        } else {
            "the upload was cancelled by the server"
        };
        assert_eq!(
            serde_json::to_value(failed[0]).unwrap(),
            serde_json::json!({"event": "stage_failed", "stage": "a", "error": error})
        );
    }
}

#[test]
fn a_missing_cache_object_is_called_missing() {
    let p = Project::new();
    let pipeline = p.load();
    assert_eq!(
        run_with(&pipeline, appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    let objects = p.dir.join("work/.gptpipe/cache/objects");
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();
    let (r, events) = run_with(&pipeline, appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Ran);
    let warnings = events.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cached object for out.txt is missing")),
        "{warnings:?}"
    );
}

#[test]
fn status_and_dry_runs_write_nothing() {
    let p = Project::new();
    let pipeline = p.load();
    let registry = appending_stage();
    let runner = Runner::new(&pipeline, &registry).unwrap();
    let statuses = runner.status(&[]).unwrap();
    assert_eq!(statuses.len(), 1);
    for dry in [
        RunOptions {
            dry_run: true,
            ..RunOptions::default()
        },
        RunOptions {
            frozen: true,
            ..RunOptions::default()
        },
    ] {
        let _ = runner.run(&dry, &Recorder::default(), &Default::default());
    }
    assert!(
        !p.dir.join("work").exists(),
        "a read-only command made the workdir"
    );
}

#[test]
fn a_folder_made_where_an_output_was_deleted_is_the_users() {
    let p = Project::new();
    let pipeline = p.load();
    assert_eq!(
        run_with(&pipeline, appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    // Made right after the output is deleted, the folder often gets its inode back.
    for mine in [
        &[("notes.md", "mine")][..],
        // A file of the output's own name, with the user's content.
        &[("out.txt", "my own out.txt")],
    ] {
        std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();
        std::fs::create_dir(p.dir.join("work/a")).unwrap();
        for (name, text) in mine {
            std::fs::write(p.out(name), text).unwrap();
        }
        let (r, _) = run_with(&pipeline, appending_stage(), false);
        assert!(r.unwrap_err().starts_with("failed"), "{mine:?}");
        for (name, text) in mine {
            assert_eq!(&std::fs::read_to_string(p.out(name)).unwrap(), text);
        }
    }
    // A folder of empty folders would be lost too.
    std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();
    std::fs::create_dir_all(p.dir.join("work/a/empty")).unwrap();
    assert!(run_with(&pipeline, appending_stage(), false).0.is_err());
    assert!(p.dir.join("work/a/empty").is_dir());
}

#[test]
fn a_copied_workdir_is_still_gptpipes() {
    // A CI cache or a backup restores the workdir as new folders with the same content.
    let p = Project::new();
    assert_eq!(
        run_with(&p.load(), appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    let copy = std::process::Command::new("cp")
        .args(["-r", "work", "copy"])
        .current_dir(&p.dir)
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_dir_all(p.dir.join("work")).unwrap();
    std::fs::rename(p.dir.join("copy"), p.dir.join("work")).unwrap();
    p.pipeline("min_length = 2");
    assert_eq!(
        run_with(&p.load(), appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    assert_eq!(std::fs::read_to_string(p.out("out.txt")).unwrap(), "newnew");
}

#[test]
fn a_planted_cache_object_is_never_followed_or_waited_on() {
    type Plant = fn(&Path);
    let plant: [(&str, Plant); 3] = [
        ("a link to /dev/zero", |o| {
            std::os::unix::fs::symlink("/dev/zero", o).unwrap()
        }),
        ("a FIFO", |o| {
            let c = std::ffi::CString::new(o.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }),
        ("a folder", |o| std::fs::create_dir(o).unwrap()),
    ];
    for (what, plant) in plant {
        let p = Project::new();
        let pipeline = p.load();
        assert_eq!(
            run_with(&pipeline, appending_stage(), false).0.unwrap(),
            Outcome::Ran
        );
        let shards = p.dir.join("work/.gptpipe/cache/objects");
        let shard = std::fs::read_dir(&shards)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let object = std::fs::read_dir(&shard)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::remove_file(&object).unwrap();
        plant(&object);
        std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();
        let (r, events) = run_with(&pipeline, appending_stage(), false);
        assert_eq!(r.unwrap(), Outcome::Ran, "{what}");
        let warnings = events.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("is not a regular file")),
            "{what}: {warnings:?}"
        );
        // The entry was rebuilt with a real object.
        let meta = std::fs::symlink_metadata(&object).unwrap();
        assert!(meta.is_file(), "{what}");
    }
}

#[test]
fn a_cache_entry_with_a_name_too_long_to_restore_is_invalid() {
    let p = Project::new();
    let pipeline = p.load();
    assert_eq!(
        run_with(&pipeline, appending_stage(), false).0.unwrap(),
        Outcome::Ran
    );
    let runs = p.dir.join("work/.gptpipe/cache/runs");
    let entry = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let crafted = serde_json::json!({ "files": { "x".repeat(300): "a".repeat(64) } });
    std::fs::write(&entry, crafted.to_string()).unwrap();
    std::fs::remove_dir_all(p.dir.join("work/a")).unwrap();
    let (r, events) = run_with(&pipeline, appending_stage(), false);
    assert_eq!(r.unwrap(), Outcome::Ran);
    assert!(events.warnings().iter().any(|w| w.contains("too long")));
}
