//! Outputs hold no timings (nor paths of the machine): training the same pipeline from
//! scratch twice writes the same files, so the lock files record the same output hashes
//! and nothing downstream reruns because of a clock.

use std::collections::BTreeMap;
use std::path::Path;

const PIPELINE: &str = r#"
[pipeline]
name = "repro"
workdir = "work"
seed = 3

[stages.titles]
kind = "prepare"
inputs = ["titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }
steps = 12
batch_size = 2
accumulate_gradients = 1
print_every = 1
sample_every = 0
val_split = 0.2
val_every = 4
device = "cpu"

[stages.onnx]
kind = "export"
model = "@train"

[stages.samples]
kind = "generate"
model = "@train"
length = 8
nsamples = 3
batch_size = 2
device = "cpu"
"#;

/// Runs gptpipe with libtorch on one thread. What these tests guard is that no output holds a
/// timing, a date or a path; with several threads, libtorch's CPU kernels were seen on CI's
/// machine (never here) to round two processes' sums differently, in the last bits.
fn run(dir: &Path, args: &[&str]) -> String {
    let out = crate::common::Test::new()
        .dir(dir)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .run();
    assert!(
        out.code == 0,
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Each stage's `output_hash` and per-file hashes in the lock file.
fn recorded(dir: &Path) -> BTreeMap<String, (String, toml::Value)> {
    let text = std::fs::read_to_string(dir.join("p.toml.lock")).unwrap();
    let lock: toml::Table = toml::from_str(&text).unwrap();
    lock["stages"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(stage, entry)| {
            let hash = entry["output_hash"].as_str().unwrap().to_owned();
            (stage.clone(), (hash, entry["outputs"].clone()))
        })
        .collect()
}

/// A project folder with the pipeline and its data.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("title\n");
    for i in 0..60 {
        csv.push_str(&format!("What is the best thing you ate in year {i}\n"));
    }
    std::fs::write(dir.path().join("titles.csv"), csv).unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    dir
}

#[test]
#[cfg(feature = "worker")] // finetune, export and generate run in gptpipe-worker
fn training_the_same_weights_twice_gives_the_same_output_hashes() {
    // Two projects (two workdirs, at two places on the disk) train from scratch.
    let (a, b) = (project(), project());
    let run_a = run(a.path(), &["run", "p.toml", "--json"]);
    let run_b = run(b.path(), &["run", "p.toml", "--json"]);
    for events in [&run_a, &run_b] {
        let finished = events
            .lines()
            .filter(|l| l.contains("\"stage_finished\""))
            .count();
        assert_eq!(finished, 4, "not every stage ran: {events}");
        // Training reports its speed, in the progress events only.
        assert!(events.contains("tokens_per_s"), "{events}");
    }
    let metrics = std::fs::read_to_string(a.path().join("work/train/metrics.jsonl")).unwrap();
    assert!(!metrics.contains("tokens_per_s"), "{metrics}");

    let (first, second) = (recorded(a.path()), recorded(b.path()));
    assert_eq!(first.len(), 4, "{first:?}");
    // The weights first: when they differ, every stage after them does, and the message
    // must say whether the rounding or an output's content is to blame.
    let weights = |dir: &Path| dir.join("work/train/model.safetensors");
    crate::common::assert_same_weights(&weights(a.path()), &weights(b.path()), "train");
    for (stage, (hash, files)) in &first {
        let (hash2, files2) = &second[stage];
        assert_eq!(
            (hash, files),
            (hash2, files2),
            "stage {stage}'s output differs between two runs that trained the same weights"
        );
    }
}

#[test]
fn a_resumed_finetune_writes_the_same_bytes_as_a_straight_one() {
    // Raising `steps` resumes from the output, which reads metrics.jsonl and trainer.json
    // back: a float that does not survive the round trip made every later file differ.
    let (straight, resumed) = (project(), project());
    run(straight.path(), &["run", "p.toml", "train"]);
    let short = PIPELINE.replace("steps = 12", "steps = 7");
    std::fs::write(resumed.path().join("p.toml"), short).unwrap();
    run(resumed.path(), &["run", "p.toml", "train"]);
    std::fs::write(resumed.path().join("p.toml"), PIPELINE).unwrap();
    let events = run(resumed.path(), &["run", "p.toml", "train", "--json"]);
    assert!(events.contains("resuming from step 7"), "{events}");
    for file in [
        "metrics.jsonl",
        "training_state/trainer.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(straight.path().join("work/train").join(file)).unwrap(),
            std::fs::read(resumed.path().join("work/train").join(file)).unwrap(),
            "{file} differs after a resume"
        );
    }
    assert_eq!(
        recorded(straight.path())["train"],
        recorded(resumed.path())["train"]
    );
}
