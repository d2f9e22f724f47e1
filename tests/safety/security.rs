//! Security promises, through the real binary: outputs stay inside the workdir, symlinked
//! inputs are resolved and their targets recorded in the lock file, a folder of links is
//! read through them (without looping), and a pickle checkpoint that is more than tensors is
//! refused, never run (safe ones load: `pickles.rs`).

use super::gptpipe;
use crate::common::write;
use std::path::Path;

fn lock(dir: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join("p.toml.lock")).unwrap()).unwrap()
}

#[test]
fn a_symlinked_input_is_read_through_and_its_target_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let target = d.join("elsewhere/real.csv");
    write(&target, "title\nfrom the real file\n");
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::os::unix::fs::symlink(&target, d.join("data/link.csv")).unwrap();
    write(
        &d.join("p.toml"),
        "[pipeline]\nname = \"s\"\n[stages.a]\nkind = \"prepare\"\ninputs = [\"data/link.csv\"]\n",
    );
    let run = gptpipe(&d, &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dataset = std::fs::read_to_string(d.join("runs/s/a/dataset.txt")).unwrap();
    assert!(dataset.contains("from the real file"));

    let entry = &lock(&d)["stages"]["a"];
    let hash = gptpipe_core::cache::hash::hash_file(&target).unwrap();
    assert_eq!(
        entry["inputs"]["data/link.csv"].as_str(),
        Some(hash.as_str())
    );
    assert_eq!(
        entry["links"]["data/link.csv"].as_str(),
        Some(target.to_str().unwrap()),
        "{entry}"
    );

    // A change of the target is a change of the input.
    write(&target, "title\nthe target changed\n");
    let status = gptpipe(&d, &["status", "p.toml", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status[0]["state"], "stale");
    assert!(status[0]["reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("input data/link.csv changed"));

    // Repointing the link at a file with the same content changes only the record.
    let copy = d.join("elsewhere/copy.csv");
    std::fs::copy(&target, &copy).unwrap();
    assert_eq!(gptpipe(&d, &["run", "p.toml"]).code, 0);
    std::fs::remove_file(d.join("data/link.csv")).unwrap();
    std::os::unix::fs::symlink(&copy, d.join("data/link.csv")).unwrap();
    let rerun = gptpipe(&d, &["run", "p.toml", "--json"]);
    assert!(
        rerun.stdout.contains("\"stage_cached\""),
        "{}",
        rerun.stdout
    );
    assert_eq!(
        lock(&d)["stages"]["a"]["links"]["data/link.csv"].as_str(),
        Some(copy.to_str().unwrap())
    );
}

#[test]
fn a_folder_of_links_is_read_through_them_and_a_loop_does_not_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    write(&d.join("store/one.txt"), "first linked text\n");
    write(&d.join("store/two.txt"), "second linked text\n");
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::os::unix::fs::symlink(d.join("store/one.txt"), d.join("data/one.txt")).unwrap();
    std::os::unix::fs::symlink(d.join("store/two.txt"), d.join("data/two.txt")).unwrap();
    std::os::unix::fs::symlink(d.join("data"), d.join("data/loop")).unwrap();
    write(
        &d.join("p.toml"),
        "[pipeline]\nname = \"s\"\n[stages.a]\nkind = \"prepare\"\ninputs = [\"data\"]\n",
    );
    let run = gptpipe(&d, &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dataset = std::fs::read_to_string(d.join("runs/s/a/dataset.txt")).unwrap();
    assert!(dataset.contains("first linked text") && dataset.contains("second linked text"));
    let entry = &lock(&d)["stages"]["a"];
    let inputs: Vec<&String> = entry["inputs"].as_table().unwrap().keys().collect();
    assert_eq!(inputs, ["data/one.txt", "data/two.txt"]);
    assert_eq!(
        entry["links"]["data/two.txt"].as_str(),
        Some(d.join("store/two.txt").to_str().unwrap())
    );
}

#[test]
fn outputs_cannot_leave_the_workdir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (stage, needle) in [
        (
            "[stages.s]\nkind = \"generate\"\nmodel = { n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 16 }\noutput = \"../../escaped.txt\"\n",
            "must be a relative path inside the stage folder",
        ),
        (
            "[stages.s]\nkind = \"generate\"\nmodel = { n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 16 }\noutput = \"/tmp/escaped.txt\"\n",
            "must be a relative path inside the stage folder",
        ),
        ("[stages.\"..\"]\nkind = \"prepare\"\ninputs = [\"x\"]\n", "invalid stage name"),
        ("[stages.\"a/../../b\"]\nkind = \"prepare\"\ninputs = [\"x\"]\n", "invalid stage name"),
    ] {
        write(&d.join("p.toml"), format!("[pipeline]\nname = \"s\"\n{stage}"));
        let run = gptpipe(d, &["run", "p.toml"]);
        assert_eq!(run.code, 2, "{stage}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{stage}: {}", run.stderr);
        assert!(!d.join("escaped.txt").exists() && !d.parent().unwrap().join("escaped.txt").exists());
    }
    // A `--set` is checked the same way as the file.
    write(
        &d.join("p.toml"),
        "[pipeline]\nname = \"s\"\n[stages.s]\nkind = \"generate\"\nmodel = { n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 16 }\n",
    );
    let run = gptpipe(d, &["run", "p.toml", "--set", "stages.s.output=../x.txt"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
#[cfg(feature = "worker")] // both stages load models in gptpipe-worker
fn a_hostile_pickle_checkpoint_is_refused_and_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let marker = d.join("pickle-ran");
    // A protocol-0 pickle that calls os.system when loaded (not a torch.save layout; the
    // one torch.save writes is refused in pickles.rs).
    let pickle = format!("cos\nsystem\n(S'touch {}'\ntR.", marker.display());
    write(&d.join("evil/pytorch_model.bin"), &pickle);
    write(
        &d.join("evil/config.json"),
        r#"{"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 16, "vocab_size": 50257}"#,
    );
    write(&d.join("data.txt"), "some text to train on\n");
    for stage in [
        "[stages.s]\nkind = \"generate\"\nmodel = \"./evil\"\nnsamples = 1\nlength = 2\n",
        "[stages.t]\nkind = \"finetune\"\nmodel = \"./evil\"\ndataset = \"data.txt\"\nsteps = 1\n",
    ] {
        write(
            &d.join("p.toml"),
            format!("[pipeline]\nname = \"s\"\n{stage}"),
        );
        let run = gptpipe(d, &["run", "p.toml", "--json"]);
        assert_eq!(run.code, 1, "{stage}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("evil/pytorch_model.bin") && run.stdout.contains("pickle"),
            "{stage}: {}",
            run.stdout
        );
        assert!(!marker.exists(), "the pickle was loaded");
    }
}

/// A pipeline `p.toml` in `d` with `[pipeline]` keys `head` and the stages `stages`.
fn pipeline(d: &Path, head: &str, stages: &str) {
    write(
        &d.join("p.toml"),
        format!("[pipeline]\nname = \"s\"\n{head}\n{stages}"),
    );
}

#[test]
fn a_stage_folder_that_holds_an_input_is_refused_and_the_input_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("data/t.csv"), "title\nthe user's only copy\n");
    let refused = [
        // The hostile tester's case: the stage folder `data` is the user's data folder.
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"data/t.csv\"]\n",
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"data/*.csv\"]\n",
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"./data/../data\"]\n",
        // Another stage's folder, or the cache, is no place for an input either.
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n[stages.b]\nkind = \"prepare\"\ninputs = [\"data/t.csv\"]\n",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\".gptpipe/cache\"]\n",
    ];
    for stages in refused {
        pipeline(d, "workdir = \".\"", stages);
        let run = gptpipe(d, &["run", "p.toml"]);
        assert_eq!(run.code, 2, "{stages}: {}", run.stderr);
        assert!(
            run.stderr.contains("output folder") || run.stderr.contains("cache folder"),
            "{stages}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("p.toml:"),
            "no location: {}",
            run.stderr
        );
        assert_eq!(
            std::fs::read_to_string(d.join("data/t.csv")).unwrap(),
            "title\nthe user's only copy\n"
        );
    }
    // A folder the user made where a stage publishes, holding no input: refused at run
    // time, and left as it was.
    write(&d.join("out/notes.md"), "mine");
    pipeline(
        d,
        "workdir = \".\"",
        "[stages.out]\nkind = \"prepare\"\ninputs = [\"data/t.csv\"]\n",
    );
    let run = gptpipe(d, &["run", "p.toml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot tell it made it"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out/notes.md")).unwrap(),
        "mine"
    );
    assert!(!d.join("out/dataset.txt").exists());
}

#[test]
fn the_workdir_is_never_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A glob over the pipeline's folder would match the stage's own dataset.txt.
    write(&d.join("texts/a.txt"), "first text\n");
    pipeline(
        d,
        "",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"**/*.txt\"]\n",
    );
    assert_eq!(gptpipe(d, &["run", "p.toml"]).code, 0);
    let first = std::fs::read_to_string(d.join("runs/s/a/dataset.txt")).unwrap();
    let again = gptpipe(d, &["run", "p.toml", "--json"]);
    assert!(
        again.stdout.contains("\"stage_cached\""),
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read_to_string(d.join("runs/s/a/dataset.txt")).unwrap(),
        first
    );
    let entry = &lock(d)["stages"]["a"];
    let inputs: Vec<&String> = entry["inputs"].as_table().unwrap().keys().collect();
    assert_eq!(inputs, ["texts/a.txt"]);

    // A workdir inside the input folder: its cache and outputs are not read.
    write(&d.join("corpus/b.txt"), "second text\n");
    pipeline(
        d,
        "workdir = \"corpus\"",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"corpus\"]\n",
    );
    for _ in 0..2 {
        let run = gptpipe(d, &["run", "p.toml"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let dataset = std::fs::read_to_string(d.join("corpus/a/dataset.txt")).unwrap();
        assert_eq!(dataset.matches("second text").count(), 1, "{dataset}");
        assert!(
            !dataset.contains('{'),
            "read gptpipe's own files: {dataset}"
        );
    }
    let entry = &lock(d)["stages"]["a"];
    let inputs: Vec<&String> = entry["inputs"].as_table().unwrap().keys().collect();
    assert_eq!(inputs, ["corpus/b.txt"]);
}

#[test]
fn a_glob_through_link_loops_reads_each_file_once_and_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("gl/sub/t.csv"), "title\nonly once\n");
    // Two loops: the glob crate walked 2^40 paths through such a tree.
    std::os::unix::fs::symlink("..", d.join("gl/sub/up")).unwrap();
    std::os::unix::fs::symlink("../..", d.join("gl/sub/top")).unwrap();
    std::os::unix::fs::symlink("sub", d.join("gl/again")).unwrap();
    pipeline(
        d,
        "",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"gl/**/*.csv\", \"gl/sub/t.csv\"]\n",
    );
    let run = gptpipe(d, &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dataset = std::fs::read_to_string(d.join("runs/s/a/dataset.txt")).unwrap();
    assert_eq!(dataset.matches("only once").count(), 1, "{dataset}");
}

#[test]
fn names_that_would_escape_or_overflow_are_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("x.csv"), "title\nx\n");
    let long = "s".repeat(300);
    for (toml, needle) in [
        (
            "[pipeline]\nname = \"../../x\"\n[stages.a]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n"
                .to_owned(),
            "invalid pipeline name",
        ),
        (
            "[pipeline]\nname = \"..\"\n[stages.a]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n"
                .to_owned(),
            "invalid pipeline name",
        ),
        (
            format!("[pipeline]\nname = \"s\"\n[stages.{long}]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n"),
            "invalid stage name",
        ),
    ] {
        write(&d.join("p.toml"), &toml);
        let run = gptpipe(d, &["run", "p.toml"]);
        assert_eq!(run.code, 2, "{toml}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    }
    assert!(!d.parent().unwrap().parent().unwrap().join("x").exists());
    assert!(!d.join("runs").exists());
}

#[test]
fn special_files_and_non_model_folders_get_clear_errors_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fifo = d.join("pipe.csv");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for (stages, needle) in [
        (
            "[stages.a]\nkind = \"prepare\"\ninputs = [\"pipe.csv\"]\n",
            "not a regular file",
        ),
        (
            "[stages.a]\nkind = \"prepare\"\ninputs = [\"/dev/zero\"]\n",
            "not a regular file",
        ),
        // `model = "/"` hashed the whole file system before any check.
        (
            "[stages.g]\nkind = \"generate\"\nmodel = \"/\"\n",
            "is not a model folder",
        ),
    ] {
        pipeline(d, "", stages);
        for args in [
            &["run", "p.toml", "--json"][..],
            &["run", "p.toml", "--dry-run", "--json"],
        ] {
            let start = std::time::Instant::now();
            let run = gptpipe(d, args);
            assert_eq!(
                run.code, 1,
                "{stages} {args:?}: {}{}",
                run.stdout, run.stderr
            );
            assert!(
                run.stdout.contains(needle) || run.stderr.contains(needle),
                "{stages} {args:?}: {}{}",
                run.stdout,
                run.stderr
            );
            assert!(
                start.elapsed().as_secs() < 20,
                "{stages}: took {:?}",
                start.elapsed()
            );
        }
    }
}

#[test]
fn status_writes_nothing_and_works_on_a_read_only_workdir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("x.csv"), "title\nx\n");
    pipeline(
        d,
        "",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n",
    );
    for args in [
        &["status", "p.toml"][..],
        &["run", "p.toml", "--dry-run"],
        &["run", "p.toml", "--frozen"],
    ] {
        gptpipe(d, args);
        assert!(!d.join("runs").exists(), "{args:?} made the workdir");
    }
    assert_eq!(gptpipe(d, &["run", "p.toml"]).code, 0);
    // Files older than a moment are worth remembering: status hashes them, and used to
    // save what it learnt in the memo.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for f in [
        "x.csv",
        "runs/s/a/dataset.txt",
        "runs/s/a/tokens.bin",
        "runs/s/a/report.json",
    ] {
        let file = std::fs::File::options()
            .write(true)
            .open(d.join(f))
            .unwrap();
        file.set_modified(hour_ago).unwrap();
    }
    let memo = d.join("runs/s/.gptpipe/memo.json");
    let _ = std::fs::remove_file(&memo);
    let status = gptpipe(d, &["status", "p.toml", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains("\"fresh\""), "{}", status.stdout);
    assert!(!memo.exists(), "status wrote the memo");
    // A run does save it.
    assert_eq!(gptpipe(d, &["run", "p.toml"]).code, 0);
    assert!(memo.exists());
}

