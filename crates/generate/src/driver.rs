//! The decoding loop: batches of samples, each row with its own random stream, its own
//! stop (`truncate` or `length`), and a sliding window past the model's context.

use crate::backend::Backend;
use crate::codec::Codec;
use crate::controls::Controls;
use crate::row::SampleRow;
use crate::sampling::Sampling;
use anyhow::{bail, ensure, Result};
use std::ops::Range;

/// What to generate, independent of the backend and of how samples are batched.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Tokens every sample starts from: the prefix, or the start token for an empty one.
    pub prompt: Vec<u32>,
    /// Text put before each sample when `include_prefix` is set.
    pub prefix: String,
    pub include_prefix: bool,
    /// New tokens per sample (at most; `truncate` may stop it earlier).
    pub length: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Each sample ends before the earliest occurrence of any of these in its generated
    /// text (`truncate`, or an OpenAI request's `stop`); empty strings are ignored.
    pub stops: Vec<String>,
    /// `min_length`, `no_repeat_ngram_size` and `bad_words`; `None` when all are off
    /// (set by [`Job::with_controls`], after `stops` and `prompt`).
    pub controls: Option<Controls>,
}

impl Job {
    /// A job for `prefix`, encoded by `codec` (`<|endoftext|>` is the special token;
    /// `<|startoftext|>` is plain text).
    pub fn new(
        codec: &dyn Codec,
        prefix: &str,
        include_prefix: bool,
        length: usize,
        sampling: Sampling,
        seed: u64,
        stops: &[String],
    ) -> Result<Self> {
        let prompt = if prefix.is_empty() {
            vec![codec.start_token()]
        } else {
            codec.encode(prefix)?
        };
        ensure!(
            !prompt.is_empty(),
            "the prefix {prefix:?} encodes to no tokens"
        );
        Ok(Self {
            prompt,
            prefix: prefix.to_owned(),
            include_prefix,
            length,
            sampling,
            seed,
            stops: stops.to_vec(),
            controls: None,
        })
    }

    /// Adds the stop and shape controls (see [`Controls`]); call it once `stops` are set.
    pub fn with_controls(
        mut self,
        codec: &dyn Codec,
        min_length: usize,
        no_repeat_ngram_size: usize,
        bad_words: &[String],
    ) -> Result<Self> {
        // The row's text so far is the prefix: the start token standing for an empty one
        // is no text (its bytes, "<|endoftext|>", would end bad words such as ">>").
        let text: &[u32] = if self.prefix.is_empty() && self.prompt == [codec.start_token()] {
            &[]
        } else {
            &self.prompt
        };
        self.controls = Controls::new(
            codec,
            text,
            &self.stops,
            min_length,
            no_repeat_ngram_size,
            bad_words,
        )?;
        Ok(self)
    }

    /// The non-empty stop strings.
    pub fn stops(&self) -> impl Iterator<Item = &[u8]> {
        self.stops
            .iter()
            .map(|s| s.as_bytes())
            .filter(|s| !s.is_empty())
    }

    /// Generated tokens before a stop may end a sample.
    pub fn min_length(&self) -> usize {
        self.controls.as_ref().map_or(0, |c| c.min_length)
    }

    /// `Some(k)` when the `k` largest logits of each row are enough to pick its next token
    /// (a backend may then send just those); `None` when the sampler or a control needs
    /// the full row.
    pub fn candidates_needed(&self) -> Option<usize> {
        match self.controls {
            Some(_) => None,
            None => self.sampling.candidates_needed(),
        }
    }

    /// Fails when the prefix does not fit the model's context (checked before any work).
    pub fn check_fits(&self, n_ctx: usize) -> Result<()> {
        if self.prompt.len() > n_ctx {
            bail!(
                "the prefix is {} tokens, longer than the model's context of {n_ctx} tokens",
                self.prompt.len()
            );
        }
        Ok(())
    }
}

/// One finished sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub index: usize,
    /// The prefix (when included) and the generated text, cut before `truncate`.
    pub text: String,
    /// Every token generated for this sample (the prefix excluded); when it stopped at a
    /// stop string, the last one completed it.
    pub tokens: Vec<u32>,
    /// Where the stop string that ended the sample starts in the bytes of `tokens`; `None`
    /// when it ran to `length`.
    pub stop_at: Option<usize>,
    /// Bytes of `text` that are the prefix: its length when `include_prefix`, else 0.
    pub prefix_len: usize,
}

impl Sample {
    /// Whether the sample stopped at a stop string (`truncate`) rather than at `length`.
    pub fn truncated(&self) -> bool {
        self.stop_at.is_some()
    }

    /// The generated text, without the prefix (what novelty and curation judge).
    pub fn generated(&self) -> &str {
        &self.text[self.prefix_len.min(self.text.len())..]
    }
}

