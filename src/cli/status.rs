use super::pipeline_args;
use clap::Args;
use gptpipe_core::runner::{self, RunError, Runner, StageStatus, State};
use gptpipe_core::slurm::{self, ActiveJob};
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
    // Slurm jobs pending or running now (a run in progress, here or from another shell),
    // whatever the pipeline's executor: `--executor` may have set it.
    let mut active = slurm::active_jobs(&pipeline.workdir);
    // And the jobs of `run --detach`, whatever their state, until a run adopts them.
    for (stage, job) in runner::detached_jobs(&pipeline.workdir) {
        active.entry(stage).or_default().push(job);
    }
    let jobs: Vec<&[ActiveJob]> = statuses
        .iter()
        .map(|s| active.get(&s.stage).map_or(&[][..], Vec::as_slice))
        .collect();
    if args.json {
        let rows: Vec<JsonRow> = statuses
            .iter()
            .zip(jobs.iter().copied())
            .map(|(status, jobs)| JsonRow { status, jobs })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&rows).expect("status serializes")
        );
        return Ok(());
    }
    let width = statuses.iter().map(|s| s.stage.len()).max().unwrap_or(0);
    for (s, jobs) in statuses.iter().zip(&jobs) {
        let running = jobs
            .iter()
            .map(|j| match j.detached {
                false => format!("  (Slurm job {}: {})", j.id, j.state),
                true => format!("  (detached Slurm job {}: {})", j.id, j.state),
            })
            .collect::<String>();
        match s.state {
            State::Fresh => println!("{:width$}  fresh{running}", s.stage),
            State::Stale => println!(
                "{:width$}  stale  {}{running}",
                s.stage,
                s.reasons.join("; ")
            ),
        }
    }
    Ok(())
}

/// A line of `status --json`: the stage's status, then its active Slurm jobs if any.
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    status: &'a StageStatus,
    #[serde(skip_serializing_if = "<[ActiveJob]>::is_empty")]
    jobs: &'a [ActiveJob],
}
