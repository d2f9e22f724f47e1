//! gpt-2-simple's checkpoints, read without TensorFlow: a run folder (`checkpoint/run1`:
//! a `checkpoint` file naming the latest `model-N`, its tensor bundle `model-N.index` and
//! `model-N.data-*`, `hparams.json`, `encoder.json`, `vocab.bpe`), one step of it
//! (`checkpoint/run1/model-500`), or a model folder of OpenAI's (`models/124M`, whose
//! bundle is `model.ckpt`).
//!
//! [`read_checkpoint`] gives the model in Hugging Face's GPT-2 layout: a `config.json` and
//! the weights under `GPT2LMHeadModel`'s names and shapes (TensorFlow's conv1d weights
//! `[1, nx, nf]` are transformers' `Conv1D` `[nx, nf]`). Optimizer state that gpt-2-simple
//! and TensorFlow save beside the weights is skipped; any other variable is an error.

mod bundle;
mod crc32c;

use anyhow::{bail, Context, Result};
use bundle::{Index, Shards, DT_FLOAT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// gpt-2-simple's shape file, OpenAI's name for `config.json`.
pub const HPARAMS_FILE: &str = "hparams.json";
/// TensorFlow's list of a folder's checkpoints (the latest first).
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// GPT-2's vocabulary and merges as OpenAI ships them: the `vocab.json` and `merges.txt`
/// of a Hugging Face folder, under other names.
pub const ENCODER_FILE: &str = "encoder.json";
pub const VOCAB_BPE_FILE: &str = "vocab.bpe";

/// One checkpoint of a gpt-2-simple folder: which step, and where its files are.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The run folder (`checkpoint/run1`).
    pub folder: PathBuf,
    /// The bundle's prefix (`checkpoint/run1/model-500`): `.index` and `.data-*` follow it.
    pub prefix: PathBuf,
    /// The step, from a `model-N` name (`None` for OpenAI's `model.ckpt`).
    pub step: Option<u64>,
}

/// A gpt-2-simple checkpoint in Hugging Face's GPT-2 layout.
#[derive(Debug)]
pub struct Checkpoint {
    pub located: Located,
    /// `config.json` of the model, as transformers' `GPT2Config` reads it.
    pub config: Value,
    /// The weights by `GPT2LMHeadModel` name (`transformer.h.0.attn.c_attn.weight`, ...;
    /// no `lm_head.weight`: it is tied to `transformer.wte.weight`), f32, row-major, in
    /// the order of the model's parameters.
    pub tensors: Vec<Tensor>,
    /// The tokenizer's files: `encoder.json` is a Hugging Face folder's `vocab.json`,
    /// `vocab.bpe` its `merges.txt`.
    pub encoder_json: PathBuf,
    pub vocab_bpe: PathBuf,
}

impl Checkpoint {
    /// The weights as the bytes of one safetensors file (f32, Hugging Face names).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                    .map(|v| (t.name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(safetensors::serialize(views, None)?)
    }
}

/// One weight: its Hugging Face name, shape and f32 values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// `hparams.json`: GPT-2's shape under OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HParams {
    pub n_vocab: usize,
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_layer: usize,
}

/// Whether `path` is meant as a gpt-2-simple checkpoint: a folder with `hparams.json` and
/// no `config.json`, or the prefix of a tensor bundle (`<path>.index` exists). Cheap: it
/// only looks at file names, so a broken checkpoint is still recognised, and its errors
/// come from [`locate`] and [`read_checkpoint`].
pub fn is_checkpoint(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(HPARAMS_FILE).is_file() && !path.join(crate::CONFIG_FILE).exists();
    }
    index_of(path).is_file()
}

fn index_of(prefix: &Path) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".index");
    PathBuf::from(name)
}

/// The checkpoint `path` names: a step prefix as it is, a folder's latest (the first line,
/// `model_checkpoint_path`, of its `checkpoint` file; only the file name counts, so a folder
/// copied from elsewhere, where TensorFlow wrote an absolute path, still reads).
pub fn locate(path: &Path) -> Result<Located> {
    let (folder, prefix) = if path.is_dir() {
        (path.to_path_buf(), latest(path)?)
    } else {
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (folder, path.to_path_buf())
    };
    let index = index_of(&prefix);
    if !index.is_file() {
        bail!(
            "{} not found: the checkpoint {} has no index",
            index.display(),
            prefix.display()
        );
    }
    let name = prefix.file_name().unwrap_or_default().to_string_lossy();
    let step = name.rsplit_once('-').and_then(|(_, n)| n.parse().ok());
    Ok(Located {
        folder,
        prefix,
        step,
    })
}

