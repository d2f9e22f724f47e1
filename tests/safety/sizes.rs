//! Absurd sizes are refused before anything is allocated: a config error naming the key
//! (exit code 2) for shapes and counts no machine could hold, and "this needs N GB, the
//! machine has M GB" (exit code 1) for sizes within those bounds that do not fit this
//! machine. Never a libtorch panic with a C++ backtrace, never an abort.

use super::gptpipe;
use crate::common::Run;
use std::path::{Path, PathBuf};

impl Run {
    /// Fails with `code`, says each of `needles` (stdout and stderr together), and shows no
    /// sign of a panic or a C++ exception.
    #[track_caller]
    fn fails_with(&self, code: i32, needles: &[&str]) {
        let all = format!("{}\n{}", self.stdout, self.stderr);
        assert_eq!(self.code, code, "{all}");
        for needle in needles {
            assert!(all.contains(needle), "no {needle:?} in:\n{all}");
        }
        for bad in ["panicked", "C++", "frame #", "memory allocation of"] {
            assert!(!all.contains(bad), "{bad:?} in:\n{all}");
        }
    }
}

/// A folder with `p.toml` holding `stages` after a pipeline header, and a small dataset.
fn project(stages: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..50)
        .map(|i| format!("a line of text number {i}\n"))
        .collect();
    std::fs::write(dir.path().join("data.txt"), text).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        format!("[pipeline]\nname = \"s\"\nworkdir = \"work\"\n\n{stages}"),
    )
    .unwrap();
    dir
}

/// A model folder whose `config.json` has these GPT-2 keys; the weights file is a
/// placeholder (nothing may read it before the sizes are checked).
fn model_folder(root: &Path, n_layer: u64, n_head: u64, n_embd: u64, n_positions: u64) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2",
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        "n_ctx": n_positions,
        "vocab_size": 50257,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"placeholder").unwrap();
    dir
}

#[test]
fn absurd_shapes_and_counts_are_config_errors_naming_the_key() {
    let p = project(
        "[stages.train]\nkind = \"finetune\"\ndataset = \"data.txt\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 1000000000 }\n\
         steps = 1\ndevice = \"cpu\"\n",
    );
    let run = gptpipe(p.path(), &["run", "p.toml"]);
    run.fails_with(2, &["n_ctx = 1000000000", "model"]);

    for (key, model) in [
        ("n_embd", "{ n_layer = 1, n_head = 1, n_embd = 1000000000 }"),
        (
            "n_layer",
            "{ n_layer = 1000000000, n_head = 1, n_embd = 8 }",
        ),
        (
            "vocab_size",
            "{ n_layer = 1, n_head = 1, n_embd = 8, vocab_size = 100000000000 }",
        ),
    ] {
        let p = project(&format!(
            "[stages.gen]\nkind = \"generate\"\nmodel = {model}\ndevice = \"cpu\"\n"
        ));
        gptpipe(p.path(), &["run", "p.toml"]).fails_with(2, &[&format!("{key} = ")]);
    }

    let p = project(
        "[stages.gen]\nkind = \"generate\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
         nsamples = 1000000000\nbatch_size = 1000000000\ndevice = \"cpu\"\n",
    );
    gptpipe(p.path(), &["run", "p.toml"]).fails_with(2, &["batch_size = 1000000000"]);
    let p = project(
        "[stages.gen]\nkind = \"generate\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }\n\
         nsamples = 1000000000\ndevice = \"cpu\"\n",
    );
    gptpipe(p.path(), &["run", "p.toml"]).fails_with(2, &["nsamples = 1000000000"]);

    // The same bounds for `gptpipe generate`, before the model is looked at.
    let dir = tempfile::tempdir().unwrap();
    let model = model_folder(dir.path(), 1, 2, 32, 32);
    let model = model.to_str().unwrap();
    let run = gptpipe(
        dir.path(),
        &[
            "generate",
            "--model",
            model,
            "--nsamples",
            "1000000000",
            "--batch-size",
            "1000000000",
        ],
    );
    run.fails_with(2, &["batch_size = 1000000000"]);
}

#[test]
#[cfg(feature = "worker")] // models load in gptpipe-worker, which needs libtorch
fn a_model_folder_with_an_absurd_context_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_folder(dir.path(), 1, 2, 32, 1_000_000_000);
    let model = model.to_str().unwrap();
    let args = [
        "generate", "--model", model, "--device", "cpu", "--length", "4",
    ];
    let run = gptpipe(dir.path(), &args);
    assert_ne!(run.code, 0);
    run.fails_with(run.code, &["n_ctx = 1000000000", "n_positions"]);
    assert!([1, 2].contains(&run.code), "exit code {}", run.code);
}

