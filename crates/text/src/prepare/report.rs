//! `report.json`: what prepare read, kept and dropped, and why.

use serde::Serialize;
use std::collections::BTreeMap;

/// Why a row was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DropReason {
    /// A CSV record with the wrong number of fields, a JSONL line that is not an object
    /// with the text field (only with `on_error = "skip"`).
    Malformed,
    /// Not UTF-8 (only with `on_error = "skip"`).
    InvalidUtf8,
    /// A `template` field missing or empty (only with `on_error = "skip"`).
    MissingField,
    /// Nothing left after cleaning.
    Empty,
    TooShort,
    TooLong,
    Duplicate,
}

impl DropReason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::InvalidUtf8 => "invalid_utf8",
            DropReason::MissingField => "missing_field",
            DropReason::Empty => "empty",
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::Duplicate => "duplicate",
        }
    }
}

/// Counts for one input file or for the whole stage.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counts {
    pub rows_read: u64,
    pub rows_kept: u64,
    pub rows_dropped: u64,
    /// Dropped rows by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Counts {
    pub(crate) fn drop(&mut self, why: DropReason) {
        self.rows_read += 1;
        self.rows_dropped += 1;
        *self.dropped.entry(why.name()).or_default() += 1;
    }

    pub(crate) fn keep(&mut self) {
        self.rows_read += 1;
        self.rows_kept += 1;
    }

    fn add(&mut self, other: &Counts) {
        self.rows_read += other.rows_read;
        self.rows_kept += other.rows_kept;
        self.rows_dropped += other.rows_dropped;
        for (k, v) in &other.dropped {
            *self.dropped.entry(k).or_default() += v;
        }
    }

    /// "12 read, dropped: 3 too_short, 1 duplicate".
    pub(crate) fn summary(&self) -> String {
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let dropped = if dropped.is_empty() {
            "none".to_owned()
        } else {
            dropped.join(", ")
        };
        format!("{} read, dropped: {dropped}", self.rows_read)
    }
}

/// One input file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InputReport {
    /// Relative to the pipeline file where possible.
    pub path: String,
    pub format: &'static str,
    /// Size of the file.
    pub bytes: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    #[serde(flatten)]
    pub counts: Counts,
    /// Tokens in `tokens.bin`.
    pub tokens: u64,
    /// Bytes of `dataset.txt`.
    pub bytes: u64,
    /// Bytes of all inputs.
    pub input_bytes: u64,
    pub inputs: Vec<InputReport>,
}

impl Report {
    /// Totals from the per-input counts.
    pub(crate) fn total(&mut self) {
        let mut counts = Counts::default();
        for input in &self.inputs {
            counts.add(&input.counts);
        }
        self.counts = counts;
        self.input_bytes = self.inputs.iter().map(|i| i.bytes).sum();
    }
}
