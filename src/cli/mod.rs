//! The command line: clap arguments in, settings out, then the engine; errors become the
//! spec's exit codes (0 ok, 1 a stage failed, 2 invalid pipeline or usage, 3 stale under
//! `--frozen`).

mod convert;
mod dag;
mod gc;
mod generate;
mod pipeline_args;
mod run;
mod score;
mod serve;
mod status;
mod sweep;
mod watch;

use clap::{Parser, Subcommand};
use gptpipe_core::config::ConfigError;
use gptpipe_core::runner::RunError;
use std::num::NonZeroUsize;

#[derive(Parser)]
#[command(
    name = "gptpipe",
    version,
    about = "GPT-2 finetuning and text generation from cached TOML pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stages that are stale (and their upstream)
    Run(run::RunArgs),
    /// Show whether each stage is fresh or stale, and why
    Status(status::StatusArgs),
    /// Draw the stage graph
    Dag(dag::DagArgs),
    /// Compare the finetunes of a matrix: final and best validation loss, and a plot
    Sweep(sweep::SweepArgs),
    /// Print the JSON Schema of pipeline files
    Schema,
    /// Write a model (a pytorch_model.bin or safetensors folder, a hub id) as a Hugging
    /// Face folder with model.safetensors
    Convert(convert::ConvertArgs),
    /// Drop cache entries that no lock file references
    Gc(gc::GcArgs),
    /// Generate text from a model, without a pipeline
    Generate(generate::GenerateArgs),
    /// Score texts under a model: mean log-probability and perplexity, one jsonl row each
    Score(score::ScoreArgs),
    /// Serve a model over HTTP: gpt-2-cloud-run's API, an OpenAI-compatible API and a page
    Serve(serve::ServeArgs),
    /// Rerun what is stale whenever the pipeline file or a stage's inputs change
    Watch(watch::WatchArgs),
    /// (internal) Run one stage from a request on stdin: gptpipe-worker only
    #[command(hide = true)]
    RunStage,
}

impl Command {
    /// The `--threads` flag of the commands that run model code.
    fn threads(&self) -> Option<NonZeroUsize> {
        match self {
            Command::Run(a) => a.threads,
            Command::Generate(a) => a.threads,
            Command::Score(a) => a.threads,
            Command::Serve(a) => a.threads,
            _ => None,
        }
    }
}

/// A count flag that must be positive (`--jobs 0` would run nothing).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Exit codes of the spec.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const STALE: i32 = 3;
}

/// Parses the arguments, runs the command and returns the process exit code.
pub fn main() -> i32 {
    main_with(crate::wiring::RUNNER)
}

/// The same, with what `process` can run (`gptpipe-worker` has model code in process).
pub fn main_with(process: crate::wiring::Process) -> i32 {
    let worker = process.in_worker;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            };
        }
    };
    if let Some(n) = cli.command.threads() {
        // Read by the worker processes this command starts (see gptpipe_core::threads);
        // set before this process starts any thread of its own.
        std::env::set_var(gptpipe_core::threads::THREADS_ENV, n.to_string());
    }
    if worker && gptpipe_core::remote::worker_env_missing() {
        // Started directly, not by gptpipe: libgomp has read its defaults already.
        restart_with_threads();
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args, &(process.registry)()),
        Command::Status(args) => status::run(args, &(process.registry)()),
        Command::Dag(args) => dag::run(args),
        Command::Sweep(args) => sweep::run(args, &(process.registry)()),
        Command::Schema => {
            print!("{}", gptpipe_core::config::pipeline_schema_json());
            Ok(())
        }
        Command::Convert(args) => convert::run(args),
        Command::Gc(args) => gc::run(args, &(process.registry)()),
        Command::Generate(args) => {
            if cfg!(feature = "worker") && !worker {
                return delegate_to_worker(None);
            }
            generate::run(args, &(process.backends)())
        }
        Command::Score(args) => {
            if cfg!(feature = "worker") && !worker {
                return delegate_to_worker(None);
            }
            score::run(args, &(process.backends)())
        }
        Command::Watch(args) => watch::run(args, &(process.registry)()),
        Command::Serve(args) => {
            if cfg!(feature = "worker") && !worker {
                return delegate_to_worker(serve::stage_threads(&args));
            }
            serve::run(args, &(process.registry)(), &(process.backends)())
        }
        Command::RunStage if worker => {
            return gptpipe_core::remote::serve(&(process.registry)(), std::io::stdin());
        }
        Command::RunStage => Err(RunError::Other(anyhow::anyhow!(
            "run-stage is internal to gptpipe-worker"
        ))),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => report(e),
    }
}

/// Runs this command line (`generate`, `score`, `serve`) in `gptpipe-worker`, which has libtorch loaded: the worker
/// replaces this process (same pid), so signals reach it (`serve` finishes its requests on
/// SIGTERM) and killing gptpipe leaves no worker behind.
/// `threads`: the `threads` key of the stage it serves, if any.
fn delegate_to_worker(threads: Option<NonZeroUsize>) -> i32 {
    use std::os::unix::process::CommandExt;
    let worker = crate::wiring::worker_path();
    let e = gptpipe_core::remote::worker_command(&worker, threads)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("error: cannot start {}: {e}", worker.display());
    exit::FAILED
}

/// Restarts this process (`gptpipe-worker` started by hand) with the MKL and OpenMP
/// settings gptpipe gives its workers (gptpipe_core::remote::worker_env); carries on as it
/// is if that fails.
fn restart_with_threads() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let env = gptpipe_core::remote::worker_env(None);
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(env)
        .exec();
}

/// Prints an error the way its kind deserves and maps it to an exit code.
fn report(error: RunError) -> i32 {
    match error {
        RunError::Config(e) => {
            print_config_error(e);
            exit::INVALID
        }
        RunError::Stale(stages) => {
            for s in stages {
                eprintln!("stale: {} ({})", s.stage, s.reasons.join("; "));
            }
            exit::STALE
        }
        RunError::Failed(stages) => {
            eprintln!("error: stage(s) failed: {}", stages.join(", "));
            exit::FAILED
        }
        RunError::Other(e) => {
            eprintln!("error: {e:#}");
            exit::FAILED
        }
    }
}

fn print_config_error(e: ConfigError) {
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .unicode(color)
                .wrap_lines(false)
                .build(),
        )
    }));
    eprintln!("{:?}", miette::Report::new(e));
}
