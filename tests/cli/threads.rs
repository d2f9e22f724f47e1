//! Issue 16's CPU threads and decoding head, through the binary: `--threads` and a
//! stage's `threads` key never make a stage stale, `--threads 0` is a usage error, and
//! neither the thread count nor the packed head of CPU decoding changes a sample.

use super::Project;
use crate::common::Test;

const PIPELINE: &str = "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n\
    [stages.titles]\nkind = \"prepare\"\ninputs = [\"data/titles.csv\"]\n\n\
    [stages.train]\nkind = \"finetune\"\ndataset = \"@titles\"\n\
    model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\nsteps = 3\nbatch_size = 2\n\
    accumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n";

#[test]
fn threads_never_make_a_stage_stale_nor_change_a_sample() {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file("p.toml", PIPELINE);
    p.run(&["run", "p.toml", "--threads", "1"]).ok();
    // Another count, by flag or by key: nothing reruns.
    let again = p.run(&["run", "p.toml", "--threads", "2", "--json"]).ok();
    assert!(
        again.stages_with("stage_finished").is_empty(),
        "{}",
        again.stdout
    );
    p.file("p.toml", format!("{PIPELINE}threads = 2\n"));
    let keyed = p.run(&["run", "p.toml", "--json"]).ok();
    assert!(
        keyed.stages_with("stage_finished").is_empty(),
        "{}",
        keyed.stdout
    );
    let zero = p.run(&["run", "p.toml", "--threads", "0"]);
    assert_eq!(zero.code, 2, "{}", zero.stderr);

    // The same samples whatever the thread count, and with the packed head (on by default
    // on the CPU) or without it, at one row and at several.
    let generate = |extra: &[&str], off: &str| {
        let mut args = vec![
            "generate",
            "--model",
            "work/train",
            "--device",
            "cpu",
            "--length",
            "12",
            "--nsamples",
            "3",
            "--top-k",
            "40",
            "--temperature",
            "1.2",
            "--format",
            "jsonl",
        ];
        args.extend_from_slice(extra);
        let out = Test::new()
            .dir(p.dir.path())
            .args(&args)
            .env("GPTPIPE_DECODE_OFF", off)
            .run()
            .ok();
        out.stdout
    };
    for batch in ["1", "3"] {
        let plain = generate(&["--batch-size", batch, "--threads", "1"], "packed");
        assert_eq!(plain.lines().count(), 3, "{plain}");
        for threads in ["1", "2"] {
            let packed = generate(&["--batch-size", batch, "--threads", threads], "");
            assert_same_samples(
                &packed,
                &plain,
                &format!("batch {batch}, {threads} threads"),
            );
        }
    }
}

/// The same samples (every text and token field equal); the scores (`logprob`,
/// `perplexity`) may differ in their last bits, as sums over another thread count do.
fn assert_same_samples(a: &str, b: &str, what: &str) {
    let rows = |s: &str| -> Vec<serde_json::Map<String, serde_json::Value>> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a_rows, b_rows) = (rows(a), rows(b));
    assert_eq!(a_rows.len(), b_rows.len(), "{what}\n{a}\n{b}");
    for (x, y) in a_rows.iter().zip(&b_rows) {
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{what}"
        );
        for (key, value) in x {
            match (value.as_f64(), y[key].as_f64()) {
                (Some(p), Some(q)) if value.is_f64() || y[key].is_f64() => assert!(
                    (p - q).abs() <= 1e-4 * p.abs().max(1.0),
                    "{what}: {key} {p} against {q}"
                ),
                _ => assert_eq!(value, &y[key], "{what}: {key}\n{a}\n{b}"),
            }
        }
    }
}
