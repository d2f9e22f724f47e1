//! gpt-2-simple side by side: its own code writes a checkpoint (finetune of a tiny model,
//! `tests/fixtures/gpt2_simple/make_checkpoint.py`) and samples it greedily; gptpipe reads
//! the same checkpoint without TensorFlow (`model = "checkpoint/run1"`, a named step,
//! `restore_from`) and must produce the same tokens and files. prepare's output is
//! `encode_csv`'s, byte for byte, on a messy CSV.

use super::Project;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Prefixes gpt-2-simple samples greedily in the fixture (the empty one starts from
/// `<|endoftext|>`).
const PREFIXES: &[&str] = &["", "The fox", "Ünïcödé 🦊 and"];
const LENGTH: usize = 20;

/// The fixture's folder (made once per test process), or `None` when gpt-2-simple is
/// missing (the test is skipped, or fails under `GPTPIPE_TEST_CLIENTS=require`).
fn fixture() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = crate::common::tf_python(&["gpt_2_simple", "tensorflow"])?;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_gpt2_simple_fixture");
        let _ = std::fs::remove_dir_all(&dir);
        let out = std::process::Command::new(python)
            .arg(super::root().join("tests/fixtures/gpt2_simple/make_checkpoint.py"))
            .arg(&dir)
            .args(["--greedy", &serde_json::to_string(PREFIXES).unwrap()])
            .args(["--length", &LENGTH.to_string()])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_checkpoint.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dir)
    })
    .as_deref()
}

#[test]
fn greedy_generation_is_token_identical_to_gpt_2_simples() {
    let Some(dir) = fixture() else { return };
    let out: Value = serde_json::from_slice(&std::fs::read(dir.join("out.json")).unwrap()).unwrap();
    let p = Project::new();
    let run1 = dir.join("checkpoint/run1");
    let model = run1.to_str().unwrap();
    for (i, theirs) in out["greedy"].as_array().unwrap().iter().enumerate() {
        let prefix = theirs["prefix"].as_str().unwrap();
        let common = [
            "generate", "--model", model, "--device", "cpu", "--top-k", "1", "--length", "20",
            "--prefix", prefix,
        ];
        let run = p.run(&[&common[..], &["--format", "jsonl"]].concat()).ok();
        let row: Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
        assert_eq!(row["tokens"], theirs["tokens"], "prefix {prefix:?}");
        if !prefix.starts_with(|c: char| c.is_ascii()) && !prefix.is_empty() {
            // gpt-2-simple decodes the prefix's first token alone (`enc.decode(
            // context_tokens[:1]) + ...`): a character split across tokens becomes U+FFFD
            // there. gptpipe decodes the whole sample, so its text starts with the prefix.
            let (ours, theirs) = (
                row["text"].as_str().unwrap(),
                theirs["text"].as_str().unwrap(),
            );
            assert!(ours.starts_with(prefix), "{ours:?}");
            let rest = &ours[prefix.len()..];
            assert!(
                theirs.starts_with('\u{FFFD}') && theirs.ends_with(rest),
                "{theirs:?}"
            );
            continue;
        }
        assert_eq!(row["text"], theirs["text"], "prefix {prefix:?}");
        // The text files of gpt2.generate_to_file: one sample has no sample_delim, two do.
        for (n, extra) in [(1, vec![]), (2, vec!["--batch-size", "2"])] {
            let file = format!("ours-{i}-n{n}.txt");
            let n_arg = n.to_string();
            let args = [
                &common[..],
                &["--nsamples", &n_arg, "--output", &file],
                &extra[..],
            ]
            .concat();
            p.run(&args).ok();
            let want = std::fs::read_to_string(dir.join(format!("greedy-{i}-n{n}.txt"))).unwrap();
            assert_eq!(p.read(&file), want, "prefix {prefix:?}, nsamples = {n}");
        }
    }
}

