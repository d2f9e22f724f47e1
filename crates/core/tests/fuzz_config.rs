//! Fuzzing the pipeline loader: any text as a pipeline file, any `--set` argument and any
//! `GPTPIPE_*` variable give a pipeline or a `ConfigError`, never a panic; every error
//! renders (file:line:col, source snippet) without panicking; every pipeline that loads can
//! be planned.
//!
//! Inputs come from three generators: arbitrary text, pipeline-shaped TOML built from the
//! real key names (taken from the JSON Schema) with hostile values, and random edits of
//! the corpus in `tests/corpus/config/`, which is also replayed as it is.
//! `PROPTEST_CASES=100000 cargo test -p gptpipe-core --test integration fuzz_config` runs a long campaign.

#![allow(clippy::result_large_err)] // ConfigError is large and cold, as in gptpipe-core

use gptpipe_core::config::{load, pipeline_schema_json, ConfigError, LoadOptions};
use gptpipe_core::dag::{Dag, DagFormat};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn workspace() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config")
}

fn corpus() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Loads `text` with `sets` and `env`; panics only where the loader would.
fn check(text: &str, sets: &[String], env: &[(String, String)]) -> Result<(), ConfigError> {
    let path = workspace().join("gptpipe.toml");
    std::fs::write(&path, text).unwrap();
    let options = LoadOptions {
        sets: sets.to_vec(),
        env: env.to_vec(),
    };
    match load(&path, &options) {
        Ok(pipeline) => {
            let dag = Dag::new(&pipeline);
            assert_eq!(
                dag.order.len(),
                pipeline.stages.len(),
                "a stage is missing from the plan"
            );
            for format in [DagFormat::Text, DagFormat::Dot, DagFormat::Mermaid] {
                dag.render(format);
            }
            for (name, stage) in &pipeline.stages {
                stage.to_json();
                dag.downstream(name);
                // Stage names become folder names: nothing may climb out of the workdir.
                assert!(
                    pipeline.workdir.join(name).starts_with(&pipeline.workdir)
                        && !name.contains(['/', '\\'])
                        && name != ".."
                        && name != ".",
                    "stage name {name:?} escapes the workdir"
                );
            }
            Ok(())
        }
        Err(e) => {
            let mut out = String::new();
            miette::GraphicalReportHandler::new()
                .render_report(&mut out, &e)
                .expect("errors render");
            assert!(!e.message.is_empty());
            Err(e)
        }
    }
}

/// Every key name the schema knows, for pipeline-shaped inputs.
fn keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(serde_json::Value::Object(props)) = o.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    o.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let schema: serde_json::Value = serde_json::from_str(&pipeline_schema_json()).unwrap();
        let mut out = Vec::new();
        walk(&schema, &mut out);
        out.sort();
        out.dedup();
        out
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0..keys().len()).prop_map(|i| keys()[i].clone()),
        1 => "[a-z_]{1,12}",
        1 => any::<String>().prop_map(toml_string),
    ]
}

fn stage_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "train", "samples", "titles"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["\"..\"", "\".\"", "\"a/b\"", "\"\"", "\"ü\"", "\"a b\"", "\"-\""])
            .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9_-]{1,8}",
    ]
}

/// `s` as a TOML string literal.
fn toml_string(s: String) -> String {
    toml::Value::String(s).to_string()
}

/// A TOML value, often one that is valid TOML but wrong for the key.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "2",
            "3",
            "17",
            "1023",
            "4294967296",
            "9223372036854775807"
        ])
        .prop_map(str::to_owned),
        any::<f64>().prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
        prop::sample::select(vec![
            "nan", "-nan", "inf", "-inf", "-0.0", "1e308", "5e-324", "0.7"
        ])
        .prop_map(str::to_owned),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "\"gpt2\"",
            "\"@a\"",
            "\"@b\"",
            "\"@\"",
            "\"@missing\"",
            "\"\"",
            "\"../../etc/passwd\"",
            "\"/etc/passwd\"",
            "\"data/*.csv\"",
            "\"[\"",
            "\"csv\"",
            "\"jsonl\"",
            "\"text\"",
            "\"prepare\"",
            "\"finetune\"",
            "\"export\"",
            "\"generate\"",
            "\"cuda:99\"",
            "\"cuda:x\"",
            "\"samples.txt\"",
            "\"../out.txt\"",
            "\"a/../../b\"",
            "\"(\"",
            "\"\\\\\"",
            "1979-05-27T07:32:00Z",
            "'''multi\nline'''",
            "\"\\uFFFD\"",
        ])
        .prop_map(str::to_owned),
        any::<String>().prop_map(toml_string),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..5).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// A stage kind's name and its keys, each with plausible values.