/// The prefix of the latest checkpoint of `folder`, from its `checkpoint` file.
fn latest(folder: &Path) -> Result<PathBuf> {
    let file = folder.join(CHECKPOINT_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "{} is a gpt-2-simple folder ({HPARAMS_FILE}) without a readable {CHECKPOINT_FILE} \
             file naming its latest step; name one (model = \"{}/model-N\")",
            folder.display(),
            folder.display()
        )
    })?;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("model_checkpoint_path:") else {
            continue;
        };
        let quoted: String = rest.trim().trim_matches('"').to_owned();
        let name = quoted.rsplit(['/', '\\']).next().unwrap_or_default();
        if name.is_empty() {
            break;
        }
        return Ok(folder.join(name));
    }
    bail!(
        "{}: no model_checkpoint_path line names the latest checkpoint",
        file.display()
    )
}

/// Every file the checkpoint at `path` is read from (for a cache key and file watching):
/// `checkpoint` (when the latest is taken), `hparams.json`, `encoder.json`, `vocab.bpe`,
/// the index and its data shards.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let located = locate(path)?;
    let index = Index::read(&index_of(&located.prefix))?;
    let mut out = Vec::new();
    if path.is_dir() {
        out.push(located.folder.join(CHECKPOINT_FILE));
    }
    for f in [HPARAMS_FILE, ENCODER_FILE, VOCAB_BPE_FILE] {
        out.push(located.folder.join(f));
    }
    out.push(index.path.clone());
    out.extend((0..index.num_shards).map(|i| index.shard_path(i)));
    Ok(out)
}

/// Reads `hparams.json` of the folder of `path`.
pub fn hparams(path: &Path) -> Result<HParams> {
    let folder = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new(""))
    };
    let file = folder.join(HPARAMS_FILE);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let get = |key: &str| -> Result<usize> {
        match v.get(key).and_then(Value::as_u64) {
            Some(n) if n > 0 => Ok(n as usize),
            _ => bail!(
                "{}: {key} must be a positive integer, found {}",
                file.display(),
                v.get(key).map_or("nothing".into(), |x| x.to_string())
            ),
        }
    };
    let h = HParams {
        n_vocab: get("n_vocab")?,
        n_ctx: get("n_ctx")?,
        n_embd: get("n_embd")?,
        n_head: get("n_head")?,
        n_layer: get("n_layer")?,
    };
    crate::limits::check_shape(h.n_layer, h.n_head, h.n_embd, h.n_ctx, h.n_vocab)
        .map_err(|(_, m)| anyhow::anyhow!("{}: {m}", file.display()))?;
    if !h.n_embd.is_multiple_of(h.n_head) {
        bail!(
            "{}: n_embd = {} is not a multiple of n_head = {}",
            file.display(),
            h.n_embd,
            h.n_head
        );
    }
    Ok(h)
}

