//! What watch mode prints: one status line per cycle (or one `watch_cycle` JSON object
//! with `--json`), warnings and failures as they happen, progress bars on a terminal.

use gptpipe_core::config::ConfigError;
use gptpipe_core::events::{Event, EventSink};
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::Cancellation;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};

/// Where watch output goes.
pub struct Output {
    json: bool,
    /// Bars and running/done lines, only on a terminal: elsewhere the status line is enough.
    tty: Option<HumanSink>,
    /// Instead of stdout, JSON objects go here (for tests of the library).
    channel: Option<mpsc::Sender<Value>>,
}

impl Output {
    pub fn new(json: bool) -> Self {
        let tty = (!json && std::io::stderr().is_terminal()).then(HumanSink::new);
        Self {
            json,
            tty,
            channel: None,
        }
    }

    /// Sends every JSON object (events, `watch_cycle`...) to `tx` and prints nothing.
    pub fn channel(tx: mpsc::Sender<Value>) -> Self {
        Self {
            json: true,
            tty: None,
            channel: Some(tx),
        }
    }

    /// One JSON object per line, `event` first as `run --json` prints it.
    fn json_line(&self, value: &impl Serialize) {
        match &self.channel {
            Some(tx) => {
                let _ = tx.send(serde_json::to_value(value).expect("serializes"));
            }
            None => {
                use std::io::Write;
                let line = serde_json::to_string(value).expect("serializes");
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    /// A watch object: `event` first, then `body`'s fields.
    fn tagged(&self, event: &str, body: &impl Serialize) {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            event: &'a str,
            #[serde(flatten)]
            body: &'a T,
        }
        self.json_line(&Tagged { event, body });
    }

    fn event(&self, event: &Event) {
        if self.json {
            self.json_line(event);
            return;
        }
        match event {
            Event::Warning { message } => eprintln!("warning: {message}"),
            Event::StageStarted { .. }
            | Event::StageProgress { .. }
            | Event::StageFinished { .. } => {
                if let Some(h) = &self.tty {
                    h.emit(event.clone());
                }
            }
            _ => {}
        }
    }

    pub fn warning(&self, message: String) {
        self.event(&Event::Warning { message });
    }

    pub fn pipeline_error(&self, cycle: u64, error: ConfigError) {
        if self.json {
            let body = serde_json::json!({
                "cycle": cycle,
                "message": error.message,
                "help": error.help,
            });
            self.tagged("watch_pipeline_error", &body);
        } else {
            eprintln!("{:?}", miette::Report::new(error));
            eprintln!("[{}] pipeline has an error; waiting for a fix", clock());
        }
    }

    pub fn started(&self, pipeline: &std::path::Path, watching: usize) {
        if self.json {
            let body = serde_json::json!({
                "pipeline": pipeline.display().to_string(),
                "watching": watching,
            });
            self.tagged("watch_started", &body);
        } else {
            eprintln!(
                "watching {} ({watching} folders); Ctrl-C to stop",
                pipeline.display()
            );
        }
    }

    pub fn cycle(&self, summary: &CycleSummary) {
        if self.json {
            self.tagged("watch_cycle", summary);
        } else {
            eprintln!("[{}] {}", clock(), summary.line());
        }
    }

    pub fn stopped(&self) {
        if self.json {
            self.tagged("watch_stopped", &serde_json::json!({}));
        } else {
            eprintln!("stopped");
        }
    }
}

/// What one cycle did.
#[derive(Debug, Default, Serialize)]
pub struct CycleSummary {
    pub cycle: u64,
    /// The changed paths that started this cycle (empty for the first).
    pub changed: Vec<String>,
    pub ran: Vec<String>,
    /// Up to date, or restored from the run cache.
    pub cached: Vec<String>,
    pub failed: Vec<Failure>,
    /// Stopped because a change touched their inputs; they run again next cycle.
    pub cancelled: Vec<String>,
    /// Stopped by Ctrl-C, which ends the watch.
    pub stopped: Vec<String>,
    pub skipped: Vec<String>,
    /// A run-level error (the workdir could not be opened...).
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub stage: String,
    pub error: String,
}

impl CycleSummary {
    /// The one status line.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if !self.changed.is_empty() {
            let shown: Vec<&str> = self.changed.iter().take(3).map(String::as_str).collect();
            let more = self.changed.len().saturating_sub(3);
            let more = if more > 0 {
                format!(" +{more}")
            } else {
                String::new()
            };
            parts.push(format!("{}{more} changed", shown.join(", ")));
        }
        if !self.cancelled.is_empty() {
            parts.push(format!(
                "cancelled {} (inputs changed)",
                self.cancelled.join(", ")
            ));
        }
        if !self.stopped.is_empty() {
            parts.push(format!("stopped {} (Ctrl-C)", self.stopped.join(", ")));
        }
        if !self.ran.is_empty() {
            parts.push(format!("ran {}", self.ran.join(", ")));
        }
        if !self.cached.is_empty() {
            parts.push(format!("{} up to date", self.cached.len()));
        }
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|f| f.stage.as_str()).collect();
            parts.push(format!("FAILED {}", names.join(", ")));
        }
        if let Some(e) = &self.error {
            parts.push(format!("error: {e}"));
        }
        format!("{} ({:.1}s)", parts.join("; "), self.seconds)
    }
}

