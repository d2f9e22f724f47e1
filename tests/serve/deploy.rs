//! The Dockerfile's image, replayed outside a container (no container engine runs on the
//! test machines): the ONNX-only binary and ONNX Runtime's library side by side in
//! `/app/bin`, the model in `/app/model`, the ENTRYPOINT's arguments, `PORT` from the
//! environment, a working folder elsewhere and no virtualenv, then SIGTERM.

use crate::common::server::{free_port, request_to, tiny_model};
use crate::common::GPTPIPE;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exec-form ENTRYPOINT of the Dockerfile.
fn entrypoint(dockerfile: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("the Dockerfile has an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT in exec form")
}

#[test]
fn the_image_layout_serves_without_libtorch_a_virtualenv_or_the_workspace() {
    let Some(model) = tiny_model(64) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for copy in [
        "COPY --from=build /src/target/release/gptpipe /app/bin/gptpipe",
        "COPY --from=ort /libonnxruntime.so /app/bin/libonnxruntime.so",
        "COPY ${MODEL} /app/model",
        "--no-default-features --features onnx -p gptpipe",
    ] {
        assert!(
            dockerfile.contains(copy),
            "the Dockerfile no longer has {copy:?}"
        );
    }
    let args = entrypoint(&dockerfile);
    assert_eq!(args[0], "/app/bin/gptpipe");

    // The image's file system, under a temp folder.
    let image = tempfile::tempdir().unwrap();
    let app = image.path().join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::copy(GPTPIPE, app.join("bin/gptpipe")).unwrap();
    let ort = std::fs::canonicalize(root.join(".venv/libonnxruntime.so"))
        .expect("scripts/setup.sh links .venv/libonnxruntime.so");
    std::fs::copy(ort, app.join("bin/libonnxruntime.so")).unwrap();
    std::fs::create_dir(app.join("model")).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), app.join("model").join(f.file_name())).unwrap();
    }
    let workdir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rebase = |a: &str| match a.strip_prefix("/app/") {
        Some(rest) => app.join(rest).to_string_lossy().into_owned(),
        None => a.to_owned(),
    };
    let mut child = Command::new(rebase(&args[0]))
        .args(args[1..].iter().map(|a| rebase(a)))
        .current_dir(workdir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let answer = loop {
        let body = r#"{"prefix": "Hello", "length": "5", "seed": "1"}"#;
        match request_to(port, "POST", "/", &[], body.as_bytes()) {
            Ok(r) if r.status == 200 => break r,
            _ if start.elapsed() > Duration::from_secs(60)
                || child.try_wait().unwrap().is_some() =>
            {
                let _ = child.kill();
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the image's server did not answer: {err}");
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(answer.json()["text"].as_str().unwrap().starts_with("Hello"));
    // SIGTERM, as Cloud Run sends it: a clean exit.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
