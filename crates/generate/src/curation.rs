//! The rules that keep or drop a generated sample (`drop_copies`,
//! `max_overlap`, `dedupe`, `drop_unfinished`) and the count of drops by reason, for the
//! generation loop to call once per sample, in sample order.
//!
//! Rules are checked in the order of [`DropReason`]; the first that applies is the
//! sample's reason. `dedupe` compares with the samples kept so far, after the same
//! normalisation as novelty ([`crate::novelty::normalize`]), among the samples of the same
//! prompt. The loop (`crate::kept`) generates until `nsamples` are kept, and at most
//! [`GenerateParams::attempt_limit`] per prompt.

use crate::codec::Codec;
use crate::driver::Sample;
use crate::novelty::{self, Novelty, NoveltyIndex};
use anyhow::{bail, Result};
use gptpipe_core::config::GenerateParams;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The special tokens a prompt may start with, which no training row holds.
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

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

impl Counts {
    /// `"1 copied, 0 duplicate, ..."`: the drops by reason, those of no sample included
    /// only when `zeros`; `"none"` when nothing is listed.
    pub fn dropped_summary(&self, zeros: bool) -> String {
        let listed: Vec<String> = self
            .dropped
            .iter()
            .filter(|(_, &n)| zeros || n > 0)
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    }
}

