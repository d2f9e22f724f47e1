//! `gptpipe serve` under test: the real binary on a free loopback port, and a plain
//! HTTP/1.1 client on a TCP socket (requests byte by byte as written, so tests can also
//! send what no well-behaved client would).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `gptpipe serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
    /// Set once its stderr is read to the end.
    log_done: Arc<std::sync::atomic::AtomicBool>,
}

/// A free port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts `gptpipe serve ARGS --port P` in `dir` and waits until `/health` is ready.
    /// The port was free when asked; if another process takes it first, another is tried.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        for _ in 0..4 {
            let mut server = Self::spawn(dir, args);
            let limit = Instant::now() + Duration::from_secs(180);
            while Instant::now() < limit {
                if server.child.try_wait().unwrap().is_some() {
                    break;
                }
                if server
                    .try_request("GET", "/health", &[], b"")
                    .is_ok_and(|r| r.status == 200)
                {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let exited = server.child.try_wait().unwrap().is_some();
            if exited {
                server.read_last_words();
            }
            if !(exited && server.log().contains("cannot listen")) {
                panic!("gptpipe serve not ready:\n{}", server.log());
            }
        }
        panic!("gptpipe serve found no free port");
    }

    /// Starts it without waiting.
    pub fn spawn(dir: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let mut child = super::gptpipe()
            .current_dir(dir)
            .arg("serve")
            .args(args)
            .args(["--port", &port.to_string()])
            // Its own process group: dropping it ends whatever it started, too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gptpipe serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = log_done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        Self {
            child,
            port,
            log,
            log_done,
        }
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Once the process is gone, waits for the thread that reads its stderr to read its last
    /// words (a moment at most; a process it started could keep the pipe open, hence the
    /// bound).
    fn read_last_words(&self) {
        let start = Instant::now();
        while !self.log_done.load(std::sync::atomic::Ordering::Acquire)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit, at most `limit`, and for its last words.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_last_words();
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "gptpipe serve still running after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> std::io::Result<TcpStream> {
        connect(self.port)
    }

    /// One request on a new connection, read to its end.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        request_to(self.port, method, path, headers, body)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// The value of a metric line (`name` with its labels, as printed).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A connection to 127.0.0.1:`port`, with a read timeout a test can live with.
pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// One request to 127.0.0.1:`port` on a new connection, read to its end (for a thread
/// that has the port and not the [`Server`]).
pub fn request_to(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = connect(port)?;
    s.write_all(&request_bytes(method, path, headers, body))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(Response::parse(&raw))
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Self {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
}

/// A tiny random GPT-2 (one layer, 2 heads, 32 wide) with GPT-2's vocabulary and a
/// context of `n_positions`, saved by transformers (through [`super::python`]), made once
/// per target folder; `None` (and a note) without them, as [`super::missing`] says.
pub fn tiny_model(n_positions: usize) -> Option<PathBuf> {
    let python = super::python(&["torch", "transformers"])?;
    static MADE: Mutex<()> = Mutex::new(());
    let _one = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("models")
        .join(format!("tiny-gpt2-p{n_positions}-v1"));
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/onnx/tests/py/make_model.py");
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(&tmp)
        .args(["11", "1", "2", "32", &n_positions.to_string(), "50257"])
        .output()
        .expect("run make_model.py");
    assert!(
        out.status.success(),
        "make_model.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    Some(dir)
}
