//! Security promises, through the real binary: outputs stay inside the workdir, symlinked
//! inputs are resolved and their targets recorded in the lock file, a folder of links is
//! read through them (without looping), and pickle checkpoints are never loaded.

use std::path::Path;
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn gptpipe(dir: &Path, args: &[&str]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptpipe"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GPTPIPE_")) {
        c.env_remove(k);
    }
    let out = c.args(args).current_dir(dir).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

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
        write(&d.join("p.toml"), &format!("[pipeline]\nname = \"s\"\n{stage}"));
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
#[cfg(feature = "torch")] // both stages load models in gptpipe-worker
fn a_pickle_checkpoint_is_refused_and_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let marker = d.join("pickle-ran");
    // A protocol-0 pickle that calls os.system when loaded.
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
            &format!("[pipeline]\nname = \"s\"\n{stage}"),
        );
        let run = gptpipe(d, &["run", "p.toml", "--json"]);
        assert_eq!(run.code, 1, "{stage}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("pickle"), "{stage}: {}", run.stdout);
        assert!(!marker.exists(), "the pickle was loaded");
    }
}
