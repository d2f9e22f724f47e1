//! What gptpipe refuses and guarantees (docs/safety.md), through the real binary: one test
//! binary, one module per promise.

// Its kill-and-resume test needs libtorch; its gc test and helpers build without it.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
mod checkpoints;
mod generate_output;
mod interrupt;
mod planted_library;
#[cfg(feature = "torch")] // finetune, export and generate run in gptpipe-worker
mod reproducible_outputs;
mod security;
mod sizes;
