//! Values parsed into types when a pipeline loads: devices (an invalid one points at its
//! key), and `~` in model and path values, which is the home folder.

use gptpipe_core::stage::{resolve_model, ModelSource};

use crate::load_in;

#[test]
fn an_invalid_device_is_a_config_error_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, extra) in [("finetune", "dataset = \"a.txt\"\n"), ("generate", "")] {
        let e = load_in(
            dir.path(),
            &format!("[stages.t]\nkind = \"{kind}\"\n{extra}device = \"tpu\"\n"),
        )
        .unwrap_err();
        assert!(
            e.contains(
                "stage `t`: device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", not \"tpu\""
            ),
            "{e}"
        );
        let line = if extra.is_empty() { 5 } else { 6 };
        assert!(e.contains(&format!("p.toml:{line}:1")), "{e}");
    }
}

#[test]
fn a_model_or_path_starting_with_a_tilde_is_in_the_home_folder() {
    // It sets HOME: run alone in a process of its own.
    if !gptpipe_testkit::alone(
        "config_values::a_model_or_path_starting_with_a_tilde_is_in_the_home_folder",
    ) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::env::set_var("HOME", home.path());
    std::fs::create_dir_all(home.path().join("m")).unwrap();
    std::fs::write(home.path().join("data.txt"), "x\n").unwrap();
    let p = load_in(
        project.path(),
        "workdir = \"~/w\"\n\
         [stages.g]\nkind = \"generate\"\nmodel = \"~/m\"\n\
         [stages.p]\nkind = \"prepare\"\ninputs = [\"~/data.txt\"]\n",
    )
    .unwrap();
    assert_eq!(p.workdir, home.path().join("w"));
    let gptpipe_core::config::StageParams::Generate(g) = &p.stages["g"] else {
        unreachable!()
    };
    assert_eq!(
        resolve_model(&p, &Default::default(), &g.model),
        ModelSource::Folder(home.path().join("m"))
    );
    // Keyed as written.
    assert_eq!(p.stages["g"].keyed_json()["model"], "~/m");
    let files = gptpipe_core::inputs::stage_inputs(&p, &p.stages["p"]).unwrap();
    assert_eq!(
        files.into_values().collect::<Vec<_>>(),
        [home.path().join("data.txt")]
    );
    // Without a home folder, `~` is refused at its key rather than taken as a folder `~`
    // beside the pipeline.
    std::env::remove_var("HOME");
    let e = load_in(
        project.path(),
        "[stages.g]\nkind = \"generate\"\nmodel = \"~/m\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("$HOME is not set") && e.contains("p.toml:5"),
        "{e}"
    );
}

#[test]
fn a_tilde_user_path_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [("model", "\"~bob/m\""), ("inputs", "[\"~bob/a.csv\"]")] {
        let kind = if key == "model" {
            "generate"
        } else {
            "prepare"
        };
        let e = load_in(
            dir.path(),
            &format!("[stages.t]\nkind = \"{kind}\"\n{key} = {value}\n"),
        )
        .unwrap_err();
        assert!(
            e.contains("`~user` paths are not supported") && e.contains("p.toml:5"),
            "{key}: {e}"
        );
    }
}

/// Keys added to a kind leave out of its params' JSON when unset: a stage written before
/// them keeps its cache key. These are the keys each kind hashed before issue 14's keys.
#[test]
fn stages_without_the_new_keys_hash_the_same_params() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = load_in(
        dir.path(),
        "[stages.p]\nkind = \"prepare\"\ninputs = [\"a.csv\"]\n\
         [stages.g]\nkind = \"generate\"\nmodel = \"gpt2\"\n",
    )
    .unwrap();
    let keys = |name: &str| -> Vec<String> {
        let json = pipeline.stages[name].keyed_json();
        let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys("g"),
        [
            "backend",
            "device",
            "format",
            "include_prefix",
            "length",
            "model",
            "nsamples",
            "output",
            "prefix",
            "repetition_penalty",
            "sample_delim",
            "seed",
            "temperature",
            "top_k",
            "top_p",
            "truncate",
        ]
    );
    assert_eq!(
        keys("p"),
        [
            "column",
            "dedupe",
            "delimiter",
            "end_token",
            "field",
            "format",
            "header",
            "html_unescape",
            "inputs",
            "max_length",
            "min_length",
            "normalize_whitespace",
            "on_error",
            "remove_chars",
            "replace",
            "start_token",
            "wrap",
        ]
    );
}

