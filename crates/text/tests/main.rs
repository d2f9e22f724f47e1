//! The integration tests of gptpipe-text, one test binary (`--test integration`): each file
//! of this folder is a module of it, and `common/` holds what they share.

mod common;
mod known_answers;
mod prepare_fixtures;
mod prepare_sources;
mod prepare_stage;
mod prepare_template;
mod tokenizer_hf;
mod tokenizer_tiktoken;
