//! Load, faults and shutdown: a bounded queue (429), the time limit (504), clients that
//! leave, bodies too large, SIGTERM with a grace period, and models that cannot load.

use super::{backends, serve_tiny};
use crate::common::server::{request_bytes, request_to, tiny_model, Response, Server};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Starts a long streamed request and returns its socket once the first text arrived.
fn start_long_stream(server: &Server, max_tokens: usize) -> std::net::TcpStream {
    let mut s = server.connect().unwrap();
    let body = json!({"prompt": "x", "max_tokens": max_tokens, "stream": true, "seed": 1,
                      "stop": []});
    s.write_all(&request_bytes(
        "POST",
        "/v1/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    ))
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_frees_its_row_at_once() {
    for &backend in backends() {
        let Some((server, _)) = serve_tiny(
            backend,
            &[
                "--max-batch",
                "1",
                "--max-queue",
                "1",
                "--max-length",
                "1000000",
            ],
        ) else {
            return;
        };
        // One row decodes a very long sample; one request waits; the next is refused.
        let long = start_long_stream(&server, 1_000_000);
        let waiting = {
            let port = server.port;
            std::thread::spawn(move || {
                let body = json!({"prompt": "y", "max_tokens": 3}).to_string();
                let r = request_to(port, "POST", "/v1/completions", &[], body.as_bytes());
                (Instant::now(), r.unwrap())
            })
        };
        wait_for("the second request queued", Duration::from_secs(10), || {
            server.metric("gptpipe_queue_depth") == 1.0
        });
        let refused = server.post("/v1/completions", &json!({"prompt": "z", "max_tokens": 3}));
        assert_eq!(refused.status, 429, "{}", refused.text());
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert!(refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue"));
        let refused = server.post("/", &json!({"length": 3}));
        assert_eq!(refused.status, 429);

        // The long request's client goes away: its row leaves the batch at the next step,
        // and the waiting request runs.
        let left = Instant::now();
        drop(long);
        let (done, answer) = waiting.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            done - left < Duration::from_secs(5),
            "{backend}: the waiting request took {:?} after the client left",
            done - left
        );
        wait_for("the batch emptied", Duration::from_secs(5), || {
            server.metric("gptpipe_batch_rows") == 0.0
        });
        // The stream that lost its client counts as 499, nginx's "client closed request".
        wait_for("the 499 counted", Duration::from_secs(5), || {
            server
                .get("/metrics")
                .text()
                .contains("gptpipe_requests_total{api=\"openai\",status=\"499\"} 1")
        });
    }
}

#[test]
fn a_request_past_the_time_limit_gets_504_and_frees_its_row() {
    let backend = backends()[0];
    let Some((server, _)) = serve_tiny(
        backend,
        &["--request-timeout", "1", "--max-length", "1000000"],
    ) else {
        return;
    };
    let start = Instant::now();
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1_000_000, "stop": []}),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("time limit"));
    wait_for("the batch emptied", Duration::from_secs(5), || {
        server.metric("gptpipe_batch_rows") == 0.0
    });
    // A streamed one ends with an error event, then [DONE].
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1_000_000, "stream": true, "stop": []}),
    );
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events[events.len() - 2].contains("time limit"),
        "{events:?}"
    );
}

#[test]
fn bodies_over_the_limit_get_413_and_slow_or_broken_clients_harm_no_one() {
    let Some((server, _)) = serve_tiny(backends()[0], &["--client-timeout", "2"]) else {
        return;
    };
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(2 << 20));
    for path in ["/", "/v1/completions"] {
        let r = server.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            big.as_bytes(),
        );
        assert_eq!(r.status, 413, "{path}");
    }
    // A client that sends half a request and stalls, and one that sends garbage.
    let mut stalled = server.connect().unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"len")
        .unwrap();
    let mut garbage = server.connect().unwrap();
    garbage
        .write_all(b"\x00\x01 not http at all\r\n\r\n")
        .unwrap();
    // Many clients at once, all answered.
    std::thread::scope(|s| {
        for i in 0..24 {
            let server = &server;
            s.spawn(move || {
                let r = server.post("/", &json!({"length": 4, "seed": i}));
                assert_eq!(r.status, 200, "{}", r.text());
            });
        }
    });
    drop(garbage);
    assert_eq!(server.get("/health").status, 200);
    // Slow clients are cut off after --client-timeout: one that never finishes its
    // headers (closed), and the one that never finishes its body (408, then closed).
    let mut slow = server.connect().unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    for (mut s, status) in [(slow, None), (stalled, Some(408))] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still open after {:?}",
            start.elapsed()
        );
        if let Some(status) = status {
            let r = Response::parse(&rest);
            assert_eq!(r.status, status, "{}", r.text());
            assert!(r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--client-timeout"));
        }
    }
    assert!(server.metric("gptpipe_requests_total{api=\"cloud-run\",status=\"408\"}") >= 1.0);
}