impl HParams {
    /// The `config.json` of this shape: GPT-2's architecture as transformers names it
    /// (gpt-2-simple's model is GPT-2's: tanh GELU, layer norm epsilon 1e-5, tied head).
    pub fn hf_config(&self) -> Value {
        use crate::config::gpt2;
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.n_vocab,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "activation_function": gpt2::ACTIVATION,
            "layer_norm_epsilon": gpt2::LAYER_NORM_EPSILON,
            "bos_token_id": gpt2::EOT_ID,
            "eos_token_id": gpt2::EOT_ID,
        })
    }

    /// Each variable of gpt-2-simple's model with its Hugging Face name and shape, in the
    /// order of `GPT2LMHeadModel`'s parameters.
    pub fn variables(&self) -> Vec<(String, String, Vec<usize>)> {
        let (e, c, v) = (self.n_embd, self.n_ctx, self.n_vocab);
        let mut out = vec![
            (
                "model/wte".into(),
                "transformer.wte.weight".into(),
                vec![v, e],
            ),
            (
                "model/wpe".into(),
                "transformer.wpe.weight".into(),
                vec![c, e],
            ),
        ];
        for i in 0..self.n_layer {
            let (tf, hf) = (format!("model/h{i}"), format!("transformer.h.{i}"));
            let norm = |name: &str| {
                [
                    (
                        format!("{tf}/{name}/g"),
                        format!("{hf}.{name}.weight"),
                        vec![e],
                    ),
                    (
                        format!("{tf}/{name}/b"),
                        format!("{hf}.{name}.bias"),
                        vec![e],
                    ),
                ]
            };
            let conv = |name: &str, nx: usize, nf: usize| {
                [
                    (
                        format!("{tf}/{name}/w"),
                        format!("{hf}.{}.weight", name.replace('/', ".")),
                        vec![nx, nf],
                    ),
                    (
                        format!("{tf}/{name}/b"),
                        format!("{hf}.{}.bias", name.replace('/', ".")),
                        vec![nf],
                    ),
                ]
            };
            out.extend(norm("ln_1"));
            out.extend(conv("attn/c_attn", e, 3 * e));
            out.extend(conv("attn/c_proj", e, e));
            out.extend(norm("ln_2"));
            out.extend(conv("mlp/c_fc", e, 4 * e));
            out.extend(conv("mlp/c_proj", 4 * e, e));
        }
        out.push((
            "model/ln_f/g".into(),
            "transformer.ln_f.weight".into(),
            vec![e],
        ));
        out.push((
            "model/ln_f/b".into(),
            "transformer.ln_f.bias".into(),
            vec![e],
        ));
        out
    }
}

/// Variables a checkpoint may hold beside the model's, and that are not read: the
/// optimizer's (Adam's two slots per variable and its beta powers, gpt-2-simple's
/// `AccumulatingOptimizer` buffers, TensorFlow's unnamed `Variable_N`), a global step and
/// the object graph of a TensorFlow 2 checkpoint.
pub fn is_optimizer_state(name: &str) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    name.ends_with("/Adam")
        || name.ends_with("/Adam_1")
        || matches!(
            last,
            "beta1_power" | "beta2_power" | "global_step" | "_CHECKPOINTABLE_OBJECT_GRAPH"
        )
        || (name == last
            && (last == "Variable"
                || last
                    .strip_prefix("Variable_")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))))
}

/// Reads the gpt-2-simple checkpoint `path` names (see [`locate`]) into Hugging Face's
/// GPT-2 layout, checking every variable's dtype, shape and checksum.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let located = locate(path)?;
    let h = hparams(&located.folder)?;
    let index = Index::read(&index_of(&located.prefix))?;
    let show = index.path.display();
    let expected = h.variables();
    if let Some(extra) = index
        .entries
        .keys()
        .find(|name| !is_optimizer_state(name) && !expected.iter().any(|(tf, _, _)| tf == *name))
    {
        let n_layer = (0..)
            .take_while(|i| index.entries.contains_key(&format!("model/h{i}/ln_1/g")))
            .count();
        let hint = if extra.starts_with("model/h") && n_layer != h.n_layer {
            format!(
                " (it has {n_layer} layers, {} says n_layer = {})",
                HPARAMS_FILE, h.n_layer
            )
        } else {
            String::new()
        };
        bail!("{show}: unknown variable {extra}: not a gpt-2-simple GPT-2 checkpoint{hint}");
    }
    // Every entry is checked before any data is read.
    let mut jobs = Vec::with_capacity(expected.len());
    for (tf, hf, shape) in expected {
        let e = index.entries.get(&tf).with_context(|| {
            format!(
                "{show} has no variable {tf} ({HPARAMS_FILE} has n_layer = {})",
                h.n_layer
            )
        })?;
        if e.dtype != DT_FLOAT {
            bail!(
                "{show}: variable {tf} has TensorFlow dtype {} (float32 is {DT_FLOAT}); gpt-2-simple \
                 saves float32",
                e.dtype
            );
        }
        if e.sliced {
            bail!("{show}: variable {tf} is partitioned into slices, which gptpipe does not read");
        }
        // conv1d weights are [1, nx, nf] in TensorFlow.
        let stored: Vec<i64> = if tf.ends_with("/w") {
            std::iter::once(1)
                .chain(shape.iter().map(|&d| d as i64))
                .collect()
        } else {
            shape.iter().map(|&d| d as i64).collect()
        };
        if e.shape != stored {
            bail!(
                "{show}: variable {tf} has shape {:?}, but {HPARAMS_FILE} implies {stored:?}",
                e.shape
            );
        }
        let numel: usize = shape.iter().product();
        if e.size != 4 * numel as u64 {
            bail!(
                "{show}: variable {tf} takes {} bytes, but a float32 {stored:?} takes {}",
                e.size,
                4 * numel
            );
        }
        jobs.push((tf, hf, shape, e));
    }
    let shards = Shards::open(&index)?;
    let data = read_all(&jobs, |j| j.3.size, |(tf, _, _, e)| shards.read_f32(tf, e))?;
    let tensors = jobs
        .into_iter()
        .zip(data)
        .map(|((_, name, shape, _), data)| Tensor { name, shape, data })
        .collect();
    Ok(Checkpoint {
        encoder_json: located.folder.join(ENCODER_FILE),
        vocab_bpe: located.folder.join(VOCAB_BPE_FILE),
        config: h.hf_config(),
        located,
        tensors,
    })
}

