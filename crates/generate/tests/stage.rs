//! The generate stage end to end with a fake backend: files, formats, incremental reuse.

use crate::common::*;
use gptpipe_core::config::{
    Backend as Choice, GenerateParams, ModelRef, Origins, Pipeline, SampleFormat, StageParams,
};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::StageContext;
use gptpipe_generate::stage::run_stage;
use gptpipe_generate::{Backend, Backends};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn backends() -> Backends {
    Backends {
        tch: Some(Arc::new(|_, _| {
            Ok(Box::new(FakeBackend::new(64)) as Box<dyn Backend>)
        })),
        onnx: None,
    }
}

/// A model folder for the fake backend: it loads nothing, but the stage hashes the weights
/// file for the samples' provenance.
fn fake_model_folder() -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"fake weights").unwrap();
    dir.to_string_lossy().into_owned()
}

fn params(nsamples: usize, batch_size: usize, format: SampleFormat) -> GenerateParams {
    GenerateParams {
        model: ModelRef::from(fake_model_folder().as_str()),
        length: 10,
        temperature: 1.0,
        nsamples,
        batch_size,
        prefix: "ab".into(),
        truncate: "<e>".into(),
        format,
        output: if format == SampleFormat::Text {
            "samples.txt"
        } else {
            "samples.jsonl"
        }
        .into(),
        ..GenerateParams::default()
    }
}

fn run(
    p: GenerateParams,
    out: &Path,
    previous: Option<&Path>,
    inputs_hash: &str,
) -> anyhow::Result<()> {
    run_with(&backends(), p, out, previous, inputs_hash)
}

fn run_with(
    backends: &Backends,
    p: GenerateParams,
    out: &Path,
    previous: Option<&Path>,
    inputs_hash: &str,
) -> anyhow::Result<()> {
    let params = StageParams::Generate(p);
    let state = tempfile::tempdir()?;
    let pipeline_file = state.path().join("gptpipe.toml");
    std::fs::write(&pipeline_file, "[pipeline]\nname = \"t\"\n")?;
    let pipeline = Pipeline {
        path: pipeline_file,
        dir: out.to_path_buf(),
        name: "t".into(),
        workdir: out.to_path_buf(),
        seed: 42,
        stages: BTreeMap::new(),
        origins: Origins::default(),
        executor: Default::default(),
        resources: Default::default(),
    };
    let upstream = BTreeMap::new();
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "samples",
        params: &params,
        pipeline: &pipeline,
        out_dir: out,
        previous_output: previous,
        state_dir: state.path(),
        upstream: &upstream,
        inputs_hash,
        events: &NullSink,
        cancel: &cancel,
    };
    run_stage(&ctx, backends, &FakeCodec)
}

#[test]
fn text_output_follows_gpt2_simple_layout() {
    let dir = tempfile::tempdir().unwrap();
    run(params(5, 2, SampleFormat::Text), dir.path(), None, "h").unwrap();
    let text = std::fs::read_to_string(dir.path().join("samples.txt")).unwrap();
    let delim = format!("\n{}\n", "=".repeat(20));
    let parts: Vec<&str> = text.split(&delim).collect();
    assert_eq!(parts.len(), 6, "{text}");
    assert_eq!(parts[5], "");
    assert!(parts[..5]
        .iter()
        .all(|p| p.starts_with("ab") && !p.contains("<e>")));
}

