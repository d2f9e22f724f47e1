//! SIGTERM and SIGINT stop `gptpipe run` at once, as the signal asks, but not without a
//! word: one line on stderr says what happened, the process ends by the signal (the shell
//! sees 143 or 130), and the previous outputs are kept.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn gptpipe(dir: &Path) -> Command {
    let mut c = crate::common::gptpipe();
    c.current_dir(dir);
    c
}

/// `rows` distinct CSV rows (enough of them keep prepare busy for seconds).
fn csv(rows: usize, tag: &str) -> String {
    let mut out = String::from("title\n");
    for i in 0..rows {
        out.push_str(&format!(
            "what is the best thing you ever ate number {i} of {tag}\n"
        ));
    }
    out
}

#[test]
fn a_signal_stops_a_run_with_one_line_that_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("p.toml"),
        "[pipeline]\nname = \"i\"\nworkdir = \"work\"\n\n[stages.a]\nkind = \"prepare\"\n\
         inputs = [\"data.csv\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("data.csv"), csv(10, "small")).unwrap();
    let first = gptpipe(dir).args(["run", "p.toml"]).output().unwrap();
    assert!(first.status.success(), "{first:?}");
    let published = std::fs::read(dir.join("work/a/dataset.txt")).unwrap();

    for (signal, name, verb) in [
        (libc::SIGTERM, "SIGTERM", "terminated"),
        (libc::SIGINT, "SIGINT", "interrupted"),
    ] {
        // A new, big input: the stage is still running when the signal lands.
        std::fs::write(dir.join("data.csv"), csv(600_000, name)).unwrap();
        let mut child = gptpipe(dir)
            .args(["run", "p.toml", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut events = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = events.by_ref().map_while(Result::ok).any(|line| {
            serde_json::from_str::<serde_json::Value>(&line)
                .is_ok_and(|e| e["event"] == "stage_progress" || e["event"] == "stage_started")
        });
        assert!(started, "the stage never started");
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();

        // Ended by the signal itself, which a shell reports as 128 + signal.
        assert_eq!(status.signal(), Some(signal), "{status:?}: {stderr}");
        let line = format!(
            "gptpipe: {verb} ({name}); the stages that were running were stopped, outputs \
             kept as they were"
        );
        assert_eq!(stderr.matches(&line).count(), 1, "{stderr}");
        assert_eq!(
            std::fs::read(dir.join("work/a/dataset.txt")).unwrap(),
            published,
            "the published output changed"
        );
    }
}
