//! ONNX Runtime, loaded at run time (`ort`'s `load-dynamic`): finding the shared library,
//! one process-wide environment, and a session over an exported GPT-2 that runs
//! `input_ids` + past into logits + present.
//!
//! The library is looked up, first match wins:
//! 1. `ORT_DYLIB_PATH` (an error if it names a missing file);
//! 2. `libonnxruntime.so` or `.venv/libonnxruntime.so` in the executable's folder or any
//!    folder above it (a deployment copies the library beside the binary; the dev set-up
//!    puts it in the workspace's `.venv/`, above `target/`), then the same in the current
//!    folder and its ancestors;
//! 3. the `onnxruntime` Python wheel of `$VIRTUAL_ENV` or of a `.venv` found as above:
//!    `lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*`.

use crate::config::Gpt2Config;
use crate::gpt2::{
    past_key_name, past_value_name, present_key_name, present_value_name, LAST_LOGITS,
};
use crate::graph::Float;
use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::environment::Environment;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const LIB_NAME: &str = "libonnxruntime.so";

/// Where ONNX Runtime's shared library is (see the module docs for the order).
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "ORT_DYLIB_PATH={} does not exist", p.display());
        return Ok(p);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    for root in &roots {
        for candidate in [root.join(LIB_NAME), root.join(".venv").join(LIB_NAME)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut venvs: Vec<PathBuf> = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    venvs.extend(roots.iter().map(|r| r.join(".venv")).filter(|v| v.is_dir()));
    for venv in venvs {
        if let Some(p) = wheel_library(&venv) {
            return Ok(p);
        }
    }
    bail!(
        "ONNX Runtime's shared library ({LIB_NAME}) was not found: set ORT_DYLIB_PATH to it, \
         put it beside the gptpipe binary, or `pip install onnxruntime` into ./.venv \
         (scripts/setup.sh does)"
    )
}

/// `lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*` of a virtualenv.
fn wheel_library(venv: &Path) -> Option<PathBuf> {
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for py in entries.flatten() {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else {
                continue;
            };
            let mut found: Vec<PathBuf> = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Some(p);
            }
        }
    }
    None
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = library_path().map_err(|e| format!("{e:#}"))?;
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        builder
            .with_name("gptpipe")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime ({}): {e}", path.display()))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// Past keys and values of a batch: one ONNX Runtime value per `past_key_values.*` input,
/// in graph input order, all `[batch, n_head, len, head_dim]`.
pub struct KvCache {
    values: Vec<DynValue>,
    pub batch: usize,
    pub len: usize,
}

/// An exported GPT-2 loaded into ONNX Runtime.
pub struct OnnxGpt2 {
    session: Session,
    pub config: Gpt2Config,
    /// Element type of past/present (logits are always float32).
    pub float: Float,
    past_names: Vec<String>,
    present_names: Vec<String>,
    /// Fetches `last_logits` and the presents only, when the export has `last_logits`.
    last_only: Option<RunOptions<HasSelectedOutputs>>,
}

/// Logits of one call: `[batch, seq, vocab]`, row-major.
pub struct RunOutput {
    pub logits: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    pub cache: KvCache,
}

impl RunOutput {
    /// The logits of each row's last position, `[batch, vocab]`.
    pub fn last_logits(&self) -> Vec<f32> {
        let (s, v) = (self.seq, self.vocab);
        (0..self.batch)
            .flat_map(|b| {
                self.logits[(b * s + s - 1) * v..(b * s + s) * v]
                    .iter()
                    .copied()
            })
            .collect()
    }
}

/// Session options: `threads = 0` lets ONNX Runtime pick (one per physical core).
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub threads: usize,
}

impl OnnxGpt2 {
    /// Loads `dir/model.onnx` (with its external data, if any) and `dir/config.json`.
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let model = dir.join(crate::write::MODEL_FILE);
        ensure!(
            model.is_file(),
            "{} not found: is {} an export stage's output?",
            model.display(),
            dir.display()
        );
        let config = Gpt2Config::load(dir)?;
        let env = environment()?;
        let mut builder = Session::builder(env).map_err(|e| anyhow!("{e}"))?;
        if opts.threads > 0 {
            builder = builder
                .with_intra_threads(opts.threads)
                .map_err(|e| anyhow!("{e}"))?;
        }
        let session = builder
            .commit_from_file(&model)
            .map_err(|e| anyhow!("ONNX Runtime cannot load {}: {e}", model.display()))?;

