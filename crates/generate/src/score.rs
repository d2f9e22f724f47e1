//! Scores: how likely the model finds a text, as the mean log-probability of its tokens
//! (natural log, temperature 1) and the perplexity `exp(-mean)`, `transformers`' `exp(loss)`.
//!
//! Rows longer than the model's context are scored through strided windows ([`windows`]),
//! planned here once for every backend: the default [`Backend::token_log_probs`] steps
//! through them ([`log_probs_by_steps`]) and fast backends run each window in one pass.

use crate::backend::Backend;
use crate::codec::Codec;
use crate::driver::{Job, Sample};
use anyhow::{ensure, Context, Result};
use std::ops::Range;

/// The score of a text: over `tokens` tokens, their mean log-probability and perplexity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub mean_logprob: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

impl Score {
    /// The score of these log-probabilities; `None` for none.
    pub fn of(log_probs: &[f32]) -> Option<Score> {
        if log_probs.is_empty() {
            return None;
        }
        let sum: f64 = log_probs.iter().map(|&l| l as f64).sum();
        let mean_logprob = sum / log_probs.len() as f64;
        Some(Score {
            mean_logprob,
            perplexity: (-mean_logprob).exp(),
            tokens: log_probs.len(),
        })
    }
}

/// How far each window past the first moves: half the context, so every token past the
/// first window is predicted from at least `n_ctx - stride` tokens.
pub fn stride(n_ctx: usize) -> usize {
    (n_ctx / 2).max(1)
}

/// Where the context of token `j` starts: 0 while the row up to `j` fits the model
/// (`j < n_ctx`), else the least multiple of [`stride`] that leaves at most `n_ctx - 1`
/// tokens of context, so the context holds `n_ctx - stride ..= n_ctx - 1` tokens.
pub fn score_window(j: usize, n_ctx: usize) -> usize {
    let over = (j + 1).saturating_sub(n_ctx);
    let s = stride(n_ctx);
    over.div_ceil(s) * s
}

/// One row's part of a [`Window`]: its tokens `score` are predicted from the tokens
/// `window.start..j`; the model needs `row[window.start..score.end - 1]` as input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub row: usize,
    pub score: Range<usize>,
}

impl Part {
    /// The input tokens (`start` is the window's): the last predicts `score.end - 1`.
    pub fn input<'a>(&self, rows: &'a [Vec<u32>], start: usize) -> &'a [u32] {
        &rows[self.row][start..self.score.end - 1]
    }
}

/// The rows that have tokens to score with contexts from `start` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub parts: Vec<Part>,
}

/// Checks the arguments of [`Backend::token_log_probs`] and plans its windows, in order of
/// `start`: each token `j >= from[row]` of each row lies in exactly one window, the one
/// starting at [`score_window`]`(j, n_ctx)`.
pub fn windows(rows: &[Vec<u32>], from: &[usize], n_ctx: usize) -> Result<Vec<Window>> {
    ensure!(
        rows.len() == from.len(),
        "{} rows but {} start positions",
        rows.len(),
        from.len()
    );
    ensure!(
        n_ctx >= 2,
        "a context of {n_ctx} tokens cannot score tokens"
    );
    for (i, (row, &f)) in rows.iter().zip(from).enumerate() {
        ensure!(
            f >= 1 && f <= row.len(),
            "row {i}: scoring from token {f} of {} (the first token has no context)",
            row.len()
        );
    }
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let s = stride(n_ctx);
    let mut out = Vec::new();
    let mut start = 0;
    while start < longest {
        // Tokens whose context starts here: [1, n_ctx) first, then the last `stride`.
        let lo = if start == 0 { 1 } else { start + n_ctx - s };
        let hi = start + n_ctx;
        let parts: Vec<Part> = rows
            .iter()
            .zip(from)
            .enumerate()
            .filter_map(|(row, (r, &f))| {
                let score = lo.max(f)..hi.min(r.len());
                (!score.is_empty()).then_some(Part { row, score })
            })
            .collect();
        if !parts.is_empty() {
            out.push(Window { start, parts });
        }
        start += s;
    }
    Ok(out)
}

/// `log_softmax(logits)[token]`, in f64 for the sum.
pub fn log_prob_of(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - sum.ln()) as f32
}

