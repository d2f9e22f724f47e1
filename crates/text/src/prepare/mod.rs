//! The prepare stage: read csv, jsonl, text, lines, records and SQLite inputs, clean rows, write `dataset.txt`,
//! `tokens.bin` (GPT-2 ids, little-endian u16) and `report.json`.
//!
//! One thread reads batches of rows while the caller's thread cleans them (rayon), drops
//! duplicates, writes the text and tokenizes it (rayon) with a [`StreamEncoder`], so the
//! ids in `tokens.bin` are exactly those of `dataset.txt` encoded as a whole.

mod clean;
mod inputs;
mod read;
mod report;
mod sqlite;
mod template;

use crate::tokenizer::{Gpt2Tokenizer, StreamEncoder};
use anyhow::{bail, Context as _};
use clean::Cleaner;
use gptpipe_core::config::{InputFormat, PrepareParams, StageParams};
use gptpipe_core::stage::StageContext;
use inputs::Input;
use rayon::prelude::*;
use read::{Batch, Hangup};
use report::{DropReason, InputReport, Report};
use rustc_hash::FxHashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Bumped when the output of the same inputs and params changes.
pub const VERSION: u32 = gptpipe_core::stage::versions::PREPARE;

/// Runs a prepare stage.
pub fn run(ctx: &StageContext) -> anyhow::Result<()> {
    let StageParams::Prepare(p) = ctx.params else {
        bail!("stage {} is not a prepare stage", ctx.name);
    };
    let cleaner = Cleaner::new(p)?;
    let inputs = inputs::resolve(ctx, p)?;
    let tokenizer = Gpt2Tokenizer::new()?;
    let mut writer = Writer::create(ctx.out_dir, p, tokenizer)?;
    let mut report = Report {
        inputs: inputs
            .iter()
            .map(|i| InputReport {
                path: i.display.clone(),
                format: inputs::format_name(i.format),
                bytes: i.bytes,
                counts: Default::default(),
            })
            .collect(),
        ..Report::default()
    };
    let total: u64 = inputs.iter().map(|i| i.bytes).sum();
    let offsets: Vec<u64> = inputs
        .iter()
        .scan(0, |acc, i| {
            let start = *acc;
            *acc += i.bytes;
            Some(start)
        })
        .collect();

    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Batch>>(2);
    // Processed batches go back to the reader, so their buffers are reused.
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Batch>();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let inputs_ref = &inputs;
        scope.spawn(move || {
            for (i, input) in inputs_ref.iter().enumerate() {
                let mut send = |b: Batch| {
                    tx.send(Ok(b)).map_err(|_| Hangup)?;
                    Ok(back_rx.try_recv().map(Batch::reset).unwrap_or_default())
                };
                if let Err(e) = read::read(input, i, p, &mut send) {
                    if !e.is::<Hangup>() {
                        let _ = tx.send(Err(e));
                    }
                    return;
                }
            }
        });
        for batch in rx {
            let batch = batch?;
            ctx.check_cancelled()?;
            for w in &batch.warnings {
                ctx.warn(w.clone());
            }
            let input = &inputs[batch.input];
            let counts = &mut report.inputs[batch.input].counts;
            writer.add(&batch, input, &cleaner, counts)?;
            let kept: u64 = report.inputs.iter().map(|i| i.counts.rows_kept).sum();
            let step = offsets[batch.input] + batch.consumed;
            // The encoder holds back the text after the last boundary: the event that says
            // step == total comes after `finish`, with the final token count.
            if step < total {
                ctx.progress(
                    step,
                    total,
                    serde_json::json!({ "rows": kept, "tokens": writer.tokens }),
                );
            }
            let _ = back_tx.send(batch);
        }
        Ok(())
    })?;

    report.total();
    if report.counts.rows_kept == 0 {
        bail!("no rows left after cleaning: {}", report.counts.summary());
    }
    let (tokens, bytes) = writer.finish()?;
    ctx.progress(
        total,
        total,
        serde_json::json!({ "rows": report.counts.rows_kept, "tokens": tokens }),
    );
    report.tokens = tokens;
    report.bytes = bytes;
    let json = serde_json::to_vec_pretty(&report)?;
    std::fs::write(ctx.out_dir.join("report.json"), json).context("writing report.json")?;
    ctx.log(format!(
        "{} rows kept of {}; {tokens} tokens, {bytes} bytes",
        report.counts.rows_kept,
        report.counts.summary()
    ));
    Ok(())
}

