use super::pipeline_args;
use clap::{Args, ValueEnum};
use gptpipe_core::dag::{Dag, DagFormat};
use gptpipe_core::runner::RunError;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Mermaid,
}

#[derive(Args)]
pub struct DagArgs {
    /// Pipeline file (default gptpipe.toml)
    pub pipeline: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(args: DagArgs) -> Result<(), RunError> {
    let path = args
        .pipeline
        .unwrap_or_else(|| pipeline_args::DEFAULT_PIPELINE.into());
    let pipeline = pipeline_args::load(&path, &[]).map_err(RunError::Config)?;
    let format = match args.format {
        Format::Text => DagFormat::Text,
        Format::Dot => DagFormat::Dot,
        Format::Mermaid => DagFormat::Mermaid,
    };
    print!("{}", Dag::new(&pipeline).render(format));
    Ok(())
}
