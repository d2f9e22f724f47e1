//! `[PIPELINE] [STAGE...]`: the first positional is the pipeline file when it looks like
//! one (a `.toml` name, an existing file, or anything with `.` or `/`, which stage names
//! cannot hold, outside a matrix stage's `[...]`); otherwise it is `gptpipe.toml` here.

use gptpipe_core::config::{self, ConfigError, LoadOptions, Pipeline};
use std::path::PathBuf;

pub const DEFAULT_PIPELINE: &str = "gptpipe.toml";

pub fn split(positionals: &[String]) -> (PathBuf, Vec<String>) {
    match positionals.split_first() {
        Some((first, rest))
            if first.ends_with(".toml")
                || first
                    .split('[')
                    .next()
                    .is_some_and(|s| s.contains(['.', '/']))
                || PathBuf::from(first).is_file() =>
        {
            (PathBuf::from(first), rest.to_vec())
        }
        _ => (PathBuf::from(DEFAULT_PIPELINE), positionals.to_vec()),
    }
}

pub fn load(path: &std::path::Path, sets: &[String]) -> Result<Pipeline, ConfigError> {
    config::load(path, &LoadOptions::from_env(sets.to_vec()))
}
