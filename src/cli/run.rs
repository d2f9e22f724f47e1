use super::pipeline_args;
use clap::Args;
use gptpipe_core::config::{ConfigError, Executor};
use gptpipe_core::events::{EventSink, JsonSink};
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::{Cancellation, RunError, RunOptions, Runner};
use gptpipe_core::stage::Registry;
use std::sync::Arc;

#[derive(Args)]
pub struct RunArgs {
    /// Pipeline file (default gptpipe.toml), then stages to run with their upstream
    #[arg(value_name = "PIPELINE] [STAGE")]
    pub positionals: Vec<String>,
    /// Run the selected stages even when they are fresh
    #[arg(long)]
    pub force: bool,
    /// Say what would run, run nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Run nothing; exit 3 if a selected stage is stale (for CI)
    #[arg(long)]
    pub frozen: bool,
    /// Submit the stages that must run as Slurm jobs chained with --dependency=afterok,
    /// and exit without waiting (Slurm executor only); a later `run` adopts their outputs
    #[arg(long, conflicts_with_all = ["dry_run", "frozen"])]
    pub detach: bool,
    /// Stages to run at once (at least 1; default 1, or 64 Slurm jobs with --executor slurm)
    #[arg(long, short, value_parser = super::at_least_one)]
    pub jobs: Option<usize>,
    /// Where stages run: local processes, or Slurm jobs ([pipeline] executor)
    #[arg(long, value_name = "local|slurm")]
    pub executor: Option<String>,
    /// Override a key: --set stages.train.steps=2000 (TOML value syntax)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// One JSON object per event on stdout
    #[arg(long)]
    pub json: bool,
    /// Go on with independent stages after a failure
    #[arg(long)]
    pub keep_going: bool,
    /// CPU threads of the model code (default: the CPUs available; a user's
    /// OMP_NUM_THREADS; a stage's `threads` key); wins over all of them
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,
}

pub fn run(args: RunArgs, registry: &Registry) -> Result<(), RunError> {
    let (path, targets) = pipeline_args::split(&args.positionals);
    let mut sets = args.sets.clone();
    sets.extend(args.executor.map(|e| format!("pipeline.executor={e}")));
    let pipeline = pipeline_args::load(&path, &sets).map_err(RunError::Config)?;
    let slurm = pipeline.executor == Executor::Slurm;
    if slurm && !cfg!(feature = "worker") {
        return Err(RunError::Other(anyhow::anyhow!(
            "executor = \"slurm\" runs stages as jobs of gptpipe-worker, which this gptpipe \
             (built without libtorch) does not have"
        )));
    }
    if args.detach && !slurm {
        return Err(RunError::Config(ConfigError::new(
            "--detach submits the stages as Slurm jobs and exits, so it needs the Slurm \
             executor, and this pipeline's executor is local: add --executor slurm, or set \
             executor = \"slurm\" in [pipeline]",
        )));
    }
    let cancel = Arc::new(Cancellation::default());
    if slurm && !args.detach {
        // Jobs outlive the runner: a signal cancels them (scancel) before the run ends.
        cancel_jobs_when_interrupted(cancel.clone());
    } else {
        // `--detach` waits for nothing: what it submitted and recorded stays submitted.
        say_when_interrupted();
    }
    let runner = Runner::new(&pipeline, registry)?;
    let sink: Box<dyn EventSink> = if args.json {
        Box::new(JsonSink)
    } else {
        Box::new(HumanSink::new())
    };
    let options = RunOptions {
        targets,
        force: args.force,
        dry_run: args.dry_run,
        frozen: args.frozen,
        jobs: args.jobs.unwrap_or(if slurm { 64 } else { 1 }),
        keep_going: args.keep_going,
    };
    let result = if args.detach {
        runner.detach(&options, sink.as_ref(), &cancel)
    } else {
        runner.run(&options, sink.as_ref(), &cancel)
    };
    // The stages that ran, or failed: a sweep with failed combinations is summarised too.
    let ran: Vec<String> = match &result {
        _ if args.detach || options.dry_run || options.frozen => Vec::new(),
        Ok(outcomes) => outcomes.keys().cloned().collect(),
        Err(RunError::Failed(stages)) => stages.clone(),
        Err(_) => Vec::new(),
    };
    for table in super::sweep::write_summaries(&runner, &pipeline, &ran) {
        if !args.json {
            eprintln!("sweep summary: {}", table.display());
        }
    }
    let result = result.map(|_| ());
    if let Some(signal) = INTERRUPTED.get() {
        // The jobs are cancelled: end as the signal would have (130 or 143).
        let _ = signal_hook::low_level::emulate_default_handler(*signal);
    }
    result
}

/// The signal that interrupted a Slurm run, once it has.
static INTERRUPTED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Under the Slurm executor, SIGINT and SIGTERM cancel the run (each running stage
/// `scancel`s its job), say so in one line, and the run then ends by the signal.
fn cancel_jobs_when_interrupted(cancel: Arc<Cancellation>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = INTERRUPTED.set(signal);
            let name = if signal == SIGINT {
                "interrupted (SIGINT)"
            } else {
                "terminated (SIGTERM)"
            };
            eprintln!(
                "\ngptpipe: {name}; cancelling the running Slurm jobs (detached ones keep \
                 running), outputs kept as they were"
            );
            cancel.cancel_all();
        }
    });
}

/// SIGINT and SIGTERM still end a run at once (workers die with the runner, a stage builds
/// in a temporary folder, so published outputs stay as they were), but no longer without
/// a word: one line on stderr says so, then the signal's default action ends the process,
/// so the shell sees 130 or 143 and a script running gptpipe stops too.
fn say_when_interrupted() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::low_level;
    use std::io::IsTerminal;
    const SIGINT_LINE: &[u8] = b"gptpipe: interrupted (SIGINT); the stages that were running \
        were stopped, outputs kept as they were\n";
    const SIGTERM_LINE: &[u8] = b"gptpipe: terminated (SIGTERM); the stages that were running \
        were stopped, outputs kept as they were\n";

    // On a terminal the line may follow a progress bar, so it starts on a fresh line.
    let terminal = std::io::stderr().is_terminal();
    for (signal, line) in [(SIGINT, SIGINT_LINE), (SIGTERM, SIGTERM_LINE)] {
        let action = move || {
            // SAFETY: write is async-signal-safe, and the buffers are static.
            unsafe {
                if terminal {
                    libc::write(2, b"\n".as_ptr().cast(), 1);
                }
                libc::write(2, line.as_ptr().cast(), line.len());
            }
            // Restores the default action and raises the signal again, which ends the
            // process by it.
            let _ = low_level::emulate_default_handler(signal);
        };
        // SAFETY: the action makes only async-signal-safe calls (write, and
        // emulate_default_handler's sigaction, sigprocmask and raise). It fails only for
        // signals that cannot be handled, which these are not.
        let _ = unsafe { low_level::register(signal, action) };
    }
}
