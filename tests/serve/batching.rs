//! Continuous batching: requests that arrive while others decode join the running batch,
//! each with its own settings and seed, and each text equals what `gptpipe generate` gives
//! with the same model, seed and settings.

use super::{backends, generate, serve_tiny};
use serde_json::{json, Value};
use std::time::Duration;

/// One request of the mix, and the `gptpipe generate` flags that must give its text.
struct Case {
    body: Value,
    /// Through gpt-2-cloud-run's API (`POST /`) rather than OpenAI's.
    cloud_run: bool,
    flags: Vec<String>,
}

fn flags(
    prefix: &str,
    length: usize,
    sampling: &[(&str, &str)],
    seed: u64,
    n: usize,
    truncate: &str,
    include_prefix: bool,
) -> Vec<String> {
    let mut f: Vec<String> = vec![
        "--prefix".into(),
        prefix.into(),
        "--length".into(),
        length.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--nsamples".into(),
        n.to_string(),
        "--truncate".into(),
        truncate.into(),
        "--include-prefix".into(),
        include_prefix.to_string(),
    ];
    for (k, v) in sampling {
        f.push(format!("--{k}"));
        f.push((*v).into());
    }
    f
}

fn cases() -> Vec<Case> {
    // The served defaults (`--model`): temperature 0.7, top_k 0, top_p 0, truncate
    // "<|endoftext|>"; every case says what it changes. Equal means equal up to the
    // rounding of the logits in a batch, which can move a draw only when it falls within
    // about 1e-7 of a boundary of the distribution: sampling among all 50257 tokens of a
    // random model (no top_k) puts thousands of boundaries that close, so the cases sample
    // with top_k, as gpt-2-simple's users do, or greedily.
    let eot = "<|endoftext|>";
    vec![
        Case {
            body: json!({"prompt": "The fox", "max_tokens": 40, "seed": 1, "n": 3, "top_k": 40}),
            cloud_run: false,
            flags: flags("The fox", 40, &[("top-k", "40")], 1, 3, eot, false),
        },
        Case {
            // Past the context of 64: the window slides, as in `gptpipe generate`.
            body: json!({"prompt": "Once upon a time", "max_tokens": 150, "seed": 2,
                         "temperature": 1.0, "top_k": 40}),
            cloud_run: false,
            flags: flags(
                "Once upon a time",
                150,
                &[("temperature", "1.0"), ("top-k", "40")],
                2,
                1,
                eot,
                false,
            ),
        },
        Case {
            body: json!({"prompt": "", "max_tokens": 25, "seed": 3, "temperature": 0}),
            cloud_run: false,
            flags: flags("", 25, &[("temperature", "0")], 3, 1, eot, false),
        },
        Case {
            body: json!({"prompt": "A", "max_tokens": 60, "seed": 4, "top_p": 0.9, "top_k": 50,
                         "n": 2, "stop": " the"}),
            cloud_run: false,
            flags: flags(
                "A",
                60,
                &[("top-p", "0.9"), ("top-k", "50")],
                4,
                2,
                " the",
                false,
            ),
        },
        Case {
            // gpt-2-cloud-run's page sends strings.
            body: json!({"prefix": "Hello world", "length": "30", "temperature": "0.9",
                         "top_k": "10", "seed": "5", "include_prefix": "true"}),
            cloud_run: true,
            flags: flags(
                "Hello world",
                30,
                &[("temperature", "0.9"), ("top-k", "10")],
                5,
                1,
                eot,
                true,
            ),
        },
        Case {
            body: json!({"prompt": "In the beginning there was a very long prompt that goes on",
                         "max_tokens": 90, "seed": 6, "echo": true, "top_k": 20}),
            cloud_run: false,
            flags: flags(
                "In the beginning there was a very long prompt that goes on",
                90,
                &[("top-k", "20")],
                6,
                1,
                eot,
                true,
            ),
        },
        Case {
            body: json!({"prefix": "x", "length": 12, "seed": 7, "include_prefix": false,
                         "truncate": "e", "top_k": 5}),
            cloud_run: true,
            flags: flags("x", 12, &[("top-k", "5")], 7, 1, "e", false),
        },
    ]
}

