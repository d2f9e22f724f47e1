//! The commands of the `gptpipe` binary: each test writes its own pipeline and data into a
//! temp folder ([`Project`]) and runs the real program through the shared builder.

mod caching;
mod config_errors;
#[cfg(feature = "worker")]
mod data_parallel;
#[cfg(feature = "worker")]
mod gpt2_simple;
#[cfg(feature = "worker")]
mod model_stages;
mod pipelines;
mod prepare;
mod schema;
#[cfg(feature = "worker")]
mod score;
#[cfg(feature = "worker")]
mod short_texts;
#[cfg(feature = "worker")]
mod sweeps;
#[cfg(feature = "worker")]
mod threads;
#[cfg(not(feature = "worker"))]
mod without_torch;

use std::path::{Path, PathBuf};

pub use crate::common::{gptpipe, Run};
use crate::common::{write, Test};

/// A temp project folder and helpers to run gptpipe in it.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        write(&self.path(rel), content);
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_in(self.dir.path(), args)
    }
}

pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    Test::new().dir(dir).args(args).run()
}

/// The workspace root (for shipped pipelines and schemas).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