#[test]
fn globs_stay_at_their_depth_and_links_into_gptpipes_files_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("a.csv"), "title\nthe only row\n");
    // Neither a broken link nor a huge tree elsewhere concerns `*.csv`.
    std::fs::create_dir_all(d.join("unrelated/deep")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.join("unrelated/deep/broken")).unwrap();
    std::os::unix::fs::symlink("/usr", d.join("unrelated/usr")).unwrap();
    pipeline(
        d,
        "workdir = \".\"",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"*.csv\"]\n[stages.b]\nkind = \"prepare\"\ninputs = [\"ud\", \"*\"]\n",
    );
    // A folder of links into what gptpipe owns, and `*` over the pipeline's folder (its
    // lock file included, which every run rewrites).
    std::fs::create_dir_all(d.join("ud")).unwrap();
    std::os::unix::fs::symlink("../a/dataset.txt", d.join("ud/l.txt")).unwrap();
    std::os::unix::fs::symlink("../.gptpipe/run.lock", d.join("ud/m.txt")).unwrap();
    write(&d.join("ud/own.txt"), "a text of the user\n");
    let run = gptpipe(d, &["run", "p.toml", "a"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = gptpipe(d, &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let again = gptpipe(d, &["run", "p.toml", "--json"]);
    assert!(
        !again.stdout.contains("\"stage_started\""),
        "{}",
        again.stdout
    );
    let entry = &lock(d)["stages"]["b"];
    let inputs: Vec<&String> = entry["inputs"].as_table().unwrap().keys().collect();
    assert_eq!(inputs, ["a.csv", "p.toml", "ud/own.txt"]);
}

#[test]
fn a_dry_run_says_a_user_folder_stops_the_run_and_gc_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(&d.join("x.csv"), "title\nx\n");
    pipeline(
        d,
        "",
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n",
    );
    assert_eq!(gptpipe(d, &["gc", "p.toml"]).code, 0);
    assert!(!d.join("runs").exists(), "gc made the workdir");
    write(&d.join("runs/s/a/mine.txt"), "mine");
    let dry = gptpipe(d, &["run", "p.toml", "--dry-run"]);
    assert_eq!(dry.code, 1, "{}{}", dry.stdout, dry.stderr);
    assert!(
        (dry.stdout.clone() + &dry.stderr).contains("cannot tell it made it"),
        "{}{}",
        dry.stdout,
        dry.stderr
    );
    assert_eq!(
        std::fs::read_to_string(d.join("runs/s/a/mine.txt")).unwrap(),
        "mine"
    );
}
