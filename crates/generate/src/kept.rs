//! The samples a generate run keeps: drawn prompt by prompt ([`crate::draw`]), judged by
//! the curation rules ([`crate::curation`]), scored ([`crate::score`]), ordered and
//! rendered. The generate stage and `gptpipe generate` both go through here.

use crate::backend::Backend;
use crate::codec::Codec;
use crate::curation::Curation;
use crate::draw::{draw, Draw, Exhausted};
use crate::driver::{Job, Sample};
use crate::novelty::Novelty;
use crate::output::render;
use crate::prompts::listed;
use crate::score::{score_samples, Score};
use anyhow::Result;
use gptpipe_core::config::{GenerateParams, SampleFormat, SortBy};

/// One kept sample, with what was learnt about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub sample: Sample,
    /// Against the training rows, when they are known.
    pub novelty: Option<Novelty>,
    /// Under the model, when the output shows or sorts by it.
    pub score: Option<Score>,
}

/// Whether samples of `params` are scored: jsonl rows carry their score, and
/// `sort_by = "score"` orders by it.
pub fn scores(params: &GenerateParams) -> bool {
    params.format == SampleFormat::Jsonl || params.sort_by == SortBy::Score
}

/// What to generate: `params.nsamples` kept samples of each job, the first job's from
/// index `start` (those before were kept by an earlier run).
pub struct Wanted<'a> {
    pub params: &'a GenerateParams,
    pub jobs: &'a [Job],
    pub start: usize,
}

/// Generates the kept samples of `wanted`, judging each with `curation` when there is
/// one, and hands each batch's kept samples of a job to `on_batch(job, samples)` in index
/// order.
pub fn generate_kept(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    wanted: &Wanted,
    mut curation: Option<&mut Curation>,
    check: &mut dyn FnMut(usize) -> Result<()>,
    on_batch: &mut dyn FnMut(usize, Vec<Kept>) -> Result<()>,
) -> Result<()> {
    let &Wanted {
        params,
        jobs,
        start,
    } = wanted;
    let plan = Draw {
        jobs,
        nsamples: params.nsamples,
        batch_size: params.batch_size,
        max_draws: params.attempt_limit(),
        judging: curation.as_ref().is_some_and(|_| params.curates()),
        start,
    };
    let scoring = scores(params);
    let drawn = draw(
        backend,
        codec,
        &plan,
        &mut |j, sample| match curation.as_deref_mut() {
            None => Ok(Some(None)),
            Some(c) => {
                let verdict = c.judge(j, &jobs[j].prefix, sample)?;
                Ok(verdict.dropped.is_none().then_some(verdict.novelty))
            }
        },
        check,
        &mut |backend, j, batch| {
            let samples: Vec<Sample> = batch.iter().map(|(s, _)| s.clone()).collect();
            let scored = if scoring {
                score_samples(backend, codec, &jobs[j], &samples, params.batch_size)?
            } else {
                vec![None; samples.len()]
            };
            let kept = batch
                .into_iter()
                .zip(scored)
                .map(|((sample, novelty), score)| Kept {
                    sample,
                    novelty,
                    score,
                })
                .collect();
            on_batch(j, kept)
        },
    );
    match (drawn, &curation) {
        (Err(e), Some(c)) if e.is::<Exhausted>() => Err(e.context(format!(
            "the curation rules dropped too many samples (max_attempts = {} per kept \
                 sample; dropped so far: {}): raise max_attempts or loosen drop_copies, \
                 max_overlap, dedupe or drop_unfinished",
            params.attempt_limit() / params.nsamples.max(1),
            c.counts().dropped_summary(false)
        ))),
        (drawn, _) => drawn,
    }
}

/// The output file's pieces, one per sample (after `earlier`, rendered by a previous run):
/// each job's samples in `sort_by` order, under a header line in text when the prefixes
/// are listed.
pub fn render_all(
    params: &GenerateParams,
    jobs: &[Job],
    model_hash: &str,
    earlier: Vec<String>,
    kept: Vec<Vec<Kept>>,
) -> Vec<String> {
    let mut rendered = earlier;
    for (job, mut samples) in jobs.iter().zip(kept) {
        if params.sort_by == SortBy::Score {
            sort_by_score(&mut samples);
        }
        let first = rendered.len();
        for k in &samples {
            rendered.push(render(
                k,
                job,
                params.format,
                crate::output::sample_delim(params),
                model_hash,
            ));
        }
        if params.format == SampleFormat::Text && listed(params) {
            let header = group_header(&job.prefix);
            match rendered.get_mut(first) {
                Some(piece) => piece.insert_str(0, &header),
                None => rendered.push(header),
            }
        }
    }
    rendered
}

/// Best first (highest mean log-probability); unscored samples last; ties by index.
pub fn sort_by_score(samples: &mut [Kept]) {
    let key = |k: &Kept| k.score.map_or(f64::NEG_INFINITY, |s| s.mean_logprob);
    samples.sort_by(|a, b| key(b).total_cmp(&key(a)));
}

/// The line above a prefix's samples in a text output.
pub fn group_header(prefix: &str) -> String {
    let shown = serde_json::to_string(prefix).expect("a string serializes");
    format!("# prefix: {shown}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(index: usize, logprob: Option<f64>) -> Kept {
        Kept {
            sample: Sample {
                index,
                text: String::new(),
                tokens: Vec::new(),
                stop_at: None,
                prefix_len: 0,
            },
            novelty: None,
            score: logprob.map(|l| Score {
                mean_logprob: l,
                perplexity: (-l).exp(),
                tokens: 1,
            }),
        }
    }

    #[test]
    fn sorting_by_score_puts_the_best_first_and_the_unscored_last() {
        let mut s = vec![
            kept(0, Some(-3.0)),
            kept(1, None),
            kept(2, Some(-1.0)),
            kept(3, Some(-3.0)),
        ];
        sort_by_score(&mut s);
        let order: Vec<usize> = s.iter().map(|k| k.sample.index).collect();
        assert_eq!(order, [2, 0, 3, 1]);
    }
}
