//! The exported file checked by implementations we did not write: `onnx.checker` (full
//! check) accepts it, and Python onnxruntime running it reproduces transformers' logits,
//! with an empty past and through past/present.

use crate::common::{run_py, TinyModel};
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::graph::Float;
use gptpipe_onnx::FP16_REL_TOLERANCE;
use std::path::Path;

struct Checked {
    no_past: f64,
    with_past: f64,
    scale: f64,
    json: serde_json::Value,
}

/// Exports `hf` once per option set and runs the oracle on all exports in one Python
/// process (its start-up dominates).
fn export_and_check(hf: &Path, all: &[ExportOptions]) -> Vec<Checked> {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (i, opts) in all.iter().enumerate() {
        let onnx = tmp.path().join(i.to_string());
        std::fs::create_dir_all(&onnx).unwrap();
        let exported = export_folder(hf, &onnx, opts).unwrap();
        assert_eq!(
            exported.written.external_data_bytes.is_some(),
            onnx.join("model.onnx.data").exists()
        );
        dirs.push(onnx.to_str().unwrap().to_owned());
    }
    let mut args = vec![hf.to_str().unwrap()];
    args.extend(dirs.iter().map(String::as_str));
    let out = run_py("oracle.py", &args);
    let results: Vec<Checked> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["checker"], true);
            assert_eq!(json["logits_dtype"], "float32");
            Checked {
                no_past: json["no_past"].as_f64().unwrap(),
                with_past: json["with_past"].as_f64().unwrap(),
                scale: json["ref_scale"].as_f64().unwrap(),
                json,
            }
        })
        .collect();
    assert_eq!(results.len(), all.len(), "{out}");
    results
}

#[test]
fn fp32_external_data_and_fp16_match_transformers() {
    let hf = TinyModel::default().cached();
    let checked = export_and_check(
        &hf,
        &[
            ExportOptions::default(),
            ExportOptions {
                external_threshold: 0,
                ..ExportOptions::default()
            },
            ExportOptions {
                precision: Float::F16,
                ..ExportOptions::default()
            },
        ],
    );
    let [fp32, external, fp16] = &checked[..] else {
        unreachable!()
    };
    for c in [fp32, external] {
        // last_logits is the last position of logits (the same head, one row).
        assert!(
            c.json["last_vs_full"].as_f64().unwrap() <= 1e-5,
            "{}",
            c.json
        );
        assert!(c.no_past <= 1e-4, "{}", c.json);
        assert!(c.with_past <= 1e-4, "{}", c.json);
        // 7 prompt tokens + 3 at once + 2 single steps.
        assert_eq!(c.json["present_len"], 12);
        // Rows of different lengths, left-padded, each equal to itself alone.
        assert_eq!(c.json["has_mask"], true);
        // (null when some logits were not finite)
        assert!(
            c.json["padded"].as_f64().is_some_and(|p| p <= 1e-4),
            "{}",
            c.json
        );
    }
    let tol = FP16_REL_TOLERANCE * fp16.scale.max(1.0);
    assert!(
        fp16.no_past <= tol
            && fp16.with_past <= tol
            && fp16.json["padded"].as_f64().is_some_and(|p| p <= tol),
        "tol {tol}: {}",
        fp16.json
    );
    // Half precision really is in use: an fp16 file that matched to fp32 accuracy would
    // mean the weights were not converted.
    assert!(fp16.no_past > 1e-5, "{}", fp16.json);
}

#[test]
fn untied_head_and_newer_opset_match_transformers() {
    let hf = TinyModel {
        seed: 7,
        n_layer: 3,
        n_head: 2,
        n_embd: 32,
        untied: true,
        ..TinyModel::default()
    }
    .cached();
    let opts = ExportOptions {
        opset: 20,
        ..ExportOptions::default()
    };
    let c = &export_and_check(&hf, &[opts])[0];
    assert!(c.no_past <= 1e-4 && c.with_past <= 1e-4, "{}", c.json);
    assert!(
        c.json["padded"].as_f64().is_some_and(|p| p <= 1e-4),
        "{}",
        c.json
    );
    assert!(
        c.json["last_vs_full"].as_f64().unwrap() <= 1e-5,
        "{}",
        c.json
    );
}
