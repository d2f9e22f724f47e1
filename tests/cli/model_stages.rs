//! Model stages through the `gptpipe` binary, which runs them in `gptpipe-worker`: a tiny
//! model finetuned on a wrapped CSV, samples from it, an ONNX export of it, and the same
//! greedy samples from both backends.

use super::Project;

const PIPELINE: &str = r#"
[pipeline]
name = "tiny"
workdir = "work"
seed = 7

[stages.titles]
kind = "prepare"
inputs = ["data/titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32, dropout = 0.0 }
steps = 30
batch_size = 4
accumulate_gradients = 1
learning_rate = 1e-2
device = "cpu"
sample_every = 0
print_every = 10

[stages.samples]
kind = "generate"
model = "@train"
prefix = "<|startoftext|>"
truncate = "<|endoftext|>"
include_prefix = false
length = 24
nsamples = 5
batch_size = 2
top_k = 20

[stages.onnx]
kind = "export"
model = "@train"

[stages.greedy_tch]
kind = "generate"
model = "@train"
prefix = "<|startoftext|>The"
temperature = 0.0
length = 12
nsamples = 2
format = "jsonl"

[stages.greedy_onnx]
kind = "generate"
model = "@onnx"
prefix = "<|startoftext|>The"
temperature = 0.0
length = 12
nsamples = 2
format = "jsonl"
"#;

#[test]
fn finetune_generate_export_through_the_worker() {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file("p.toml", PIPELINE);
    let run = p.run(&["run", "p.toml", "--json", "--jobs", "2"]).ok();
    let mut ran = run.stages_with("stage_finished");
    ran.sort();
    assert_eq!(
        ran,
        [
            "greedy_onnx",
            "greedy_tch",
            "onnx",
            "samples",
            "titles",
            "train"
        ]
    );
    // The worker's progress events reach the runner's event stream.
    assert!(
        run.stages_with("stage_progress")
            .iter()
            .any(|s| s == "train"),
        "{}",
        run.stdout
    );

    // Generation reports progress now and then, not once per token: greedy_tch decodes
    // 2 x 12 tokens in a fraction of a second.
    let generate_progress = run
        .stages_with("stage_progress")
        .iter()
        .filter(|s| *s == "greedy_tch")
        .count();
    assert!(
        (1..12).contains(&generate_progress),
        "{generate_progress} progress events"
    );

    // Samples start after the prefix and stop before the end token: neither is in them.
    let samples = p.read("work/samples/samples.txt");
    let delim = format!("{}\n", "=".repeat(20));
    assert_eq!(samples.matches(&delim).count(), 5, "{samples}");
    assert!(
        !samples.contains("<|startoftext|>") && !samples.contains("<|endoftext|>"),
        "{samples}"
    );

    // The model folder is Hugging Face's layout; the export recorded its check.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
    ] {
        assert!(p.path("work/train").join(f).is_file(), "train lacks {f}");
    }
    let export: serde_json::Value = serde_json::from_str(&p.read("work/onnx/export.json")).unwrap();
    assert!(export.to_string().contains("max_abs_diff"), "{export}");

    // Greedy decoding gives the same tokens on libtorch and on ONNX Runtime.
    let tokens = |stage: &str| -> Vec<serde_json::Value> {
        p.read(&format!("work/{stage}/samples.jsonl"))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"].clone())
            .collect()
    };
    assert_eq!(tokens("greedy_tch"), tokens("greedy_onnx"));

    // A new temperature regenerates the samples only: no retraining.
    let again = p
        .run(&[
            "run",
            "p.toml",
            "--json",
            "--set",
            "stages.samples.temperature=0.9",
        ])
        .ok();
    assert_eq!(again.stages_with("stage_started"), ["samples"]);

    // The finished finetune left no checkpoint behind: raising `steps` continues from the
    // published output's training state.
    let state = p.path("work/.gptpipe/state/train");
    assert!(
        !state.exists(),
        "the finished finetune left its checkpoints"
    );
    let more = p
        .run(&[
            "run",
            "p.toml",
            "train",
            "--json",
            "--set",
            "stages.train.steps=35",
        ])
        .ok();
    assert_eq!(more.stages_with("stage_started"), ["train"]);
    assert!(
        more.stdout.contains("resuming from step 30"),
        "{}",
        more.stdout
    );
    assert!(
        !state.exists(),
        "the continued finetune left its checkpoints"
    );
}

#[test]
fn a_folder_of_text_files_is_a_dataset_and_each_file_is_part_of_the_key() {
    let p = Project::new();
    // As gpt-2-simple's `load_dataset` walks a folder: every file below it.
    p.file(
        "texts/a.txt",
        "The fox jumps over the lazy dog.\n".repeat(20),
    );
    p.file(
        "texts/more/b.txt",
        "The dog sleeps under the old tree.\n".repeat(20),
    );
    p.file(
        "p.toml",
        "[pipeline]\nname = \"f\"\nworkdir = \"work\"\n\n[stages.train]\nkind = \"finetune\"\n\
         dataset = \"texts\"\nmodel = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
         steps = 3\nbatch_size = 2\naccumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n",
    );
    p.run(&["run", "p.toml", "--json"]).ok();
    assert!(p.path("work/train/model.safetensors").is_file());
    let lock = p.read("p.toml.lock");
    assert!(
        lock.contains("texts/a.txt") && lock.contains("texts/more/b.txt"),
        "{lock}"
    );

    // A change to a nested file makes the stage stale, and names the file.
    p.file("texts/more/b.txt", "Something else entirely.\n".repeat(20));
    let status = p.run(&["status", "p.toml"]).ok();
    assert!(
        status.stdout.contains("stale") && status.stdout.contains("texts/more/b.txt"),
        "{}",
        status.stdout
    );
    let rerun = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(rerun.stages_with("stage_started"), ["train"]);

    // An empty folder is an error naming it, before any training.
    p.file("empty/.keep", "");
    std::fs::remove_file(p.path("empty/.keep")).unwrap();
    let run = p.run(&["run", "p.toml", "--set", "stages.train.dataset=\"empty\""]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("empty"), "{}", run.stderr);
}

