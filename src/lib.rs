//! The gptpipe command line: parses arguments and hands them to the engine.

#![allow(clippy::result_large_err)] // see gptpipe_core: config errors are large and cold

pub mod cli;
pub mod watch;
pub mod wiring;