/// `read` of every job, on a few threads (largest `size` first, each thread taking the next
/// job left), in the jobs' order; the first error in that order, if any.
fn read_all<J: Sync>(
    jobs: &[J],
    size: impl Fn(&J) -> u64,
    read: impl Fn(&J) -> Result<Vec<f32>> + Sync,
) -> Result<Vec<Vec<f32>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&jobs[i])));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<Vec<f32>>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = read(&jobs[i]);
                *results[i].lock().expect("not poisoned") = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("not poisoned")
                .expect("every job ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_state_is_told_from_unknown_variables() {
        for name in [
            "model/h0/attn/c_attn/w/Adam",
            "model/wte/Adam_1",
            "beta1_power",
            "beta2_power",
            "global_step",
            "Variable",
            "Variable_12",
        ] {
            assert!(is_optimizer_state(name), "{name}");
        }
        for name in [
            "model/h0/extra",
            "model/wte",
            "Variable_x",
            "Adam",
            "model/Variable",
        ] {
            assert!(!is_optimizer_state(name), "{name}");
        }
    }

    #[test]
    fn variables_map_to_gpt2lmheadmodel_names() {
        let h = HParams {
            n_vocab: 10,
            n_ctx: 8,
            n_embd: 4,
            n_head: 2,
            n_layer: 1,
        };
        let vars = h.variables();
        assert_eq!(vars.len(), 2 + 12 + 2);
        let find = |tf: &str| vars.iter().find(|(t, _, _)| t == tf).cloned().unwrap();
        assert_eq!(
            find("model/h0/mlp/c_proj/w"),
            (
                "model/h0/mlp/c_proj/w".into(),
                "transformer.h.0.mlp.c_proj.weight".into(),
                vec![16, 4]
            )
        );
        assert_eq!(find("model/h0/ln_2/g").1, "transformer.h.0.ln_2.weight");
        assert_eq!(find("model/ln_f/b").1, "transformer.ln_f.bias");
    }

    #[test]
    fn the_latest_step_is_the_checkpoint_files_name_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::write(run.join(HPARAMS_FILE), "{}").unwrap();
        std::fs::write(
            run.join(CHECKPOINT_FILE),
            "model_checkpoint_path: \"/content/checkpoint/run1/model-500\"\n\
             all_model_checkpoint_paths: \"/content/checkpoint/run1/model-500\"\n",
        )
        .unwrap();
        assert!(is_checkpoint(run));
        let err = locate(run).unwrap_err().to_string();
        assert!(err.contains("model-500.index not found"), "{err}");
        std::fs::write(run.join("model-500.index"), "").unwrap();
        let l = locate(run).unwrap();
        assert_eq!((l.prefix, l.step), (run.join("model-500"), Some(500)));
        assert!(is_checkpoint(&run.join("model-500")));
        assert!(!is_checkpoint(&run.join("model-400")));
        std::fs::write(run.join(crate::CONFIG_FILE), "{}").unwrap();
        assert!(!is_checkpoint(run), "a Hugging Face folder");
    }
}