#[test]
fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    // A context of 1024, so that a long sample does not slide (sliding re-reads the window
    // at every token: slow, which this test does not need).
    let Some(model) = tiny_model(1024) else {
        return;
    };
    let mut server = Server::start(
        model.parent().unwrap(),
        &[
            "--model",
            model.to_str().unwrap(),
            "--backend",
            backends()[0],
            "--device",
            "cpu",
            "--grace",
            "120",
        ],
    );
    // A request that takes a while: it must finish whole.
    let port = server.port;
    let in_flight = std::thread::spawn(move || {
        let body = json!({"prompt": "x", "max_tokens": 300, "stop": [], "seed": 3}).to_string();
        request_to(port, "POST", "/v1/completions", &[], body.as_bytes()).unwrap()
    });
    wait_for("the request in the batch", Duration::from_secs(10), || {
        server.metric("gptpipe_batch_rows") == 1.0
    });
    server.terminate();
    wait_for("the server says it stops", Duration::from_secs(10), || {
        server.log().contains("SIGTERM")
    });
    // New connections are refused (or told 503) while the request finishes.
    match server.try_request("POST", "/", &[], b"{}") {
        Ok(r) => assert_eq!(r.status, 503, "{}", r.text()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
    }
    let answer = in_flight.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let usage = &answer.json()["usage"];
    assert_eq!(usage["completion_tokens"], 300, "{usage}");
    let status = server.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn sigterm_cuts_what_outlives_the_grace_period_and_still_exits_0() {
    let backend = backends()[0];
    let Some((mut server, _)) = serve_tiny(backend, &["--grace", "1", "--max-length", "1000000"])
    else {
        return;
    };
    let mut long = start_long_stream(&server, 1_000_000);
    let start = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    // The cut stream says why, then ends as every stream does.
    let mut rest = Vec::new();
    let _ = long.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("grace period"), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        server.log().contains("grace period over"),
        "{}",
        server.log()
    );
}

#[test]
fn a_model_that_cannot_load_and_bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A folder that is not a model: the server binds, fails to load, says why, exits 1.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let mut server = Server::spawn(dir.path(), &["--model", "./empty"]);
    let status = server.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", server.log());
    assert!(
        server.log().contains("cannot load the model"),
        "{}",
        server.log()
    );
    assert!(server.log().contains("empty"), "{}", server.log());

    for (args, needle) in [
        (vec!["--model", "x", "--device", "tpu"], "--device"),
        (vec!["--model", "x", "--grace", "-1"], "--grace"),
        (vec!["--model", "x", "--max-batch", "0"], "--max-batch"),
        (vec!["--model", "x", "p.toml"], "cannot be used with"),
    ] {
        let out = crate::common::gptpipe()
            .current_dir(dir.path())
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A pipeline: the stage must be a generate stage.
    std::fs::write(dir.path().join("d.csv"), "text\nhello\n").unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "[pipeline]\nname = \"p\"\n[stages.data]\nkind = \"prepare\"\ninputs = [\"d.csv\"]\n",
    )
    .unwrap();
    let out = crate::common::gptpipe()
        .current_dir(dir.path())
        .args(["serve", "p.toml", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("generate stage"));
    let out = crate::common::gptpipe()
        .current_dir(dir.path())
        .args(["serve", "p.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 generate stages"));
}

#[test]
fn queued_requests_whose_clients_leave_free_the_queue_at_once() {
    let Some((server, _)) = serve_tiny(
        backends()[0],
        &[
            "--max-batch",
            "1",
            "--max-queue",
            "2",
            "--max-length",
            "1000000",
        ],
    ) else {
        return;
    };
    let _long = start_long_stream(&server, 1_000_000);
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let mut s = server.connect().unwrap();
            let body = json!({"prompt": "y", "max_tokens": 3}).to_string();
            s.write_all(&request_bytes("POST", "/", &[], body.as_bytes()))
                .unwrap();
            s
        })
        .collect();
    wait_for("two requests queued", Duration::from_secs(10), || {
        server.metric("gptpipe_queue_depth") == 2.0
    });
    assert_eq!(server.post("/", &json!({"length": 3})).status, 429);
    drop(queued);
    // The long request still runs, yet the queue is free again.
    wait_for("the queue emptied", Duration::from_secs(5), || {
        server.metric("gptpipe_queue_depth") == 0.0
    });
    assert_eq!(server.metric("gptpipe_batch_rows"), 1.0);
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let Some((mut server, _)) = serve_tiny(
        backends()[0],
        &["--grace", "600", "--max-length", "1000000"],
    ) else {
        return;
    };
    let _long = start_long_stream(&server, 1_000_000);
    server.terminate();
    wait_for("the first signal seen", Duration::from_secs(10), || {
        server.log().contains("SIGTERM: no new requests")
    });
    let start = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The engine stopped before the process ended: no spurious model error.
    assert!(!server.log().contains("model error"), "{}", server.log());
}

#[cfg(feature = "worker")]
#[test]
fn a_model_error_fails_its_request_with_the_error_and_the_server_goes_on() {
    // libtorch refuses a batch that would not fit in memory before allocating it.
    let Some(model) = tiny_model(1024) else {
        return;
    };
    let server = Server::start(
        model.parent().unwrap(),
        &[
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "tch",
            "--device",
            "cpu",
            "--max-batch",
            "100000",
        ],
    );
    let huge = json!({"prompt": "a ".repeat(1000), "max_tokens": 1, "n": 90000});
    let r = server.post("/v1/completions", &huge);
    assert_eq!(r.status, 500, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("the model failed") && message.contains("GB"),
        "{message}"
    );
    for _ in 0..2 {
        let r = server.post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 5, "n": 2}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(server.get("/health").status, 200);
}
