use super::pipeline_args;
use crate::stages::registry;
use clap::Args;
use gptpipe_core::events::{EventSink, JsonSink};
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::{RunError, RunOptions, Runner};

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
}

pub fn run(args: RunArgs) -> Result<(), RunError> {
    let (path, targets) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).map_err(RunError::Config)?;
    let registry = registry();
    let runner = Runner::new(&pipeline, &registry)?;
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