#[test]
fn prefixes_are_named_one_way() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |extra: &str| {
        load_in(
            dir.path(),
            &format!("[stages.g]\nkind = \"generate\"\nmodel = \"gpt2\"\n{extra}"),
        )
    };
    gen("prefixes = [\"a\", \"b\"]\nsort_by = \"score\"\n").unwrap();
    gen("prefix_file = \"prompts.txt\"\n").unwrap();
    for (extra, message) in [
        (
            "prefix = \"a\"\nprefixes = [\"b\"]\n",
            "prefix and prefixes both name the prefixes",
        ),
        (
            "prefixes = [\"a\"]\nprefix_file = \"p.txt\"\n",
            "prefixes and prefix_file both name the prefixes",
        ),
        (
            "prefix = \"a\"\nprefix_file = \"p.txt\"\n",
            "prefix and prefix_file both name the prefixes",
        ),
        (
            "prefixes = [\"a\", \"b\", \"a\"]\n",
            "prefixes[2] \"a\" is prefixes[0] again",
        ),
        ("sort_by = \"length\"\n", "sort_by"),
    ] {
        let e = gen(extra).unwrap_err();
        assert!(e.contains(message), "{extra}: {e}");
    }
}

/// `provenance.json` records every parameter in effect: the keys a default leaves out of
/// the cache key are there too, `max_attempts` with the value the rules use.
#[test]
fn effective_params_hold_every_key() {
    use gptpipe_core::config::GenerateParams;
    let plain = GenerateParams::default().effective_json();
    let curated = GenerateParams {
        dedupe: true,
        ..GenerateParams::default()
    }
    .effective_json();
    let keyed = serde_json::to_value(GenerateParams::default()).unwrap();
    for key in [
        "min_length",
        "bad_words",
        "sort_by",
        "dedupe",
        "max_attempts",
        "prefixes",
    ] {
        assert!(plain.get(key).is_some(), "{key} missing from {plain}");
        assert!(
            keyed.get(key).is_none(),
            "{key} in the keyed params {keyed}"
        );
    }
    assert_eq!(plain["max_attempts"], serde_json::Value::Null);
    assert_eq!(
        curated["max_attempts"],
        GenerateParams::DEFAULT_MAX_ATTEMPTS
    );
    assert_eq!(
        plain.as_object().unwrap().len(),
        keyed.as_object().unwrap().len() + 12
    );
}

#[test]
fn bad_words_are_capped_in_number_and_length() {
    use gptpipe_core::config::{MAX_BAD_WORDS, MAX_BAD_WORD_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let list = |words: Vec<String>| {
        let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
        format!(
            "[stages.g]\nkind = \"generate\"\nbad_words = [{}]\n",
            quoted.join(", ")
        )
    };
    // At the limits: fine.
    let most: Vec<String> = (0..MAX_BAD_WORDS)
        .map(|i| format!("{i:0width$}", width = MAX_BAD_WORD_BYTES))
        .collect();
    load_in(dir.path(), &list(most)).unwrap();
    // One word more, or one byte more: a config error naming the key and the limit.
    let many: Vec<String> = (0..=MAX_BAD_WORDS).map(|i| format!("w{i}")).collect();
    let e = load_in(dir.path(), &list(many)).unwrap_err();
    assert!(
        e.contains("bad_words") && e.contains(&format!("limit of {MAX_BAD_WORDS}")),
        "{e}"
    );
    let long = vec!["x".repeat(MAX_BAD_WORD_BYTES + 1)];
    let e = load_in(dir.path(), &list(long)).unwrap_err();
    assert!(
        e.contains("bad_words") && e.contains(&format!("limit of {MAX_BAD_WORD_BYTES}")),
        "{e}"
    );
}

/// `truncate = ["x"]` and `truncate = "x"` stop at the same string: the same key.
#[test]
fn a_truncate_list_of_one_hashes_as_its_string() {
    let dir = tempfile::tempdir().unwrap();
    let keyed = |truncate: &str| {
        let p = load_in(
            dir.path(),
            &format!("[stages.g]\nkind = \"generate\"\nmodel = \"gpt2\"\ntruncate = {truncate}\n"),
        )
        .unwrap();
        p.stages["g"].keyed_json()["truncate"].clone()
    };
    assert_eq!(keyed("[\"x\"]"), keyed("\"x\""));
    assert_eq!(keyed("[]"), keyed("\"\""));
    assert_eq!(keyed("[\"x\", \"y\"]"), serde_json::json!(["x", "y"]));
}