/// [`Backend::token_log_probs`] through `start`, `step` and `logits`: the rows of each
/// window start together from their window's first token and step in lockstep, each row
/// leaving once its last token is scored.
pub fn log_probs_by_steps<B: Backend + ?Sized>(
    backend: &mut B,
    rows: &[Vec<u32>],
    from: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let plan = windows(rows, from, backend.n_ctx())?;
    let mut out: Vec<Vec<f32>> = rows
        .iter()
        .zip(from)
        .map(|(r, &f)| Vec::with_capacity(r.len().saturating_sub(f)))
        .collect();
    for Window { start, parts } in plan {
        let mut active: Vec<&Part> = parts.iter().collect();
        backend.start(
            &active
                .iter()
                .map(|p| vec![rows[p.row][start]])
                .collect::<Vec<_>>(),
        )?;
        // The logits now predict token `at` of every active row.
        let mut at = start + 1;
        loop {
            if active.iter().any(|p| p.score.contains(&at)) {
                let logits = backend.logits()?;
                ensure!(
                    logits.rows == active.len(),
                    "backend returned {} rows, expected {}",
                    logits.rows,
                    active.len()
                );
                for (k, p) in active.iter().enumerate() {
                    if p.score.contains(&at) {
                        out[p.row].push(log_prob_of(logits.row(k), rows[p.row][at]));
                    }
                }
            }
            let keep: Vec<usize> = (0..active.len())
                .filter(|&k| at + 1 < active[k].score.end)
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                backend.retain(&keep)?;
                active = keep.iter().map(|&k| active[k]).collect();
            }
            backend.step(&active.iter().map(|p| rows[p.row][at]).collect::<Vec<_>>())?;
            at += 1;
        }
    }
    Ok(out)
}

/// The scores of token rows, `from[i]` as in [`Backend::token_log_probs`], `batch_size`
/// rows per call (rows of similar length together, so padded backends waste little);
/// `None` for a row with no token to score.
pub fn score_rows(
    backend: &mut dyn Backend,
    rows: &[Vec<u32>],
    from: &[usize],
    batch_size: usize,
) -> Result<Vec<Option<Score>>> {
    ensure!(batch_size > 0, "batch_size must be at least 1");
    ensure!(rows.len() == from.len(), "one start position per row");
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let mut out = vec![None; rows.len()];
    for chunk in order.chunks(batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
        let starts: Vec<usize> = chunk.iter().map(|&i| from[i]).collect();
        let log_probs = backend.token_log_probs(&batch, &starts)?;
        ensure!(
            log_probs.len() == chunk.len(),
            "backend scored {} rows, expected {}",
            log_probs.len(),
            chunk.len()
        );
        for ((&i, lp), (row, &f)) in chunk.iter().zip(&log_probs).zip(batch.iter().zip(&starts)) {
            ensure!(
                lp.len() == row.len() - f,
                "backend scored {} tokens of row {i}, expected {}",
                lp.len(),
                row.len() - f
            );
            out[i] = Score::of(lp);
        }
    }
    Ok(out)
}

/// The tokens of a text as scored: the start token (as for an empty prefix) then the
/// text's tokens. Fails when the text encodes to no token.
pub fn text_row(codec: &dyn Codec, text: &str) -> Result<Vec<u32>> {
    let tokens = codec.encode(text)?;
    ensure!(!tokens.is_empty(), "the text encodes to no tokens");
    let mut row = Vec::with_capacity(tokens.len() + 1);
    row.push(codec.start_token());
    row.extend(tokens);
    Ok(row)
}

/// The scores of plain texts, each conditioned on the start token alone (as an empty
/// prefix is), `batch_size` texts per call. Fails, naming the text's index, for a text
/// that encodes to no token.
pub fn score_texts(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    texts: &[&str],
    batch_size: usize,
) -> Result<Vec<Score>> {
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| text_row(codec, t).with_context(|| format!("text {i}")))
        .collect::<Result<_>>()?;
    let from = vec![1; rows.len()];
    let scores = score_rows(backend, &rows, &from, batch_size)?;
    // Every row has at least one token after the start token.
    Ok(scores.into_iter().map(|s| s.expect("scored")).collect())
}

/// The generated tokens of `sample` that its score covers: those whose bytes all lie before
/// the stop cut (all of them when no stop was reached). A token that completes or
/// straddles the stop string is not kept, nor is any after it.
pub fn kept_tokens<'a>(sample: &'a Sample, codec: &dyn Codec) -> &'a [u32] {
    let Some(cut) = sample.stop_at else {
        return &sample.tokens;
    };
    let mut end = 0;
    let kept = sample
        .tokens
        .iter()
        .take_while(|&&t| {
            end += codec.token_bytes(t).len();
            end <= cut
        })
        .count();
    &sample.tokens[..kept]
}