/// Turns cleaned rows into `dataset.txt` and `tokens.bin`.
struct Writer<'p> {
    p: &'p PrepareParams,
    dataset: BufWriter<File>,
    tokens_file: BufWriter<File>,
    encoder: StreamEncoder,
    seen: FxHashSet<u128>,
    /// The last document was an unwrapped text file: `end_token` goes before the next.
    after_text: bool,
    ids: Vec<u32>,
    id_bytes: Vec<u8>,
    out: String,
    tokens: u64,
    bytes: u64,
}

impl<'p> Writer<'p> {
    fn create(dir: &Path, p: &'p PrepareParams, tokenizer: Gpt2Tokenizer) -> anyhow::Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::create(&path)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .with_context(|| format!("cannot create {}", path.display()))
        };
        Ok(Self {
            p,
            dataset: open("dataset.txt")?,
            tokens_file: open("tokens.bin")?,
            encoder: StreamEncoder::with_batch(tokenizer, 2 << 20),
            seen: FxHashSet::default(),
            after_text: false,
            ids: Vec::new(),
            id_bytes: Vec::new(),
            out: String::new(),
            tokens: 0,
            bytes: 0,
        })
    }

    fn add(
        &mut self,
        batch: &Batch,
        input: &Input,
        cleaner: &Cleaner,
        counts: &mut report::Counts,
    ) -> anyhow::Result<()> {
        for &why in &batch.dropped {
            counts.drop(why);
        }
        let dedupe = self.p.dedupe;
        let cleaned: Vec<_> = batch
            .rows
            .par_iter()
            .map(|&(a, b)| {
                cleaner.clean(&batch.buf[a..b]).map(|row| {
                    let hash = dedupe.then(|| fingerprint(&row));
                    (row, hash)
                })
            })
            .collect();
        let wrap = self.p.wrap.unwrap_or(input.format != InputFormat::Text);
        self.out.clear();
        for row in cleaned {
            let row = match row {
                Ok((_, Some(hash))) if !self.seen.insert(hash) => {
                    counts.drop(DropReason::Duplicate);
                    continue;
                }
                Ok((row, _)) => row,
                Err(why) => {
                    counts.drop(why);
                    continue;
                }
            };
            counts.keep();
            if self.after_text {
                self.out.push_str(&self.p.end_token);
            }
            self.after_text = false;
            if wrap {
                self.out.push_str(&self.p.start_token);
                self.out.push_str(&row);
                self.out.push_str(&self.p.end_token);
                self.out.push('\n');
            } else if input.format == InputFormat::Text {
                self.out.push_str(&row);
                self.after_text = true;
            } else {
                self.out.push_str(&row);
                self.out.push('\n');
            }
        }
        let out = std::mem::take(&mut self.out);
        self.write(&out)?;
        self.out = out;
        Ok(())
    }

    fn write(&mut self, text: &str) -> anyhow::Result<()> {
        self.dataset
            .write_all(text.as_bytes())
            .context("writing dataset.txt")?;
        self.bytes += text.len() as u64;
        self.encoder.push(text, &mut self.ids);
        self.flush_ids()
    }

    fn flush_ids(&mut self) -> anyhow::Result<()> {
        self.id_bytes.clear();
        for &id in &self.ids {
            // GPT-2's 50257 ids fit in 16 bits.
            self.id_bytes.extend_from_slice(&(id as u16).to_le_bytes());
        }
        self.tokens_file
            .write_all(&self.id_bytes)
            .context("writing tokens.bin")?;
        self.tokens += self.ids.len() as u64;
        self.ids.clear();
        Ok(())
    }

    /// Flushes both files; returns (tokens, dataset bytes).
    fn finish(mut self) -> anyhow::Result<(u64, u64)> {
        self.encoder.finish(&mut self.ids);
        self.flush_ids()?;
        self.dataset.flush().context("writing dataset.txt")?;
        self.tokens_file.flush().context("writing tokens.bin")?;
        Ok((self.tokens, self.bytes))
    }
}

/// 128 bits of BLAKE3: collisions are not a practical concern for dedupe.
fn fingerprint(row: &str) -> u128 {
    let hash = blake3::hash(row.as_bytes());
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}