fn texts(answer: &Value, cloud_run: bool) -> Vec<String> {
    if cloud_run {
        return vec![answer["text"].as_str().unwrap().to_owned()];
    }
    let mut choices = answer["choices"].as_array().unwrap().clone();
    choices.sort_by_key(|c| c["index"].as_u64());
    choices
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_request_gets_the_text_of_gptpipe_generate_whatever_shares_its_batch() {
    for &backend in backends() {
        let Some((server, model)) = serve_tiny(backend, &["--max-batch", "16"]) else {
            return;
        };
        let cases = cases();
        // All at once, staggered so that most join a batch that is already decoding.
        let answers: Vec<Value> = std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .enumerate()
                .map(|(i, case)| {
                    let server = &server;
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(8 * i as u64));
                        let path = if case.cloud_run {
                            "/"
                        } else {
                            "/v1/completions"
                        };
                        let r = server.post(path, &case.body);
                        assert_eq!(r.status, 200, "{}: {}", case.body, r.text());
                        r.json()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (case, answer) in cases.iter().zip(&answers) {
            let expected = generate(&model, backend, &case.flags);
            assert_eq!(
                texts(answer, case.cloud_run),
                expected,
                "{backend}: {} differs from gptpipe generate {:?}",
                case.body,
                case.flags
            );
        }
        // The requests did share steps: some steps ran more rows than any one request has
        // (3), so rows of different requests, of different lengths, decoded together.
        let small = server.metric("gptpipe_batch_size_rows_bucket{le=\"4\"}");
        let steps = server.metric("gptpipe_batch_size_rows_count");
        assert!(
            steps > small,
            "{backend}: no step ran more than 4 rows ({steps} steps)"
        );
        // Usage counts what was generated.
        let tokens = server.metric("gptpipe_tokens_generated_total");
        assert!(tokens >= 40.0 * 3.0 + 150.0, "{backend}: {tokens} tokens");
    }
}

#[test]
fn a_streamed_completion_is_the_same_text_in_pieces() {
    for &backend in backends() {
        let Some((server, model)) = serve_tiny(backend, &[]) else {
            return;
        };
        let r = server.post(
            "/v1/completions",
            &json!({"prompt": "The fox", "max_tokens": 30, "seed": 9, "n": 2, "stream": true, "top_k": 40,
                    "stream_options": {"include_usage": true}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        let events = r.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let mut streamed = vec![String::new(); 2];
        let mut finished = vec![None; 2];
        let mut usage = None;
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            if let Some(u) = v.get("usage") {
                usage = Some(u.clone());
            }
            for c in v["choices"].as_array().unwrap() {
                let i = c["index"].as_u64().unwrap() as usize;
                streamed[i].push_str(c["text"].as_str().unwrap());
                if let Some(reason) = c["finish_reason"].as_str() {
                    finished[i] = Some(reason.to_owned());
                }
            }
        }
        let flags = [
            "--prefix",
            "The fox",
            "--length",
            "30",
            "--seed",
            "9",
            "--nsamples",
            "2",
            "--top-k",
            "40",
            "--truncate",
            "<|endoftext|>",
            "--include-prefix",
            "false",
        ];
        let expected = generate(&model, backend, &flags.map(String::from));
        assert_eq!(streamed, expected, "{backend}");
        assert!(finished.iter().all(Option::is_some), "{finished:?}");
        // An echoed stream starts with its prompt, as the whole text does.
        let echoed = server.post(
            "/v1/completions",
            &json!({"prompt": "The fox", "max_tokens": 20, "seed": 4, "top_k": 40,
                    "echo": true, "stream": true}),
        );
        let text: String = echoed.events()[..echoed.events().len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .map(|v| {
                v["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let flags = [
            "--prefix",
            "The fox",
            "--length",
            "20",
            "--seed",
            "4",
            "--top-k",
            "40",
            "--truncate",
            "<|endoftext|>",
            "--include-prefix",
            "true",
        ];
        assert_eq!(
            vec![text],
            generate(&model, backend, &flags.map(String::from)),
            "{backend}"
        );
        let usage = usage.expect("a usage chunk");
        assert_eq!(usage["prompt_tokens"], 2, "{usage}");
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
    }
}
