use super::pipeline_args;
use clap::Args;
use gptpipe_core::runner::{RunError, Runner, State};
use gptpipe_core::stage::Registry;

#[derive(Args)]
pub struct StatusArgs {
    /// Pipeline file (default gptpipe.toml), then stages to report on
    #[arg(value_name = "PIPELINE] [STAGE")]
    pub positionals: Vec<String>,
    /// Print one JSON array
    #[arg(long)]
    pub json: bool,
    /// Override a key, as for `run`
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

pub fn run(args: StatusArgs, registry: &Registry) -> Result<(), RunError> {
    let (path, targets) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).map_err(RunError::Config)?;
    let statuses = Runner::new(&pipeline, registry)?.status(&targets)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&statuses).expect("status serializes")
        );
        return Ok(());
    }
    let width = statuses.iter().map(|s| s.stage.len()).max().unwrap_or(0);
    for s in statuses {
        match s.state {
            State::Fresh => println!("{:width$}  fresh", s.stage),
            State::Stale => println!("{:width$}  stale  {}", s.stage, s.reasons.join("; ")),
        }
    }
    Ok(())
}
