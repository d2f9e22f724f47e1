//! Pins the cache keys of fixed stages of every kind: what a stage's params serialize to
//! (`keyed_json`) and which input files it hashes, in which order. A change here makes
//! every existing stage of that kind stale; it must be deliberate.

use gptpipe_core::config::{load, LoadOptions};
use gptpipe_core::runner::KeyMaterial;
use std::collections::BTreeMap;

#[test]
fn keys_of_fixed_stages_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |rel: &str, text: &str| {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("a.csv", "text\nhello\n");
    write("data/one.txt", "one\n");
    write("data/sub/two.txt", "two\n");
    write("logs/x.txt", "x\n");
    write("logs/y.csv", "y\n");
    write("corpus.txt", "corpus\n");
    write("ckpt/model.safetensors", "weights\n");
    write("models/m/config.json", "{}\n");
    write("models/m/model.safetensors", "m\n");
    write(
        "gptpipe.toml",
        r#"[pipeline]
name = "keys"
[stages.prep]
kind = "prepare"
inputs = ["a.csv", "data", "logs/*.txt"]
dedupe = true
[stages.more]
kind = "prepare"
inputs = ["@prep", "corpus.txt"]
[stages.train]
kind = "finetune"
dataset = "@prep"
model = { n_layer = 1, n_head = 1, n_embd = 8 }
device = "cpu"
[stages.tune]
kind = "finetune"
dataset = "corpus.txt"
model = "./models/m"
restore_from = "ckpt"
device = "cuda:1"
[stages.gen]
kind = "generate"
model = "@train"
prefix = "Hi"
[stages.hub]
kind = "generate"
model = "gpt2"
[stages.exp]
kind = "export"
model = "models/m"
"#,
    );
    let pipeline = load(&d.join("gptpipe.toml"), &LoadOptions::default()).unwrap();
    let mut keys = BTreeMap::new();
    for (name, params) in &pipeline.stages {
        let files = gptpipe_core::inputs::stage_inputs(&pipeline, params).unwrap();
        let inputs: BTreeMap<String, String> = files
            .iter()
            .map(|(k, p)| (k.clone(), gptpipe_core::cache::hash::hash_file(p).unwrap()))
            .collect();
        let material = KeyMaterial {
            kind: params.kind().to_string(),
            version: gptpipe_core::stage::versions::of(params.kind()),
            params: params.keyed_json(),
            inputs,
            upstream: BTreeMap::new(),
        };
        let key = material.key();
        keys.insert(
            name.clone(),
            (files.keys().cloned().collect::<Vec<_>>(), key),
        );
    }
    // `gen` and `hub` (generate stages) re-pinned for generate's version 2 (issue 15),
    // `train` and `tune` (finetune stages) for finetune's version 3 (issue 16).
    let expected: BTreeMap<String, (Vec<String>, String)> = [
        (
            "exp",
            vec!["models/m/config.json", "models/m/model.safetensors"],
            "9bb13dcc433288704400c124ecf043d916ce59ab781fbaf1c640bd40917c3f48",
        ),
        (
            "gen",
            vec![],
            "538ce570bfbedfc2521935464aa7b84eb3018ca9492079f59bbba01411f522fe",
        ),
        (
            "hub",
            vec![],
            "8240e6ec98f572994df375f15b310da8000378a69d6ec0bde25e63f93cdd26bd",
        ),
        (
            "more",
            vec!["corpus.txt"],
            "61f5e93d8002ed184135582ade8279f1ee2135113cc6e2bc70b1ccdc887c7466",
        ),
        (
            "prep",
            vec!["a.csv", "data/one.txt", "data/sub/two.txt", "logs/x.txt"],
            "48d583166a64a8afa8dda59f8a6f93bb11cae442bda1310d8e64a0dd0ce004d4",
        ),
        (
            "train",
            vec![],
            "41eb7d5fadc6c87c3bcefed231d50fe641546f9c1ff9eab6fd8c37dbb824dc39",
        ),
        (
            "tune",
            vec![
                "ckpt/model.safetensors",
                "corpus.txt",
                "models/m/config.json",
                "models/m/model.safetensors",
            ],
            "922190841cb085d971ba597107aecab7d67d4ab6ad783a65d20564f5124b0b1b",
        ),
    ]
    .into_iter()
    .map(|(n, f, k): (&str, Vec<&str>, &str)| {
        (
            n.to_owned(),
            (f.into_iter().map(str::to_owned).collect(), k.to_owned()),
        )
    })
    .collect();
    assert_eq!(keys, expected);
}

