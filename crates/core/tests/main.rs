//! The integration tests of gptpipe-core, one test binary (`--test integration`): each file
//! of this folder is a module of it. `cargo test -p gptpipe-core --test integration NAME`
//! runs the tests whose path contains NAME (e.g. `fuzz_config::`).

mod config_values;
mod curation_keys;
mod fuzz_config;
mod known_answers;
mod matrix;
mod memo_race;
mod runner_safety;
mod stage_keys;
mod state_folder;
mod training_keys;
