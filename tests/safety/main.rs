//! What gptpipe refuses and guarantees (docs/safety.md), through the real binary: one test
//! module per promise; they run gptpipe with the builder in `tests/common/`.

// Its kill-and-resume test needs libtorch; its gc test and helpers build without it.
#[cfg_attr(not(feature = "worker"), allow(dead_code))]
mod checkpoints;
mod generate_output;
mod interrupt;
mod pickles;
mod planted_library;
#[cfg(feature = "worker")] // finetune, export and generate run in gptpipe-worker
mod reproducible_outputs;
mod security;
mod sizes;

use crate::common::{Run, Test};
use std::path::Path;

/// Runs gptpipe with `args` in `dir` (the shorthand of these modules for [`Test`]).
fn gptpipe(dir: &Path, args: &[&str]) -> Run {
    Test::new().dir(dir).args(args).run()
}
