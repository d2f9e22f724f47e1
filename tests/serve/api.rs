//! The two APIs as their clients use them, and every bad value answered with 400 and the
//! field's name.

use super::{backends, serve_tiny};
use crate::common::server::{tiny_model, Server};
use serde_json::json;

#[test]
fn cloud_run_api_takes_query_strings_posts_of_any_type_and_head() {
    let Some((server, _)) = serve_tiny(backends()[0], &[]) else {
        return;
    };
    // GET with a query string: the values are strings.
    let r = server.get("/?length=5&temperature=0&prefix=The%20fox&include_prefix=false&seed=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let greedy = r.json()["text"].as_str().unwrap().to_owned();
    assert!(
        !greedy.is_empty() && !greedy.starts_with("The fox"),
        "{greedy:?}"
    );

    // Its page posts a JSON string as a form (jQuery's default Content-Type).
    let body = json!({"prefix": "The fox", "length": "5", "temperature": "0",
                      "include_prefix": "False", "top_k": "40"});
    let r = server.request(
        "POST",
        "/",
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
            ("Origin", "http://elsewhere.example"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.json()["text"],
        greedy.as_str(),
        "greedy text: same either way"
    );

    // include_prefix defaults to true, as in gpt-2-cloud-run.
    let r = server.post(
        "/",
        &json!({"prefix": "The fox", "length": 5, "temperature": 0}),
    );
    assert_eq!(r.json()["text"], format!("The fox{greedy}"));

    // HEAD: a liveness probe, with the CORS header.
    let r = server.request("HEAD", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // A browser's preflight for a JSON POST from another origin.
    let r = server.request(
        "OPTIONS",
        "/",
        &[
            ("Origin", "http://elsewhere.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert!(r.status < 300, "{}", r.status);
    assert!(r.header("access-control-allow-origin").is_some());
}

#[test]
fn a_prefix_is_cut_to_its_first_500_characters_as_gpt_2_cloud_run_does() {
    let Some(model) = tiny_model(1024) else {
        return;
    };
    let dir = model.parent().unwrap();
    let backend = backends()[0];
    let server = Server::start(
        dir,
        &[
            "--model",
            model.to_str().unwrap(),
            "--backend",
            backend,
            "--device",
            "cpu",
        ],
    );
    let prefix = format!("{}{}", "é".repeat(500), "b".repeat(100));
    let r = server.post("/", &json!({"prefix": prefix, "length": 1, "seed": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with(&"é".repeat(500)), "{text:?}");
    assert!(!text[1000..].starts_with("bb"), "{text:?}");
    // OpenAI's API does not cut: a prompt over the context is refused, naming the field.
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "é ".repeat(1100), "max_tokens": 1}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "prompt");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context of 1024 tokens"));
}

#[test]
fn impossible_values_get_400_naming_the_field() {
    let Some((server, _)) = serve_tiny(backends()[0], &["--max-length", "500", "--max-batch", "4"])
    else {
        return;
    };
    let cases = [
        ("/", json!({"length": -1}), "length"),
        ("/", json!({"length": "many"}), "length"),
        ("/", json!({"top_p": 7}), "top_p"),
        ("/", json!({"temperature": "hot"}), "temperature"),
        ("/", json!({"temperature": -1}), "temperature"),
        ("/", json!({"top_k": 1.5}), "top_k"),
        ("/", json!({"include_prefix": "yes"}), "include_prefix"),
        ("/", json!({"prefix": 12}), "prefix"),
        ("/", json!({"length": 501}), "length"),
        ("/?length=0", json!(null), "length"),
        ("/v1/completions", json!({"max_tokens": -1}), "max_tokens"),
        (
            "/v1/completions",
            json!({"max_tokens": 100000}),
            "max_tokens",
        ),
        ("/v1/completions", json!({"n": 0}), "n"),
        ("/v1/completions", json!({"n": 5}), "n"),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b", "c"], "n": 2}),
            "n",
        ),
        ("/v1/completions", json!({"prompt": [1, 2]}), "prompt"),
        ("/v1/completions", json!({"prompt": {}}), "prompt"),
        (
            "/v1/completions",
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        ("/v1/completions", json!({"stop": [1]}), "stop"),
        ("/v1/completions", json!({"seed": "x"}), "seed"),
        ("/v1/completions", json!({"seed": -1}), "seed"),
        ("/", json!({"seed": -5}), "seed"),
        ("/v1/completions", json!({"top_k": -2}), "top_k"),
        ("/v1/completions", json!({"stream": "sometimes"}), "stream"),
        ("/v1/completions", json!({"top_p": 1.5}), "top_p"),
        ("/v1/completions", json!({"min_tokens": -1}), "min_tokens"),
        (
            "/v1/completions",
            json!({"min_tokens": 50, "max_tokens": 10}),
            "min_tokens",
        ),
        (
            "/v1/completions",
            json!({"no_repeat_ngram_size": "x"}),
            "no_repeat_ngram_size",
        ),
        ("/v1/completions", json!({"bad_words": [""]}), "bad_words"),
        ("/v1/completions", json!({"bad_words": 3}), "bad_words"),
        // More words than the limit, or too long a word (the ban table is built per
        // request).
        (
            "/v1/completions",
            json!({"bad_words": (0..=gptpipe_core::config::MAX_BAD_WORDS)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()}),
            "bad_words",
        ),
        (
            "/v1/completions",
            json!({"bad_words": ["x".repeat(gptpipe_core::config::MAX_BAD_WORD_BYTES + 1)]}),
            "bad_words",
        ),
        (
            "/v1/completions",
            json!({"stop": "\n", "bad_words": ["\n"]}),
            "bad_words",
        ),
    ];
    for (path, body, field) in cases {
        let r = if body.is_null() {
            server.get(path)
        } else {
            server.post(path, &body)
        };
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["param"], field, "{path} {body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{e}"
        );
    }
    // Not JSON, or not an object.
    for body in [&b"{\"length\": "[..], b"[1, 2]", b"\"text\"", b"\xff\xfe"] {
        for path in ["/", "/v1/completions"] {
            let r = server.request("POST", path, &[("Content-Type", "application/json")], body);
            assert_eq!(r.status, 400, "{path} {body:?}: {}", r.text());
            assert!(
                r.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("JSON"),
                "{}",
                r.text()
            );
        }
    }
    // A model this server does not serve.
    let r = server.post("/v1/completions", &json!({"model": "gpt-4", "prompt": "x"}));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "model");
    // A bad query string, in the same shape.
    let r = server.get("/?length=%ZZ");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    // vLLM's top_k = -1 means off.
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 3, "top_k": -1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // vLLM's extra keys: a banned letter never appears in hot samples of the tiny model
    // (letters outside the served stop string, "<|endoftext|>").
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 30, "n": 4, "temperature": 1.5,
                "bad_words": ["a", "i"], "no_repeat_ngram_size": 2, "min_tokens": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for c in r.json()["choices"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        assert!(
            !t.contains('a') && !t.contains('i') && !t.is_empty(),
            "{t:?}"
        );
    }
    // The server is still well.
    let r = server.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn models_health_metrics_and_the_page() {
    let Some((server, model)) = serve_tiny(backends()[0], &[]) else {
        return;
    };
    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], model.to_str().unwrap());
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ready");

    server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 3, "n": 2}),
    );
    server.post("/", &json!({"length": "x"}));
    let metrics = server.get("/metrics");
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        server.metric("gptpipe_requests_total{api=\"openai\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        server.metric("gptpipe_requests_total{api=\"cloud-run\",status=\"400\"}"),
        1.0
    );
    assert_eq!(server.metric("gptpipe_tokens_generated_total"), 6.0);
    assert_eq!(server.metric("gptpipe_queue_depth"), 0.0);
    assert_eq!(server.metric("gptpipe_request_duration_seconds_count"), 1.0);

    // A browser gets the page; an API client asking for JSON does not.
    let page = server.request(
        "GET",
        "/",
        &[("Accept", "text/html,application/xhtml+xml")],
        b"",
    );
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("<textarea") && html.contains(model.to_str().unwrap()),
        "{html}"
    );
    assert!(
        html.contains("gptpipe") && html.contains("OpenAI"),
        "attribution"
    );
    let api = server.request("GET", "/?length=2", &[("Accept", "text/html")], b"");
    assert!(api.json()["text"].is_string());
    // A link with a tracking parameter is still the page.
    let page = server.request("GET", "/?utm_source=x", &[("Accept", "text/html")], b"");
    assert!(page.text().contains("<textarea"));
    // The server logged one line per request.
    let log = server.log();
    assert!(log.contains("GET /v1/models 200"), "{log}");
    assert!(log.contains("POST / 400"), "{log}");
}
