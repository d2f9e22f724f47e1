//! The gptpipe command line: parses arguments and hands them to the engine.

pub mod cli;
pub mod stages;
pub mod watch;
