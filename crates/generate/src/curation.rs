//! Issue 14, unique samples: the rules that keep or drop a generated sample (`drop_copies`,
//! `max_overlap`, `dedupe`, `drop_unfinished`) and the count of drops by reason, for the
//! generation loop to call once per sample, in sample order.
//!
//! Rules are checked in the order of [`DropReason`]; the first that applies is the
//! sample's reason. `dedupe` compares with the samples kept so far, after the same
//! normalisation as novelty ([`crate::novelty::normalize`]). The loop generates until
//! `nsamples` are kept, and at most [`GenerateParams::attempt_limit`] samples in all
//! ([`Curation::check_limit`]).

use crate::codec::Codec;
use crate::driver::Sample;
use crate::novelty::{self, Novelty, NoveltyIndex};
use anyhow::{bail, Result};
use gptpipe_core::config::GenerateParams;
use serde::Serialize;
use std::collections::HashSet;

/// Why a sample was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The stop string was never reached (`drop_unfinished`).
    Unfinished,
    /// Equal to a training row (`drop_copies`).
    Copied,
    /// Shares more than `max_overlap` of its tokens with a training row.
    Overlap,
    /// Equal to a sample kept before it (`dedupe`).
    Duplicate,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        Self::Unfinished,
        Self::Copied,
        Self::Overlap,
        Self::Duplicate,
    ];

    /// The stable name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unfinished => "unfinished",
            Self::Copied => "copied",
            Self::Overlap => "overlap",
            Self::Duplicate => "duplicate",
        }
    }
}

/// What [`Curation::judge`] says of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Set when the stage knows its training rows (for `samples.jsonl`).
    pub novelty: Option<Novelty>,
    /// Set when the sample is dropped.
    pub dropped: Option<DropReason>,
}

/// Samples judged, kept and dropped by reason (`report` of the stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub generated: usize,
    pub kept: usize,
    /// Reason name -> samples dropped for it; every reason present, 0 included.
    pub dropped: std::collections::BTreeMap<&'static str, usize>,
}

/// The curation rules of one generate stage, with what they have seen.
pub struct Curation<'c> {
    index: Option<NoveltyIndex>,
    codec: &'c dyn Codec,
    drop_copies: bool,
    max_overlap: Option<f64>,
    dedupe: bool,
    drop_unfinished: bool,
    nsamples: usize,
    limit: usize,
    /// Normalised-text hashes of kept samples (`dedupe`).
    kept: HashSet<[u8; 16]>,
    counts: Counts,
}

impl<'c> Curation<'c> {
    /// The rules of `p`; `index` is the index over its training rows
    /// (`novelty::store::open`), required when `drop_copies` or `max_overlap` is set.
    pub fn from_params(
        p: &GenerateParams,
        index: Option<NoveltyIndex>,
        codec: &'c dyn Codec,
    ) -> Result<Self> {
        if index.is_none() && p.needs_training_rows() {
            let key = if p.drop_copies {
                "drop_copies"
            } else {
                "max_overlap"
            };
            bail!("{key} needs the training rows (novelty_against), and none were given");
        }
        if p.drop_unfinished && p.truncate.is_empty() {
            bail!("drop_unfinished needs a stop string (truncate)");
        }
        let mut counts = Counts::default();
        for r in DropReason::ALL {
            counts.dropped.insert(r.name(), 0);
        }
        Ok(Self {
            index,
            codec,
            drop_copies: p.drop_copies,
            max_overlap: p.max_overlap,
            dedupe: p.dedupe,
            drop_unfinished: p.drop_unfinished,
            nsamples: p.nsamples,
            limit: p.attempt_limit(),
            kept: HashSet::new(),
            counts,
        })
    }

    /// Judges one sample: its novelty (when the training rows are known) and whether a
    /// rule drops it. A kept sample counts for `dedupe` from now on.
    pub fn judge(&mut self, sample: &Sample) -> Result<Verdict> {
        let generated = sample.generated();
        let novelty = match &self.index {
            Some(index) => Some(index.judge(generated, self.codec)?),
            None => None,
        };
        let hash = novelty::copy_hash(&novelty::normalize(generated));
        let dropped = DropReason::ALL.into_iter().find(|r| match r {
            DropReason::Unfinished => self.drop_unfinished && !sample.truncated,
            DropReason::Copied => self.drop_copies && novelty.is_some_and(|n| n.copied),
            DropReason::Overlap => self
                .max_overlap
                .is_some_and(|max| novelty.is_some_and(|n| n.overlap > max)),
            DropReason::Duplicate => self.dedupe && self.kept.contains(&hash),
        });
        self.counts.generated += 1;
        match dropped {
            Some(r) => *self.counts.dropped.entry(r.name()).or_default() += 1,
            None => {
                self.counts.kept += 1;
                if self.dedupe {
                    self.kept.insert(hash);
                }
            }
        }
        Ok(Verdict { novelty, dropped })
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether `nsamples` samples have been kept.
    pub fn done(&self) -> bool {
        self.counts.kept >= self.nsamples
    }

    /// Fails once the attempt limit is spent without `nsamples` kept, naming the key and
    /// the drops by reason.
    pub fn check_limit(&self) -> Result<()> {
        if self.done() || self.counts.generated < self.limit {
            return Ok(());
        }
        let reasons: Vec<String> = self
            .counts
            .dropped
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        bail!(
            "kept {} of nsamples = {} after generating {} samples, the limit of max_attempts \
             = {} per kept sample (dropped: {}); raise max_attempts or loosen the curation \
             keys",
            self.counts.kept,
            self.nsamples,
            self.counts.generated,
            self.limit / self.nsamples.max(1),
            reasons.join(", ")
        )
    }
}
