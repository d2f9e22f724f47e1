//! The integration tests of the gptpipe binary, one test binary (`--test integration`):
//! `common/` is the builder they all run gptpipe with, `cli/` the commands, `safety/` one
//! module per promise of docs/safety.md, `serve/` `gptpipe serve` against real clients (the
//! openai package, curl, chromium), and `faults`, `watch` and `fuzz_prepare` what their
//! names say. `cargo test --test integration safety::` runs one group.

mod common;

#[path = "cli/main.rs"]
mod cli;
mod faults;
mod fuzz_prepare;
#[path = "safety/main.rs"]
mod safety;
mod serve;
#[cfg(feature = "worker")]
mod slurm;
mod watch;
