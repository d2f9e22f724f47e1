//! Running the gptpipe binary under test: the one builder every module of this test binary
//! uses, in the style of casey/just's `tests/test.rs`.
//!
//! ```ignore
//! let run = Test::new().dir(dir).args(["run", "p.toml", "--json"]).run().ok();
//! assert_eq!(run.stages_with("stage_finished"), ["a"]);
//! let (child, events) = Test::new().dir(dir).args(["run", "p.toml", "--json"]).spawn();
//! ```
//!
//! Every command starts without the `GPTPIPE_*` variables of the environment that runs the
//! tests (pipeline overrides, debugging switches): only a test's own settings count.

pub mod server;

use serde_json::Value;
use std::ffi::OsStr;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

/// The gptpipe binary cargo built for these tests.
pub const GPTPIPE: &str = env!("CARGO_BIN_EXE_gptpipe");

/// `exe` (gptpipe, or a copy of it), without the caller's `GPTPIPE_*` variables.
pub fn command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("GPTPIPE_")) {
        c.env_remove(k);
    }
    c
}

/// The gptpipe binary under test, as [`command`] gives it: for what [`Test`] does not
/// cover (stdin, signals, `pre_exec`).
pub fn gptpipe() -> Command {
    command(Path::new(GPTPIPE))
}

/// One run of gptpipe, built step by step.
pub struct Test {
    command: Command,
}

impl Default for Test {
    fn default() -> Self {
        Self::new()
    }
}

impl Test {
    /// The gptpipe binary under test.
    pub fn new() -> Self {
        Self { command: gptpipe() }
    }

    /// Another copy of the binary (an installed one, say).
    pub fn exe(exe: &Path) -> Self {
        Self {
            command: command(exe),
        }
    }

    /// Runs in `dir` (pipeline paths in the arguments are relative to it).
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(key);
        self
    }

    /// The command as built so far.
    pub fn command(self) -> Command {
        self.command
    }

    /// Runs to the end and returns what it printed.
    pub fn run(mut self) -> Run {
        self.command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.command.get_program()))
            .into()
    }

    /// Starts it with stdout piped (stderr dropped); the JSON lines it prints (`--json`
    /// events) arrive on the returned channel, which closes when the process ends.
    pub fn spawn(mut self) -> (Child, mpsc::Receiver<Value>) {
        let mut child = self
            .command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.command.get_program()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        (child, rx)
    }
}

/// What one run printed, and its exit code (-1 when a signal ended it).
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The `--json` events of this run (its stdout lines that start with `{`).
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("event lines are JSON"))
            .collect()
    }

    /// The events of type `event`, in order.
    pub fn with(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Stages that had an event of this type, in order.
    pub fn stages_with(&self, event: &str) -> Vec<String> {
        self.with(event)
            .iter()
            .map(|e| e["stage"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts exit code 0, showing what it printed otherwise.
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

/// What a test needs from its environment that may be missing (a Python package, a Debian
/// program): skips the test
/// (returns `None`) with a message, or fails it under `GPTPIPE_TEST_CLIENTS=require`.
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var("GPTPIPE_TEST_CLIENTS").as_deref() == Ok("require") {
        panic!("missing: {what} (GPTPIPE_TEST_CLIENTS=require; scripts/setup.sh and .ci/run install it)");
    }
    eprintln!("skipped: {what}");
    None
}

/// The Python of the reference stack and the clients: `$GPTPIPE_PYTHON`, else the workspace's `.venv/bin/python`
/// (as the other reference tests find it), holding every module of `modules`.
pub fn python(modules: &[&str]) -> Option<std::path::PathBuf> {
    python_of("GPTPIPE_PYTHON", ".venv", modules)
}

/// The Python of gpt-2-simple and its TensorFlow (numpy 1, so a venv of its own):
/// `$GPTPIPE_TF_PYTHON`, else the workspace's `.tf-venv/bin/python`.
#[allow(dead_code)] // used by the tests that compare with gpt-2-simple
pub fn tf_python(modules: &[&str]) -> Option<std::path::PathBuf> {
    python_of("GPTPIPE_TF_PYTHON", ".tf-venv", modules)
}

fn python_of(var: &str, venv: &str, modules: &[&str]) -> Option<std::path::PathBuf> {
    let python = std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(venv)
                .join("bin/python")
        });
    if !python.exists() {
        return missing(&format!(
            "no Python at {} (set {var} or run scripts/setup.sh)",
            python.display()
        ));
    }
    let import = std::process::Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .expect("cannot run python");
    if !import.status.success() {
        return missing(&format!(
            "{} lacks {} (run scripts/setup.sh): {}",
            python.display(),
            modules.join(", "),
            String::from_utf8_lossy(&import.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    Some(python)
}

/// A CSV of 40 short titles in a `title` column, enough to finetune a tiny model on.
#[cfg(feature = "worker")]
pub fn fox_titles_csv() -> String {
    let mut csv = String::from("title\n");
    for i in 0..40 {
        csv.push_str(&format!("The fox number {i} jumps over the lazy dog\n"));
    }
    csv
}

/// Writes `content` to `path`, making its folders.
pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Asserts that two model files hold the same weights. Equal bytes pass; otherwise every
/// tensor must match within `1e-5`: the rounding of a different order of sums, which
/// libtorch's CPU kernels can take on some machines under load. Measured on the tests'
/// tiny model after 100 steps: one thread against two differ by 8e-7, one step more or
/// less by 2e-4.
#[cfg(feature = "worker")]
pub fn assert_same_weights(a: &Path, b: &Path, what: &str) {
    let (a_bytes, b_bytes) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if a_bytes == b_bytes {
        return;
    }
    let (a_st, b_st) = (
        safetensors::SafeTensors::deserialize(&a_bytes).unwrap(),
        safetensors::SafeTensors::deserialize(&b_bytes).unwrap(),
    );
    let mut names = a_st.names();
    names.sort();
    let mut other = b_st.names();
    other.sort();
    assert_eq!(names, other, "{what}: the tensors differ");
    let floats = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut worst = (0f32, String::new());
    for name in names {
        let (x, y) = (a_st.tensor(name).unwrap(), b_st.tensor(name).unwrap());
        assert_eq!(
            x.dtype(),
            safetensors::Dtype::F32,
            "{what}: {name} is not f32"
        );
        assert_eq!(x.shape(), y.shape(), "{what}: {name}'s shape differs");
        for (p, q) in floats(x.data()).iter().zip(floats(y.data())) {
            let d = (p - q).abs();
            if d.is_nan() || d > worst.0 {
                worst = (d, name.to_string());
            }
        }
    }
    assert!(
        worst.0 <= 1e-5,
        "{what}: weights differ by up to {} (in {})",
        worst.0,
        worst.1
    );
    eprintln!(
        "{what}: the bytes differ, the weights by at most {} (in {})",
        worst.0, worst.1
    );
}
