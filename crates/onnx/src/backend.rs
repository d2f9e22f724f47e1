//! The ONNX Runtime generation backend: `gptpipe_generate`'s [`Backend`] over an exported
//! GPT-2, with the KV cache carried through `past_key_values.*` / `present.*`.

use crate::export::{export_folder, ExportOptions};
use crate::runtime::{KvCache, OnnxGpt2, Runtime, SessionOptions};
use crate::write::MODEL_FILE;
use anyhow::{bail, ensure, Context, Result};
use gptpipe_core::config::Device;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{Backend, BackendFactory, Logits};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct OnnxBackend {
    model: OnnxGpt2,
    cache: Option<KvCache>,
    /// Next-token logits of each active row, `[rows, vocab]`.
    last: Vec<f32>,
    rows: usize,
    /// The folder of an export made on the fly; removed with the backend.
    _scratch: Option<tempfile::TempDir>,
}

/// The factory the binary registers as the `onnx` backend: backends on `runtime`.
pub fn factory(runtime: Runtime) -> BackendFactory {
    Arc::new(move |source: &ModelSource, device: &Device| {
        Ok(Box::new(OnnxBackend::open(&runtime, source, device)?) as Box<dyn Backend>)
    })
}

impl OnnxBackend {
    /// Opens an export (an export stage's output, or a folder with `model.onnx`). A model
    /// given as safetensors weights (a finetune stage, a Hugging Face folder or hub id) is
    /// exported first, in fp32, into a temporary folder. Sessions run on `runtime`.
    pub fn open(runtime: &Runtime, source: &ModelSource, device: &Device) -> Result<Self> {
        match device {
            Device::Auto | Device::Cpu => {}
            other => bail!(
                "the ONNX Runtime backend runs on the CPU (device {:?} asked); use \
                 device = \"cpu\" or backend = \"tch\"",
                other.to_string()
            ),
        }
        let dir: PathBuf = match source {
            ModelSource::Stage { dir, .. } | ModelSource::Folder(dir) => dir.clone(),
            ModelSource::Hub(id) => gptpipe_hf::hub_folder(id)?,
            ModelSource::Inline(_) => bail!(
                "an inline random model has no ONNX file: export it first or use backend = \"tch\""
            ),
        };
        if dir.join(MODEL_FILE).is_file() {
            return Self::load(runtime, &dir, None);
        }
        // No export: the weights are exported on the fly, if the folder has loadable ones.
        gptpipe_hf::check_folder(&dir)
            .with_context(|| format!("{} has no {MODEL_FILE}", dir.display()))?;
        let scratch = tempfile::Builder::new()
            .prefix("gptpipe-onnx-")
            .tempdir()
            .context("cannot create a folder for the ONNX export")?;
        export_folder(&dir, scratch.path(), &ExportOptions::default())
            .with_context(|| format!("exporting {} for ONNX Runtime", dir.display()))?;
        let path = scratch.path().to_path_buf();
        Self::load(runtime, &path, Some(scratch))
    }

    fn load(runtime: &Runtime, dir: &Path, scratch: Option<tempfile::TempDir>) -> Result<Self> {
        let threads = std::env::var("GPTPIPE_ORT_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            model: runtime.session(dir, &SessionOptions { threads })?,
            cache: None,
            last: Vec::new(),
            rows: 0,
            _scratch: scratch,
        })
    }

    fn run(&mut self, ids: Vec<i64>, rows: usize, past: KvCache) -> Result<()> {
        let out = self.model.run_last(&ids, rows, &past)?;
        self.last = out.logits;
        self.rows = rows;
        self.cache = Some(out.cache);
        Ok(())
    }
}

impl Backend for OnnxBackend {
    fn n_ctx(&self) -> usize {
        self.model.config.n_positions
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn start(&mut self, rows: &[Vec<u32>]) -> Result<()> {
        ensure!(!rows.is_empty(), "no rows to start");
        let len = rows[0].len();
        ensure!(
            rows.iter().all(|r| r.len() == len),
            "rows of a batch must have the same length"
        );
        let ids = rows.iter().flatten().map(|&t| t as i64).collect();
        let past = self.model.empty_cache(rows.len())?;
        self.run(ids, rows.len(), past)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<()> {
        let past = self.cache.take().context("step before start")?;
        ensure!(
            tokens.len() == past.batch,
            "{} tokens for {} rows",
            tokens.len(),
            past.batch
        );
        let ids = tokens.iter().map(|&t| t as i64).collect();
        self.run(ids, tokens.len(), past)
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let cache = self.cache.as_ref().context("retain before start")?;
        ensure!(
            keep.iter().all(|&r| r < cache.batch) && keep.windows(2).all(|w| w[0] < w[1]),
            "bad rows to keep: {keep:?} of {}",
            cache.batch
        );
        if keep.len() == cache.batch {
            return Ok(());
        }
        let cache = self.model.retain(cache, keep)?;
        let vocab = self.model.config.vocab_size;
        self.last = keep
            .iter()
            .flat_map(|&r| self.last[r * vocab..(r + 1) * vocab].iter().copied())
            .collect();
        self.rows = keep.len();
        self.cache = Some(cache);
        Ok(())
    }

    /// Reads the stored logits in place (the default would copy them first).
    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
        ensure!(self.rows > 0, "top_k before start");
        let vocab = self.model.config.vocab_size;
        Ok(self
            .last
            .chunks(vocab)
            .map(|row| gptpipe_generate::sampling::top_k_of(row, k))
            .collect())
    }

    fn logits(&mut self) -> Result<Logits> {
        ensure!(self.rows > 0, "logits before start");
        Ok(Logits::new(
            self.rows,
            self.model.config.vocab_size,
            self.last.clone(),
        ))
    }
}
