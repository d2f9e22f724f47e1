//! The prepare stage beyond single fixtures: large inputs across batches, `@stage` inputs,
//! warnings for skipped rows, cancellation.

use crate::common;

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::Upstream;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn pipeline(dir: &Path, stages: &str) -> std::path::PathBuf {
    let path = dir.join("gptpipe.toml");
    std::fs::write(&path, format!("[pipeline]\nname = \"t\"\n\n{stages}")).unwrap();
    path
}

/// Several batches of rows whose ends tokenize differently alone than joined (trailing
/// spaces before `\n`), unwrapped: tokens.bin must still equal tiktoken on the whole file.
#[test]
fn many_batches_tokenize_as_one_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::Rng::new(7);
    let mut csv = String::from("id,text\n");
    let mut n = 0;
    while csv.len() < 5 << 20 {
        let mut row = String::new();
        for _ in 0..1 + rng.below(12) {
            row.push_str(rng.pick(common::TRICKY).trim_matches(['\n', '\r', '"']));
            row.push_str(rng.pick(&[" ", "  ", ", ", " \t"]));
        }
        writeln!(csv, "{n},\"{}\"", row.replace('"', "\"\"")).unwrap();
        n += 1;
    }
    std::fs::write(dir.path().join("big.csv"), &csv).unwrap();
    let p = pipeline(
        dir.path(),
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"big.csv\"]\ncolumn = \"text\"\nwrap = false\n",
    );
    let out = tempfile::tempdir().unwrap();
    let got = common::run_stage(&p, "data", out.path(), &BTreeMap::new()).unwrap();
    assert_eq!(got.report["rows_read"], n);
    assert!(got.dataset.len() > 4 << 20);
    let peer = tiktoken_rs::r50k_base().unwrap();
    let ids = peer.encode_with_special_tokens(&got.dataset);
    assert!(
        got.tokens == ids,
        "tokens.bin differs from tiktoken on the whole dataset"
    );
}

#[test]
fn reads_an_upstream_prepare_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "text\nfirst  row\nsecond\n").unwrap();
    let p = pipeline(
        dir.path(),
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"a.csv\"]\n\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"@a\"]\nnormalize_whitespace = true\n",
    );
    let a_out = tempfile::tempdir().unwrap();
    common::run_stage(&p, "a", a_out.path(), &BTreeMap::new()).unwrap();
    let upstream = BTreeMap::from([(
        "a".to_owned(),
        Upstream {
            kind: StageKind::Prepare,
            dir: a_out.path().to_path_buf(),
        },
    )]);
    let b_out = tempfile::tempdir().unwrap();
    let got = common::run_stage(&p, "b", b_out.path(), &upstream).unwrap();
    // The upstream dataset is one text document: not wrapped again, whitespace normalized.
    assert_eq!(
        got.dataset,
        "<|startoftext|>first row<|endoftext|> <|startoftext|>second<|endoftext|>"
    );
    assert_eq!(got.report["inputs"][0]["format"], "text");
}

#[test]
fn skipped_rows_are_warned_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,text\n");
    for i in 0..10 {
        writeln!(csv, "{i},ok {i}").unwrap();
        writeln!(csv, "{i},bad,row").unwrap();
    }
    std::fs::write(dir.path().join("d.csv"), csv).unwrap();
    let p = pipeline(
        dir.path(),
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"d.csv\"]\ncolumn = 1\non_error = \"skip\"\n",
    );
    let out = tempfile::tempdir().unwrap();
    let got = common::run_stage(&p, "data", out.path(), &BTreeMap::new()).unwrap();
    assert_eq!(got.report["dropped"]["malformed"], 10);
    assert_eq!(got.report["rows_kept"], 10);
    // The first five, each with its line; the rest are only counted.
    assert_eq!(got.warnings.len(), 5, "{:?}", got.warnings);
    assert!(
        got.warnings[0].contains("d.csv:3: malformed CSV record"),
        "{:?}",
        got.warnings
    );
    assert!(got.warnings[1].contains("d.csv:5:"), "{:?}", got.warnings);
}

#[test]
fn cancelled_stage_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.csv"), "text\na\nb\n").unwrap();
    let p = pipeline(
        dir.path(),
        "[stages.data]\nkind = \"prepare\"\ninputs = [\"d.csv\"]\n",
    );
    let pipeline = gptpipe_core::config::load(&p, &Default::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let ctx = gptpipe_core::stage::StageContext {
        name: "data",
        params: &pipeline.stages["data"],
        pipeline: &pipeline,
        out_dir: out.path(),
        previous_output: None,
        state_dir: out.path(),
        upstream: &BTreeMap::new(),
        inputs_hash: "",
        events: &gptpipe_core::events::NullSink,
        cancel: &cancel,
    };
    let err = gptpipe_text::prepare::run(&ctx).unwrap_err();
    assert_eq!(format!("{err:#}"), "cancelled");
    assert!(gptpipe_core::Cancelled::is_in(&err));
}