/// gpt-2-simple writes no `sample_delim` when it makes one sample; an earlier output's
/// samples are re-ended when `nsamples` moves from or to 1, and still reused (a marker in
/// the earlier file survives).
#[test]
fn one_sample_has_no_delimiter_and_reused_samples_are_re_ended() {
    let read = |d: &Path| std::fs::read_to_string(d.join("samples.txt")).unwrap();
    let one = tempfile::tempdir().unwrap();
    run(params(1, 1, SampleFormat::Text), one.path(), None, "h").unwrap();
    let single = read(one.path());
    assert!(
        single.ends_with('\n') && !single.contains("===="),
        "{single:?}"
    );
    let marked = format!("Z{}", &single[1..]);
    std::fs::write(one.path().join("samples.txt"), &marked).unwrap();

    let three = tempfile::tempdir().unwrap();
    run(
        params(3, 1, SampleFormat::Text),
        three.path(),
        Some(one.path()),
        "h",
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    run(params(3, 2, SampleFormat::Text), scratch.path(), None, "h").unwrap();
    let fresh = read(scratch.path());
    assert_eq!(read(three.path()), format!("Z{}", &fresh[1..]));
    assert_eq!(fresh.matches(&format!("\n{}\n", "=".repeat(20))).count(), 3);

    let back = tempfile::tempdir().unwrap();
    run(
        params(1, 1, SampleFormat::Text),
        back.path(),
        Some(three.path()),
        "h",
    )
    .unwrap();
    assert_eq!(read(back.path()), marked);
}

#[test]
fn jsonl_output_has_one_object_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    run(params(4, 3, SampleFormat::Jsonl), dir.path(), None, "h").unwrap();
    let text = std::fs::read_to_string(dir.path().join("samples.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["seed"], 42);
        assert!(r["text"].as_str().unwrap().starts_with("ab"));
        assert!(r["tokens"].as_array().unwrap().len() <= 10);
        assert!(r["truncated"].is_boolean());
    }
}

#[test]
fn raising_nsamples_keeps_earlier_samples_and_generates_only_new_ones() {
    for format in [SampleFormat::Text, SampleFormat::Jsonl] {
        let name = params(1, 1, format).output;
        let first = tempfile::tempdir().unwrap();
        run(params(3, 2, format), first.path(), None, "h").unwrap();
        let old = std::fs::read(first.path().join(&name)).unwrap();

        // Tamper with the kept file: if the stage regenerated, the marker would vanish.
        let mut marked = old.clone();
        marked[0] = b'Z';
        std::fs::write(first.path().join(&name), &marked).unwrap();

        let second = tempfile::tempdir().unwrap();
        run(params(8, 3, format), second.path(), Some(first.path()), "h").unwrap();
        let new = std::fs::read(second.path().join(&name)).unwrap();
        assert!(
            new.starts_with(&marked),
            "earlier samples were not kept byte for byte"
        );

        // The same 8 samples from scratch, at another batch size, are the same apart from
        // the marker.
        let scratch = tempfile::tempdir().unwrap();
        run(params(8, 5, format), scratch.path(), None, "h").unwrap();
        let fresh = std::fs::read(scratch.path().join(&name)).unwrap();
        assert_eq!(fresh[1..], new[1..]);
        assert!(fresh.starts_with(&old));
    }
}

#[test]
fn lowering_nsamples_reuses_without_opening_the_model() {
    let first = tempfile::tempdir().unwrap();
    run(params(6, 2, SampleFormat::Text), first.path(), None, "h").unwrap();
    let second = tempfile::tempdir().unwrap();
    // No backend at all: the stage must not need one.
    let none = Backends::default();
    run_with(
        &none,
        params(4, 4, SampleFormat::Text),
        second.path(),
        Some(first.path()),
        "h",
    )
    .unwrap();
    let a = std::fs::read_to_string(first.path().join("samples.txt")).unwrap();
    let b = std::fs::read_to_string(second.path().join("samples.txt")).unwrap();
    assert!(a.starts_with(&b) && b.len() < a.len());
}

#[test]
fn a_changed_recipe_does_not_reuse_samples() {
    let first = tempfile::tempdir().unwrap();
    run(params(3, 1, SampleFormat::Text), first.path(), None, "h").unwrap();
    let mut marked = std::fs::read(first.path().join("samples.txt")).unwrap();
    marked[0] = b'Z';
    std::fs::write(first.path().join("samples.txt"), &marked).unwrap();
    // Another model (inputs hash), or another temperature: everything is regenerated.
    let other_model = tempfile::tempdir().unwrap();
    run(
        params(3, 1, SampleFormat::Text),
        other_model.path(),
        Some(first.path()),
        "other",
    )
    .unwrap();
    assert_ne!(
        std::fs::read(other_model.path().join("samples.txt")).unwrap()[0],
        b'Z'
    );
    let hot = tempfile::tempdir().unwrap();
    let p = GenerateParams {
        temperature: 2.0,
        ..params(3, 1, SampleFormat::Text)
    };
    run(p, hot.path(), Some(first.path()), "h").unwrap();
    assert_ne!(
        std::fs::read(hot.path().join("samples.txt")).unwrap()[0],
        b'Z'
    );
}

#[test]
fn a_missing_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = GenerateParams {
        backend: Choice::Onnx,
        ..params(1, 1, SampleFormat::Text)
    };
    let err = run(p, dir.path(), None, "h").unwrap_err();
    assert!(
        err.to_string()
            .contains("ONNX Runtime backend is not in this build"),
        "{err}"
    );
}

#[test]
fn a_prefix_too_long_for_an_inline_model_fails_before_loading_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = GenerateParams {
        model: ModelRef::Inline(gptpipe_core::config::InlineModel {
            n_layer: 1,
            n_head: 1,
            n_embd: 8,
            n_ctx: 4,
            vocab_size: 50257,
            dropout: 0.0,
        }),
        prefix: "abcdefgh".into(),
        ..params(1, 1, SampleFormat::Text)
    };
    // No backend at all: the error must come before one is needed.
    let err = run_with(&Backends::default(), p, dir.path(), None, "h").unwrap_err();
    assert!(
        err.to_string()
            .contains("longer than the model's context of 4"),
        "{err}"
    );
}
