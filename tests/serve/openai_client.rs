//! The `openai` Python package against `gptpipe serve` (tests/serve/openai_client.py): the
//! served text must be what `gptpipe generate` prints for the same settings.

use super::{generate_in_project, python, run_script, MODEL_NAME, STAGE_SAMPLING};
use crate::common::server::Server;

#[test]
fn openai_python_client_gets_what_generate_prints() {
    let Some(python) = python(&["openai"]) else {
        return;
    };
    let server = Server::start(super::project(), &["p.toml", "samples"]);
    let mut args = vec![
        "--model",
        "work/train",
        "--prefix",
        "The fox",
        "--length",
        "12",
        "--seed",
        "5",
        "--include-prefix",
        "false",
        "--nsamples",
        "2",
    ];
    args.extend_from_slice(STAGE_SAMPLING);
    let expected = generate_in_project(&args);
    assert_eq!(expected.len(), 2);
    let path = super::project().join(format!("expected-{}.json", server.port));
    std::fs::write(&path, serde_json::to_string(&expected).unwrap()).unwrap();
    let out = run_script(
        &python,
        "openai_client.py",
        &[&server.port.to_string(), MODEL_NAME, path.to_str().unwrap()],
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
    // The server saw them all (one log line per request).
    assert!(
        server.log().contains("POST /v1/completions 400"),
        "{}",
        server.log()
    );
}
