//! gptpipe's engine: pipeline config, the stage DAG, the content-addressed cache and the
//! runner. Stage kinds plug in through [`stage::Registry`]; this crate knows no model code.
//! Model folders, `config.json` and hub downloads are `gptpipe-hf`'s; core takes only two
//! facts from it: the folder's file names (a folder model's inputs) and the shape limits (an
//! inline model's check).

// Config errors carry their source snippet for miette; they are rare and cold, so their size
// in `Result` does not matter.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod config;
pub mod dag;
pub mod events;
pub mod fsutil;
pub mod inputs;
pub mod remote;
pub mod report;
pub mod runner;
pub mod slurm;
pub mod stage;
pub mod threads;

pub use runner::Cancelled;

/// The gptpipe version (one for the whole workspace), as model cards and provenance record it.
pub const GPTPIPE_VERSION: &str = env!("CARGO_PKG_VERSION");
