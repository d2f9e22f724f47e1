//! The ONNX Runtime generation backend: `gptpipe_generate`'s [`Backend`] over an exported
//! GPT-2, with the KV cache carried through `past_key_values.*` / `present.*`.
//!
//! Rows of different lengths ([`Backend::join`], continuous batching) share the cache's
//! columns: a row's tokens occupy some of them and its `attention_mask` marks which, the
//! others being padding; `position_ids` carry each row's own positions. Joined rows are
//! prefilled alone and their keys/values copied in, left-aligned; when the columns would
//! pass `n_ctx`, every row's real columns are moved left (compaction), so the cache never
//! holds more than `n_ctx` columns.

use crate::export::{export_folder, ExportOptions};
use crate::runtime::{KvCache, OnnxGpt2, Padding, RowSource, Runtime, SessionOptions};
use crate::write::MODEL_FILE;
use anyhow::{bail, ensure, Context, Result};
use gptpipe_core::config::Device;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{Backend, BackendFactory, Logits};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most logits one scoring run of [`Backend::token_log_probs`] returns (512 MB of f32).
const SCORE_LOGITS: usize = 1 << 27;

pub struct OnnxBackend {
    model: OnnxGpt2,
    cache: Option<KvCache>,
    /// Next-token logits of each active row, `[rows, vocab]`.
    last: Vec<f32>,
    rows: usize,
    /// Per row, for graphs with a mask ([`OnnxGpt2::has_mask`]): its length, which is the
    /// position of its next token.
    lens: Vec<usize>,
    /// Per row, for graphs with a mask: 1 for the cache columns that hold its tokens, 0
    /// for padding; each as long as the cache.
    masks: Vec<Vec<i64>>,
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
        if !gptpipe_hf::gpt2_simple::is_checkpoint(&dir) {
            gptpipe_hf::check_folder(&dir)
                .with_context(|| format!("{} has no {MODEL_FILE}", dir.display()))?;
        }
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
            lens: Vec::new(),
            masks: Vec::new(),
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

