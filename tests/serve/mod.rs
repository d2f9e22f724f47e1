//! `gptpipe serve` against real clients, no mocks: the `openai` Python package
//! ([`openai_client`]), `curl`, and Debian's chromium driven by Playwright ([`browser`]),
//! all talking HTTP to the real binary serving a tiny model finetuned for the occasion.
//!
//! [`Served`] starts a server on a free port and stops it on drop; [`project`] is the one
//! tiny pipeline they all serve, trained once per run of this test binary.
//!
//! The clients come from `.venv` (scripts/setup.sh installs `openai` and `playwright`) and
//! from Debian (`chromium`, `curl`; `.ci/run` installs them). A test whose client is missing
//! says so and passes, except when `GPTPIPE_TEST_CLIENTS=require` (scripts/test.sh sets it,
//! so CI runs them all): then a missing client fails the test.

mod browser;
#[cfg(feature = "onnx")]
mod curl;
mod openai_client;

use crate::common::{gptpipe, Run, Test};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The pipeline every test serves: a 1-layer model finetuned for a few steps on CPU, its
/// generate stage (`samples`, whose keys are the served defaults) and its ONNX export.
pub const PIPELINE: &str = r#"
[pipeline]
name = "tiny"
workdir = "work"
seed = 7

[stages.titles]
kind = "prepare"
inputs = ["data/titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 128, dropout = 0.0 }
steps = 10
batch_size = 4
learning_rate = 1e-2
device = "cpu"
sample_every = 0

[stages.samples]
kind = "generate"
model = "@train"
prefix = "<|startoftext|>"
truncate = "<|endoftext|>"
length = 60
nsamples = 3
batch_size = 2
temperature = 0.9
top_k = 20

[stages.onnx]
kind = "export"
model = "@train"
"#;

/// The served stage's sampling keys, as `gptpipe generate` flags (to compare with).
pub const STAGE_SAMPLING: &[&str] = &[
    "--temperature",
    "0.9",
    "--top-k",
    "20",
    "--truncate",
    "<|endoftext|>",
];

/// The name the served stage's model goes by (its upstream stage).
pub const MODEL_NAME: &str = "train";

fn titles() -> String {
    let mut csv = String::from("title\n");
    for i in 0..40 {
        csv.push_str(&format!("The fox number {i} jumps over the lazy dog\n"));
    }
    csv
}

/// The project folder with [`PIPELINE`] run (trained and exported), made once per run of
/// this test binary under cargo's temp folder for tests.
pub fn project() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Earlier runs' folders, unless their run is still going.
        for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("serve-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp.join(format!("serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::common::write(&dir.join("p.toml"), PIPELINE);
        crate::common::write(&dir.join("data/titles.csv"), titles());
        Test::new()
            .dir(&dir)
            .args(["run", "p.toml", "train", "onnx"])
            .run()
            .ok();
        dir
    })
}

/// What a client test needs from its environment that may be missing: skips the test
/// (returns `None`) with a message, or fails it under `GPTPIPE_TEST_CLIENTS=require`.
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var("GPTPIPE_TEST_CLIENTS").as_deref() == Ok("require") {
        panic!("missing: {what} (GPTPIPE_TEST_CLIENTS=require; scripts/setup.sh and .ci/run install it)");
    }
    eprintln!("skipped: {what}");
    None
}

/// The Python with the clients: `$GPTPIPE_PYTHON`, else the workspace's `.venv/bin/python`
/// (as the other reference tests find it), holding every module of `modules`.
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let python = std::env::var_os("GPTPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    if !python.exists() {
        return missing(&format!(
            "no Python at {} (set GPTPIPE_PYTHON or run scripts/setup.sh)",
            python.display()
        ));
    }
    let import = Command::new(&python)
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

/// Runs `script` (a file of this folder) with `python` and `args`; panics with what it
/// printed unless it succeeds, and returns its stdout.
pub fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/serve")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `gptpipe generate --format jsonl` with `args`, in [`project`]: its samples.
pub fn generate(args: &[&str]) -> Vec<Value> {
    let run: Run = Test::new()
        .dir(project())
        .args(["generate", "--format", "jsonl"])
        .args(args)
        .run()
        .ok();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl samples"))
        .collect()
}

/// A running `gptpipe serve`, stopped (SIGKILL) on drop.
pub struct Served {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Served {
    /// `gptpipe serve ARGS --port P` in [`project`] on a free port P, once `/health` says
    /// ready.
    pub fn start(args: &[&str]) -> Served {
        let dir = project();
        let mut last = String::new();
        for attempt in 0..5 {
            // A port the system just handed out and we released: free unless someone takes
            // it in between, and then the server fails to bind and we try another.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = dir.join(format!("serve-{port}-{attempt}.log"));
            let child = gptpipe()
                .current_dir(dir)
                .arg("serve")
                .args(args)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                // Its own process group: dropping it ends whatever it started, too.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("cannot start gptpipe serve");
            let mut served = Served { child, port, log };
            match served.wait_ready(Duration::from_secs(120)) {
                Ok(()) => return served,
                Err(why) => last = why,
            }
            if !served.log().contains("cannot listen") {
                break;
            }
        }
        panic!("gptpipe serve did not get ready: {last}");
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("it exited ({status}):\n{}", self.log()));
            }
            if let Ok((200, body)) = http_get(self.port, "/health") {
                let health: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(health["status"], "ready", "{body}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("not ready after {limit:?}:\n{}", self.log()))
    }

    /// What the server wrote on stderr so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Served {
    /// SIGTERM to gptpipe only, as Cloud Run stops a container, then its exit status and
    /// its log, once it has stopped (None after `limit`); then SIGKILL to its whole group.
    pub fn stop(mut self, limit: Duration) -> (Option<ExitStatus>, String) {
        let status = self.signal_and_wait(limit);
        (status, self.log())
    }

    fn signal_and_wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the process (then the process group) this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever is left of the group (a process that ignored SIGTERM).
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_and_wait(Duration::from_secs(5));
        }
    }
}

/// A plain `GET path` on 127.0.0.1:port: the status and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
