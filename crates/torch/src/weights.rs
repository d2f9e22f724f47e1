//! Hugging Face model folders: `config.json` + weights in (`model.safetensors`, or any
//! format `gptpipe_hf::weights` reads), and out in the
//! layout `GPT2LMHeadModel.from_pretrained(folder)` loads as it is.

use crate::model::{Config, Gpt2};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub use gptpipe_hf::{check_folder, CONFIG_FILE, WEIGHTS_FILE};

/// Loads a model folder (or a gpt-2-simple checkpoint) onto `device` (fp32 weights).
pub fn load_folder(dir: &Path, device: Device) -> Result<Gpt2> {
    if crate::gpt2_simple::is_checkpoint(dir) {
        return crate::gpt2_simple::load(dir, device);
    }
    check_folder(dir)?;
    let config = Config::from_json_file(&dir.join(CONFIG_FILE))?;
    crate::memory::ensure_fits(&crate::memory::weights(&config), device)
        .with_context(|| format!("model {}", dir.display()))?;
    let model = Gpt2::zeros(&config, device);
    let bytes = gptpipe_hf::weights::read(dir)?;
    load_weights(&model, &bytes, dir)?;
    Ok(model)
}

/// Tensors the file may hold that are not parameters: attention-mask buffers of old
/// exports and the head, which is tied to `wte`.
fn ignored(name: &str) -> bool {
    gptpipe_hf::weights::is_mask_buffer(name) || name == "lm_head.weight"
}

/// Copies the weights (safetensors bytes) of the model folder `path` into `model`,
/// checking every name and shape. Names may carry the `transformer.` prefix or not (the
/// hub's `gpt2` has none).
pub fn load_weights(model: &Gpt2, bytes: &[u8], path: &Path) -> Result<()> {
    // Errors name the file the bytes came from (model.safetensors, or the pickle).
    let file = gptpipe_hf::weights::find(path).map_or_else(|| path.to_path_buf(), |(_, f)| f);
    let tensors = parse_safetensors(bytes, &file)?;
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        if ignored(&name) {
            continue;
        }
        let key = if name.starts_with("transformer.") {
            name
        } else {
            format!("transformer.{name}")
        };
        by_name.insert(key, t);
    }
    tch::no_grad(|| -> Result<()> {
        for (name, param) in model.named_parameters() {
            let t = by_name.remove(name).with_context(|| {
                format!(
                    "{} has no tensor {name} (is it a GPT-2 checkpoint of this config?)",
                    path.display()
                )
            })?;
            if t.size() != param.size() {
                bail!(
                    "{}: tensor {name} has shape {:?}, but config.json implies {:?}",
                    path.display(),
                    t.size(),
                    param.size()
                );
            }
            param.shallow_clone().copy_(&t.to_kind(param.kind()));
        }
        Ok(())
    })?;
    if let Some(extra) = by_name.keys().min() {
        bail!(
            "{}: unexpected tensor {extra} ({} unknown in all): not a GPT2LMHeadModel checkpoint",
            path.display(),
            by_name.len()
        );
    }
    Ok(())
}

/// All tensors of a safetensors file, on the CPU, sorted by name.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_safetensors(&bytes, path)
}

/// All tensors of safetensors bytes read from `path`, on the CPU, sorted by name.
fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let st = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        k => bail!("cannot save tensors of kind {k:?}"),
    })
}

/// Writes tensors (any device) to a safetensors file with `{"format": "pt"}` metadata,
/// atomically (a temporary file renamed into place).
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        blobs.push((name.clone(), dtype_of(t.kind())?, shape, data));
    }
    let views = blobs
        .iter()
        .map(|(n, d, s, data)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))?;
    write_atomic(path, &bytes)
}

pub use gptpipe_core::fsutil::write_atomic;

/// Saves `model` as a Hugging Face folder: `config.json`, `model.safetensors` (fp32, tied
/// head omitted as transformers does) and `generation_config.json`.
pub fn save_folder(model: &Gpt2, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let c = &model.config;
    let config = serde_json::to_string_pretty(&c.to_hf_json())?;
    write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())?;
    let gen = serde_json::json!({
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
    });
    write_atomic(
        &dir.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)?.as_bytes(),
    )?;
    let tensors: Vec<(String, Tensor)> = model
        .named_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Float)))
        .collect();
    write_safetensors(&tensors, &dir.join(WEIGHTS_FILE))
}
