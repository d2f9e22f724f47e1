//! Drawing samples until each prompt has `nsamples` that are kept.
//!
//! Samples of a prompt are drawn in index order, in batches, and judged in index order;
//! the first `nsamples` that pass are kept. Which samples are kept therefore depends on
//! (seed, index) and the rules only, never on `batch_size`: a batch drawn past the last
//! needed sample is discarded.

use crate::backend::Backend;
use crate::codec::Codec;
use crate::driver::{generate_batch, Job, Sample};
use anyhow::{ensure, Result};

/// What to draw.
pub struct Draw<'a> {
    pub jobs: &'a [Job],
    /// Samples to keep per job.
    pub nsamples: usize,
    pub batch_size: usize,
    /// Samples to draw per job at most before giving up.
    pub max_draws: usize,
    /// Whether a sample may be dropped: if not, exactly the samples needed are drawn.
    pub judging: bool,
    /// The first job's samples before this index were kept by an earlier run.
    pub start: usize,
}

/// Says whether a sample of a job is kept, with what was learnt judging it.
pub type Keep<'a, N> = dyn FnMut(usize, &Sample) -> Result<Option<N>> + 'a;
/// Receives each batch's kept samples of one job, with the backend free for more work.
pub type OnKept<'a, N> = dyn FnMut(&mut dyn Backend, usize, Vec<(Sample, N)>) -> Result<()> + 'a;

/// Draws the samples of `draw`. `keep(job, sample)` says whether a sample is kept; each
/// batch's kept samples go to `on_kept(backend, job, samples)`, in index order, with the
/// backend free for more work (scoring). `check(tokens)` runs after each step. When a job
/// reaches `max_draws` without enough kept samples, the error is [`Exhausted`].
pub fn draw<N>(
    backend: &mut dyn Backend,
    codec: &dyn Codec,
    draw: &Draw,
    keep: &mut Keep<N>,
    check: &mut dyn FnMut(usize) -> Result<()>,
    on_kept: &mut OnKept<N>,
) -> Result<()> {
    ensure!(draw.batch_size > 0, "batch_size must be at least 1");
    for (j, job) in draw.jobs.iter().enumerate() {
        job.check_fits(backend.n_ctx())?;
        let mut next = if j == 0 { draw.start } else { 0 };
        let mut kept = next;
        while kept < draw.nsamples {
            if next >= draw.max_draws {
                return Err(Exhausted {
                    kept,
                    nsamples: draw.nsamples,
                    drawn: next,
                    prefix: (draw.jobs.len() > 1).then(|| job.prefix.clone()),
                }
                .into());
            }
            let want = if draw.judging {
                draw.batch_size
            } else {
                draw.batch_size.min(draw.nsamples - kept)
            };
            let end = (next + want).min(draw.max_draws);
            let batch = generate_batch(backend, codec, job, next..end, check)?;
            next = end;
            let mut chosen = Vec::new();
            for sample in batch {
                if kept == draw.nsamples {
                    break;
                }
                if let Some(note) = keep(j, &sample)? {
                    kept += 1;
                    chosen.push((sample, note));
                }
            }
            if !chosen.is_empty() {
                on_kept(backend, j, chosen)?;
            }
        }
    }
    Ok(())
}

/// A job drew as many samples as it may without keeping `nsamples`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    pub kept: usize,
    pub nsamples: usize,
    pub drawn: usize,
    /// The job's prefix, when the stage has several.
    pub prefix: Option<String>,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kept {} of nsamples = {} after generating {} samples",
            self.kept, self.nsamples, self.drawn
        )?;
        if let Some(prefix) = &self.prefix {
            write!(f, " for the prefix {prefix:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Exhausted {}
