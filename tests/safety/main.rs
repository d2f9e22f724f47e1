//! What gptpipe refuses and guarantees (docs/safety.md), through the real binary: one test
//! binary, one module per promise.

mod checkpoints;
mod generate_output;
mod interrupt;
mod planted_library;
mod reproducible_outputs;
mod security;
mod sizes;