/// The curation rules of one generate stage, with what they have seen.
pub struct Curation<'c> {
    index: Option<NoveltyIndex>,
    codec: &'c dyn Codec,
    drop_copies: bool,
    max_overlap: Option<f64>,
    dedupe: bool,
    drop_unfinished: bool,
    /// Per job (prompt): normalised-text hashes of its kept samples (`dedupe`).
    kept: HashMap<usize, HashSet<[u8; 16]>>,
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
            kept: HashMap::new(),
            counts,
        })
    }

    /// Judges one sample: its novelty (when the training rows are known) and whether a
    /// rule drops it. A kept sample counts for `dedupe` from now on.
    /// Judges `sample` of job `job` (its place in the stage's prompts), whose prompt is
    /// `prefix`: samples of different prompts never count as duplicates of each other.
    pub fn judge(&mut self, job: usize, prefix: &str, sample: &Sample) -> Result<Verdict> {
        let generated = sample.generated();
        let mut novelty = match &self.index {
            Some(index) => Some(index.judge(generated, self.codec)?),
            None => None,
        };
        // A prompt that is the start of a training row (a conditioned row's "{subreddit} |")
        // makes a sample a copy when prompt and sample together are the row.
        let head = prefix
            .trim_start_matches(START_OF_TEXT)
            .trim_start_matches(END_OF_TEXT);
        if let (Some(index), Some(n)) = (&self.index, novelty.as_mut()) {
            if !n.copied && !head.is_empty() {
                let whole = novelty::normalize(&format!("{head}{generated}"));
                n.copied = index.is_copy(&novelty::copy_hash(&whole));
            }
        }
        let hash = novelty::copy_hash(&novelty::normalize(generated));
        let kept = self.kept.entry(job).or_default();
        let dropped = DropReason::ALL.into_iter().find(|r| match r {
            DropReason::Unfinished => self.drop_unfinished && !sample.truncated(),
            DropReason::Copied => self.drop_copies && novelty.is_some_and(|n| n.copied),
            DropReason::Overlap => self
                .max_overlap
                .is_some_and(|max| novelty.is_some_and(|n| n.overlap > max)),
            DropReason::Duplicate => self.dedupe && kept.contains(&hash),
        });
        self.counts.generated += 1;
        match dropped {
            Some(r) => *self.counts.dropped.entry(r.name()).or_default() += 1,
            None => {
                self.counts.kept += 1;
                if self.dedupe {
                    kept.insert(hash);
                }
            }
        }
        Ok(Verdict { novelty, dropped })
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix_len: usize, truncated: bool) -> Sample {
        Sample {
            index: 0,
            text: text.into(),
            tokens: Vec::new(),
            stop_at: truncated.then_some(text.len()),
            prefix_len,
        }
    }

    fn index(codec: &dyn Codec) -> NoveltyIndex {
        let rows = ["Hello world", "The quick brown fox jumps"].map(String::from);
        NoveltyIndex::build(&rows, codec).unwrap()
    }

    fn params(set: impl FnOnce(&mut GenerateParams)) -> GenerateParams {
        let mut p = GenerateParams {
            nsamples: 2,
            ..GenerateParams::default()
        };
        set(&mut p);
        p
    }

    #[test]
    fn copies_are_equal_after_normalisation_and_judged_without_the_prefix() {
        let codec = crate::codec::gpt2().unwrap();
        let p = params(|p| p.drop_copies = true);
        let mut c = Curation::from_params(&p, Some(index(codec.as_ref())), codec.as_ref()).unwrap();
        let v = c
            .judge(0, "", &sample("  Hello \n world ", 0, false))
            .unwrap();
        assert_eq!(v.dropped, Some(DropReason::Copied));
        let n = v.novelty.unwrap();
        assert!(
            n.copied && n.overlap == 1.0 && n.nearest == Some(0),
            "{n:?}"
        );
        // Case is not normalised: a different text.
        let v = c.judge(0, "", &sample("hello world", 0, false)).unwrap();
        assert_eq!(v.dropped, None);
        assert!(!v.novelty.unwrap().copied);
        // The prefix "Hello" is not judged: " world" alone is no copy, and its token is
        // the row's " world" although it starts the sample.
        let v = c.judge(0, "", &sample("Hello world", 5, false)).unwrap();
        assert_eq!(v.dropped, None);
        let n = v.novelty.unwrap();
        assert!(
            !n.copied && n.overlap == 1.0 && n.nearest == Some(0),
            "{n:?}"
        );
        let n = c
            .judge(0, "", &sample("fox jumps high", 0, false))
            .unwrap()
            .novelty
            .unwrap();
        assert_eq!((n.overlap, n.nearest), (2.0 / 3.0, Some(1)));
        // An empty sample is no copy, shares nothing and has no nearest row.
        let n = c
            .judge(0, "", &sample("", 0, false))
            .unwrap()
            .novelty
            .unwrap();
        assert_eq!(
            n,
            Novelty {
                copied: false,
                overlap: 0.0,
                nearest: None
            }
        );
        assert_eq!(c.counts().dropped["copied"], 1);
        assert_eq!((c.counts().generated, c.counts().kept), (5, 4));
    }

    #[test]
    fn overlap_is_the_longest_shared_run_over_the_samples_tokens() {
        let codec = crate::codec::gpt2().unwrap();
        let p = params(|p| p.max_overlap = Some(0.75));
        let mut c = Curation::from_params(&p, Some(index(codec.as_ref())), codec.as_ref()).unwrap();
        // " The| quick| brown| fox| sleeps": 4 of 5 tokens in row 1.
        let v = c
            .judge(0, "", &sample("The quick brown fox sleeps", 0, false))
            .unwrap();
        let n = v.novelty.unwrap();
        assert_eq!((n.overlap, n.nearest, n.copied), (0.8, Some(1), false));
        assert_eq!(v.dropped, Some(DropReason::Overlap));
        // " The| quick| cat| and| a| dog": 2 of 6.
        let v = c
            .judge(0, "", &sample("The quick cat and a dog", 0, false))
            .unwrap();
        assert_eq!(v.novelty.unwrap().overlap, 2.0 / 6.0);
        assert_eq!(v.dropped, None);
        // Exactly at the limit is kept: " Hello| world| and| more" shares 2 of 4 (0.5).
        let p = params(|p| p.max_overlap = Some(0.5));
        let mut c = Curation::from_params(&p, Some(index(codec.as_ref())), codec.as_ref()).unwrap();
        assert_eq!(
            c.judge(0, "", &sample("Hello world and more", 0, false))
                .unwrap()
                .dropped,
            None
        );
    }

    #[test]
    fn dedupe_drops_repeats_of_kept_samples_only() {
        let codec = crate::codec::gpt2().unwrap();
        let p = params(|p| {
            p.dedupe = true;
            p.drop_unfinished = true;
            p.truncate = "\n".into();
        });
        // No training rows are needed: no novelty is reported.
        let mut c = Curation::from_params(&p, None, codec.as_ref()).unwrap();
        let verdicts: Vec<_> = [
            ("a  b", false), // unfinished: dropped, so it does not count for dedupe
            ("a b", true),
            (" a b ", true), // the same after normalisation
            ("a c", true),
        ]
        .iter()
        .map(|&(t, finished)| c.judge(0, "", &sample(t, 0, finished)).unwrap())
        .collect();
        let reasons: Vec<_> = verdicts.iter().map(|v| v.dropped).collect();
        assert_eq!(
            reasons,
            [
                Some(DropReason::Unfinished),
                None,
                Some(DropReason::Duplicate),
                None
            ]
        );
        assert!(verdicts.iter().all(|v| v.novelty.is_none()));
        let json = serde_json::to_value(c.counts()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"generated": 4, "kept": 2, "dropped":
                {"copied": 0, "duplicate": 1, "overlap": 0, "unfinished": 1}})
        );
    }

    #[test]
    fn duplicates_are_counted_within_a_prompt() {
        let codec = crate::codec::gpt2().unwrap();
        let p = params(|p| p.dedupe = true);
        let mut c = Curation::from_params(&p, None, codec.as_ref()).unwrap();
        let same = sample("a cat", 0, false);
        assert_eq!(c.judge(0, "x", &same).unwrap().dropped, None);
        assert_eq!(c.judge(1, "y", &same).unwrap().dropped, None);
        assert_eq!(
            c.judge(1, "y", &same).unwrap().dropped,
            Some(DropReason::Duplicate)
        );
    }

    #[test]
    fn a_prompt_and_its_sample_together_may_be_a_training_row() {
        let codec = crate::codec::gpt2().unwrap();
        let p = params(|p| p.drop_copies = true);
        let mut c = Curation::from_params(&p, Some(index(codec.as_ref())), codec.as_ref()).unwrap();
        // "The quick" + " brown fox jumps" is row 1; the sample alone is not.
        let v = c
            .judge(
                0,
                "<|startoftext|>The quick",
                &sample(" brown fox jumps", 0, true),
            )
            .unwrap();
        assert_eq!(v.dropped, Some(DropReason::Copied));
        // The start token alone adds nothing.
        let v = c
            .judge(0, "<|startoftext|>", &sample(" brown fox jumps", 0, true))
            .unwrap();
        assert_eq!(v.dropped, None);
    }

    #[test]
    fn rules_without_what_they_need_are_errors() {
        let codec = crate::codec::gpt2().unwrap();
        for (p, key) in [
            (params(|p| p.drop_copies = true), "drop_copies"),
            (params(|p| p.max_overlap = Some(0.5)), "max_overlap"),
        ] {
            let e = Curation::from_params(&p, None, codec.as_ref())
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }
}
