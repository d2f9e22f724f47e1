//! Our ONNX Runtime session (Rust, `ort`) on an exported model reproduces transformers'
//! logits: a prompt with an empty past, steps through the KV cache, and rows dropped from
//! the cache mid-way.

use crate::common::{reference_logits, TinyModel};
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::graph::Float;
use gptpipe_onnx::runtime::{Runtime, SessionOptions};
use std::sync::OnceLock;

fn check(precision: Float, external: bool, tol: f32) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = TinyModel::default().cached();
    let onnx = tmp.path().join("onnx");
    std::fs::create_dir_all(&onnx).unwrap();
    let opts = ExportOptions {
        precision,
        external_threshold: if external { 0 } else { u64::MAX },
        ..ExportOptions::default()
    };
    export_folder(&hf, &onnx, &opts).unwrap();
    assert_eq!(onnx.join("model.onnx.data").is_file(), external);

    let rows: Vec<Vec<i64>> = vec![
        vec![5, 17, 900, 3, 44, 12, 7, 8, 9],
        vec![999, 0, 1, 2, 3, 4, 5, 6, 7],
        vec![300, 301, 302, 303, 304, 305, 306, 307, 308],
    ];
    // Both tests share one Python run.
    static REFERENCE: OnceLock<Vec<Vec<Vec<f32>>>> = OnceLock::new();
    let reference = REFERENCE.get_or_init(|| reference_logits(&hf, &rows));
    let mut model = Runtime::new()
        .session(&onnx, &SessionOptions::default())
        .unwrap();
    assert_eq!(model.float, precision);

    // Prompt of 6 tokens, all positions compared.
    let prompt: Vec<i64> = rows.iter().flat_map(|r| r[..6].to_vec()).collect();
    let out = model
        .run(&prompt, 3, &model.empty_cache(3).unwrap())
        .unwrap();
    assert_eq!((out.batch, out.seq, out.vocab), (3, 6, 1000));
    for (b, reference) in reference.iter().enumerate() {
        for (p, want) in reference.iter().enumerate().take(6) {
            let got = &out.logits[(b * 6 + p) * 1000..(b * 6 + p + 1) * 1000];
            let d = gptpipe_testkit::max_abs_diff(got, want);
            assert!(d <= tol, "row {b} pos {p}: {d}");
        }
    }
    // Only the last position (what generation fetches): the same figures.
    let last = model
        .run_last(&prompt, 3, &model.empty_cache(3).unwrap())
        .unwrap();
    assert_eq!((last.seq, last.cache.len), (1, 6));
    for (b, reference) in reference.iter().enumerate() {
        let d =
            gptpipe_testkit::max_abs_diff(&last.logits[b * 1000..(b + 1) * 1000], &reference[5]);
        assert!(d <= tol, "row {b} last position: {d}");
    }
    // One step through the cache for all rows.
    let step: Vec<i64> = rows.iter().map(|r| r[6]).collect();
    let out = model.run(&step, 3, &out.cache).unwrap();
    assert_eq!(out.cache.len, 7);
    let last = out.last_logits();
    for (b, reference) in reference.iter().enumerate() {
        let d = gptpipe_testkit::max_abs_diff(&last[b * 1000..(b + 1) * 1000], &reference[6]);
        assert!(d <= tol, "row {b} step: {d}");
    }
    // Drop row 1; rows 0 and 2 continue with their own past.
    let cache = model.retain(&out.cache, &[0, 2]).unwrap();
    assert_eq!((cache.batch, cache.len), (2, 7));
    let out = model.run(&[rows[0][7], rows[2][7]], 2, &cache).unwrap();
    let last = out.last_logits();
    for (i, b) in [0, 2].into_iter().enumerate() {
        let d = gptpipe_testkit::max_abs_diff(&last[i * 1000..(i + 1) * 1000], &reference[b][7]);
        assert!(d <= tol, "row {b} after retain: {d}");
    }
}

#[test]
fn fp32_session_matches_transformers() {
    check(Float::F32, false, 1e-4);
}

#[test]
fn fp16_session_with_external_data_matches_transformers_within_tolerance() {
    // The reference logits of this model stay below 3 in absolute value.
    check(
        Float::F16,
        true,
        (gptpipe_onnx::FP16_REL_TOLERANCE * 3.0) as f32,
    );
}

/// ort allows one environment per process: runtimes of the library already loaded share it,
/// and one that names another library says which one is loaded.
#[test]
fn runtimes_of_the_loaded_library_share_it_and_another_library_is_refused() {
    let first = Runtime::new();
    let library = first.library().unwrap().to_path_buf();
    let again = Runtime::with_library(&library);
    assert_eq!(again.library().unwrap(), library);
    again.environment().unwrap();
    let other = Runtime::with_library("/nowhere/libonnxruntime.so");
    let err = other.environment().err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "cannot load ONNX Runtime from /nowhere/libonnxruntime.so: this process has \
             loaded it from {}",
            library.display()
        )
    );
    // The error stays: a failed load is not retried.
    assert_eq!(other.library().err().unwrap().to_string(), err);
}
