use super::pipeline_args;
use clap::Args;
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::{RunError, Runner};
use gptpipe_core::stage::Registry;

#[derive(Args)]
pub struct GcArgs {
    /// Pipeline file (default gptpipe.toml)
    pub pipeline: Option<std::path::PathBuf>,
}

pub fn run(args: GcArgs, registry: &Registry) -> Result<(), RunError> {
    let path = args
        .pipeline
        .unwrap_or_else(|| pipeline_args::DEFAULT_PIPELINE.into());
    let pipeline = pipeline_args::load(&path, &[]).map_err(RunError::Config)?;
    let runner = Runner::new(&pipeline, registry)?;
    let (runs, objects) = runner.gc(&HumanSink::new())?;
    let (indexes, bytes) = runner.gc_novelty(&HumanSink::new())?;
    eprintln!(
        "removed {runs} cache entries and {objects} objects, and {indexes} novelty indexes \
         ({bytes} bytes)"
    );
    Ok(())
}
