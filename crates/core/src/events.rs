//! What a run reports: one event type, shown as JSON lines (`--json`), progress bars (a
//! TTY) or plain log lines (anything else).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One thing that happened during a run. With `--json` each is printed as one line, tagged
/// by `event`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The plan of a run: the selected stages in execution order.
    Plan {
        stages: Vec<String>,
    },
    StageStarted {
        stage: String,
        kind: String,
    },
    /// Periodic progress; `fields` holds what the stage measures (loss, tokens/s...).
    StageProgress {
        stage: String,
        step: u64,
        total: u64,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    /// A line of text worth showing, such as a training sample.
    StageLog {
        stage: String,
        message: String,
    },
    StageFinished {
        stage: String,
        seconds: f64,
        output_hash: String,
    },
    /// Nothing ran: the output was up to date (`restored: false`) or was restored from the
    /// run cache (`restored: true`).
    StageCached {
        stage: String,
        restored: bool,
    },
    StageFailed {
        stage: String,
        error: String,
        /// The stage was stopped by its cancellation ([`crate::runner::Cancelled`]), not by
        /// a failure of its own. Not part of the JSON (`error` says "cancelled"); false in
        /// events read back from JSON.
        #[serde(skip)]
        cancelled: bool,
    },
    /// Not run because a stage it depends on failed.
    StageSkipped {
        stage: String,
        reason: String,
    },
    Warning {
        message: String,
    },
    /// `run --detach` submitted the stage as Slurm job `job`, to start once the jobs
    /// `after` completed; or, with `already` (the job's state), an earlier `run --detach`
    /// did, and it was not submitted again.
    StageSubmitted {
        stage: String,
        job: String,
        after: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        already: Option<String>,
    },
    /// The end of a run.
    RunFinished {
        ran: usize,
        cached: usize,
        failed: usize,
        /// Not run: an upstream stage failed, or a failure stopped the run first.
        skipped: usize,
        /// Submitted as detached Slurm jobs (`run --detach`; absent when none was).
        #[serde(default, skip_serializing_if = "is_zero")]
        submitted: usize,
        seconds: f64,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Receives events; implementations must be usable from several stage threads at once.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Discards everything (used by tests and by `status`).
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _: Event) {}
}

/// One JSON object per line on stdout.
pub struct JsonSink;

impl EventSink for JsonSink {
    fn emit(&self, event: Event) {
        use std::io::Write;
        let line = serde_json::to_string(&event).expect("events serialize");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