/// The event sink of one cycle's run: tallies outcomes, forwards what is worth showing,
/// and cancels a stage whose inputs changed while it is (or when it starts) running;
/// other stages finish.
pub struct CycleSink<'a> {
    out: &'a Output,
    cancel: &'a Cancellation,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: BTreeSet<String>,
    /// Stages made stale by changes seen during this run.
    affected: BTreeSet<String>,
    summary: CycleSummary,
}

impl<'a> CycleSink<'a> {
    pub fn new(out: &'a Output, cancel: &'a Cancellation) -> Self {
        Self {
            out,
            cancel,
            state: Mutex::new(State::default()),
        }
    }

    /// Notes stages that a change made stale; cancels those of them that are running.
    pub fn mark_affected(&self, stages: BTreeSet<String>) {
        let mut s = self.state.lock().unwrap();
        for stage in stages.iter().filter(|st| s.running.contains(*st)) {
            self.cancel.cancel_stage(stage);
        }
        s.affected.extend(stages);
    }

    pub fn into_summary(self) -> CycleSummary {
        self.state.into_inner().unwrap().summary
    }
}

impl EventSink for CycleSink<'_> {
    fn emit(&self, event: Event) {
        let mut s = self.state.lock().unwrap();
        match &event {
            Event::StageStarted { stage, .. } => {
                s.running.insert(stage.clone());
                // Its inputs changed after the plan was made: stop before doing work.
                if s.affected.contains(stage) {
                    self.cancel.cancel_stage(stage);
                }
            }
            Event::StageFinished { stage, .. } => {
                s.running.remove(stage);
                s.summary.ran.push(stage.clone());
            }
            Event::StageCached { stage, .. } => s.summary.cached.push(stage.clone()),
            Event::StageFailed {
                stage,
                error,
                cancelled,
            } => {
                s.running.remove(stage);
                if *cancelled && self.cancel.all_cancelled() {
                    s.summary.stopped.push(stage.clone());
                } else if *cancelled && self.cancel.is_cancelled(stage) {
                    s.summary.cancelled.push(stage.clone());
                } else {
                    if !self.out.json {
                        eprintln!("[{stage}] failed: {error}");
                    }
                    s.summary.failed.push(Failure {
                        stage: stage.clone(),
                        error: error.clone(),
                    });
                }
            }
            Event::StageSkipped { stage, .. } => s.summary.skipped.push(stage.clone()),
            _ => {}
        }
        drop(s);
        self.out.event(&event);
    }
}

/// The time of day (UTC), for status lines.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// Paths as the status line shows them: relative to the pipeline's folder where possible.
pub fn display_paths(paths: &BTreeSet<PathBuf>, base: &std::path::Path) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.strip_prefix(base).unwrap_or(p).display().to_string())
        .collect()
}
