//! The integration tests of gptpipe-torch, one test binary (`--test integration`): each
//! file of this folder is a module of it, and `common/` holds what they share.

mod common;
mod errors;
mod finetune_stage;
mod fused_adam;
mod generate_stage;
mod generation;
mod gpt2_simple;
mod join;
mod model_card;
mod model_parity;
mod optimizer_parity;
mod padded_vocab;
mod scores;
mod training_options;
