//! GPT-2 weights from `model.safetensors` (or another format `gptpipe_hf::weights` reads),
//! read as f32 by their GPT2Model names
//! (`wte.weight`, `h.0.attn.c_attn.weight`, ...) whether the file was saved from
//! GPT2LMHeadModel (`transformer.` prefix) or GPT2Model (none). Tensors are converted only
//! when asked for, so buffers we never use (old `attn.bias` masks) cost nothing.

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Weights {
    bytes: Vec<u8>,
    /// Where tensor data starts in `bytes` (after the header).
    data_start: usize,
    /// GPT2Model name -> (name in the file, its info).
    index: BTreeMap<String, (String, TensorInfo)>,
    source: String,
}

impl Weights {
    pub fn load(dir: &Path) -> Result<Self> {
        if gptpipe_hf::gpt2_simple::is_checkpoint(dir) {
            return Self::from_gpt2_simple(dir);
        }
        // model.safetensors, else a pickle read as data (gptpipe_hf::weights).
        let path = gptpipe_hf::weights::find(dir)
            .map_or_else(|| dir.join(gptpipe_hf::WEIGHTS_FILE), |(_, p)| p);
        let bytes = gptpipe_hf::weights::read(dir)?;
        Self::from_bytes(bytes, path.display().to_string())
    }

    /// A gpt-2-simple checkpoint's weights, laid out as a safetensors file in memory.
    fn from_gpt2_simple(path: &Path) -> Result<Self> {
        let ckpt = gptpipe_hf::gpt2_simple::read_checkpoint(path)?;
        let file = ckpt.to_safetensors()?;
        Self::from_bytes(file, ckpt.located.prefix.display().to_string())
    }

    fn from_bytes(bytes: Vec<u8>, source: String) -> Result<Self> {
        let (header, meta): (usize, Metadata) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{source} is not a safetensors file"))?;
        let index = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let key = name
                    .strip_prefix("transformer.")
                    .unwrap_or(&name)
                    .to_owned();
                (key, (name, info.clone()))
            })
            .collect();
        Ok(Self {
            bytes,
            data_start: 8 + header,
            index,
            source,
        })
    }

    /// The tensor `name` (GPT2Model naming) as f32, checked against the expected shape.
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let (file_name, info) = self
            .index
            .get(name)
            .with_context(|| format!("{} has no tensor {name}", self.source))?;
        if info.shape != dims {
            bail!(
                "{}: tensor {file_name} has shape {:?}, config.json implies {:?}",
                self.source,
                info.shape,
                dims
            );
        }
        let (a, b) = info.data_offsets;
        let raw = &self.bytes[self.data_start + a..self.data_start + b];
        to_f32(info.dtype, raw).with_context(|| format!("tensor {file_name} in {}", self.source))
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("dtype {other:?} is not a float type this exporter reads"),
    })
}