/// Generates samples `indices` as one batch.
pub fn generate_batch(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    job: &Job,
    indices: Range<usize>,
    check: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Sample>> {
    let n_ctx = backend.n_ctx();
    job.check_fits(n_ctx)?;
    ensure!(n_ctx >= 2, "a context of {n_ctx} tokens cannot slide");
    let mut rows: Vec<SampleRow> = indices.map(|index| SampleRow::new(job, index)).collect();
    if rows.is_empty() || job.length == 0 {
        return Ok(rows.iter().map(|r| r.finish(job)).collect());
    }
    backend.start(&vec![job.prompt.clone(); rows.len()])?;
    let mut seq_len = job.prompt.len();
    // Indices into `rows` of the rows still generating, in backend row order.
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let mut done_tokens = 0;
    loop {
        // Active rows have all generated the same number of tokens.
        let remaining = job.length - rows[active[0]].generated().len();
        // Controls need each row's full logits on the host: no sampling on the device.
        let limit = match job.controls {
            Some(_) => 0,
            None => backend.sample_ahead_limit(&job.sampling),
        };
        let ahead = limit.min(n_ctx - seq_len).min(remaining);
        let keep = if ahead > 0 {
            // The backend samples `ahead` tokens per row by itself; rows that stop inside
            // the block drop the tokens after their stop (the draws keep their places).
            let uniforms: Vec<Vec<f64>> = active
                .iter()
                .map(|&r| (0..ahead).map(|_| rows[r].next_uniform()).collect())
                .collect();
            let block = backend.sample_ahead(&job.sampling, &uniforms)?;
            ensure!(
                block.len() == active.len() && block.iter().all(|b| b.len() == ahead),
                "backend returned a block of the wrong shape"
            );
            seq_len += ahead;
            let mut keep = Vec::with_capacity(active.len());
            for (pos, (&r, tokens)) in active.iter().zip(&block).enumerate() {
                let mut going = true;
                for &token in tokens {
                    done_tokens += 1;
                    going = rows[r].push(token, codec, job);
                    if !going {
                        break;
                    }
                }
                if going {
                    keep.push(pos);
                }
            }
            check(done_tokens)?;
            if keep.is_empty() {
                break;
            }
            keep
        } else {
            let next = sample_next(backend, job, &mut rows, &active)?;
            let mut keep = Vec::with_capacity(active.len());
            for (pos, (&r, &token)) in active.iter().zip(&next).enumerate() {
                if rows[r].push(token, codec, job) {
                    keep.push(pos);
                }
            }
            done_tokens += next.len();
            check(done_tokens)?;
            if keep.is_empty() {
                break;
            }
            let tokens: Vec<u32> = keep.iter().map(|&p| next[p]).collect();
            if keep.len() < active.len() {
                active = keep.iter().map(|&p| active[p]).collect();
                backend.retain(&keep)?;
            }
            if seq_len < n_ctx {
                backend.step(&tokens)?;
                seq_len += 1;
            } else {
                // Past the context: restart from the last n_ctx - 1 tokens of each row.
                let window: Vec<Vec<u32>> = active
                    .iter()
                    .map(|&r| rows[r].context()[rows[r].context().len() - (n_ctx - 1)..].to_vec())
                    .collect();
                backend.start(&window)?;
                seq_len = n_ctx - 1;
            }
            continue;
        };
        if keep.len() < active.len() {
            active = keep.iter().map(|&p| active[p]).collect();
            backend.retain(&keep)?;
        }
    }
    Ok(rows.iter().map(|r| r.finish(job)).collect())
}

/// The next token of each active row.
fn sample_next(
    backend: &mut dyn Backend,
    job: &Job,
    rows: &mut [SampleRow],
    active: &[usize],
) -> Result<Vec<u32>> {
    // One draw per row and step whatever the settings, so streams stay aligned.
    let us: Vec<f64> = active.iter().map(|&r| rows[r].next_uniform()).collect();
    let s = &job.sampling;
    let tokens = match job.candidates_needed() {
        Some(k) => {
            let cands = backend.top_k(k)?;
            ensure!(
                cands.len() == active.len(),
                "backend returned {} rows, expected {}",
                cands.len(),
                active.len()
            );
            cands
                .iter()
                .zip(&us)
                .map(|(c, &u)| s.sample_candidates(c, u))
                .collect()
        }
        None => {
            let mut logits = backend.logits()?;
            ensure!(
                logits.rows == active.len(),
                "backend returned {} rows, expected {}",
                logits.rows,
                active.len()
            );
            let v = logits.vocab;
            active
                .iter()
                .zip(&us)
                .enumerate()
                .map(|(pos, (&r, &u))| {
                    rows[r].sample(job, &mut logits.data[pos * v..(pos + 1) * v], u)
                })
                .collect()
        }
    };
    Ok(tokens)
}

/// Generates samples `indices` in batches of `batch_size` (the last one smaller), handing
/// each finished batch to `on_batch` in order.
pub fn generate_range(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    job: &Job,
    indices: Range<usize>,
    batch_size: usize,
    check: &mut dyn FnMut(usize) -> Result<()>,
    on_batch: &mut dyn FnMut(Vec<Sample>) -> Result<()>,
) -> Result<()> {
    ensure!(batch_size > 0, "batch_size must be at least 1");
    job.check_fits(backend.n_ctx())?;
    let mut start = indices.start;
    while start < indices.end {
        let end = (start + batch_size).min(indices.end);
        let batch = generate_batch(backend, codec, job, start..end, check)?;
        on_batch(batch)?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bad_words` after an empty prefix: the text so far is empty, so a word is banned
    /// only once the sample's own bytes start it.
    #[test]
    fn the_start_token_of_an_empty_prefix_is_no_text_for_bad_words() {
        let codec = crate::codec::gpt2().unwrap();
        let gt = codec.encode(">").unwrap()[0];
        let bans_gt = |prefix: &str| {
            let job = Job::new(
                codec.as_ref(),
                prefix,
                false,
                4,
                Sampling::default(),
                0,
                &[],
            )
            .unwrap()
            .with_controls(codec.as_ref(), 0, 0, &[">>".to_string()])
            .unwrap();
            let c = job.controls.unwrap();
            let mut logits = vec![0.0f32; codec.vocab_len()];
            c.apply(&mut logits, &job.prompt, 0, c.start_state());
            logits[gt as usize] == f32::NEG_INFINITY
        };
        assert!(!bans_gt(""), "an empty prefix bans \">\"");
        assert!(bans_gt("a >"), "after \"a >\", \">\" completes \">>\"");
        assert!(!bans_gt("a"));
    }
}
