//! The export stage end to end, with transformers standing in for libtorch as the
//! reference: it publishes a folder that is enough to generate, records the figure in
//! export.json, and fails when ONNX Runtime and the reference disagree.

use crate::common::{reference_logits, TinyModel};
use gptpipe_core::config::{
    ExportParams, ExportPrecision, ModelRef, Pipeline, StageKind, StageParams,
};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::{Registry, StageContext, Upstream};
use gptpipe_onnx::ReferenceLogits;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

/// One tiny model for the whole file, with transformers' logits memoised.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| TinyModel::default().cached())
}

fn transformers_reference() -> ReferenceLogits {
    type Memo = BTreeMap<(PathBuf, Vec<i64>), Vec<f32>>;
    static MEMO: Mutex<Memo> = Mutex::new(BTreeMap::new());
    Arc::new(|dir: &Path, ids: &[i64]| {
        let key = (dir.to_path_buf(), ids.to_vec());
        if let Some(v) = MEMO.lock().unwrap().get(&key) {
            return Ok(v.clone());
        }
        let rows = reference_logits(dir, &[ids.to_vec()]);
        let flat: Vec<f32> = rows[0].iter().flatten().copied().collect();
        MEMO.lock().unwrap().insert(key, flat.clone());
        Ok(flat)
    })
}

fn run_export(
    registry: &Registry,
    params: ExportParams,
    out: &Path,
) -> anyhow::Result<serde_json::Value> {
    let params = StageParams::Export(params);
    let pipeline = Pipeline {
        path: out.join("gptpipe.toml"),
        dir: out.to_path_buf(),
        name: "t".into(),
        workdir: out.to_path_buf(),
        seed: 42,
        stages: BTreeMap::new(),
        origins: Default::default(),
        executor: Default::default(),
        resources: Default::default(),
    };
    let mut upstream = BTreeMap::new();
    upstream.insert(
        "train".to_owned(),
        Upstream {
            kind: StageKind::Finetune,
            dir: model_dir().to_path_buf(),
        },
    );
    let state = tempfile::tempdir()?;
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "onnx",
        params: &params,
        pipeline: &pipeline,
        out_dir: out,
        previous_output: None,
        state_dir: state.path(),
        upstream: &upstream,
        inputs_hash: "h",
        events: &NullSink,
        cancel: &cancel,
    };
    let result = registry.get(StageKind::Export)?(&ctx);
    let report = std::fs::read(out.join("export.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    result.map(|()| report.expect("export.json"))
}

fn registry(reference: ReferenceLogits) -> Registry {
    let mut r = Registry::new();
    gptpipe_onnx::register_with_reference(&mut r, gptpipe_onnx::Runtime::new(), reference);
    r
}

fn params(precision: ExportPrecision) -> ExportParams {
    ExportParams {
        model: ModelRef::from("@train"),
        precision,
        ..ExportParams::default()
    }
}

#[test]
fn fp32_export_is_validated_and_self_contained() {
    let out = tempfile::tempdir().unwrap();
    let report = run_export(
        &registry(transformers_reference()),
        params(ExportPrecision::Fp32),
        out.path(),
    )
    .unwrap();
    let diff = report["max_abs_diff"].as_f64().unwrap();
    assert!(diff <= 1e-4 && diff > 0.0, "{report}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["precision"], "fp32");
    assert_eq!(report["opset"], 17);
    assert_eq!(report["external_data"], false);
    let size = std::fs::metadata(out.path().join("model.onnx"))
        .unwrap()
        .len();
    assert_eq!(report["files"]["model.onnx"].as_u64(), Some(size));
    // No timings: two exports of the same weights write the same files.
    assert!(report.get("timings_s").is_none(), "{report}");
    // The folder alone is enough to generate: graph, config and tokenizer.
    for f in [
        "model.onnx",
        "config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
}

#[test]
fn fp16_export_records_its_tolerance() {
    let out = tempfile::tempdir().unwrap();
    let report = run_export(
        &registry(transformers_reference()),
        params(ExportPrecision::Fp16),
        out.path(),
    )
    .unwrap();
    let diff = report["max_abs_diff"].as_f64().unwrap();
    let tol = report["tolerance"].as_f64().unwrap();
    assert_eq!(report["precision"], "fp16");
    assert!(diff > 1e-4 && diff <= tol, "{report}");
}

#[test]
fn disagreement_with_the_reference_fails_the_stage() {
    let honest = transformers_reference();
    // A reference off by 1e-3 on one logit: over the fp32 tolerance.
    let skewed: ReferenceLogits = Arc::new(move |dir: &Path, ids: &[i64]| {
        let mut v = honest(dir, ids)?;
        v[5] += 1e-3;
        Ok(v)
    });
    let out = tempfile::tempdir().unwrap();
    let err = run_export(&registry(skewed), params(ExportPrecision::Fp32), out.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("differ from the reference"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("export.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], false);
}

#[test]
fn without_a_reference_export_is_unavailable_with_a_reason() {
    let mut r = Registry::new();
    gptpipe_onnx::register(&mut r);
    let err = r.get(StageKind::Export).err().unwrap().to_string();
    assert!(err.contains("without libtorch"), "{err}");
}

#[test]
fn an_inline_model_is_refused_with_a_hint() {
    let out = tempfile::tempdir().unwrap();
    let p = ExportParams {
        model: ModelRef::Inline(gptpipe_core::config::InlineModel {
            n_layer: 1,
            n_head: 1,
            n_embd: 8,
            n_ctx: 8,
            vocab_size: 10,
            dropout: 0.0,
        }),
        ..ExportParams::default()
    };
    let reference: ReferenceLogits = Arc::new(|_: &Path, _: &[i64]| unreachable!());
    let err = run_export(&registry(reference), p, out.path()).unwrap_err();
    assert!(err.to_string().contains("finetune it first"), "{err}");
}