/// A copy of the fixture's run folder at `checkpoint/run1` in `p`, as a user has it.
fn copy_run(dir: &Path, p: &Project) {
    let run = p.path("checkpoint/run1");
    std::fs::create_dir_all(&run).unwrap();
    for e in std::fs::read_dir(dir.join("checkpoint/run1")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), run.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_pipeline_finetunes_from_a_checkpoint_and_generates_from_a_named_step() {
    let Some(dir) = fixture() else { return };
    let p = Project::new();
    copy_run(dir, &p);
    p.file(
        "data.txt",
        "the quick brown fox jumps over the lazy dog\n".repeat(30),
    );
    p.file(
        "gptpipe.toml",
        r#"[pipeline]
name = "tf"

[stages.train]
kind = "finetune"
dataset = "data.txt"
model = "checkpoint/run1"
steps = 2
accumulate_gradients = 1
sample_every = 0
device = "cpu"

[stages.cont]
kind = "finetune"
dataset = "data.txt"
restore_from = "checkpoint/run1"
steps = 2
accumulate_gradients = 1
sample_every = 0
device = "cpu"

[stages.step]
kind = "generate"
model = "checkpoint/run1/model-2"
top_k = 1
length = 20
prefix = "The fox"

[stages.onnx]
kind = "export"
model = "checkpoint/run1"

[stages.onnx_step]
kind = "generate"
model = "@onnx"
top_k = 1
length = 20
prefix = "The fox"
"#,
    );
    p.run(&["run", "--json"]).ok();
    // Both starts train the same weights from the same checkpoint.
    crate::common::assert_same_weights(
        &p.path("runs/tf/train/model.safetensors"),
        &p.path("runs/tf/cont/model.safetensors"),
        "model = and restore_from = a gpt-2-simple checkpoint",
    );
    let config: Value = serde_json::from_str(&p.read("runs/tf/train/config.json")).unwrap();
    assert_eq!(
        (config["n_embd"].as_u64(), config["n_layer"].as_u64()),
        (Some(64), Some(2))
    );
    // gpt-2-simple's greedy sample, from the named step on libtorch and from the ONNX export
    // of the run folder (the export checked ONNX Runtime's logits against libtorch's).
    let want = std::fs::read_to_string(dir.join("greedy-1-n1.txt")).unwrap();
    assert_eq!(p.read("runs/tf/step/samples.txt"), want);
    assert_eq!(p.read("runs/tf/onnx_step/samples.txt"), want);
    let exported: Value = serde_json::from_str(&p.read("runs/tf/onnx/config.json")).unwrap();
    assert_eq!(exported["n_embd"], 64);
    // The checkpoint's files are inputs: the stages are fresh until one changes.
    let status = p.run(&["status", "--json"]).ok();
    assert!(!status.stdout.contains("stale"), "{}", status.stdout);
    let index = p.path("checkpoint/run1/model-2.index");
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, [&bytes[..], b"x"].concat()).unwrap();
    let status = p.run(&["status", "--json"]).ok();
    let stale: Vec<Value> = serde_json::from_str(&status.stdout).unwrap();
    assert!(
        stale.iter().all(|s| s["state"] == "stale"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_broken_checkpoint_fails_generate_naming_the_file() {
    let Some(dir) = fixture() else { return };
    let p = Project::new();
    copy_run(dir, &p);
    std::fs::remove_file(p.path("checkpoint/run1/model-2.data-00000-of-00001")).unwrap();
    let run = p.run(&[
        "generate",
        "--model",
        "checkpoint/run1",
        "--device",
        "cpu",
        "--length",
        "2",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("model-2.data-00000-of-00001"),
        "{}",
        run.stderr
    );
}

/// gpt-2-simple's `encode_csv` of `csv` (header skipped), run by gpt-2-simple itself.
fn encode_csv(p: &Project, csv: &str) -> Option<Vec<u8>> {
    let python = crate::common::tf_python(&["gpt_2_simple", "tensorflow"])?;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, gpt_2_simple as g; g.encode_csv(sys.argv[1], sys.argv[2])",
            p.path(csv).to_str().unwrap(),
            p.path("encoded.txt").to_str().unwrap(),
        ])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(std::fs::read(p.path("encoded.txt")).unwrap())
}

#[test]
fn prepare_writes_encode_csvs_bytes_from_a_messy_csv() {
    let p = Project::new();
    // A header, quotes with commas and doubled quotes, newlines inside quotes (LF, CRLF and
    // a lone CR), CRLF and lone-CR record ends, a second column, unicode, and spaces.
    let csv = "title,score\r\n\
               plain row,1\r\n\
               \"Hello, world\",2\r\n\
               \"she said \"\"hi\"\"\",3\n\
               \"two\nlines\",4\n\
               \"windows\r\nlines\",5\r\n\
               \"old\rmac\",6\r\
               lone cr ends this row,7\r\
               Ünïcödé 🦊 — “quotes”,8\n\
               \x20 spaced  out \x20,9\n\
               &amp; stays as it is,10\n";
    p.file("messy.csv", csv);
    let Some(want) = encode_csv(&p, "messy.csv") else {
        return;
    };
    p.file(
        "gptpipe.toml",
        "[pipeline]\nname = \"csv\"\n[stages.rows]\nkind = \"prepare\"\ninputs = [\"messy.csv\"]\n",
    );
    p.run(&["run"]).ok();
    let ours = std::fs::read(p.path("runs/csv/rows/dataset.txt")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&want),
        "prepare's dataset.txt differs from encode_csv's"
    );
}

#[test]
fn an_empty_row_is_the_one_documented_difference_from_encode_csv() {
    let p = Project::new();
    p.file("rows.csv", "title\nfirst\n\"\"\nlast\n");
    let Some(want) = encode_csv(&p, "rows.csv") else {
        return;
    };
    // gpt-2-simple keeps the empty row as an empty training row ...
    assert_eq!(
        String::from_utf8(want).unwrap(),
        "<|startoftext|>first<|endoftext|>\n<|startoftext|><|endoftext|>\n<|startoftext|>last<|endoftext|>\n"
    );
    p.file(
        "gptpipe.toml",
        "[pipeline]\nname = \"csv\"\n[stages.rows]\nkind = \"prepare\"\ninputs = [\"rows.csv\"]\n",
    );
    p.run(&["run"]).ok();
    // ... gptpipe drops it, and says so in the report.
    assert_eq!(
        p.read("runs/csv/rows/dataset.txt"),
        "<|startoftext|>first<|endoftext|>\n<|startoftext|>last<|endoftext|>\n"
    );
    let report: Value = serde_json::from_str(&p.read("runs/csv/rows/report.json")).unwrap();
    assert_eq!(report["rows_dropped"], 1, "{report}");
}

#[test]
fn convert_writes_a_checkpoint_as_a_folder_that_generates_the_same_tokens() {
    let Some(dir) = fixture() else { return };
    let out: Value = serde_json::from_slice(&std::fs::read(dir.join("out.json")).unwrap()).unwrap();
    let p = Project::new();
    copy_run(dir, &p);
    let run = p.run(&["convert", "checkpoint/run1", "converted"]).ok();
    assert!(
        run.stdout.contains("gpt-2-simple checkpoint"),
        "{}",
        run.stdout
    );
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ] {
        assert!(p.path("converted").join(f).is_file(), "converted lacks {f}");
    }
    // A second convert onto it is refused; the folder is what a model folder is.
    let again = p.run(&["convert", "checkpoint/run1", "converted"]);
    assert_ne!(again.code, 0);
    let theirs = &out["greedy"][0];
    let run = p
        .run(&[
            "generate",
            "--model",
            "./converted",
            "--device",
            "cpu",
            "--top-k",
            "1",
            "--length",
            "20",
            "--prefix",
            theirs["prefix"].as_str().unwrap(),
            "--format",
            "jsonl",
        ])
        .ok();
    let row: Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["tokens"], theirs["tokens"]);
}
