//! Debian's chromium, driven by Playwright (tests/serve/browser.py), on the page of
//! `gptpipe serve` and, from another origin, on its gpt-2-cloud-run API.
//!
//! The screenshot lands in cargo's temp folder for tests; `GPTPIPE_UPDATE_SCREENSHOT=1`
//! also copies it to docs/serve-page.png.

use super::{missing, python, run_script, MODEL_NAME};
use crate::common::server::Server;
use std::path::Path;

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn chromium_writes_with_the_page_and_calls_the_api_cross_origin() {
    let Some(python) = python(&["playwright"]) else {
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        let _: Option<()> = missing("no /usr/bin/chromium (apt-get install chromium)");
        return;
    }
    let server = Server::start(super::project(), &["p.toml", "samples", "--max-batch", "4"]);
    let shot =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-page-{}.png", server.port));
    let out = run_script(
        &python,
        "browser.py",
        &[&server.port.to_string(), MODEL_NAME, shot.to_str().unwrap()],
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    // The page's own stream and the cross-origin client's POST reached this server.
    let log = server.log();
    assert!(log.contains("POST /v1/completions 200"), "{log}");
    assert!(log.contains("POST / 200"), "{log}");
    if std::env::var_os("GPTPIPE_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/serve-page.png");
        std::fs::copy(&shot, docs).unwrap();
    }
    let _ = std::fs::remove_file(&shot);
}
