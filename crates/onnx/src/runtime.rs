//! ONNX Runtime, loaded at run time (`ort`'s `load-dynamic`): finding the shared library,
//! [`Runtime`] (the library loaded and its environment), and a session over an exported
//! GPT-2 ([`OnnxGpt2`]) that runs `input_ids` + past into logits + present (with each row's
//! `attention_mask` and `position_ids` when the export has them), and rebuilds caches on the
//! host (rows dropped, merged, compacted).
//!
//! The library is looked up in these places only, first match wins:
//! 1. `ORT_DYLIB_PATH` (an error if it names a missing file);
//! 2. the executable's own folder, `<exe dir>/libonnxruntime.so`, and its installation,
//!    `<exe dir>/../lib/libonnxruntime.so` (a deployment puts the library beside the
//!    binary or in the prefix's `lib/`);
//! 3. for a cargo build run from its own `target/` folder, the workspace it was built in
//!    (found from this crate's compile-time `CARGO_MANIFEST_DIR`): its
//!    `.venv/libonnxruntime.so` (scripts/setup.sh makes it), then the `onnxruntime` wheel
//!    of that `.venv`;
//! 4. `$VIRTUAL_ENV/libonnxruntime.so`, then the `onnxruntime` wheel of `$VIRTUAL_ENV`.
//!
//! A wheel's library is `lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*`.
//! The current folder, the pipeline's folder and their parents are never searched: loading
//! a library runs its code, and a repository being worked on is not trusted to supply it.

use crate::config::Gpt2Config;
use crate::gpt2::{
    past_key_name, past_value_name, present_key_name, present_value_name, ATTENTION_MASK,
    LAST_LOGITS, POSITION_IDS,
};
use crate::graph::Float;
use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::environment::Environment;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const LIB_NAME: &str = "libonnxruntime.so";

/// Where ONNX Runtime's shared library is (see the module docs for the order).
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "ORT_DYLIB_PATH={} does not exist", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().ok();
    let virtual_env = std::env::var_os("VIRTUAL_ENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let workspace = build_workspace();
    let places = search_places(exe.as_deref(), workspace.as_deref(), virtual_env.as_deref());
    for place in &places {
        let found = match place {
            Place::File(p) => p.is_file().then(|| p.clone()),
            Place::Wheel(venv) => wheel_library(venv),
        };
        if let Some(p) = found {
            return Ok(p);
        }
    }
    bail!(
        "ONNX Runtime's shared library ({LIB_NAME}) was not found: set ORT_DYLIB_PATH to it, \
         put it beside the gptpipe binary (or in ../lib), or activate a virtualenv with \
         onnxruntime installed (VIRTUAL_ENV); the current folder is never searched"
    )
}

/// One place where the library may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This file.
    File(PathBuf),
    /// The `onnxruntime` wheel of this virtualenv.
    Wheel(PathBuf),
}

/// The workspace this crate was built in (two folders above its manifest), if it still
/// exists.
fn build_workspace() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .ok()
}

/// The places searched after `ORT_DYLIB_PATH`, in order, for an executable at `exe`, a
/// build `workspace` and an active `virtual_env`. Nothing here depends on the current
/// folder.
pub fn search_places(
    exe: Option<&Path>,
    workspace: Option<&Path>,
    virtual_env: Option<&Path>,
) -> Vec<Place> {
    let mut places = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        places.push(Place::File(dir.join(LIB_NAME)));
        if let Some(prefix) = dir.parent() {
            places.push(Place::File(prefix.join("lib").join(LIB_NAME)));
        }
    }
    if let (Some(exe), Some(ws)) = (exe, workspace) {
        let target = ws.join("target");
        // A `target` that is a link to elsewhere holds executables by their real path.
        let real_target = target.canonicalize().unwrap_or_else(|_| target.clone());
        if exe.starts_with(&target) || exe.starts_with(&real_target) {
            let venv = ws.join(".venv");
            places.push(Place::File(venv.join(LIB_NAME)));
            places.push(Place::Wheel(venv));
        }
    }
    if let Some(venv) = virtual_env {
        places.push(Place::File(venv.join(LIB_NAME)));
        places.push(Place::Wheel(venv.to_path_buf()));
    }
    places
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