type Kind = (String, Vec<(String, Vec<String>)>);

/// For each stage kind, its keys with plausible TOML values (from the schema's types,
/// enums and defaults), so generated stages often load and reach validation and planning.
fn kinds() -> &'static [Kind] {
    static KINDS: OnceLock<Vec<Kind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        use serde_json::Value as J;
        let schema: J = serde_json::from_str(&pipeline_schema_json()).unwrap();
        let defs = &schema["$defs"];
        fn literal(v: &J) -> Option<String> {
            Some(match v {
                J::Bool(b) => b.to_string(),
                J::Number(n) => n.to_string(),
                J::String(s) => toml_string(s.clone()),
                J::Array(a) => format!(
                    "[{}]",
                    a.iter().filter_map(literal).collect::<Vec<_>>().join(", ")
                ),
                _ => return None,
            })
        }
        fn pool(p: &J, defs: &J, out: &mut Vec<String>) {
            if let Some(r) = p["$ref"].as_str() {
                pool(&defs[r.trim_start_matches("#/$defs/")], defs, out);
            }
            for alt in ["anyOf", "oneOf"] {
                p[alt]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .for_each(|a| pool(a, defs, out));
            }
            p["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(literal)
                .for_each(|l| out.push(l));
            out.extend(p.get("const").and_then(literal));
            out.extend(p.get("default").and_then(literal));
            let types: Vec<&str> = match &p["type"] {
                J::String(t) => vec![t.as_str()],
                J::Array(a) => a.iter().filter_map(J::as_str).collect(),
                _ => vec![],
            };
            for t in types {
                let samples: &[&str] = match t {
                    "integer" => &["0", "1", "2", "5", "64", "1000"],
                    "number" => &["0.0", "0.5", "1.0", "1e-4", "2"],
                    "boolean" => &["true", "false"],
                    "string" => &["\"a\"", "\"@a\"", "\"@b\"", "\"data.csv\"", "\"x/y.txt\""],
                    "array" => &["[\"a.csv\"]", "[\"@a\"]", "[]", "[\"data/*.txt\", \"@b\"]"],
                    "object" => &[
                        "{ n_layer = 2, n_head = 2, n_embd = 64 }",
                        "{ pattern = \"a\", with = \"b\" }",
                    ],
                    _ => &[],
                };
                out.extend(samples.iter().map(|s| s.to_string()));
            }
        }
        defs["StageSchema"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variant| {
                let props = variant["properties"].as_object().unwrap();
                let kind = props["kind"]["const"].as_str().unwrap().to_owned();
                let keys = props
                    .iter()
                    .filter(|(k, _)| *k != "kind")
                    .map(|(k, p)| {
                        let mut values = Vec::new();
                        pool(p, defs, &mut values);
                        values.sort();
                        values.dedup();
                        (k.clone(), values)
                    })
                    .collect();
                (kind, keys)
            })
            .collect()
    })
}

/// A value for key number `i` of kind number `k`: usually plausible, sometimes anything.
fn stage_value(k: usize, i: usize) -> impl Strategy<Value = String> {
    let values = kinds()[k].1[i].1.clone();
    prop_oneof![
        6 => prop::sample::select(values),
        1 => value(),
    ]
}

/// A `[stages.NAME]` table of kind number `k`, its keys distinct, sometimes with a stray key.
fn stage(k: usize, name: String) -> impl Strategy<Value = String> {
    let n = kinds()[k].1.len();
    let kind = prop_oneof![
        10 => Just(format!("kind = \"{}\"\n", kinds()[k].0)),
        1 => value().prop_map(|v| format!("kind = {v}\n")),
        1 => Just(String::new()),
    ];
    let lines = prop::sample::subsequence((0..n).collect::<Vec<_>>(), 0..6.min(n)).prop_flat_map(
        move |idx| {
            idx.into_iter()
                .map(|i| {
                    stage_value(k, i).prop_map(move |v| format!("{} = {v}\n", kinds()[k].1[i].0))
                })
                .collect::<Vec<_>>()
        },
    );
    let stray = prop::option::weighted(
        0.1,
        (key(), value()).prop_map(|(k, v)| format!("{k} = {v}\n")),
    );
    (kind, lines, stray, any::<bool>()).prop_map(move |(kind, lines, stray, replace)| {
        let mut s = format!(
            "[stages.{name}]\n{kind}{}{}",
            lines.concat(),
            stray.unwrap_or_default()
        );
        if replace && k == 0 && !s.contains("\nreplace =") {
            s.push_str(&format!(
                "[[stages.{name}.replace]]\npattern = \"(a\"\nwith = \"\"\n"
            ));
        }
        s
    })
}

