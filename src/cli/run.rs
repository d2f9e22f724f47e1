use super::pipeline_args;
use clap::Args;
use gptpipe_core::events::{EventSink, JsonSink};
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::{RunError, RunOptions, Runner};
use gptpipe_core::stage::Registry;

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
    /// Stages to run at once (at least 1)
    #[arg(long, short, default_value_t = 1, value_parser = super::at_least_one)]
    pub jobs: usize,
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
    say_when_interrupted();
    let (path, targets) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).map_err(RunError::Config)?;
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
        jobs: args.jobs,
        keep_going: args.keep_going,
    };
    runner
        .run(&options, sink.as_ref(), &Default::default())
        .map(|_| ())
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
