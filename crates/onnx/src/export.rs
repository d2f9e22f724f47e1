//! Turning a Hugging Face GPT-2 folder into an ONNX model folder: `model.onnx` (and
//! `model.onnx.data` for big models), `config.json`, and the tokenizer files, so the folder
//! alone is enough to generate.

use crate::config::Gpt2Config;
use crate::graph::Float;
use crate::weights::Weights;
use crate::write::{write_model, WriteOptions, Written, DEFAULT_EXTERNAL_THRESHOLD};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

pub use gptpipe_hf::folder::TOKENIZER_FILES;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub opset: u32,
    pub precision: Float,
    /// Weights go to external data above this many bytes (tests lower it).
    pub external_threshold: u64,
    /// Whether the graph has `attention_mask` and `position_ids` (always, but for tests
    /// that need an export as made before those inputs existed).
    pub mask_inputs: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            opset: 17,
            precision: Float::F32,
            external_threshold: DEFAULT_EXTERNAL_THRESHOLD,
            mask_inputs: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Exported {
    pub config: Gpt2Config,
    pub written: Written,
    /// Seconds spent reading weights and building the graph, and writing it.
    pub build_s: f64,
    pub write_s: f64,
}

/// Exports the GPT-2 in `src` into `dst` (an existing folder).
pub fn export_folder(src: &Path, dst: &Path, opts: &ExportOptions) -> Result<Exported> {
    let t0 = Instant::now();
    let config = Gpt2Config::load(src)?;
    let weights = Weights::load(src)?;
    let graph = crate::gpt2::build(&config, &weights, opts.precision, opts.mask_inputs)
        .with_context(|| format!("building the ONNX graph of {}", src.display()))?;
    drop(weights);
    let build_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let precision = match opts.precision {
        Float::F32 => "fp32",
        Float::F16 => "fp16",
    };
    let write_opts = WriteOptions {
        opset: opts.opset,
        external_threshold: opts.external_threshold,
        metadata: vec![
            ("gptpipe.precision".into(), precision.into()),
            ("gptpipe.n_positions".into(), config.n_positions.to_string()),
        ],
    };
    let written = write_model(graph, dst, &write_opts)?;
    copy_companions(src, dst, &config)?;
    Ok(Exported {
        config,
        written,
        build_s,
        write_s: t1.elapsed().as_secs_f64(),
    })
}

/// `config.json` and the tokenizer: the source's own files, else GPT-2's standard ones.
fn copy_companions(src: &Path, dst: &Path, config: &Gpt2Config) -> Result<()> {
    let copy = |name: &str| -> Result<bool> {
        let from = src.join(name);
        if !from.is_file() {
            return Ok(false);
        }
        let to = dst.join(name);
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(true)
    };
    if !copy(gptpipe_hf::CONFIG_FILE)? && gptpipe_hf::gpt2_simple::is_checkpoint(src) {
        // A gpt-2-simple checkpoint's shape is its hparams.json.
        let config = gptpipe_hf::gpt2_simple::hparams(src)?.hf_config();
        let to = dst.join(gptpipe_hf::CONFIG_FILE);
        std::fs::write(&to, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("cannot write {}", to.display()))?;
    }
    copy(gptpipe_hf::folder::GENERATION_CONFIG_FILE)?;
    let mut any = false;
    for name in TOKENIZER_FILES {
        any |= copy(name)?;
    }
    if !any {
        gptpipe_text::tokenizer::write_tokenizer_files_with_max_length(dst, config.n_positions)
            .context("writing GPT-2's tokenizer files")?;
    }
    Ok(())
}
