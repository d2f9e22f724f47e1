//! The training data: token chunks built as gpt-2-simple's `load_dataset` builds them,
//! random windows inside a chunk, and a held-out validation tail.

use anyhow::{bail, Context, Result};
use gptpipe_core::config::{Pipeline, StageKind};
use gptpipe_core::stage::InputSource;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Token chunks for training and validation. A window never crosses a chunk boundary.
pub struct Dataset {
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
    /// Tokens per training window: `n_ctx`, or the longest chunk when shorter.
    pub window: usize,
}

/// A stateless mix of a seed and counters (SplitMix64), so the window drawn at a given
/// step does not depend on what ran before: resuming needs no generator state.
pub fn mix(seed: u64, a: u64, b: u64, c: u64) -> u64 {
    let mut z = seed;
    for x in [a, b, c] {
        z = z
            .wrapping_add(x.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl Dataset {
    /// Loads `source` as chunks. `@prepare` stages give their `tokens.bin` (one chunk);
    /// a text file or a folder of them is tokenized, files joined with `<|endoftext|>`
    /// until `combine` characters make a chunk (gpt-2-simple's `combine`). A folder's files
    /// are those the cache key hashes (see `gptpipe_core::inputs::expand`).
    pub fn load(
        source: &InputSource,
        combine: usize,
        pipeline: &Pipeline,
    ) -> Result<Vec<Vec<u32>>> {
        let chunks = match source {
            InputSource::Stage { name, kind, dir } => {
                if *kind != StageKind::Prepare {
                    bail!("dataset \"@{name}\" is a {kind} stage; it must be a prepare stage or a text file");
                }
                vec![read_tokens_bin(&dir.join("tokens.bin"))?]
            }
            InputSource::Path(path) if path.extension().is_some_and(|e| e == "bin") => {
                vec![read_tokens_bin(path)?]
            }
            InputSource::Path(path) => {
                let files = text_files(pipeline, path)?;
                tokenize_combined(&files, combine)?
            }
        };
        let chunks: Vec<Vec<u32>> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        if chunks.iter().map(Vec::len).sum::<usize>() < 2 {
            bail!("the dataset has fewer than 2 tokens: nothing to train on");
        }
        Ok(chunks)
    }

    /// Splits off the last `val_split` of every chunk for validation and sets the window.
    pub fn new(
        chunks: Vec<Vec<u32>>,
        n_ctx: usize,
        val_split: f64,
        vocab_size: usize,
    ) -> Result<Self> {
        if let Some(bad) = chunks.iter().flatten().find(|&&t| t as usize >= vocab_size) {
            bail!(
                "the dataset holds token id {bad}, outside the model's vocabulary of {vocab_size}"
            );
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for mut c in chunks {
            let n_val = (c.len() as f64 * val_split).floor() as usize;
            if n_val >= 2 && c.len() - n_val >= 2 {
                val.push(c.split_off(c.len() - n_val));
            }
            train.push(c);
        }
        if val_split > 0.0 && val.is_empty() {
            bail!("val_split = {val_split} leaves no validation window of 2 tokens: the dataset is too small");
        }
        let longest = train.iter().map(Vec::len).max().unwrap_or(0);
        let window = n_ctx.min(longest);
        if window < 2 {
            bail!("the dataset is too small to train on (its longest chunk has {longest} tokens)");
        }
        Ok(Self { train, val, window })
    }

    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(Vec::len).sum()
    }

    /// Row `row` of micro-batch `micro` of `step`: a uniformly drawn window among all
    /// windows that lie inside one chunk.
    pub fn window_at(&self, seed: u64, step: u64, micro: u64, row: u64) -> &[u32] {
        let w = self.window;
        let starts: Vec<usize> = self
            .train
            .iter()
            .map(|c| (c.len() + 1).saturating_sub(w))
            .collect();
        let total: usize = starts.iter().sum();
        let mut r = (mix(seed, step, micro, row) % total as u64) as usize;
        for (c, n) in self.train.iter().zip(&starts) {
            if r < *n {
                return &c[r..r + w];
            }
            r -= n;
        }
        unreachable!("r < total")
    }

    /// Rows `rows` of a training micro-batch (`0..batch_size`, or a data-parallel rank's
    /// share of them), `[rows, window]` on `device`.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        micro: u64,
        rows: std::ops::Range<u64>,
        device: Device,
    ) -> Tensor {
        let batch = (rows.end - rows.start) as i64;
        let rows: Vec<i64> = rows
            .flat_map(|r| {
                self.window_at(seed, step, micro, r)
                    .iter()
                    .map(|&t| t as i64)
            })
            .collect();
        Tensor::from_slice(&rows)
            .reshape([batch, self.window as i64])
            .to_device(device)
    }

    /// Validation windows: consecutive, non-overlapping, at most `max` of them (spread
    /// evenly), each `min(window, chunk)` long; rows of equal length batch together.
    pub fn val_windows(&self, max: usize) -> Vec<&[u32]> {
        let mut all = Vec::new();
        for c in &self.val {
            let w = self.window.min(c.len());
            let mut i = 0;
            while i + w <= c.len() {
                all.push(&c[i..i + w]);
                i += w;
            }
        }
        if all.len() > max {
            let stride = all.len() as f64 / max as f64;
            all = (0..max)
                .map(|k| all[(k as f64 * stride) as usize])
                .collect();
        }
        all
    }

    /// One random token of the training data, as gpt-2-simple's sample context.
    pub fn random_token(&self, seed: u64, step: u64) -> u32 {
        let c = &self.train[(mix(seed, step, 1, 7) % self.train.len() as u64) as usize];
        c[(mix(seed, step, 2, 7) % c.len() as u64) as usize]
    }
}

/// Little-endian u16 GPT-2 ids (the prepare stage's `tokens.bin`).
pub fn read_tokens_bin(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() % 2 != 0 {
        bail!(
            "{} has an odd number of bytes: not little-endian u16 tokens",
            path.display()
        );
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect())
}

fn text_files(pipeline: &Pipeline, path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        bail!(
            "dataset {} does not exist (give \"@prepare-stage\", a text file or a folder)",
            path.display()
        );
    }
    // Every file below a folder, sorted, as gpt-2-simple's `os.walk` and the cache key see
    // them.
    let files = gptpipe_core::inputs::expand(
        pipeline,
        &gptpipe_core::config::UserPath::from_path(path.to_path_buf()),
        &mut gptpipe_core::inputs::FileSet::default(),
    )?;
    if files.is_empty() {
        bail!("dataset folder {} has no files", path.display());
    }
    Ok(files)
}

/// gpt-2-simple's `load_dataset`: accumulate file texts, encode once `combine` characters
/// are reached, `<|endoftext|>` between files otherwise.
fn tokenize_combined(files: &[PathBuf], combine: usize) -> Result<Vec<Vec<u32>>> {
    let tok = gptpipe_text::Gpt2Tokenizer::new()?;
    let mut chunks = Vec::new();
    let mut raw = String::new();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        raw.push_str(&String::from_utf8_lossy(&bytes));
        if raw.len() >= combine {
            chunks.push(tok.encode(&raw));
            raw.clear();
        } else {
            raw.push_str(gptpipe_text::EOT);
        }
    }
    if !raw.is_empty() {
        chunks.push(tok.encode(&raw));
    }
    Ok(chunks)
}