#[test]
#[cfg(feature = "worker")]
fn a_model_too_big_for_the_machine_says_what_it_needs_and_what_to_lower() {
    // Within the shape bounds, but about 200 TB of weights: no machine has them.
    let dir = tempfile::tempdir().unwrap();
    let model = model_folder(dir.path(), 1024, 64, 65536, 1024);
    let model = model.to_str().unwrap();
    let args = [
        "generate", "--model", model, "--device", "cpu", "--length", "4",
    ];
    gptpipe(dir.path(), &args).fails_with(1, &["needs about", "the machine has", "smaller model"]);

    // Finetuning the same shape inline: the training estimate refuses it before any weight
    // is allocated.
    let p = project(
        "[stages.train]\nkind = \"finetune\"\ndataset = \"data.txt\"\n\
         model = { n_layer = 1024, n_head = 64, n_embd = 65536, n_ctx = 1024 }\n\
         steps = 1\nsample_every = 0\ndevice = \"cpu\"\n",
    );
    gptpipe(p.path(), &["run", "p.toml"]).fails_with(
        1,
        &["training needs about", "the machine has", "smaller model"],
    );

    // A small model with a batch whose KV cache is about 18 TB: refused before the batch
    // is allocated, naming batch_size.
    let p = project(
        "[stages.gen]\nkind = \"generate\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 1048576 }\n\
         nsamples = 65536\nbatch_size = 65536\nlength = 4\ndevice = \"cpu\"\n",
    );
    gptpipe(p.path(), &["run", "p.toml"]).fails_with(
        1,
        &[
            "generation needs about",
            "the machine has",
            "lower batch_size",
        ],
    );
}

#[test]
#[cfg(feature = "worker")]
fn a_355m_model_that_cannot_fit_says_which_settings_would_make_it_fit() {
    use crate::common::Test;
    // GPTPIPE_MEMORY_LIMIT makes this machine a 3 GB one: GPT-2 355M with Adam needs about
    // 5.7 GB of weights, gradients and moments alone.
    let stage = |model: &str| {
        format!(
            "[stages.train]\nkind = \"finetune\"\ndataset = \"data.txt\"\nmodel = {model}\n\
             steps = 1\nsample_every = 0\ndevice = \"cpu\"\nbatch_size = 2\n"
        )
    };
    let ways = [
        "training needs about",
        "GPTPIPE_MEMORY_LIMIT = 3.0 GB",
        "to fit,",
        "lower batch_size to 1",
        "use_memory_saving_gradients = true",
        "only_train_transformer_layers = true",
        "num_layers_freeze = 12 (of 24 blocks)",
        "optimizer = \"sgd\"",
        "smaller model",
    ];
    let hf_home = tempfile::tempdir().unwrap();
    for model in [
        "{ n_layer = 24, n_head = 16, n_embd = 1024 }",
        // By gpt-2-simple's name: refused before the download (which is refused offline).
        "\"355M\"",
        "\"gpt2-medium\"",
    ] {
        let p = project(&stage(model));
        let run = Test::new()
            .dir(p.path())
            .args(["run", "p.toml"])
            .env("GPTPIPE_MEMORY_LIMIT", "3GB")
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", hf_home.path())
            .run();
        run.fails_with(1, &ways);
        let all = format!("{}\n{}", run.stdout, run.stderr);
        assert!(!all.contains("HF_HUB_OFFLINE is set"), "{all}");
        if model.starts_with('"') {
            assert!(
                all.contains("model = \"gpt2\""),
                "the next size down: {all}"
            );
        }
        // The largest saving first: the savings are in decreasing order.
        let saves: Vec<f64> = all
            .split("saves ")
            .skip(1)
            .map(|s| s.split(" GB").next().unwrap().parse().unwrap())
            .collect();
        assert!(saves.len() >= 5, "{all}");
        assert!(saves.windows(2).all(|w| w[0] >= w[1]), "{all}");
    }

    // Without the cap the same 355M by name is not refused for memory (the offline
    // download is what fails), so the cap was what refused it.
    let p = project(&stage("\"355M\""));
    let run = Test::new()
        .dir(p.path())
        .args(["run", "p.toml"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", hf_home.path())
        .env_remove("GPTPIPE_MEMORY_LIMIT")
        .run();
    run.fails_with(1, &["\"gpt2-medium\" is not in the Hugging Face cache"]);
}
