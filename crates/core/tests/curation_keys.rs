//! Issue 14, unique samples: the generate stage's curation keys. Their config errors point
//! at the key; `novelty_against` defaults to the model's training dataset only when a key
//! needs it; and a generate stage that does not use them keeps its cache key (its params
//! JSON and its input files), while one that does gets the training rows as a read.

use gptpipe_core::config::{NoveltyAgainst, Pipeline, StageParams};
use gptpipe_core::runner::KeyMaterial;
use std::collections::BTreeMap;

const UPSTREAM: &str = r#"
[stages.prep]
kind = "prepare"
inputs = ["a.csv"]
[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 1, n_head = 1, n_embd = 8 }
[stages.onnx]
kind = "export"
model = "@train"
[stages.filetrain]
kind = "finetune"
dataset = "corpus.txt"
model = { n_layer = 1, n_head = 1, n_embd = 8 }
"#;

fn load_in(dir: &std::path::Path, gen: &str) -> Result<Pipeline, String> {
    std::fs::write(dir.join("a.csv"), "text\nhello\n").unwrap();
    std::fs::write(dir.join("corpus.txt"), "one\ntwo\n").unwrap();
    std::fs::write(dir.join("rows.txt"), "a row\n").unwrap();
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        format!("[pipeline]\nname = \"t\"\n{UPSTREAM}[stages.gen]\nkind = \"generate\"\n{gen}"),
    )
    .unwrap();
    crate::load_rendered(&path)
}

fn gen_params(p: &Pipeline) -> &gptpipe_core::config::GenerateParams {
    match &p.stages["gen"] {
        StageParams::Generate(g) => g,
        _ => unreachable!(),
    }
}

fn key_of(p: &Pipeline) -> (Vec<String>, String) {
    let params = &p.stages["gen"];
    let files = gptpipe_core::inputs::stage_inputs(p, params).unwrap();
    let material = KeyMaterial {
        kind: params.kind().to_string(),
        version: gptpipe_core::stage::versions::of(params.kind()),
        params: params.keyed_json(),
        inputs: files
            .iter()
            .map(|(k, f)| (k.clone(), gptpipe_core::cache::hash::hash_file(f).unwrap()))
            .collect::<BTreeMap<_, _>>(),
        upstream: BTreeMap::new(),
    };
    (files.keys().cloned().collect(), material.key())
}

#[test]
fn curation_values_are_config_errors_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for (gen, line, message) in [
        (
            "model = \"@train\"\nmax_overlap = 1.5\n",
            2,
            "max_overlap must be in (0, 1]",
        ),
        (
            "model = \"@train\"\nmax_overlap = 0.0\n",
            2,
            "max_overlap must be in (0, 1]",
        ),
        (
            "model = \"@train\"\ndedupe = true\nmax_attempts = 0\n",
            3,
            "max_attempts must be at least 1",
        ),
        (
            "model = \"@train\"\nmax_attempts = 5\n",
            2,
            "max_attempts limits the samples drawn when a rule drops some",
        ),
        (
            "model = \"@train\"\ndrop_unfinished = true\n",
            2,
            "drop_unfinished drops samples that never reached the stop string, but `truncate` is not set",
        ),
        // The model comes from no finetune of this pipeline: the rows are unknown.
        (
            "model = \"gpt2\"\ndrop_copies = true\n",
            2,
            "drop_copies compares samples with the training rows, but they are unknown",
        ),
        (
            "model = \"gpt2\"\nmax_overlap = 0.5\n",
            2,
            "max_overlap compares samples with the training rows, but they are unknown",
        ),
        (
            "model = \"@train\"\nnovelty_against = []\n",
            2,
            "novelty_against must name a prepare stage",
        ),
        (
            "model = \"@train\"\nnovelty_against = \"@train\"\n",
            2,
            "`novelty_against` refers to `@train`, a finetune stage",
        ),
    ] {
        let e = load_in(dir.path(), gen).unwrap_err();
        assert!(e.contains(message), "{gen}: {e}");
        // The stage's table starts on line 19 of p.toml; the key is `line` lines below.
        assert!(e.contains(&format!("p.toml:{}:", 19 + line)), "{gen}: {e}");
    }
}

