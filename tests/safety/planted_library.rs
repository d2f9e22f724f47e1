//! A `libonnxruntime.so` planted in an untrusted repository is never loaded: loading a
//! library runs its constructor, so ONNX Runtime comes only from `ORT_DYLIB_PATH`, the
//! binary's own folder or installation, the workspace of a cargo build run from its
//! `target/`, or `$VIRTUAL_ENV` — never from the current folder, the pipeline's folder,
//! their parents or a `.venv` below them.
//!
//! The fake library is a C file compiled here whose constructor writes a marker file. The
//! real `gptpipe` binary runs `generate --backend onnx` and `run` from a folder with fake
//! libraries in it, in its `.venv/` and in its parent; once as built (in `target/`, so the
//! workspace's own library is found) and once as an installed copy outside any workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{write, Run, Test};

/// Runs `exe` in `dir` with no ONNX Runtime hint from the environment.
fn run(exe: &Path, dir: &Path, args: &[&str]) -> Run {
    Test::exe(exe)
        .dir(dir)
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("VIRTUAL_ENV")
        .run()
}

/// Compiles a shared library whose constructor appends a line to `marker`.
fn fake_library(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("planted.c");
    write(
        &src,
        format!(
            "#include <stdio.h>\n\
             __attribute__((constructor)) static void planted(void) {{\n\
             \x20 FILE *f = fopen({:?}, \"a\");\n\
             \x20 if (f) {{ fputs(\"the planted library ran\\n\", f); fclose(f); }}\n\
             }}\n",
            marker.to_str().unwrap()
        ),
    );
    let lib = dir.join("libplanted.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) builds the fake library");
    assert!(status.success(), "cc failed");
    lib
}

/// The real binaries, hard-linked (else copied) into `bin`, outside any workspace.
fn installed_copy(bin: &Path) -> PathBuf {
    std::fs::create_dir_all(bin).unwrap();
    let built = PathBuf::from(env!("CARGO_BIN_EXE_gptpipe"));
    for name in ["gptpipe", "gptpipe-worker"] {
        let from = built.with_file_name(name);
        if from.is_file() {
            let to = bin.join(name);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
    }
    bin.join("gptpipe")
}

#[test]
fn a_planted_onnx_runtime_library_is_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let repo = base.join("repo");
    let sub = repo.join("sub");
    let marker = base.join("planted-library-ran");
    let fake = fake_library(&base, &marker);

    // The fake library everywhere the old search looked: the current folder, its `.venv`,
    // the parent folder, the parent's `.venv` and a `.venv` wheel.
    let planted = [
        sub.join("libonnxruntime.so"),
        sub.join(".venv/libonnxruntime.so"),
        repo.join("libonnxruntime.so"),
        repo.join(".venv/libonnxruntime.so"),
        repo.join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.99.0"),
    ];
    for place in &planted {
        write(place, std::fs::read(&fake).unwrap());
    }
    // Loading a model opens ONNX Runtime before it reads model.onnx, so no real model is
    // needed to see which library a run loads.
    write(
        &repo.join("model/config.json"),
        r#"{"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32,
            "n_positions": 32, "vocab_size": 50257}"#,
    );
    write(&repo.join("model/model.onnx"), "not an ONNX file");
    write(
        &repo.join("p.toml"),
        "[pipeline]\nname = \"planted\"\nworkdir = \"work\"\n\n[stages.g]\nkind = \"generate\"\n\
         model = \"./model\"\nbackend = \"onnx\"\ndevice = \"cpu\"\nlength = 4\n",
    );
    let generate = [
        "generate",
        "--backend",
        "onnx",
        "--device",
        "cpu",
        "--length",
        "4",
        "--model",
    ];
    let model = repo.join("model");
    let model = model.to_str().unwrap();
    let commands: [Vec<&str>; 2] = [[&generate[..], &[model]].concat(), vec!["run", "../p.toml"]];
    let assert_not_loaded = |what: &str, out: &Run| {
        assert!(
            !marker.exists(),
            "{what} loaded the planted library:\n{}",
            out.stderr
        );
        assert_ne!(out.code, 0, "{what} cannot succeed: {}", out.stderr);
        for place in &planted {
            assert!(
                !out.stderr.contains(place.to_str().unwrap()),
                "{what} tried a library of the repository:\n{}",
                out.stderr
            );
        }
    };

    // The binary as built: the workspace's own library (scripts/setup.sh) may be found.
    let built = PathBuf::from(env!("CARGO_BIN_EXE_gptpipe"));
    for args in &commands {
        let out = run(&built, &sub, args);
        assert_not_loaded(&format!("{} (built)", args[0]), &out);
    }

    // An installed copy outside any workspace finds no library at all: it says where to
    // put one.
    let installed = installed_copy(&base.join("opt/bin"));
    for args in &commands {
        let out = run(&installed, &sub, args);
        assert_not_loaded(&format!("{} (installed)", args[0]), &out);
        assert!(
            out.stderr
                .contains("ONNX Runtime's shared library (libonnxruntime.so) was not found"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("the current folder is never searched"),
            "{}",
            out.stderr
        );
    }

    // The same copy with the real library beside it (a deployment) loads that one.
    let workspace_library = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/libonnxruntime.so");
    if workspace_library.is_file() {
        std::os::unix::fs::symlink(&workspace_library, base.join("opt/bin/libonnxruntime.so"))
            .unwrap();
        let out = run(&installed, &sub, &commands[0]);
        assert_not_loaded("generate (deployed)", &out);
        assert!(
            out.stderr.contains("ONNX Runtime cannot load") && out.stderr.contains("model.onnx"),
            "the library beside the binary was not used:\n{}",
            out.stderr
        );
    }
}
