//! `kind = "export"`: the model as ONNX, validated by ONNX Runtime against reference
//! logits (libtorch's, handed in by the binary) before it is published.

use crate::export::{export_folder, ExportOptions};
use crate::graph::Float;
use crate::runtime::{OnnxGpt2, Runtime, SessionOptions};
use crate::{FP16_REL_TOLERANCE, FP32_TOLERANCE};
use anyhow::{bail, ensure, Context, Result};
use gptpipe_core::config::{ExportFormat, ExportParams, ExportPrecision, StageKind, StageParams};
use gptpipe_core::stage::{ModelSource, StageContext};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Version of this stage's implementation: part of its cache key.
pub const VERSION: u32 = gptpipe_core::stage::versions::EXPORT;

/// Reference logits of one token row, `[seq * vocab]` row-major, from the Hugging Face
/// model folder given (the binary wires libtorch's GPT-2 here).
pub type ReferenceLogits = Arc<dyn Fn(&Path, &[i64]) -> Result<Vec<f32>> + Send + Sync>;

/// Tokens of the validation probe (fewer for a shorter context): a whole prompt, then a
/// prefix of about half of it continued through the KV cache (a chunk of up to 4 tokens,
/// then single steps).
const PROBE_LEN: usize = 16;
const PROBE_CHUNK: usize = 4;

/// The Hugging Face folder a model reference points at.
pub fn source_folder(source: &ModelSource) -> Result<PathBuf> {
    match source {
        ModelSource::Folder(dir) => Ok(dir.clone()),
        ModelSource::Stage { name, kind, dir } => {
            if *kind == StageKind::Export {
                bail!("model \"@{name}\" is already an ONNX export; export a finetune stage or a model folder");
            }
            Ok(dir.clone())
        }
        ModelSource::Hub(id) => gptpipe_hf::hub_folder(id),
        ModelSource::Inline(_) => bail!(
            "an inline model has no weights to export: finetune it first and export \
             \"@finetune-stage\""
        ),
    }
}

