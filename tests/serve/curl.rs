//! `curl` (Debian's) against `gptpipe serve --model` of the ONNX export: a streamed
//! completion ends with `data: [DONE]`, and its chunks make what `gptpipe generate` prints.

use super::{generate_in_project, missing};
use crate::common::server::Server;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[test]
fn curl_streams_server_sent_events_until_done() {
    if Command::new("curl").arg("--version").output().is_err() {
        let _: Option<()> = missing("no curl on this machine (apt-get install curl)");
        return;
    }
    let server = Server::start(super::project(), &["--model", "work/onnx"]);
    let body = r#"{"model": "work/onnx", "prompt": "The fox", "max_tokens": 10, "seed": 3, "stream": true}"#;
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--no-buffer",
            "--max-time",
            "60",
        ])
        .args(["-H", "Content-Type: application/json", "--data", body])
        .arg(format!("http://127.0.0.1:{}/v1/completions", server.port))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{stdout}");
    assert!(stdout.contains("\ndata: [DONE]\n\n"), "{stdout:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    let finish = &chunks.last().unwrap()["choices"][0]["finish_reason"];
    // `--model`'s defaults are `gptpipe generate`'s, with gpt-2-cloud-run's stop.
    let expected = generate_in_project(&[
        "--model",
        "work/onnx",
        "--prefix",
        "The fox",
        "--length",
        "10",
        "--seed",
        "3",
        "--include-prefix",
        "false",
        "--truncate",
        "<|endoftext|>",
    ]);
    assert_eq!(text, expected[0]["text"].as_str().unwrap(), "{stdout}");
    let reason = if expected[0]["truncated"] == true {
        "stop"
    } else {
        "length"
    };
    assert_eq!(finish, reason, "{stdout}");

    // SIGTERM (what Cloud Run sends gptpipe, its container's first process) reaches the
    // server, which stops cleanly.
    let mut server = server;
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(20));
    let log = server.log();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("SIGTERM") && log.contains("gptpipe serve: stopped"),
        "{log}"
    );
}
