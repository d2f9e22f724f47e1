//! `gptpipe watch`: notify + debounce -> reload the pipeline -> re-plan -> run, until Ctrl-C.
//!
//! Each cycle reloads the pipeline file (an error is printed and watch waits for the next
//! save), works out which folders to watch from the selected stages' inputs, and runs the
//! runner, which redoes only what is stale. Changes that arrive during a run are checked
//! against the running stages: a stage whose params or inputs changed is cancelled (the
//! runner keeps its old output and caches nothing) and the next cycle starts at once.

mod interest;
mod report;
pub mod signal;

pub use interest::Interest;
pub use report::{CycleSummary, Output};

use gptpipe_core::config::{self, ConfigError, LoadOptions, Pipeline};
use gptpipe_core::dag::Dag;
use gptpipe_core::runner::{Cancellation, RunError, RunOptions, Runner};
use gptpipe_core::stage::Registry;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use report::CycleSink;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub pipeline: PathBuf,
    /// Stages to keep up to date, with their upstream; all when empty.
    pub targets: Vec<String>,
    pub sets: Vec<String>,
    pub jobs: usize,
    /// How long the files must be quiet before a cycle starts.
    pub debounce: Duration,
}

enum Msg {
    Files(DebounceEventResult),
    RunDone(Result<(), RunError>),
}

/// How often the loop looks at the interrupt flag while nothing happens.
const POLL: Duration = Duration::from_millis(250);

/// Watches until `stop` is set (by Ctrl-C). Only a failure to watch at all is an error.
pub fn watch(
    options: &WatchOptions,
    registry: &Registry,
    out: &Output,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let files_tx = tx.clone();
    let mut debouncer = new_debouncer(options.debounce, None, move |r| {
        let _ = files_tx.send(Msg::Files(r));
    })?;
    let mut watched: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let mut changed: BTreeSet<PathBuf> = BTreeSet::new();
    let mut cycle = 0u64;
    let mut announced = false;
    while !stop.load(Ordering::SeqCst) {
        cycle += 1;
        let started = Instant::now();
        let base = interest::absolute(&options.pipeline)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let (interest, pending) = match load(options) {
            Err(e) => {
                out.pipeline_error(cycle, e);
                (Interest::pipeline_only(&options.pipeline), BTreeSet::new())
            }
            Ok((pipeline, selected)) => {
                let interest = Interest::of(&pipeline, &selected);
                update_watches(&mut debouncer, &mut watched, &interest, out);
                if !announced {
                    out.started(&options.pipeline, watched.len());
                    announced = true;
                }
                let (mut summary, pending) =
                    run_cycle(options, registry, out, &pipeline, &interest, &rx, &tx, stop);
                summary.cycle = cycle;
                summary.changed = report::display_paths(&changed, &base);
                summary.seconds = started.elapsed().as_secs_f64();
                out.cycle(&summary);
                (interest, pending)
            }
        };
        update_watches(&mut debouncer, &mut watched, &interest, out);
        changed = if pending.is_empty() {
            match wait_for_change(&rx, &interest, out, stop) {
                Some(c) => c,
                None => break,
            }
        } else {
            pending
        };
    }
    debouncer.stop();
    out.stopped();
    Ok(())
}

/// Loads the pipeline and selects the target stages.
fn load(options: &WatchOptions) -> Result<(Pipeline, Vec<String>), ConfigError> {
    let pipeline = config::load(
        &options.pipeline,
        &LoadOptions::from_env(options.sets.clone()),
    )?;
    let selected = Dag::new(&pipeline).select(&options.targets)?;
    Ok((pipeline, selected))
}

