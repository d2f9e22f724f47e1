//! Helpers shared by the integration tests of gptpipe's crates (a dev-dependency only).

/// For a test that changes the process environment, which every test of its binary shares:
/// in the test run, starts this test binary again to run only the test at `path` (its path in
/// the binary, e.g. `errors::some_test`), fails if that fails, and returns false; in that
/// process, alone with nothing else running, returns true and the test does its work.
///
/// ```ignore
/// if !gptpipe_testkit::alone("errors::some_test") { return; }
/// ```
pub fn alone(path: &str) -> bool {
    const VAR: &str = "GPTPIPE_TEST_ALONE";
    if std::env::var_os(VAR).is_some_and(|v| v == path) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args([path, "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" 1 passed"),
        "{path}, alone in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// The largest absolute difference between two equally long slices (of logits, say).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "slices of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