/// The scores of finished samples of `job`: each sample's [`kept_tokens`] conditioned on
/// the job's prompt (the prefix, or the start token for an empty one), whatever
/// `include_prefix` says; `None` for a sample with no kept token. Past the model's context
/// the windows are [`windows`]', not the ones the sample was generated with.
pub fn score_samples(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    job: &Job,
    samples: &[Sample],
    batch_size: usize,
) -> Result<Vec<Option<Score>>> {
    let rows: Vec<Vec<u32>> = samples
        .iter()
        .map(|s| [job.prompt.as_slice(), kept_tokens(s, codec)].concat())
        .collect();
    let from = vec![job.prompt.len(); rows.len()];
    score_rows(backend, &rows, &from, batch_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_each_token_once_with_enough_context() {
        for n_ctx in [2, 3, 4, 7, 16] {
            let rows: Vec<Vec<u32>> = (1..40).map(|len| vec![0; len]).collect();
            let from: Vec<usize> = rows.iter().map(|r| (r.len() / 3).max(1)).collect();
            let plan = windows(&rows, &from, n_ctx).unwrap();
            for (i, row) in rows.iter().enumerate() {
                let mut seen = Vec::new();
                for w in &plan {
                    for p in w.parts.iter().filter(|p| p.row == i) {
                        assert!(p.input(&rows, w.start).len() < n_ctx);
                        for j in p.score.clone() {
                            assert_eq!(score_window(j, n_ctx), w.start, "n_ctx {n_ctx} j {j}");
                            let context = j - w.start;
                            assert!(context < n_ctx);
                            assert!(j < n_ctx || context >= n_ctx - stride(n_ctx));
                            seen.push(j);
                        }
                    }
                }
                let want: Vec<usize> = (from[i]..row.len()).collect();
                assert_eq!(seen, want, "n_ctx {n_ctx} row {i}");
            }
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(windows(&[vec![1, 2]], &[0], 8).is_err());
        assert!(windows(&[vec![1, 2]], &[3], 8).is_err());
        assert!(windows(&[vec![1, 2]], &[1, 1], 8).is_err());
        assert!(windows(&[vec![1, 2]], &[1], 1).is_err());
        assert_eq!(windows(&[vec![1, 2]], &[2], 8).unwrap(), vec![]);
    }

    #[test]
    fn score_is_mean_and_perplexity() {
        let s = Score::of(&[-1.0, -2.0, -3.0]).unwrap();
        assert_eq!(s.tokens, 3);
        assert!((s.mean_logprob + 2.0).abs() < 1e-12);
        assert!((s.perplexity - 2f64.exp()).abs() < 1e-9);
        assert_eq!(Score::of(&[]), None);
    }

    #[test]
    fn kept_tokens_end_before_the_stop() {
        let codec = crate::codec::gpt2().unwrap();
        let tokens = codec.encode("Hello world!").unwrap();
        assert_eq!(tokens.len(), 3);
        let cut_at = |stop_at: Option<usize>| Sample {
            index: 0,
            text: String::new(),
            tokens: tokens.clone(),
            stop_at,
            prefix_len: 0,
        };
        // The stop starts where a token starts (" world" at byte 5): the tokens before it
        // are kept.
        assert_eq!(kept_tokens(&cut_at(Some(5)), codec.as_ref()), &tokens[..1]);
        // The stop starts inside "Hello" ("lo w" at byte 3): that token straddles the cut.
        assert_eq!(kept_tokens(&cut_at(Some(3)), codec.as_ref()), &[] as &[u32]);
        // No stop reached: every token.
        assert_eq!(kept_tokens(&cut_at(None), codec.as_ref()), &tokens[..]);
    }

    #[test]
    fn a_stop_that_min_length_ignored_does_not_cut_the_score() {
        let codec = crate::codec::gpt2().unwrap();
        let job = Job::new(
            codec.as_ref(),
            "",
            false,
            10,
            crate::Sampling::default(),
            0,
            &["b".to_owned()],
        )
        .unwrap()
        .with_controls(codec.as_ref(), 3, 0, &[])
        .unwrap();
        let mut row = crate::SampleRow::new(&job, 0);
        let tokens: Vec<u32> = ["b", "c", "d", "b", "e"]
            .iter()
            .map(|t| codec.encode(t).unwrap()[0])
            .collect();
        for &t in &tokens {
            if !row.push(t, codec.as_ref(), &job) {
                break;
            }
        }
        // The first "b" came within min_length tokens: the sample went on to the second.
        let sample = row.finish(&job);
        assert_eq!(sample.text, "bcd");
        assert_eq!(kept_tokens(&sample, codec.as_ref()), &tokens[..3]);
    }

    #[test]
    fn log_prob_is_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let want = (2f64.exp() / z).ln();
        assert!((log_prob_of(&logits, 1) as f64 - want).abs() < 1e-6);
    }
}
