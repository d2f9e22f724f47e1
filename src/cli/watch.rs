use super::pipeline_args;
use crate::watch::{self, Output, WatchOptions};
use clap::Args;
use gptpipe_core::runner::RunError;
use gptpipe_core::stage::Registry;
use std::time::Duration;

#[derive(Args)]
pub struct WatchArgs {
    /// Pipeline file (default gptpipe.toml), then stages to keep up to date with their upstream
    #[arg(value_name = "PIPELINE] [STAGE")]
    pub positionals: Vec<String>,
    /// Override a key, as for `run` (applied again at every reload)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Stages to run at once (at least 1)
    #[arg(long, short, default_value_t = 1, value_parser = super::at_least_one)]
    pub jobs: usize,
    /// Milliseconds the files must be quiet before a cycle starts
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub debounce: u64,
    /// One JSON object per event on stdout, plus watch_cycle objects
    #[arg(long)]
    pub json: bool,
    /// Where stages run: local processes, or Slurm jobs ([pipeline] executor)
    #[arg(long, value_name = "local|slurm")]
    pub executor: Option<String>,
}

pub fn run(args: WatchArgs, registry: &Registry) -> Result<(), RunError> {
    let (pipeline, targets) = pipeline_args::split(&args.positionals);
    install_miette_hook();
    let options = WatchOptions {
        pipeline,
        targets,
        sets: args
            .sets
            .into_iter()
            .chain(args.executor.map(|e| format!("pipeline.executor={e}")))
            .collect(),
        jobs: args.jobs,
        debounce: Duration::from_millis(args.debounce.max(10)),
    };
    let stop = watch::signal::install();
    watch::watch(&options, registry, &Output::new(args.json), stop).map_err(RunError::Other)
}

/// Pipeline errors are printed by watch itself (it keeps going), so it sets miette's look.
fn install_miette_hook() {
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .unicode(color)
                .build(),
        )
    }));
}