/// Runs the runner once while watching for changes. Returns the summary and the relevant
/// paths that changed during the run (the next cycle starts at once when there are any).
#[allow(clippy::too_many_arguments)]
fn run_cycle(
    options: &WatchOptions,
    registry: &Registry,
    out: &Output,
    pipeline: &Pipeline,
    interest: &Interest,
    rx: &mpsc::Receiver<Msg>,
    tx: &mpsc::Sender<Msg>,
    stop: &AtomicBool,
) -> (CycleSummary, BTreeSet<PathBuf>) {
    let cancel = Cancellation::default();
    let sink = CycleSink::new(out, &cancel);
    let run_options = RunOptions {
        targets: options.targets.clone(),
        jobs: options.jobs,
        ..RunOptions::default()
    };
    let mut pending = BTreeSet::new();
    let result = std::thread::scope(|scope| {
        let (sink, cancel, tx) = (&sink, &cancel, tx.clone());
        scope.spawn(move || {
            let r = Runner::new(pipeline, registry)
                .map_err(RunError::from)
                .and_then(|runner| runner.run(&run_options, sink, cancel).map(|_| ()));
            let _ = tx.send(Msg::RunDone(r));
        });
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Msg::RunDone(r)) => break r,
                Ok(Msg::Files(events)) => {
                    let paths = relevant_paths(events, interest, out);
                    if !paths.is_empty() {
                        let list: Vec<PathBuf> = paths.iter().cloned().collect();
                        sink.mark_affected(affected_stages(options, pipeline, interest, &list));
                        pending.extend(paths);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::SeqCst) {
                        cancel.cancel_all();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
            }
        }
    });
    let mut summary = sink.into_summary();
    match result {
        Ok(()) | Err(RunError::Failed(_)) => {}
        Err(RunError::Config(e)) => summary.error = Some(e.message),
        Err(RunError::Stale(_)) => {}
        Err(RunError::Other(e)) => summary.error = Some(format!("{e:#}")),
    }
    (summary, pending)
}

/// The stages a change makes stale: those whose inputs changed, those whose effective
/// params changed (when the pipeline file still loads), and everything downstream.
fn affected_stages(
    options: &WatchOptions,
    old: &Pipeline,
    interest: &Interest,
    paths: &[PathBuf],
) -> BTreeSet<String> {
    let mut hit = interest.stages_touched(paths);
    if let Ok(new) = config::load(
        &options.pipeline,
        &LoadOptions::from_env(options.sets.clone()),
    ) {
        let all_changed = new.workdir != old.workdir;
        for (name, params) in &old.stages {
            let same = new.stages.get(name).is_some_and(|p| {
                p.kind() == params.kind() && p.keyed_json() == params.keyed_json()
            });
            if all_changed || !same {
                hit.insert(name.clone());
            }
        }
    }
    let dag = Dag::new(old);
    let downstream: Vec<String> = hit.iter().flat_map(|s| dag.downstream(s)).collect();
    hit.extend(downstream);
    hit
}

/// Blocks until a relevant change (returned) or until `stop` is set (None).
fn wait_for_change(
    rx: &mpsc::Receiver<Msg>,
    interest: &Interest,
    out: &Output,
    stop: &AtomicBool,
) -> Option<BTreeSet<PathBuf>> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv_timeout(POLL) {
            Ok(Msg::Files(events)) => {
                let paths = relevant_paths(events, interest, out);
                if !paths.is_empty() {
                    return Some(paths);
                }
            }
            Ok(Msg::RunDone(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// The changed paths that matter, from a batch of debounced events. Reads (the runner
/// hashing inputs opens them) and access-time updates are not changes.
fn relevant_paths(
    events: DebounceEventResult,
    interest: &Interest,
    out: &Output,
) -> BTreeSet<PathBuf> {
    use notify::event::{EventKind, MetadataKind, ModifyKind};
    let events = match events {
        Ok(events) => events,
        Err(errors) => {
            for e in errors {
                out.warning(format!("file watcher: {e}"));
            }
            return BTreeSet::new();
        }
    };
    events
        .iter()
        .filter(|e| {
            !matches!(
                e.kind,
                EventKind::Access(_)
                    | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))
            )
        })
        .flat_map(|e| e.paths.iter())
        .filter(|p| interest.is_relevant(p))
        .cloned()
        .collect()
}

/// Makes the watcher's folders match `interest`'s.
fn update_watches<W: notify::Watcher, C: notify_debouncer_full::FileIdCache>(
    debouncer: &mut notify_debouncer_full::Debouncer<W, C>,
    watched: &mut BTreeMap<PathBuf, bool>,
    interest: &Interest,
    out: &Output,
) {
    let wanted = interest.watches();
    let gone: Vec<PathBuf> = watched
        .iter()
        .filter(|(p, r)| wanted.get(*p) != Some(r))
        .map(|(p, _)| p.clone())
        .collect();
    for p in gone {
        let _ = debouncer.unwatch(&p);
        watched.remove(&p);
    }
    for (path, recursive) in wanted {
        if watched.contains_key(path) {
            continue;
        }
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match debouncer.watch(path, mode) {
            Ok(()) => {
                watched.insert(path.clone(), *recursive);
            }
            // A folder that does not exist yet: retried next cycle.
            Err(e) if !path.exists() => {
                let _ = e;
            }
            Err(e) => out.warning(format!("cannot watch {}: {e}", path.display())),
        }
    }
}
