//! The integration tests of gptpipe-generate, one test binary (`--test integration`): each
//! file of this folder is a module of it, and `common/` holds the fake model they share.

mod common;
mod driver;
mod known_answers;
mod novelty_rows;
mod stage;
mod transformers_controls;
mod transformers_sampling;
