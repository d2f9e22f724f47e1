//! The integration tests of gptpipe-onnx, one test binary (`--test integration`): each file
//! of this folder is a module of it, `common/` holds what they share and `py/` the Python
//! oracles they run.

mod backend;
mod common;
mod export_oracle;
mod export_stage;
mod join;
mod library;
mod runtime;
