//! prepare's `template`: rows built from several CSV columns or JSONL fields, before the
//! cleaning steps; missing or empty fields by `on_error`; config errors at the key.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pipeline(dir: &Path, stage: &str) -> PathBuf {
    let path = dir.join("gptpipe.toml");
    std::fs::write(
        &path,
        format!("[pipeline]\nname = \"t\"\n\n[stages.data]\nkind = \"prepare\"\n{stage}"),
    )
    .unwrap();
    path
}

fn run(dir: &Path, stage: &str) -> anyhow::Result<common::Prepared> {
    let p = pipeline(dir, stage);
    let out = tempfile::tempdir().unwrap();
    common::run_stage(&p, "data", out.path(), &BTreeMap::new())
}

/// The error of a stage that must fail.
fn error(dir: &Path, stage: &str) -> String {
    match run(dir, stage) {
        Ok(got) => panic!("the stage did not fail; it wrote {:?}", got.dataset),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn csv_columns_by_header_name_then_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.csv"),
        "id,title,subreddit\n1,Why &amp; how?,AskReddit\n2,\"a, b\",{x}\n",
    )
    .unwrap();
    // html_unescape runs on the built row; min_length counts the whole row.
    let got = run(
        dir.path(),
        "inputs = [\"t.csv\"]\ntemplate = \"{subreddit} | {title} {{{id}}}\"\n\
         html_unescape = true\nmin_length = 17\n",
    )
    .unwrap();
    assert_eq!(
        got.dataset,
        "<|startoftext|>AskReddit | Why & how? {1}<|endoftext|>\n"
    );
    assert_eq!(got.report["rows_read"], 2);
    assert_eq!(got.report["dropped"]["too_short"], 1);
}

#[test]
fn csv_columns_by_index_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "a,b\nc,d\n").unwrap();
    let got = run(
        dir.path(),
        "inputs = [\"t.csv\"]\nheader = false\ntemplate = \"{1}-{0}\"\nwrap = false\n",
    )
    .unwrap();
    assert_eq!(got.dataset, "b-a\nd-c\n");
}

#[test]
fn jsonl_fields_strings_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.jsonl"),
        "{\"title\": \"Hi\", \"score\": 12, \"nsfw\": false}\n\n{\"title\": \"Yo\", \"score\": 3.5, \"nsfw\": true}\n",
    )
    .unwrap();
    let got = run(
        dir.path(),
        "inputs = [\"t.jsonl\"]\ntemplate = \"[{score}] {title} {nsfw}\"\nwrap = false\n",
    )
    .unwrap();
    assert_eq!(got.dataset, "[12] Hi false\n[3.5] Yo true\n");
}

#[test]
fn an_empty_csv_field_is_an_error_naming_file_line_and_column_or_a_counted_drop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.csv"),
        "title,subreddit\nfirst,a\n\"multi\nline\",b\nthird,\n",
    )
    .unwrap();
    let stage = "inputs = [\"t.csv\"]\ntemplate = \"{subreddit}: {title}\"\n";
    let e = error(dir.path(), stage);
    assert!(
        e.contains("t.csv:5:") && e.contains("\"subreddit\" is empty") && e.contains("on_error"),
        "{e}"
    );
    let got = run(dir.path(), &format!("{stage}on_error = \"skip\"\n")).unwrap();
    assert_eq!(got.report["rows_read"], 3);
    assert_eq!(got.report["rows_kept"], 2);
    assert_eq!(got.report["dropped"]["missing_field"], 1);
    assert!(
        got.warnings.iter().any(|w| w.contains("t.csv:5:")),
        "{:?}",
        got.warnings
    );
}

#[test]
fn a_missing_or_null_jsonl_field_is_an_error_or_a_counted_drop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.jsonl"),
        "{\"title\": \"a\", \"sub\": \"x\"}\n{\"title\": \"b\"}\n{\"title\": \"c\", \"sub\": null}\n{\"title\": \"d\", \"sub\": \"\"}\n",
    )
    .unwrap();
    let stage = "inputs = [\"t.jsonl\"]\ntemplate = \"{sub} {title}\"\n";
    let e = error(dir.path(), stage);
    assert!(
        e.contains("t.jsonl:2:") && e.contains("no field \"sub\"") && e.contains("title"),
        "{e}"
    );
    let got = run(
        dir.path(),
        &format!("{stage}on_error = \"skip\"\nwrap = false\n"),
    )
    .unwrap();
    assert_eq!(got.dataset, "x a\n");
    assert_eq!(got.report["dropped"]["missing_field"], 3);
}

#[test]
fn a_placeholder_the_header_lacks_is_an_error_before_any_row_is_read() {
    let dir = tempfile::tempdir().unwrap();
    // The second record is malformed: an error about it would mean rows were read first.
    std::fs::write(dir.path().join("t.csv"), "title,sub\na,b,c\n").unwrap();
    let e = error(
        dir.path(),
        "inputs = [\"t.csv\"]\ntemplate = \"{subreddit} {title}\"\n",
    );
    assert!(
        e.contains("t.csv") && e.contains("{subreddit}") && e.contains("title, sub"),
        "{e}"
    );
    assert!(!e.contains("malformed"), "{e}");
}

#[test]
fn template_beside_column_or_field_and_malformed_templates_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "title\na\n").unwrap();
    for (extra, says) in [
        (
            "column = \"title\"\n",
            "`template` and `column` are both set",
        ),
        ("field = \"body\"\n", "`template` and `field` are both set"),
    ] {
        let stage = format!("inputs = [\"t.csv\"]\ntemplate = \"{{title}}\"\n{extra}");
        let e = error(dir.path(), &stage);
        assert!(e.contains(says), "{e}");
        // The error points at the key, with the file's line.
        assert!(e.contains("gptpipe.toml") && e.contains("template"), "{e}");
    }
    let e = error(dir.path(), "inputs = [\"t.csv\"]\ntemplate = \"{title\"\n");
    assert!(e.contains("is not closed"), "{e}");
}

/// Without `template` the params' JSON (what the cache key hashes) has no `template` key,
/// so existing prepare stages keep their keys (`crates/core/tests/known_answers.rs` pins
/// one); with it, the key changes.
#[test]
fn an_unset_template_is_not_in_the_keyed_params() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "title\na\n").unwrap();
    let keyed = |stage: &str| {
        let p = pipeline(dir.path(), stage);
        let pipeline = gptpipe_core::config::load(&p, &Default::default()).unwrap();
        pipeline.stages["data"].keyed_json()
    };
    let plain = keyed("inputs = [\"t.csv\"]\n");
    assert!(plain.get("template").is_none(), "{plain}");
    let with = keyed("inputs = [\"t.csv\"]\ntemplate = \"{title}\"\n");
    assert_eq!(with["template"], "{title}");
}