        let past_names: Vec<String> = (0..config.n_layer)
            .flat_map(|i| [past_key_name(i), past_value_name(i)])
            .collect();
        let present_names: Vec<String> = (0..config.n_layer)
            .flat_map(|i| [present_key_name(i), present_value_name(i)])
            .collect();
        let input_type = |name: &str| {
            session
                .inputs()
                .iter()
                .find(|o| o.name() == name)
                .map(|o| o.dtype().clone())
        };
        ensure!(
            input_type("input_ids").is_some(),
            "{} has no input_ids input",
            model.display()
        );
        let float = match input_type(&past_names[0]) {
            Some(ValueType::Tensor {
                ty: TensorElementType::Float32,
                ..
            }) => Float::F32,
            Some(ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            }) => Float::F16,
            Some(other) => bail!("{}: {} is {other:?}", model.display(), past_names[0]),
            None => bail!(
                "{} has no {} input: it does not match its config.json (n_layer = {})",
                model.display(),
                past_names[0],
                config.n_layer
            ),
        };
        let last_only = if session.outputs().iter().any(|o| o.name() == LAST_LOGITS) {
            let selector = present_names
                .iter()
                .fold(OutputSelector::no_default().with(LAST_LOGITS), |s, n| {
                    s.with(n.as_str())
                });
            Some(
                RunOptions::new()
                    .map_err(|e| anyhow!("{e}"))?
                    .with_outputs(selector),
            )
        } else {
            None
        };
        Ok(Self {
            session,
            config,
            float,
            past_names,
            present_names,
            last_only,
        })
    }

    /// An empty past for `batch` rows.
    pub fn empty_cache(&self, batch: usize) -> Result<KvCache> {
        let shape = [
            batch as i64,
            self.config.n_head as i64,
            0,
            self.config.head_dim() as i64,
        ];
        let values = (0..self.past_names.len())
            .map(|_| self.tensor(shape, CacheData::empty(self.float)))
            .collect::<Result<_>>()?;
        Ok(KvCache {
            values,
            batch,
            len: 0,
        })
    }

    fn tensor(&self, shape: [i64; 4], data: CacheData) -> Result<DynValue> {
        let v = match data {
            CacheData::F32(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
            CacheData::F16(d) => Tensor::from_array((shape, d)).map(|t| t.into_dyn()),
        };
        v.map_err(|e| anyhow!("creating a past tensor: {e}"))
    }

    /// Runs `ids` (`batch` rows of equal length, row-major) after `past`.
    pub fn run(&mut self, ids: &[i64], batch: usize, past: &KvCache) -> Result<RunOutput> {
        self.run_inner(ids, batch, past, false)
    }

    /// Like [`run`](Self::run), but only the last position's logits are computed and
    /// returned (`seq` is 1 in the output): what generation needs.
    pub fn run_last(&mut self, ids: &[i64], batch: usize, past: &KvCache) -> Result<RunOutput> {
        self.run_inner(ids, batch, past, true)
    }

    fn run_inner(
        &mut self,
        ids: &[i64],
        batch: usize,
        past: &KvCache,
        last: bool,
    ) -> Result<RunOutput> {
        ensure!(
            batch > 0 && !ids.is_empty() && ids.len() / batch * batch == ids.len(),
            "bad batch"
        );
        ensure!(
            past.batch == batch,
            "past has {} rows, not {batch}",
            past.batch
        );
        let seq = ids.len() / batch;
        ensure!(
            past.len + seq <= self.config.n_positions,
            "{} positions exceed the model's context of {}",
            past.len + seq,
            self.config.n_positions
        );
        let ids = Tensor::from_array(([batch as i64, seq as i64], ids.to_vec()))
            .map_err(|e| anyhow!("{e}"))?;
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> =
            Vec::with_capacity(1 + past.values.len());
        inputs.push((Cow::Borrowed("input_ids"), ids.into()));
        for (name, value) in self.past_names.iter().zip(&past.values) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        let options = if last { self.last_only.as_ref() } else { None };
        let mut out = match options {
            Some(o) => self.session.run_with_options(inputs, o),
            None => self.session.run(inputs),
        }
        .map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        let (logits, out_seq, vocab) = if options.is_some() {
            let (shape, data) = out[LAST_LOGITS]
                .try_extract_tensor::<f32>()
                .map_err(|e| anyhow!("{LAST_LOGITS}: {e}"))?;
            ensure!(
                shape.len() == 2 && shape[0] as usize == batch,
                "{LAST_LOGITS} have shape {shape:?}"
            );
            (data.to_vec(), 1, shape[1] as usize)
        } else {
            let (shape, data) = out["logits"]
                .try_extract_tensor::<f32>()
                .map_err(|e| anyhow!("logits: {e}"))?;
            ensure!(
                shape.len() == 3 && shape[0] as usize == batch && shape[1] as usize == seq,
                "logits have shape {shape:?}"
            );
            let (s, v) = (seq, shape[2] as usize);
            let logits = if last {
                // An export without `last_logits`: keep only the last positions.
                (0..batch)
                    .flat_map(|b| data[(b * s + s - 1) * v..(b * s + s) * v].iter().copied())
                    .collect()
            } else {
                data.to_vec()
            };
            (logits, if last { 1 } else { seq }, v)
        };
        let values = self
            .present_names
            .iter()
            .map(|n| out.remove(n).with_context(|| format!("no output {n}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(RunOutput {
            logits,
            batch,
            seq: out_seq,
            vocab,
            cache: KvCache {
                values,
                batch,
                len: past.len + seq,
            },
        })
    }

    /// Keeps rows `keep` (increasing indices) of a cache.
    pub fn retain(&self, cache: &KvCache, keep: &[usize]) -> Result<KvCache> {
        let (h, d) = (self.config.n_head, self.config.head_dim());
        let row = h * cache.len * d;
        let shape = [keep.len() as i64, h as i64, cache.len as i64, d as i64];
        let mut values = Vec::with_capacity(cache.values.len());
        for v in &cache.values {
            let data = match self.float {
                Float::F32 => {
                    let (_, src) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("{e}"))?;
                    CacheData::F32(gather_rows(src, row, keep))
                }
                Float::F16 => {
                    let (_, src) = v
                        .try_extract_tensor::<half::f16>()
                        .map_err(|e| anyhow!("{e}"))?;
                    CacheData::F16(gather_rows(src, row, keep))
                }
            };
            values.push(self.tensor(shape, data)?);
        }
        Ok(KvCache {
            values,
            batch: keep.len(),
            len: cache.len,
        })
    }
}

enum CacheData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl CacheData {
    fn empty(float: Float) -> Self {
        match float {
            Float::F32 => CacheData::F32(Vec::new()),
            Float::F16 => CacheData::F16(Vec::new()),
        }
    }
}

fn gather_rows<T: Copy>(src: &[T], row: usize, keep: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(row * keep.len());
    for &r in keep {
        out.extend_from_slice(&src[r * row..(r + 1) * row]);
    }
    out
}
