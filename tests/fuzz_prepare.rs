//! Fuzzing the prepare stage's readers and cleaner: arbitrary bytes as a CSV, JSONL or
//! text input, under random cleaning options, give an output or an error, never a panic.
//! When the stage succeeds, its files keep their promises: `tokens.bin` holds exactly
//! tiktoken's r50k ids of `dataset.txt`, and `report.json` adds up.
//!
//! The corpus in `crates/core/tests/corpus/prepare/` is replayed first (each file under
//! every format), then mutated. `PROPTEST_CASES=20000 cargo test --test integration fuzz_prepare`
//! runs a long campaign.

use gptpipe_core::config::{load, LoadOptions, StageParams};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::StageContext;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/core/tests/corpus/prepare");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn r50k() -> &'static tiktoken_rs::CoreBPE {
    static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().unwrap())
}

/// The options of one case, as TOML lines of a prepare stage.
#[derive(Debug, Clone)]
struct Options {
    format: &'static str,
    lines: Vec<String>,
}

fn options() -> impl Strategy<Value = Options> {
    let format = prop::sample::select(vec!["csv", "jsonl", "text"]);
    let line = prop::sample::select(vec![
        "html_unescape = true",
        "normalize_whitespace = true",
        "dedupe = true",
        "min_length = 3",
        "max_length = 20",
        "min_length = 0",
        "on_error = \"skip\"",
        "header = false",
        "column = 1",
        "column = \"title\"",
        "column = \"missing\"",
        "field = \"body\"",
        "delimiter = \";\"",
        "delimiter = \"\\t\"",
        "wrap = false",
        "wrap = true",
        "remove_chars = [\"\\uFFFD\", \"a\"]",
        "replace = [{ pattern = \"\\\\s+\", with = \" \" }, { pattern = \"(?i)x\", with = \"$0$0\" }]",
        "replace = [{ pattern = \"^\", with = \"<|endoftext|>\" }]",
        "start_token = \"\"",
        "end_token = \"\"",
    ]);
    let skip = prop::option::of(Just("on_error = \"skip\""));
    (format, prop::collection::vec(line, 0..5), skip).prop_map(|(format, mut lines, skip)| {
        lines.extend(skip);
        // One value per key.
        lines.sort_by_key(|l| l.split('=').next().unwrap().to_owned());
        lines.dedup_by_key(|l| l.split('=').next().unwrap().to_owned());
        Options {
            format,
            lines: lines.into_iter().map(str::to_owned).collect(),
        }
    })
}

/// Runs the prepare stage on `input`; panics only where the stage would, or where a
/// successful output breaks its promises.
fn check(input: &[u8], options: &Options) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("input.dat"), input).unwrap();
    let pipeline_path = d.join("p.toml");
    std::fs::write(
        &pipeline_path,
        format!(
            "[pipeline]\nname = \"f\"\n[stages.p]\nkind = \"prepare\"\ninputs = [\"input.dat\"]\nformat = \"{}\"\n{}\n",
            options.format,
            options.lines.join("\n")
        ),
    )
    .unwrap();
    let pipeline = match load(&pipeline_path, &LoadOptions::default()) {
        Ok(p) => p,
        Err(_) => return, // an invalid option mix; the loader's own fuzzing covers that
    };
    let params: &StageParams = &pipeline.stages["p"];
    let out: PathBuf = d.join("out");
    let state = d.join("state");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let upstream = BTreeMap::new();
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "p",
        params,
        pipeline: &pipeline,
        out_dir: &out,
        previous_output: None,
        state_dir: &state,
        upstream: &upstream,
        inputs_hash: "",
        events: &NullSink,
        cancel: &cancel,
    };
    let Ok(()) = gptpipe_text::prepare::run(&ctx) else {
        return;
    };
    let dataset = std::fs::read_to_string(out.join("dataset.txt")).expect("dataset.txt is UTF-8");
    let tokens = std::fs::read(out.join("tokens.bin")).unwrap();
    assert_eq!(tokens.len() % 2, 0, "tokens.bin holds u16s");
    let ids: Vec<u32> = tokens
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .collect();
    let expected: Vec<u32> = r50k().encode_with_special_tokens(&dataset);
    assert!(
        ids == expected,
        "tokens.bin is not the encoding of dataset.txt ({} vs {} ids)",
        ids.len(),
        expected.len()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("report.json lacks {k}: {report}"))
    };
    assert!(n("rows_kept") > 0, "an empty result must be an error");
    assert_eq!(
        n("rows_read"),
        n("rows_kept") + n("rows_dropped"),
        "{report}"
    );
    assert_eq!(n("tokens") as usize, ids.len());
    assert_eq!(n("bytes") as usize, dataset.len());
}

#[test]
fn the_corpus_replays_under_every_format() {
    let files = corpus();
    assert!(files.len() >= 8, "the corpus went missing");
    for (name, bytes) in &files {
        for format in ["csv", "jsonl", "text"] {
            for lines in [
                vec![],
                vec!["on_error = \"skip\"".to_owned(), "dedupe = true".to_owned()],
            ] {
                let options = Options { format, lines };
                if std::panic::catch_unwind(|| check(bytes, &options)).is_err() {
                    panic!(
                        "corpus file {name} as {format} ({:?}) panics",
                        options.lines
                    );
                }
            }
        }
    }
}

/// Bytes that look like inputs: pieces of corpus files, CSV and JSON syntax, multi-byte
/// and invalid UTF-8, entities.
fn input_bytes() -> impl Strategy<Value = Vec<u8>> {
    let files = corpus();
    let piece = prop_oneof![
        8 => prop::sample::select(vec![
            "\"",
            "\"\"",
            ",",
            ";",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "{",
            "}",
            "[",
            "]",
            ":",
            "\\",
            "\\u00e9",
            "\\ud800",
            "{\"text\": ",
            "{\"body\": \"",
            "null",
            "&amp;",
            "&#x27;",
            "&#9999999999;",
            "&",
            "<|endoftext|>",
            "<|startoftext|>",
            "\u{FEFF}",
            "é",
            "🎉",
            "\u{FFFD}",
            " ",
            "  ",
            "title",
            "a longer row of words",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..4),
        3 => (0..files.len(), any::<prop::sample::Index>(), 1usize..64).prop_map(move |(i, at, len)| {
            let f = &files[i].1;
            let start = at.index(f.len().max(1)).min(f.len());
            f[start..(start + len).min(f.len())].to_vec()
        }),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: env_cases(64), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_any_format(input in prop::collection::vec(any::<u8>(), 0..512), options in options()) {
        check(&input, &options);
    }

    #[test]
    fn input_shaped_bytes_as_any_format(input in input_bytes(), options in options()) {
        check(&input, &options);
    }
}

/// `PROPTEST_CASES` when set, else `default` (each case runs the whole stage).
fn env_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}