/// ONNX Runtime: its shared library and the environment sessions run in, loaded when the
/// first session is made (a command that opens no model never loads it). Clones share one
/// load, and its error: a failed load is not retried.
///
/// Whoever opens sessions takes a `Runtime` ([`crate::backend::factory`],
/// [`crate::register_with_reference`], [`Runtime::session`]); [`Runtime::shared`] is the
/// process's default for callers with no way to be handed one. ort allows one environment
/// per process: every `Runtime` that loads the same library shares it, and one that names
/// another library than the loaded one fails to load.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

struct Inner {
    /// The library to load; `None`: the one [`library_path`] finds when it is loaded.
    library: Option<PathBuf>,
    loaded: OnceLock<std::result::Result<Loaded, String>>,
}

/// A loaded library and its environment.
#[derive(Clone)]
struct Loaded {
    library: PathBuf,
    environment: Environment,
}

/// What this process has loaded: ort's environment is process-wide.
static PROCESS: Mutex<Option<Loaded>> = Mutex::new(None);

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// The library [`library_path`] finds (see the module docs), looked up when loaded.
    pub fn new() -> Self {
        Self::of(None)
    }

    /// The library at `path`.
    pub fn with_library(path: impl Into<PathBuf>) -> Self {
        Self::of(Some(path.into()))
    }

    fn of(library: Option<PathBuf>) -> Self {
        Self(Arc::new(Inner {
            library,
            loaded: OnceLock::new(),
        }))
    }

    /// The process's default runtime ([`Runtime::new`]), made on the first call, for
    /// callers that cannot be handed one.
    pub fn shared() -> Runtime {
        static SHARED: OnceLock<Runtime> = OnceLock::new();
        SHARED.get_or_init(Runtime::new).clone()
    }

    /// The environment, loading the library now if it is not loaded yet.
    pub fn environment(&self) -> Result<&Environment> {
        Ok(&self.loaded()?.environment)
    }

    /// The library loaded, loading it now if it is not loaded yet.
    pub fn library(&self) -> Result<&Path> {
        Ok(&self.loaded()?.library)
    }

    /// Loads `dir/model.onnx` (with its external data, if any) and `dir/config.json`.
    pub fn session(&self, dir: &Path, opts: &SessionOptions) -> Result<OnnxGpt2> {
        OnnxGpt2::load(self, dir, opts)
    }

    fn loaded(&self) -> Result<&Loaded> {
        self.0
            .loaded
            .get_or_init(|| self.load().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn load(&self) -> Result<Loaded> {
        let path = match &self.0.library {
            Some(path) => path.clone(),
            None => library_path()?,
        };
        let mut process = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = &*process {
            let same = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            ensure!(
                same(&loaded.library) == same(&path),
                "cannot load ONNX Runtime from {}: this process has loaded it from {}",
                path.display(),
                loaded.library.display()
            );
            return Ok(loaded.clone());
        }
        let builder = ort::init_from(&path)
            .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let environment = builder
            .with_name("gptpipe")
            .build()
            .map_err(|e| anyhow!("cannot start ONNX Runtime ({}): {e}", path.display()))?;
        let loaded = Loaded {
            library: path,
            environment,
        };
        *process = Some(loaded.clone());
        Ok(loaded)
    }
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
    /// Whether the graph has `attention_mask` and `position_ids` (exports before them
    /// have neither): what rows of different lengths in one batch need.
    pub has_mask: bool,
}

/// Per-row padding of one call, for graphs with [`OnnxGpt2::has_mask`]:
/// `attention_mask` `[batch, past.len + seq]` and `position_ids` `[batch, seq]`,
/// row-major.
pub struct Padding<'a> {
    pub attention_mask: &'a [i64],
    pub position_ids: &'a [i64],
}

