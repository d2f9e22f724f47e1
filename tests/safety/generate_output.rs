//! `gptpipe generate --output` on what is not a plain file in an existing folder, through
//! the real binary: a FIFO and a device are written in place (never renamed over), a link
//! stays a link, a full device is a clear error, and a missing folder is refused, not
//! created.
#![cfg(feature = "worker")]

use super::gptpipe;
use crate::common::Run;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A folder with a tiny model trained for one step (`work/train`).
fn project() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let mut csv = String::from("title\n");
    for i in 0..20 {
        csv.push_str(&format!("The fox number {i} jumps over the lazy dog\n"));
    }
    std::fs::write(tmp.path().join("titles.csv"), csv).unwrap();
    std::fs::write(
        tmp.path().join("p.toml"),
        "[pipeline]\nname = \"o\"\nworkdir = \"work\"\n\n[stages.titles]\nkind = \"prepare\"\n\
         inputs = [\"titles.csv\"]\n\n[stages.train]\nkind = \"finetune\"\ndataset = \"@titles\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\nsteps = 1\n\
         batch_size = 1\naccumulate_gradients = 1\ndevice = \"cpu\"\nsample_every = 0\n",
    )
    .unwrap();
    let run = gptpipe(tmp.path(), &["run", "p.toml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    tmp
}

const SAMPLE: [&str; 8] = [
    "generate",
    "--model",
    "work/train",
    "--device",
    "cpu",
    "--length",
    "5",
    "--nsamples",
];

fn generate(dir: &Path, output: &[&str]) -> Run {
    gptpipe(dir, &[&SAMPLE[..], &["2"], output].concat())
}

#[test]
fn special_files_links_and_missing_folders_as_the_output() {
    let tmp = project();
    let dir = tmp.path();
    let expected = generate(dir, &[]);
    assert_eq!(expected.code, 0, "{}", expected.stderr);
    assert!(expected.stdout.contains("===================="));

    // A FIFO read by another thread gets the samples, and stays a FIFO.
    let fifo = dir.join("samples.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // Non-blocking, so the reader never waits on a writer that does not come.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let finished = done.load(Ordering::SeqCst);
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ if finished => return got,
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let run = generate(dir, &["--output", fifo.to_str().unwrap()]);
    done.store(true, Ordering::SeqCst);
    let got = thread.join().unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(String::from_utf8_lossy(&got), expected.stdout);
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");

    // /dev/stdout (a link to the process's stdout, a pipe here) gets the samples.
    let run = generate(dir, &["--output", "/dev/stdout"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, expected.stdout);

    // A link to a regular file: the target is written and keeps its mode; the link stays.
    std::fs::create_dir(dir.join("real")).unwrap();
    let target = dir.join("real/samples.txt");
    std::fs::write(&target, "old samples\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("real/samples.txt", dir.join("link.txt")).unwrap();
    let run = generate(dir, &["-o", "link.txt"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let link = std::fs::symlink_metadata(dir.join("link.txt")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), expected.stdout);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);

    // A missing folder is refused before any work, naming it, and is not created.
    let run = generate(dir, &["-o", "nowhere/deeper/s.txt"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--output")
            && run
                .stderr
                .contains("the folder nowhere/deeper does not exist"),
        "{}",
        run.stderr
    );
    assert!(!dir.join("nowhere").exists(), "the folder was created");

    // A full device: a clear error and exit 1, and the device is still a device (as root,
    // a rename over /dev/full used to replace it with a regular file).
    let full = Path::new("/dev/full");
    match std::fs::symlink_metadata(full) {
        Ok(before) if before.file_type().is_char_device() => {
            use std::os::unix::fs::MetadataExt;
            let run = generate(dir, &["-o", "/dev/full"]);
            assert_eq!(run.code, 1, "{}", run.stderr);
            assert!(
                run.stderr.contains("cannot write /dev/full")
                    && run.stderr.contains("No space left on device"),
                "{}",
                run.stderr
            );
            let after = std::fs::symlink_metadata(full).unwrap();
            assert!(after.file_type().is_char_device(), "/dev/full was replaced");
            assert_eq!(after.rdev(), before.rdev());
        }
        _ => eprintln!("skipped: no /dev/full on this machine"),
    }
}
