//! What gptpipe refuses and guarantees (docs/safety.md), through the real binary: one test
//! binary, one module per promise, and the few helpers they share.

// Its kill-and-resume test needs libtorch; its gc test and helpers build without it.
#[cfg_attr(not(feature = "worker"), allow(dead_code))]
mod checkpoints;
mod generate_output;
mod interrupt;
mod planted_library;
#[cfg(feature = "worker")] // finetune, export and generate run in gptpipe-worker
mod reproducible_outputs;
mod security;
mod sizes;

use std::path::Path;
use std::process::{Command, Output};

/// `exe`, without the `GPTPIPE_*` settings of the environment that runs the tests.
fn command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GPTPIPE_")) {
        c.env_remove(k);
    }
    c
}

/// The gptpipe binary under test, as [`command`] gives it.
fn gptpipe_command() -> Command {
    command(Path::new(env!("CARGO_BIN_EXE_gptpipe")))
}

/// What one run printed, and its exit code (-1 when a signal ended it).
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Out {
    fn from(out: Output) -> Self {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs gptpipe with `args` in `dir`.
fn gptpipe(dir: &Path, args: &[&str]) -> Out {
    gptpipe_command()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .into()
}

/// Writes `content` to `path`, making its folders.
fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}