#[test]
fn novelty_against_defaults_to_the_models_training_dataset_only_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let against = |gen: &str| {
        let p = load_in(dir.path(), gen).unwrap();
        let refs = gen_params(&p).novelty_against.clone();
        let reads: Vec<(&'static str, String)> = p.stages["gen"].references();
        (
            refs.map(|n| n.refs().iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            reads,
        )
    };
    let (refs, reads) = against("model = \"@train\"\ndrop_copies = true\n");
    assert_eq!(refs, Some(vec!["@prep".to_owned()]));
    assert!(
        reads.contains(&("novelty_against", "prep".to_owned())),
        "{reads:?}"
    );
    // Through an export stage, and from a finetune whose dataset is a file.
    let (refs, _) = against("model = \"@onnx\"\nmax_overlap = 0.5\n");
    assert_eq!(refs, Some(vec!["@prep".to_owned()]));
    let (refs, _) = against("model = \"@filetrain\"\ndrop_copies = true\n");
    assert_eq!(refs, Some(vec!["corpus.txt".to_owned()]));
    // Written, it is kept as written; rules that need no rows add none.
    let (refs, _) = against("model = \"@train\"\nnovelty_against = \"rows.txt\"\n");
    assert_eq!(refs, Some(vec!["rows.txt".to_owned()]));
    let (refs, reads) = against("model = \"@train\"\ndedupe = true\n");
    assert_eq!(refs, None);
    assert_eq!(reads, [("model", "train".to_owned())]);
    let p = load_in(
        dir.path(),
        "model = \"@train\"\nnovelty_against = [\"@prep\", \"rows.txt\"]\n",
    )
    .unwrap();
    assert!(
        matches!(&gen_params(&p).novelty_against, Some(NoveltyAgainst::Many(v)) if v.len() == 2)
    );
}

#[test]
fn a_generate_stage_without_curation_keys_keeps_its_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let plain = load_in(dir.path(), "model = \"@train\"\nprefix = \"Hi\"\n").unwrap();
    let json = plain.stages["gen"].keyed_json();
    for key in [
        "novelty_against",
        "drop_copies",
        "max_overlap",
        "dedupe",
        "drop_unfinished",
        "max_attempts",
    ] {
        assert!(json.get(key).is_none(), "{key} is in {json}");
    }
    // The key pinned by stage_keys.rs for this same stage before issue 14 (re-pinned once
    // for generate's version 2, issue 15: no sample_delim after a lone sample).
    let (files, key) = key_of(&plain);
    assert!(files.is_empty(), "{files:?}");
    assert_eq!(
        key, "538ce570bfbedfc2521935464aa7b84eb3018ca9492079f59bbba01411f522fe",
        "the key stage_keys.rs pins for this stage (model @train, prefix Hi) changed"
    );
    // Defaults written out change nothing.
    let written = load_in(
        dir.path(),
        "model = \"@train\"\nprefix = \"Hi\"\ndrop_copies = false\ndedupe = false\n\
         drop_unfinished = false\n",
    )
    .unwrap();
    assert_eq!(key_of(&written), (files, key.clone()));
    // A rule changes the key; rows from files are inputs of the key.
    let dedupe = load_in(
        dir.path(),
        "model = \"@train\"\nprefix = \"Hi\"\ndedupe = true\n",
    )
    .unwrap();
    assert_ne!(key_of(&dedupe).1, key);
    let rows = load_in(
        dir.path(),
        "model = \"@train\"\nprefix = \"Hi\"\nnovelty_against = \"rows.txt\"\n",
    )
    .unwrap();
    let (files, _) = key_of(&rows);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("rows.txt"), "{files:?}");
}