    /// Columns of the KV cache (each row's tokens and padding), at most `n_ctx`.
    pub fn columns(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len)
    }

    /// One token per row, each at its own position, on a graph with a mask.
    fn step_padded(&mut self, tokens: &[u32], past: KvCache) -> Result<()> {
        let n_ctx = self.n_ctx();
        if let Some(r) = self.lens.iter().position(|&l| l >= n_ctx) {
            self.cache = Some(past);
            bail!("row {r} already holds the model's context of {n_ctx} tokens");
        }
        let past = if past.len + 1 > n_ctx {
            match self.compact(&past) {
                Ok(compacted) => compacted,
                Err(e) => {
                    self.cache = Some(past);
                    return Err(e);
                }
            }
        } else {
            past
        };
        let mut attention_mask = Vec::with_capacity(tokens.len() * (past.len + 1));
        for mask in &mut self.masks {
            mask.push(1);
            attention_mask.extend_from_slice(mask);
        }
        let position_ids: Vec<i64> = self.lens.iter().map(|&l| l as i64).collect();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let padding = Padding {
            attention_mask: &attention_mask,
            position_ids: &position_ids,
        };
        let out = self
            .model
            .run_last_padded(&ids, tokens.len(), &past, &padding);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // Leave the batch as it was, so the caller may go on without this step.
                for mask in &mut self.masks {
                    mask.pop();
                }
                self.cache = Some(past);
                return Err(e);
            }
        };
        for l in &mut self.lens {
            *l += 1;
        }
        self.last = out.logits;
        self.rows = tokens.len();
        self.cache = Some(out.cache);
        Ok(())
    }

    /// Moves every row's real columns to the left, in order, and drops the columns that
    /// are padding in every row.
    fn compact(&mut self, cache: &KvCache) -> Result<KvCache> {
        let sources: Vec<RowSource> = self
            .masks
            .iter()
            .enumerate()
            .map(|(row, mask)| RowSource {
                cache: 0,
                row,
                cols: (0..mask.len()).filter(|&c| mask[c] != 0).collect(),
            })
            .collect();
        let len = sources.iter().map(|s| s.cols.len()).max().unwrap_or(0);
        let compacted = self.model.rebuild(&[cache], &sources, len)?;
        for (mask, s) in self.masks.iter_mut().zip(&sources) {
            *mask = vec![1; s.cols.len()];
            mask.resize(len, 0);
        }
        Ok(compacted)
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
        self.run(ids, rows.len(), past)?;
        if self.model.has_mask {
            self.lens = vec![len; rows.len()];
            self.masks = vec![vec![1; len]; rows.len()];
        }
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<()> {
        let past = self.cache.take().context("step before start")?;
        ensure!(
            tokens.len() == past.batch,
            "{} tokens for {} rows",
            tokens.len(),
            past.batch
        );
        if self.model.has_mask {
            return self.step_padded(tokens, past);
        }
        let ids = tokens.iter().map(|&t| t as i64).collect();
        self.run(ids, tokens.len(), past)
    }

    /// One run per window of [`gptpipe_generate::score::windows`] (rows right-padded:
    /// the causal mask keeps padding after a token out of its logits), split so that the
    /// `[rows, length, vocab]` logits of a run stay under [`SCORE_LOGITS`] values, then
    /// `log_softmax` on the host at the scored positions. The batch in use is dropped.
    fn token_log_probs(&mut self, rows: &[Vec<u32>], from: &[usize]) -> Result<Vec<Vec<f32>>> {
        let plan = gptpipe_generate::score::windows(rows, from, self.n_ctx())?;
        self.cache = None;
        self.rows = 0;
        self.lens.clear();
        self.masks.clear();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
        for w in &plan {
            let t = w
                .parts
                .iter()
                .map(|p| p.input(rows, w.start).len())
                .max()
                .unwrap_or(0);
            let per_run = (SCORE_LOGITS / (t * self.vocab_size()).max(1)).max(1);
            for parts in w.parts.chunks(per_run) {
                let mut ids = vec![0i64; parts.len() * t];
                for (k, p) in parts.iter().enumerate() {
                    for (i, &tok) in p.input(rows, w.start).iter().enumerate() {
                        ids[k * t + i] = tok as i64;
                    }
                }
                let past = self.model.empty_cache(parts.len())?;
                let run = self.model.run(&ids, parts.len(), &past)?;
                let v = run.vocab;
                for (k, p) in parts.iter().enumerate() {
                    for j in p.score.clone() {
                        let at = k * run.seq + (j - 1 - w.start);
                        let logits = &run.logits[at * v..(at + 1) * v];
                        let lp = gptpipe_generate::score::log_prob_of(logits, rows[p.row][j]);
                        out[p.row].push(lp);
                    }
                }
            }
        }
        Ok(out)
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let Some(cache) = self.cache.as_ref() else {
            // Nothing to keep of nothing: an empty batch stays empty.
            ensure!(keep.is_empty(), "retain before start");
            return Ok(());
        };
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
        if self.model.has_mask {
            self.lens = keep.iter().map(|&r| self.lens[r]).collect();
            self.masks = keep.iter().map(|&r| self.masks[r].clone()).collect();
        }
        Ok(())
    }

    fn can_join(&self) -> bool {
        self.model.has_mask
    }

    fn join(&mut self, prompts: &[Vec<u32>]) -> Result<()> {
        ensure!(
            self.model.has_mask,
            "this ONNX export has no attention_mask/position_ids inputs, so rows cannot \
             join a running batch: export the model again"
        );
        ensure!(!prompts.is_empty(), "no rows to join");
        let n_ctx = self.n_ctx();
        for (i, p) in prompts.iter().enumerate() {
            ensure!(
                (1..=n_ctx).contains(&p.len()),
                "prompt {i} of the rows to join has {} tokens: it needs 1 to {n_ctx}",
                p.len()
            );
        }
        // Prefill each length's prompts together, with an empty past.
        let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut prefilled = Vec::with_capacity(lengths.len());
        for &len in &lengths {
            let group: Vec<&Vec<u32>> = prompts.iter().filter(|p| p.len() == len).collect();
            let ids: Vec<i64> = group
                .iter()
                .flat_map(|p| p.iter().map(|&t| t as i64))
                .collect();
            let empty = self.model.empty_cache(group.len())?;
            prefilled.push(self.model.run_last(&ids, group.len(), &empty)?);
        }

        // The new batch: the rows there (their columns as they are), then the prompts
        // in order, left-aligned; padded with zero columns to the longest.
        let existing = self.cache.as_ref().filter(|c| c.batch > 0);
        let mut caches: Vec<&KvCache> = prefilled.iter().map(|o| &o.cache).collect();
        let mut sources = Vec::with_capacity(self.rows + prompts.len());
        let mut len = *lengths.last().expect("prompts are not empty");
        if let Some(cache) = existing {
            caches.push(cache);
            len = len.max(cache.len);
            sources.extend((0..cache.batch).map(|row| RowSource {
                cache: caches.len() - 1,
                row,
                cols: (0..cache.len).collect(),
            }));
        }
        let vocab = self.model.config.vocab_size;
        let mut logits = Vec::with_capacity((self.rows + prompts.len()) * vocab);
        if existing.is_some() {
            logits.extend_from_slice(&self.last);
        }
        let mut taken = vec![0; lengths.len()];
        for p in prompts {
            let g = lengths
                .binary_search(&p.len())
                .expect("every length has a group");
            let row = taken[g];
            taken[g] += 1;
            sources.push(RowSource {
                cache: g,
                row,
                cols: (0..p.len()).collect(),
            });
            logits.extend_from_slice(&prefilled[g].logits[row * vocab..(row + 1) * vocab]);
        }
        let cache = self.model.rebuild(&caches, &sources, len)?;

        if existing.is_none() {
            self.lens.clear();
            self.masks.clear();
        }
        for mask in &mut self.masks {
            mask.resize(len, 0);
        }
        for p in prompts {
            self.lens.push(p.len());
            let mut mask = vec![1; p.len()];
            mask.resize(len, 0);
            self.masks.push(mask);
        }
        self.rows = sources.len();
        self.last = logits;
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
