//! Issue 14, unique samples: the training rows a generate stage compares samples with are
//! the prepare stage's rows as it read them (a quoted CSV field with a newline included),
//! found through the finetune stage its model comes from, and the index over them is
//! cached in the workdir.

use gptpipe_core::config::{load, LoadOptions, StageKind};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::{StageContext, Upstream};
use gptpipe_generate::novelty;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

#[test]
fn training_rows_are_the_prepare_stages_rows_unwrapped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("titles.csv"),
        "title\nWhat is your favourite food?\n\"Two\nlines, and a comma\"\n  spaced   out  \n",
    )
    .unwrap();
    std::fs::write(
        d.join("p.toml"),
        r#"[pipeline]
name = "n"
[stages.prep]
kind = "prepare"
inputs = ["titles.csv"]
[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 1, n_head = 1, n_embd = 8 }
[stages.gen]
kind = "generate"
model = "@train"
drop_copies = true
"#,
    )
    .unwrap();
    let pipeline = load(&d.join("p.toml"), &LoadOptions::default()).unwrap();
    let cancel = AtomicBool::new(false);
    let no_upstream = BTreeMap::new();
    let state = tempfile::tempdir().unwrap();
    let context = |name: &'static str, out: &'static str, upstream| StageContext {
        name,
        params: &pipeline.stages[name],
        pipeline: &pipeline,
        out_dir: Box::leak(d.join(out).into_boxed_path()),
        previous_output: None,
        state_dir: state.path(),
        upstream,
        inputs_hash: "",
        events: &NullSink,
        cancel: &cancel,
    };
    std::fs::create_dir_all(d.join("prep-out")).unwrap();
    gptpipe_text::prepare::run(&context("prep", "prep-out", &no_upstream)).unwrap();

    let upstream = BTreeMap::from([(
        "prep".to_owned(),
        Upstream {
            kind: StageKind::Prepare,
            dir: d.join("prep-out"),
        },
    )]);
    let ctx = context("gen", "gen-out", &upstream);
    let gptpipe_core::config::StageParams::Generate(p) = ctx.params else {
        unreachable!()
    };
    let rows = novelty::rows::training_rows(&ctx, p).unwrap().unwrap();
    assert_eq!(
        rows,
        [
            "What is your favourite food?",
            "Two\nlines, and a comma",
            "  spaced   out  "
        ]
    );
    let codec = gptpipe_generate::codec::gpt2().unwrap();
    let index = novelty::for_stage(&ctx, p, codec.as_ref())
        .unwrap()
        .unwrap();
    let cached: Vec<_> = std::fs::read_dir(novelty::store::dir_in(&pipeline.workdir))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);
    let n = index
        .judge("Two lines, and a comma", codec.as_ref())
        .unwrap();
    assert!(
        n.copied && n.overlap == 1.0 && n.nearest == Some(1),
        "{n:?}"
    );
    let n = index.judge("spaced out", codec.as_ref()).unwrap();
    assert_eq!(n.nearest, Some(2));
    assert!(n.copied);
}