/// Issue 14's stop and shape controls (`truncate` as a list, `min_length`,
/// `no_repeat_ngram_size`, `bad_words`): a generate stage that uses none of them, or sets
/// them to their defaults, keeps the key it had before they existed (pinned from the
/// commit before them), and setting one changes it.
#[test]
fn generate_controls_at_their_defaults_keep_the_key() {
    let key_of = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gptpipe.toml");
        let text = format!(
            "[pipeline]\nname = \"keys\"\n[stages.gen]\nkind = \"generate\"\nmodel = \"gpt2\"\n\
             truncate = \"<|endoftext|>\"\n{extra}"
        );
        std::fs::write(&file, text).unwrap();
        let pipeline = load(&file, &LoadOptions::default()).unwrap();
        let params = &pipeline.stages["gen"];
        KeyMaterial {
            kind: params.kind().to_string(),
            version: gptpipe_core::stage::versions::of(params.kind()),
            params: params.keyed_json(),
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
        }
        .key()
    };
    // Re-pinned once for generate's version 2 (issue 15), which changes every generate key.
    let before = "1f0100bf71e6effc940d04cb33c1a1655ef692ff9682826e39c64c167a3996d8";
    assert_eq!(key_of(""), before);
    assert_eq!(
        key_of("min_length = 0\nno_repeat_ngram_size = 0\nbad_words = []\n"),
        before
    );
    for changed in [
        "min_length = 5\n",
        "no_repeat_ngram_size = 3\n",
        "bad_words = [\"zebra\"]\n",
    ] {
        assert_ne!(key_of(changed), before, "{changed}");
    }
}

/// Issue 16's `threads` (finetune, generate): a CPU thread count changes at most the
/// rounding of sums, so a stage that sets it keeps the key it had without it (pinned above
/// and from the commit before it), and 0 threads is refused.
#[test]
fn threads_stays_out_of_the_key() {
    let key_of = |stage: &str, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gptpipe.toml");
        let text = format!("[pipeline]\nname = \"keys\"\n[stages.s]\n{stage}{extra}");
        std::fs::write(&file, text).unwrap();
        let pipeline = load(&file, &LoadOptions::default()).map_err(|e| e.to_string())?;
        let params = &pipeline.stages["s"];
        let material = KeyMaterial {
            kind: params.kind().to_string(),
            version: gptpipe_core::stage::versions::of(params.kind()),
            params: params.keyed_json(),
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
        };
        Ok::<_, String>((material.key(), params.threads().map(|n| n.get())))
    };
    let generate = "kind = \"generate\"\nmodel = \"gpt2\"\ntruncate = \"<|endoftext|>\"\n";
    // Generate's version 2 (issue 15).
    let before = "1f0100bf71e6effc940d04cb33c1a1655ef692ff9682826e39c64c167a3996d8";
    assert_eq!(key_of(generate, "").unwrap(), (before.into(), None));
    assert_eq!(
        key_of(generate, "threads = 3\n").unwrap(),
        (before.into(), Some(3))
    );
    let finetune = "kind = \"finetune\"\ndataset = \"d.txt\"\nmodel = \"gpt2\"\n";
    let (plain, _) = key_of(finetune, "").unwrap();
    assert_eq!(key_of(finetune, "threads = 1\n").unwrap(), (plain, Some(1)));
    for stage in [generate, finetune] {
        let err = key_of(stage, "threads = 0\n").unwrap_err();
        assert!(err.contains("threads"), "{err}");
    }
}

/// Issue 13's `devices`: without dropout N ranks train what one does up to rounding, so
/// the count stays out of the key (moving a finetune to more GPUs reruns nothing); with
/// dropout each rank draws its own masks, so a count other than 1 is in it.
#[test]
fn devices_stays_out_of_the_key_only_without_dropout() {
    let key_of = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gptpipe.toml");
        let text = format!(
            "[pipeline]\nname = \"keys\"\n[stages.s]\nkind = \"finetune\"\n\
             dataset = \"d.txt\"\nmodel = \"gpt2\"\nbatch_size = 4\n{extra}"
        );
        std::fs::write(&file, text).unwrap();
        let pipeline = load(&file, &LoadOptions::default()).unwrap();
        pipeline.stages["s"].keyed_json()
    };
    let no_dropout = key_of("dropout = 0.0\n");
    assert_eq!(key_of("dropout = 0.0\ndevices = 2\n"), no_dropout);
    assert_eq!(key_of("dropout = 0.0\ndevices = \"all\"\n"), no_dropout);
    let dropout = key_of("");
    assert_eq!(key_of("devices = 1\n"), dropout);
    assert_ne!(key_of("devices = 2\n"), dropout);
    assert_ne!(
        key_of("dropout = 0.1\ndevices = 4\n"),
        key_of("dropout = 0.1\n")
    );
}