/// A pipeline-shaped file: tables of real keys, mostly plausible values, some hostile.
fn pipeline_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        3 => prop::sample::select(vec![
            "seed = 7", "seed = 0", "seed = -1", "workdir = \"out\"", "workdir = \"../up\"",
            "workdir = \"/tmp/abs\"", "workdir = \"\"", "name = \"\"",
        ])
        .prop_map(str::to_owned),
        1 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    let header = prop::option::weighted(0.3, line).prop_map(|line| {
        format!(
            "[pipeline]\nname = \"fuzz\"\n{}\n",
            line.unwrap_or_default()
        )
    });
    let names = ["a", "b", "train", "samples", "titles"];
    let odd = prop_oneof![
        prop::sample::select(vec![
            "\"..\"", "\".\"", "\"a/b\"", "\"\"", "\"ü\"", "\"a b\"", "\"-\""
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9_-]{6,8}",
    ];
    let pick = (0..kinds().len(), prop::option::weighted(0.15, odd));
    let stages = prop::collection::vec(pick, 0..5).prop_flat_map(move |picks| {
        picks
            .into_iter()
            .enumerate()
            // Mostly distinct names (a repeated table is a plain syntax error).
            .map(|(i, (k, name))| stage(k, name.unwrap_or_else(|| names[i].to_owned())))
            .collect::<Vec<_>>()
    });
    (header, stages).prop_map(|(h, stages)| format!("{h}\n{}", stages.join("\n")))
}

/// A corpus file with random edits (insert, delete or replace a few characters).
fn mutated_corpus() -> impl Strategy<Value = String> {
    let files = corpus();
    let n = files.len();
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut chars: Vec<char> = files[i].1.chars().collect();
            for (at, op, c) in edits {
                let at = at.index(chars.len() + 1);
                match op {
                    0 => chars.insert(at, c),
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ if at < chars.len() => chars[at] = c,
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect()
        })
}

fn set_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (stage_name(), key(), value()).prop_map(|(s, k, v)| format!("stages.{s}.{k}={v}")),
        1 => (key(), value()).prop_map(|(k, v)| format!("pipeline.{k}={v}")),
        1 => any::<String>(),
        1 => prop::sample::select(vec!["=", "a=", "=1", "stages..x=1", "stages=1", "stages.a=1", "pipeline=[]", ".=."])
            .prop_map(str::to_owned),
    ]
}

fn env_var() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            (stage_name(), key()).prop_map(|(s, k)| format!("GPTPIPE_STAGES__{s}__{k}")),
            key().prop_map(|k| format!("GPTPIPE_PIPELINE__{k}")),
            "GPTPIPE_[A-Z_]{0,12}",
        ],
        prop_oneof![value(), any::<String>()],
    )
}

#[test]
fn the_corpus_replays_without_panics() {
    let files = corpus();
    assert!(files.len() >= 10, "the corpus went missing");
    let mut ok = 0;
    for (name, text) in &files {
        let r = std::panic::catch_unwind(|| check(text, &[], &[]));
        let r = r.unwrap_or_else(|_| panic!("corpus file {name} panics the loader"));
        ok += r.is_ok() as usize;
        for sets in [
            &["stages.a.steps=0".to_owned()][..],
            &["pipeline.workdir=\"../x\"".to_owned()],
        ] {
            let _ = check(text, sets, &[]);
        }
    }
    // The corpus holds both valid pipelines and broken ones.
    assert!(ok > 0 && ok < files.len(), "{ok} of {} load", files.len());
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [100, 1_000, 10_000, 100_000] {
        let text = format!(
            "[pipeline]\nname = \"x\"\nseed = {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(check(&text, &[], &[]).is_err());
        let inline = format!(
            "[pipeline]\nname = \"x\"\nseed = {}1{}\n",
            "{a=".repeat(depth),
            "}".repeat(depth)
        );
        assert!(check(&inline, &[], &[]).is_err());
        let set = format!("stages.a.model={}{}", "[".repeat(depth), "]".repeat(depth));
        let _ = check(
            "[pipeline]\nname = \"x\"\n[stages.a]\nkind = \"generate\"\n",
            &[set],
            &[],
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_loads_or_fails_cleanly(text in any::<String>()) {
        let _ = check(&text, &[], &[]);
    }

    #[test]
    fn pipeline_shaped_text_loads_or_fails_cleanly(
        text in pipeline_text(),
        sets in prop::collection::vec(set_arg(), 0..2),
        env in prop::collection::vec(env_var(), 0..2),
    ) {
        let _ = check(&text, &sets, &env);
    }

    #[test]
    fn edited_corpus_files_load_or_fail_cleanly(
        text in mutated_corpus(),
        sets in prop::collection::vec(set_arg(), 0..2),
    ) {
        let _ = check(&text, &sets, &[]);
    }
}
