//! Human output: progress bars on a TTY, plain log lines elsewhere.

use crate::events::{Event, EventSink};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

pub struct HumanSink {
    bars: Option<MultiProgress>,
    state: Mutex<HashMap<String, (ProgressBar, Instant)>>,
    /// When each stage last printed a plain progress line (at most two a second).
    last_line: Mutex<HashMap<String, Instant>>,
}

impl HumanSink {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            bars: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            state: Mutex::new(HashMap::new()),
            last_line: Mutex::new(HashMap::new()),
        }
    }

    fn println(&self, line: String) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Default for HumanSink {
    fn default() -> Self {
        Self::new()
    }
}

fn fields_text(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    fields
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                format!("{k}={}", float_text(n.as_f64().unwrap_or(f64::NAN)))
            }
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rates as whole numbers, losses with 4 decimals, learning rates in scientific notation.
fn float_text(f: f64) -> String {
    match f.abs() {
        a if a >= 100.0 => format!("{f:.0}"),
        a if a >= 0.01 || a == 0.0 => format!("{f:.4}"),
        _ => format!("{f:.2e}"),
    }
}

impl EventSink for HumanSink {
    fn emit(&self, event: Event) {
        match event {
            Event::Plan { .. } => {}
            Event::StageStarted { stage, kind } => {
                self.println(format!("[{stage}] running ({kind})"));
                if let Some(m) = &self.bars {
                    let bar = m.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "[{prefix}] {bar:30} {pos}/{len} {msg} ({elapsed}<{eta})",
                        )
                        .expect("valid template"),
                    );
                    bar.set_prefix(stage.clone());
                    self.state
                        .lock()
                        .unwrap()
                        .insert(stage, (bar, Instant::now()));
                }
            }
            Event::StageProgress {
                stage,
                step,
                total,
                fields,
            } => {
                let text = fields_text(&fields);
                if self.bars.is_some() {
                    if let Some((bar, _)) = self.state.lock().unwrap().get(&stage) {
                        bar.set_length(total);
                        bar.set_position(step);
                        bar.set_message(text);
                    }
                } else {
                    let mut last = self.last_line.lock().unwrap();
                    let due = last
                        .get(&stage)
                        .is_none_or(|t| t.elapsed().as_millis() >= 500 || step == total);
                    if due {
                        last.insert(stage.clone(), Instant::now());
                        drop(last);
                        let line = format!("[{stage}] {step}/{total} {text}");
                        self.println(line.trim_end().to_owned());
                    }
                }
            }
            Event::StageLog { stage, message } => {
                for line in message.lines() {
                    self.println(format!("[{stage}] {line}"));
                }
            }
            Event::StageFinished { stage, seconds, .. } => {
                if let Some((bar, _)) = self.state.lock().unwrap().remove(&stage) {
                    bar.finish_and_clear();
                }
                self.println(format!("[{stage}] done in {seconds:.1}s"));
            }
            Event::StageCached { stage, restored } => self.println(if restored {
                format!("[{stage}] restored from cache")
            } else {
                format!("[{stage}] up to date")
            }),
            Event::StageFailed { stage, error, .. } => {
                if let Some((bar, _)) = self.state.lock().unwrap().remove(&stage) {
                    bar.abandon();
                }
                self.println(format!("[{stage}] failed: {error}"));
            }
            Event::StageSkipped { stage, reason } => {
                self.println(format!("[{stage}] skipped: {reason}"))
            }
            Event::Warning { message } => self.println(format!("warning: {message}")),
            Event::StageSubmitted {
                stage,
                job,
                after,
                already,
            } => {
                let after = match after.as_slice() {
                    [] => String::new(),
                    jobs => format!(", to start once job {} completed", jobs.join(", ")),
                };
                self.println(match already {
                    None => format!("[{stage}] detached: Slurm job {job}{after}"),
                    Some(state) => format!(
                        "[{stage}] already submitted as Slurm job {job} ({state}); not \
                         submitted again"
                    ),
                })
            }
            Event::RunFinished {
                ran,
                cached,
                failed,
                skipped,
                submitted,
                seconds,
            } => {
                let skipped = match skipped {
                    0 => String::new(),
                    n => format!(", {n} skipped"),
                };
                let submitted = match submitted {
                    0 => String::new(),
                    n => format!(
                        ", {n} submitted (detached: `gptpipe status` shows their jobs, \
                         `gptpipe run` adopts their outputs)"
                    ),
                };
                self.println(format!(
                    "{ran} ran, {cached} cached, {failed} failed{skipped} in \
                     {seconds:.1}s{submitted}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_fields_read_well() {
        let fields = serde_json::json!({
            "step_loss": 3.25678, "lr": 5e-5, "tokens_per_s": 2335.0, "rows": 60, "zero": 0.0
        });
        assert_eq!(
            fields_text(fields.as_object().unwrap()),
            "lr=5.00e-5 rows=60 step_loss=3.2568 tokens_per_s=2335 zero=0.0000"
        );
    }
}
