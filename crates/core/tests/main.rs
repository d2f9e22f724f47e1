//! The integration tests of gptpipe-core, one test binary (`--test integration`): each file
//! of this folder is a module of it. `cargo test -p gptpipe-core --test integration NAME`
//! runs the tests whose path contains NAME (e.g. `fuzz_config::`).

mod config_values;
mod fuzz_config;
mod known_answers;
mod memo_race;
mod runner_safety;
mod stage_keys;
mod state_folder;

/// Runs the test at `path` again in a process of its own and checks that it passed; true in
/// that process. For a test that changes the process environment, which the other tests of
/// this binary share.
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
