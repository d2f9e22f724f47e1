//! Invalid pipelines exit 2 with the file:line:col of the problem and, where it helps, a fix.

use crate::Project;

const HEAD: &str = "[pipeline]\nname = \"t\"\n\n";

fn check(pipeline: &str, args: &[&str], expect: &[&str]) {
    let p = Project::new();
    p.file("data/a.csv", "title\nhello world\n");
    p.file("p.toml", format!("{HEAD}{pipeline}"));
    let mut full = vec!["run", "p.toml"];
    full.extend_from_slice(args);
    let run = p.run(&full);
    assert_eq!(
        run.code, 2,
        "expected exit 2, got {}: {}",
        run.code, run.stderr
    );
    for e in expect {
        assert!(
            run.stderr.contains(e),
            "stderr lacks {e:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn misspelt_key_points_at_it_and_suggests() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\nnormalise_whitespace = true\n",
        &[],
        &[
            "p.toml:7:1",
            "unknown key `normalise_whitespace`",
            "did you mean `normalize_whitespace`?",
        ],
    );
}

#[test]
fn wrong_type_names_the_key() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\ndedupe = \"yes\"\n",
        &[],
        &["p.toml:7:1", "stages.a.dedupe", "wrong type"],
    );
}

#[test]
fn unknown_stage_reference_suggests_the_right_one() {
    check(
        "[stages.titles]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n[stages.more]\nkind = \"prepare\"\ninputs = [\"@titels\"]\n",
        &[],
        &["p.toml:10:1", "unknown stage `@titels`", "did you mean `@titles`?"],
    );
}

#[test]
fn duplicate_stage_is_an_error_with_position() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n",
        &[],
        &["p.toml:8:", "duplicate"],
    );
}

#[test]
fn cycle_prints_the_whole_cycle() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"@c\"]\n\n[stages.b]\nkind = \"prepare\"\ninputs = [\"@a\"]\n\n[stages.c]\nkind = \"prepare\"\ninputs = [\"@b\"]\n",
        &[],
        &["cycle: a -> c -> b -> a", "p.toml:6:1"],
    );
}

#[test]
fn unknown_kind_suggests() {
    check(
        "[stages.a]\nkind = \"finetun\"\n",
        &[],
        &[
            "p.toml:5:1",
            "unknown kind `finetun`",
            "did you mean `finetune`?",
        ],
    );
}

#[test]
fn impossible_values_are_refused_before_any_work() {
    check(
        "[stages.g]\nkind = \"generate\"\nmodel = \"./nowhere\"\ntop_p = 1.5\n",
        &[],
        &["p.toml:7:1", "top_p must be in [0, 1]"],
    );
    check(
        "[stages.g]\nkind = \"generate\"\nmodel = { n_layer = 1, n_head = 3, n_embd = 64 }\n",
        &[],
        &["n_embd (64) must be divisible by n_head (3)"],
    );
    check(
        "[stages.g]\nkind = \"generate\"\noutput = \"../../escape.txt\"\n",
        &[],
        &["must be a relative path inside the stage folder"],
    );
}

#[test]
fn set_and_env_errors_name_their_origin() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n",
        &["--set", "stages.a.min_lenght=3"],
        &["--set stages.a.min_lenght=3", "did you mean `min_length`?"],
    );
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n",
        &["--set", "nonsense"],
        &["expected KEY=VALUE"],
    );
}

#[test]
fn env_layer_overrides_the_file() {
    let p = Project::new();
    p.file(
        "p.toml",
        format!("{HEAD}[stages.g]\nkind = \"generate\"\nmodel = \"./m\"\n"),
    );
    let out = crate::gptpipe()
        .args(["run", "p.toml"])
        .env("GPTPIPE_STAGES__G__TEMPERATURE", "-1")
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GPTPIPE_STAGES__G__TEMPERATURE") && err.contains("temperature"),
        "{err}"
    );
}

#[test]
fn missing_pipeline_file_is_a_usage_error() {
    let p = Project::new();
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("cannot read pipeline file gptpipe.toml"),
        "{}",
        run.stderr
    );
}
