//! Integration tests of the `gptpipe` binary, one test binary with a small builder: each
//! test writes its own pipeline and data into a temp folder and runs the real program.

mod caching;
mod config_errors;
#[cfg(feature = "worker")]
mod model_stages;
mod pipelines;
mod prepare;
mod schema;
#[cfg(not(feature = "worker"))]
mod without_torch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temp project folder and helpers to run gptpipe in it.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// The result of one gptpipe run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` events of this run.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("event lines are JSON"))
            .collect()
    }

    /// Stages that had an event of this type, in order.
    pub fn stages_with(&self, event: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == event)
            .map(|e| e["stage"].as_str().unwrap().to_owned())
            .collect()
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "gptpipe failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
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
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_in(self.dir.path(), args)
    }
}

pub fn gptpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gptpipe"))
}

pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let mut command = gptpipe();
    command.args(args).current_dir(dir);
    // Pipeline overrides from the caller's environment would change what the tests see.
    for (var, _) in std::env::vars()
        .filter(|(v, _)| v.starts_with("GPTPIPE_STAGES__") || v.starts_with("GPTPIPE_PIPELINE__"))
    {
        command.env_remove(var);
    }
    let out: Output = command.output().expect("gptpipe runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The workspace root (for shipped pipelines and schemas).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