/// One row of a cache being rebuilt by [`OnnxGpt2::rebuild`]: row `row` of source cache
/// `cache`, whose columns `cols` (in this order) become columns `0..cols.len()` of the new
/// row; the new row's later columns are zero.
pub struct RowSource {
    pub cache: usize,
    pub row: usize,
    pub cols: Vec<usize>,
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
    /// See [`Runtime::session`].
    fn load(runtime: &Runtime, dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let model = dir.join(crate::write::MODEL_FILE);
        ensure!(
            model.is_file(),
            "{} not found: is {} an export stage's output?",
            model.display(),
            dir.display()
        );
        let config = Gpt2Config::load(dir)?;
        let env = runtime.environment()?;
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
        let has_input = |name: &str| session.inputs().iter().any(|i| i.name() == name);
        let has_mask = has_input(ATTENTION_MASK) && has_input(POSITION_IDS);
        Ok(Self {
            session,
            config,
            float,
            past_names,
            present_names,
            last_only,
            has_mask,
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

    /// Runs `ids` (`batch` rows of equal length, row-major) after `past`, every column
    /// real (an all-ones `attention_mask` and positions from `past.len`, for graphs that
    /// take them).
    pub fn run(&mut self, ids: &[i64], batch: usize, past: &KvCache) -> Result<RunOutput> {
        self.run_inner(ids, batch, past, None, false)
    }

    /// Like [`run`](Self::run), but only the last position's logits are computed and
    /// returned (`seq` is 1 in the output): what generation needs.
    pub fn run_last(&mut self, ids: &[i64], batch: usize, past: &KvCache) -> Result<RunOutput> {
        self.run_inner(ids, batch, past, None, true)
    }

    /// Like [`run_last`](Self::run_last), with each row's mask and positions given: rows
    /// whose real entries are a subset of the cache's columns (needs [`Self::has_mask`]).
    pub fn run_last_padded(
        &mut self,
        ids: &[i64],
        batch: usize,
        past: &KvCache,
        padding: &Padding,
    ) -> Result<RunOutput> {
        self.run_inner(ids, batch, past, Some(padding), true)
    }

    fn run_inner(
        &mut self,
        ids: &[i64],
        batch: usize,
        past: &KvCache,
        padding: Option<&Padding>,
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
        let total = past.len + seq;
        let ids = Tensor::from_array(([batch as i64, seq as i64], ids.to_vec()))
            .map_err(|e| anyhow!("{e}"))?;
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> =
            Vec::with_capacity(3 + past.values.len());
        inputs.push((Cow::Borrowed("input_ids"), ids.into()));
        if self.has_mask {
            let (mask, positions) = match padding {
                Some(p) => {
                    ensure!(
                        p.attention_mask.len() == batch * total
                            && p.position_ids.len() == batch * seq,
                        "padding of {} mask and {} position values for {batch} rows of \
                         {seq} tokens after {} columns",
                        p.attention_mask.len(),
                        p.position_ids.len(),
                        past.len
                    );
                    ensure!(
                        p.position_ids
                            .iter()
                            .all(|&q| (0..self.config.n_positions as i64).contains(&q)),
                        "a position is outside the model's context of {}",
                        self.config.n_positions
                    );
                    (p.attention_mask.to_vec(), p.position_ids.to_vec())
                }
                None => (
                    vec![1; batch * total],
                    (0..batch)
                        .flat_map(|_| past.len as i64..total as i64)
                        .collect(),
                ),
            };
            let mask = Tensor::from_array(([batch as i64, total as i64], mask))
                .map_err(|e| anyhow!("{e}"))?;
            let positions = Tensor::from_array(([batch as i64, seq as i64], positions))
                .map_err(|e| anyhow!("{e}"))?;
            inputs.push((Cow::Borrowed(ATTENTION_MASK), mask.into()));
            inputs.push((Cow::Borrowed(POSITION_IDS), positions.into()));
        } else {
            ensure!(
                padding.is_none(),
                "this export has no {ATTENTION_MASK} and {POSITION_IDS} inputs: re-export \
                 the model to run rows of different lengths in one batch"
            );
        }
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

impl OnnxGpt2 {
    /// A cache of `len` columns whose rows are taken from `caches` as `rows` say (see
    /// [`RowSource`]): how rows of different caches are merged into one batch, and how a
    /// padded batch is compacted. Caches hold host tensors, so this is a host copy.
    pub fn rebuild(&self, caches: &[&KvCache], rows: &[RowSource], len: usize) -> Result<KvCache> {
        let (h, d) = (self.config.n_head, self.config.head_dim());
        for r in rows {
            let src = caches.get(r.cache).context("no such cache")?;
            ensure!(
                r.row < src.batch && r.cols.len() <= len && r.cols.iter().all(|&c| c < src.len),
                "bad row source: row {} of {}, columns {:?} of {} into {len}",
                r.row,
                src.batch,
                r.cols,
                src.len
            );
        }
        let shape = [rows.len() as i64, h as i64, len as i64, d as i64];
        let mut values = Vec::with_capacity(self.past_names.len());
        for v in 0..self.past_names.len() {
            let data = match self.float {
                Float::F32 => {
                    let srcs = caches
                        .iter()
                        .map(|c| {
                            c.values[v]
                                .try_extract_tensor::<f32>()
                                .map(|(_, s)| s)
                                .map_err(|e| anyhow!("{e}"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    CacheData::F32(gather_columns(&srcs, caches, rows, len, h, d))
                }
                Float::F16 => {
                    let srcs = caches
                        .iter()
                        .map(|c| {
                            c.values[v]
                                .try_extract_tensor::<half::f16>()
                                .map(|(_, s)| s)
                                .map_err(|e| anyhow!("{e}"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    CacheData::F16(gather_columns(&srcs, caches, rows, len, h, d))
                }
            };
            values.push(self.tensor(shape, data)?);
        }
        Ok(KvCache {
            values,
            batch: rows.len(),
            len,
        })
    }
}

/// One `[rows, h, len, d]` tensor from sources `[batch, h, cache.len, d]` (see
/// [`OnnxGpt2::rebuild`]).
fn gather_columns<T: Copy + Default>(
    srcs: &[&[T]],
    caches: &[&KvCache],
    rows: &[RowSource],
    len: usize,
    h: usize,
    d: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); rows.len() * h * len * d];
    for (i, r) in rows.iter().enumerate() {
        let (src, src_len) = (srcs[r.cache], caches[r.cache].len);
        for head in 0..h {
            let from = (r.row * h + head) * src_len;
            let to = (i * h + head) * len;
            for (j, &c) in r.cols.iter().enumerate() {
                out[(to + j) * d..(to + j + 1) * d]
                    .copy_from_slice(&src[(from + c) * d..(from + c + 1) * d]);
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_binary_looks_beside_itself_and_in_its_prefix_only() {
        // Not in the workspace it was built in, whose `.venv` is then not searched.
        let places = search_places(
            Some(Path::new("/opt/gp/bin/gptpipe")),
            Some(Path::new("/home/me/gptpipe")),
            None,
        );
        assert_eq!(
            places,
            vec![
                Place::File("/opt/gp/bin/libonnxruntime.so".into()),
                Place::File("/opt/gp/lib/libonnxruntime.so".into()),
            ]
        );
    }

    #[test]
    fn a_cargo_build_in_its_target_folder_uses_its_workspace_venv_then_virtual_env() {
        let places = search_places(
            Some(Path::new("/ws/target/debug/deps/t-123")),
            Some(Path::new("/ws")),
            Some(Path::new("/venv")),
        );
        assert_eq!(
            places,
            vec![
                Place::File("/ws/target/debug/deps/libonnxruntime.so".into()),
                Place::File("/ws/target/debug/lib/libonnxruntime.so".into()),
                Place::File("/ws/.venv/libonnxruntime.so".into()),
                Place::Wheel("/ws/.venv".into()),
                Place::File("/venv/libonnxruntime.so".into()),
                Place::Wheel("/venv".into()),
            ]
        );
    }
}