#[test]
fn one_off_generate_takes_the_stage_options_as_flags() {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file(
        "p.toml",
        "[pipeline]\nname = \"f\"\nworkdir = \"work\"\n\n[stages.titles]\nkind = \"prepare\"\n\
         inputs = [\"data/titles.csv\"]\n\n[stages.train]\nkind = \"finetune\"\n\
         dataset = \"@titles\"\nmodel = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
         steps = 3\nbatch_size = 2\naccumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n",
    );
    p.run(&["run", "p.toml"]).ok();
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", "work/train", "--device", "cpu"];
        args.extend_from_slice(extra);
        p.run(&args)
    };

    // Samples do not depend on the batch size, on stdout or in a file.
    let sampled = ["--length", "6", "--nsamples", "3", "--temperature", "0.9"];
    let one = generate(&[&sampled[..], &["--format", "jsonl"]].concat()).ok();
    let lines: Vec<&str> = one.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", one.stdout);
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["index"], i, "{line}");
    }
    generate(&[&sampled[..], &["--batch-size", "2", "-o", "s.jsonl"]].concat()).ok();
    assert_eq!(p.read("s.jsonl"), one.stdout);

    // Bad values are usage errors naming the flag, negative numbers included.
    let bad = generate(&["--temperature", "-1"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--temperature: temperature must not be negative"),
        "{}",
        bad.stderr
    );
    let bad = generate(&["--bad-word", ""]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--bad-word: bad_words"),
        "{}",
        bad.stderr
    );
    let bad = generate(&["--length", "5", "--min-length", "6"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--min-length: min_length"),
        "{}",
        bad.stderr
    );

    // The controls as flags: banned strings never appear, and several stop strings end
    // samples (none of them in the text).
    let hot = ["--length", "20", "--nsamples", "4", "--temperature", "1.5"];
    let free = generate(&[&hot[..], &["--format", "jsonl"]].concat()).ok();
    let controlled = generate(
        &[
            &hot[..],
            &[
                "--format",
                "jsonl",
                "--bad-word",
                "e",
                "--bad-word",
                "a",
                "--no-repeat-ngram-size",
                "2",
                "--truncate",
                "o",
                "--truncate",
                "i",
            ],
        ]
        .concat(),
    )
    .ok();
    let texts = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert!(
        texts(&free.stdout).iter().any(|t| t.contains('e')),
        "{}",
        free.stdout
    );
    for t in texts(&controlled.stdout) {
        assert!(!t.contains(['e', 'a', 'o', 'i']), "{t:?}");
    }
    let long = ["word"; 40].join(" ");
    let bad = generate(&["--prefix", &long]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--prefix: the prefix is 40 tokens"),
        "{}",
        bad.stderr
    );
}

#[test]
fn restoring_from_a_checkpoint_folder_keys_the_stage_on_its_content() {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    let base = "[pipeline]\nname = \"f\"\nworkdir = \"work\"\n\n[stages.titles]\nkind = \"prepare\"\n\
                inputs = [\"data/titles.csv\"]\n\n[stages.base]\nkind = \"finetune\"\n\
                dataset = \"@titles\"\nmodel = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
                steps = 3\nbatch_size = 2\naccumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n";
    let more = "\n[stages.more]\nkind = \"finetune\"\ndataset = \"@titles\"\n\
                model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\nrestore_from = \"ckpt\"\n\
                steps = 5\nbatch_size = 2\naccumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n";
    let copy_base_to_ckpt = || {
        let _ = std::fs::remove_dir_all(p.path("ckpt"));
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .args([p.path("work/base"), p.path("ckpt")])
            .status()
            .unwrap();
        assert!(copied.success());
    };
    p.file("p.toml", base);
    p.run(&["run", "p.toml"]).ok();
    copy_base_to_ckpt();

    p.file("p.toml", format!("{base}{more}"));
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(run.stages_with("stage_started"), ["more"]);
    assert!(
        run.stdout.contains("resuming from step 3"),
        "{}",
        run.stdout
    );
    let fresh = p.run(&["status", "p.toml", "--json"]).ok();
    assert!(!fresh.stdout.contains("stale"), "{}", fresh.stdout);

    // Other weights in the checkpoint folder: the stage is stale and names the file.
    p.run(&["run", "p.toml", "base", "--set", "stages.base.seed=9"])
        .ok();
    copy_base_to_ckpt();
    let status = p.run(&["status", "p.toml", "more"]).ok();
    assert!(
        status.stdout.contains("more") && status.stdout.contains("ckpt/model.safetensors"),
        "{}",
        status.stdout
    );
    // A missing checkpoint folder is named before any training.
    std::fs::remove_dir_all(p.path("ckpt")).unwrap();
    let status = p.run(&["status", "p.toml", "more"]);
    assert!(
        status
            .stdout
            .contains("restore_from: checkpoint folder not found"),
        "{}",
        status.stdout
    );
}