/// Runs the export stage, validating on `runtime`.
pub fn run_stage(ctx: &StageContext, runtime: &Runtime, reference: &ReferenceLogits) -> Result<()> {
    let StageParams::Export(params) = ctx.params else {
        bail!("stage {} is not an export stage", ctx.name);
    };
    let ExportParams {
        model,
        format,
        opset,
        precision,
    } = params;
    let ExportFormat::Onnx = format;
    let src = source_folder(&ctx.resolve_model(model))?;
    let float = match precision {
        ExportPrecision::Fp32 => Float::F32,
        ExportPrecision::Fp16 => Float::F16,
    };
    let opts = ExportOptions {
        opset: *opset,
        precision: float,
        ..ExportOptions::default()
    };
    ctx.progress(0, 2, json!({"phase": "build"}));
    let exported = export_folder(&src, ctx.out_dir, &opts)
        .with_context(|| format!("exporting {}", src.display()))?;
    ctx.check_cancelled()?;

    ctx.progress(1, 2, json!({"phase": "validate"}));
    let t = Instant::now();
    let mut session = runtime.session(ctx.out_dir, &SessionOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let v = validate(&mut session, &src, reference)?;
    let validate_s = t.elapsed().as_secs_f64();
    let (tolerance, rule) = match float {
        Float::F32 => (FP32_TOLERANCE, "max_abs_diff <= 1e-4".to_owned()),
        Float::F16 => (
            FP16_REL_TOLERANCE * v.reference_max.max(1.0),
            format!("max_abs_diff <= {FP16_REL_TOLERANCE} * max(1, max |reference logit|)"),
        ),
    };
    let passed = v.max_abs_diff() <= tolerance;

    let size = |name: &str| {
        std::fs::metadata(ctx.out_dir.join(name))
            .map(|m| m.len())
            .ok()
    };
    let report = json!({
        "format": "onnx",
        "opset": opset,
        "precision": match float { Float::F32 => "fp32", Float::F16 => "fp16" },
        "max_abs_diff": v.max_abs_diff(),
        "max_abs_diff_no_past": v.no_past,
        "max_abs_diff_with_past": v.with_past,
        "tolerance": tolerance,
        "tolerance_rule": rule,
        "reference_max_abs_logit": v.reference_max,
        "probe_tokens": probe_ids(exported.config.vocab_size, exported.config.n_positions).len(),
        "passed": passed,
        // The model as the pipeline names it ("@train", a hub id, a folder as written), not
        // where it lies on this machine: the report must not depend on the host.
        "source": model.as_written().map_or_else(|| "inline".to_owned(), |m| m.into_owned()),
        "model": {
            "n_layer": exported.config.n_layer,
            "n_head": exported.config.n_head,
            "n_embd": exported.config.n_embd,
            "n_positions": exported.config.n_positions,
            "vocab_size": exported.config.vocab_size,
        },
        "files": {
            "model.onnx": size(crate::write::MODEL_FILE),
            "model.onnx.data": size("model.onnx.data"),
        },
        "external_data": exported.written.external_data_bytes.is_some(),
    });
    // Timings go to the log, not into export.json: the output must not differ between two
    // exports of the same weights.
    ctx.log(format!(
        "export took {:.2} s to build, {:.2} s to write, {:.2} s to load and {:.2} s to validate",
        exported.build_s, exported.write_s, load_s, validate_s
    ));
    write_json_atomic(&ctx.out_dir.join("export.json"), &report)?;
    ctx.progress(2, 2, json!({"max_abs_diff": v.max_abs_diff()}));
    ensure!(
        passed,
        "ONNX Runtime's logits differ from the reference by {:.3e} (no past {:.3e}, with past \
         {:.3e}), over the {} tolerance {:.1e}",
        v.max_abs_diff(),
        v.no_past,
        v.with_past,
        match float {
            Float::F32 => "fp32",
            Float::F16 => "fp16",
        },
        tolerance
    );
    ctx.log(format!(
        "ONNX Runtime matches the reference: max abs diff {:.2e}",
        v.max_abs_diff()
    ));
    Ok(())
}

/// Maximum differences between ONNX Runtime and the reference on the probe.
#[derive(Debug, Clone, Copy)]
pub struct Validation {
    pub no_past: f64,
    pub with_past: f64,
    pub reference_max: f64,
}

impl Validation {
    pub fn max_abs_diff(&self) -> f64 {
        self.no_past.max(self.with_past)
    }
}

/// The probe: token ids spread over the vocabulary (deterministic), at most the context.
pub fn probe_ids(vocab: usize, n_positions: usize) -> Vec<i64> {
    (0..PROBE_LEN.min(n_positions))
        .map(|i| ((i * 7919 + 13) % vocab) as i64)
        .collect()
}

/// Compares the session with `reference` on the probe: the whole probe with an empty
/// past, and its tail fed through past/present (a chunk, then one token at a time).
pub fn validate(
    session: &mut OnnxGpt2,
    model_dir: &Path,
    reference: &ReferenceLogits,
) -> Result<Validation> {
    let vocab = session.config.vocab_size;
    let ids = probe_ids(vocab, session.config.n_positions);
    let prefix = ids.len().div_ceil(2);
    let want = reference(model_dir, &ids).context("computing the reference logits")?;
    ensure!(
        want.len() == ids.len() * vocab,
        "the reference gave {} logits for {} tokens of a {vocab}-token vocabulary",
        want.len(),
        ids.len()
    );
    let diff = |got: &[f32], from: usize| -> f64 {
        got.iter()
            .zip(&want[from * vocab..])
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max)
    };
    let full = session.run(&ids, 1, &session.empty_cache(1)?)?;
    let no_past = diff(&full.logits, 0);

    let mut out = session.run(&ids[..prefix], 1, &session.empty_cache(1)?)?;
    let mut with_past = 0.0f64;
    let mut pos = prefix;
    while pos < ids.len() {
        let n = if pos == prefix {
            PROBE_CHUNK.min(ids.len() - pos)
        } else {
            1
        };
        out = session.run(&ids[pos..pos + n], 1, &out.cache)?;
        with_past = with_past.max(diff(&out.logits, pos));
        pos += n;
    }
    let reference_max = want.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
    Ok(Validation {
        no_past,
        with_past,
        reference_max,
    })
}

fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
