//! gptpipe's engine: pipeline config, the stage DAG, the content-addressed cache and the
//! runner. Stage kinds plug in through [`stage::Registry`]; this crate knows no model code.

pub mod config;
pub mod events;
pub mod remote;
pub mod report;
pub mod stage;
pub mod cache;
pub mod dag;
pub mod fsutil;
pub mod inputs;
pub mod runner;
