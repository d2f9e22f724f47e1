//! Invalid pipelines exit 2 with the file:line:col of the problem and, where it helps, a fix.

use super::Project;
use crate::common::Test;

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
fn misspelt_key_in_an_inline_model_is_named_with_a_suggestion() {
    check(
        "[stages.t]\nkind = \"finetune\"\ndataset = \"data/a.csv\"\n\
         model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctxx = 128 }\n",
        &[],
        &[
            "p.toml:7:49",
            "unknown key `n_ctxx`",
            "did you mean `n_ctx`?",
        ],
    );
}

#[test]
fn misspelt_key_in_an_array_of_tables_points_at_its_own_line() {
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n\
         [[stages.a.replace]]\npattern = \"x\"\nwith = \"y\"\n\n\
         [[stages.a.replace]]\npattern = \"z\"\nwiht = \"y\"\n",
        &[],
        &["p.toml:14:1", "unknown key `wiht`", "did you mean `with`?"],
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
        "[stages.g]\nkind = \"generate\"\nmodel = { n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 1 }\n",
        &[],
        &["n_ctx must be at least 2"],
    );
    check(
        "[stages.g]\nkind = \"generate\"\noutput = \"../../escape.txt\"\n",
        &[],
        &["must be a relative path inside the stage folder"],
    );
}

#[test]
fn a_prefix_longer_than_the_context_is_refused_before_any_stage_runs() {
    // The model's context is known from the pipeline: through `@train` to its inline table.
    let pipeline = "[stages.data]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n\
                    [stages.train]\nkind = \"finetune\"\ndataset = \"@data\"\n\
                    model = { n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 8 }\n\n\
                    [stages.g]\nkind = \"generate\"\nmodel = \"@train\"\n\
                    prefix = \"one two three four five six seven eight nine\"\n";
    check(
        pipeline,
        &[],
        &[
            "p.toml:16:1",
            "stage `g`: the prefix is 9 tokens, longer than the model's context of 8 tokens",
        ],
    );
    let p = Project::new();
    p.file("data/a.csv", "title\nhello world\n");
    p.file("p.toml", format!("{HEAD}{pipeline}"));
    assert_eq!(p.run(&["run", "p.toml"]).code, 2);
    assert!(!p.dir.path().join("runs/t/data").exists(), "a stage ran");
    assert_eq!(p.run(&["status", "p.toml"]).code, 2);
    // A prefix that fits, and one for a stage not selected, are fine.
    let fits = pipeline.replace(" nine", "");
    p.file("p.toml", format!("{HEAD}{fits}"));
    assert_eq!(p.run(&["status", "p.toml"]).code, 0);
    p.file("p.toml", format!("{HEAD}{pipeline}"));
    assert_eq!(p.run(&["status", "p.toml", "data"]).code, 0);
}

#[test]
fn a_reference_to_the_wrong_kind_of_stage_is_refused() {
    const DATA: &str = "[stages.data]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n";
    check(
        &format!("{DATA}[stages.g]\nkind = \"generate\"\nmodel = \"@data\"\n"),
        &[],
        &[
            "p.toml:10:1",
            "`model` refers to `@data`, a prepare stage",
            "takes a finetune stage or an export stage",
        ],
    );
    check(
        &format!(
            "{DATA}[stages.t]\nkind = \"finetune\"\ndataset = \"data/a.csv\"\n\n\
             [stages.t2]\nkind = \"finetune\"\ndataset = \"@t\"\nmodel = \"@t\"\n"
        ),
        &[],
        &["`dataset` refers to `@t`, a finetune stage"],
    );
    check(
        &format!(
            "{DATA}[stages.t]\nkind = \"finetune\"\ndataset = \"@data\"\n\n\
             [stages.x]\nkind = \"export\"\nmodel = \"@t\"\n\n\
             [stages.g]\nkind = \"generate\"\nmodel = \"@x\"\nbackend = \"tch\"\n"
        ),
        &[],
        &[
            "`model` refers to `@x`, an export stage",
            "takes a finetune stage",
        ],
    );
}

#[test]
fn settings_that_contradict_each_other_are_refused() {
    check(
        "[stages.t]\nkind = \"finetune\"\ndataset = \"data/a.csv\"\nearly_stopping_patience = 3\n",
        &[],
        &[
            "p.toml:7:1",
            "early_stopping_patience needs a validation set",
        ],
    );
    check(
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\nheader = false\ncolumn = \"title\"\n",
        &[],
        &["p.toml:8:1", "column \"title\" is a name, but header = false"],
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
    let out = Test::new()
        .dir(p.dir.path())
        .args(["run", "p.toml"])
        .env("GPTPIPE_STAGES__G__TEMPERATURE", "-1")
        .run();
    assert_eq!(out.code, 2);
    let err = out.stderr;
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

#[test]
fn a_broken_lock_file_points_at_the_line_and_says_how_to_recover() {
    let p = Project::new();
    p.file("data/a.csv", "title\nhello world\n");
    p.file(
        "p.toml",
        format!("{HEAD}[stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n"),
    );
    assert_eq!(p.run(&["run", "p.toml"]).code, 0);
    let lock = p.dir.path().join("p.toml.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    std::fs::write(&lock, format!("{text}<<<<<<< HEAD\n")).unwrap();
    let line = text.lines().count() + 1;
    for args in [
        &["run", "p.toml"][..],
        &["status", "p.toml"],
        &["run", "p.toml", "--frozen"],
    ] {
        let run = p.run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("p.toml.lock:{line}:1: not a valid lock file"))
                && run.stderr.contains("delete it and run again"),
            "{}",
            run.stderr
        );
    }
    // Deleting it, as the message says, costs nothing: the result comes from the cache.
    std::fs::remove_file(&lock).unwrap();
    let run = p.run(&["run", "p.toml", "--json"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("\"stage_cached\""), "{}", run.stdout);
}

#[test]
fn an_override_of_a_stage_that_does_not_exist_names_its_origin() {
    const PIPELINE: &str = "[stages.Train-GPU]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n";
    check(
        PIPELINE,
        &["--set", "stages.trian-gpu.min_length=3"],
        &[
            "--set stages.trian-gpu.min_length=3: the pipeline has no stage `trian-gpu`",
            "did you mean `Train-GPU`?",
        ],
    );
    let p = Project::new();
    p.file("data/a.csv", "title\nhello world\nhi\n");
    p.file("p.toml", format!("{HEAD}{PIPELINE}"));
    let run = |var: &str| {
        Test::new()
            .dir(p.dir.path())
            .args(["run", "p.toml"])
            .env(var, "4")
            .run()
    };
    let typo = run("GPTPIPE_STAGES__TRAIN__MIN_LENGTH");
    assert_eq!(typo.code, 2);
    let err = typo.stderr;
    assert!(
        err.contains("environment variable GPTPIPE_STAGES__TRAIN__MIN_LENGTH: the pipeline has no stage `train`"),
        "{err}"
    );
    // Variable names are upper case and have no `-`: TRAIN_GPU is the stage Train-GPU.
    run("GPTPIPE_STAGES__TRAIN_GPU__MIN_LENGTH").ok();
    let dataset = p.read("runs/t/Train-GPU/dataset.txt");
    assert!(
        dataset.contains("hello world") && !dataset.contains("hi"),
        "{dataset}"
    );
}

#[test]
fn a_mistyped_pipeline_path_is_named_not_taken_for_a_stage() {
    let p = Project::new();
    for path in ["pipeline.tml", "conf/p"] {
        let run = p.run(&["run", path]);
        assert_eq!(run.code, 2);
        assert!(
            run.stderr
                .contains(&format!("cannot read pipeline file {path}")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_prefix_too_long_for_gpt2_is_refused_before_any_download() {
    // OpenAI's GPT-2 repositories have 1024 positions: no download is needed to know it
    // (these machines are offline, so a download would fail with another message).
    let p = Project::new();
    let prefix = ["word"; 1100].join(" ");
    let run = p.run(&["generate", "--model", "gpt2", "--prefix", &prefix]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the prefix is 1100 tokens, longer than the model's context of 1024"),
        "{}",
        run.stderr
    );
}

#[test]
fn zero_jobs_is_a_usage_error() {
    let p = Project::new();
    for command in ["run", "watch"] {
        let run = p.run(&[command, "--jobs", "0"]);
        assert_eq!(run.code, 2, "{command}: {}", run.stderr);
        assert!(run.stderr.contains("must be at least 1"), "{}", run.stderr);
    }
}

#[test]
fn a_generate_output_named_like_the_stage_s_own_record_is_refused() {
    // The stage writes generate.json beside its samples: an output of that name was
    // overwritten by it, and the run said it had succeeded.
    let stage = "[stages.g]\nkind = \"generate\"\nmodel = \"./nowhere\"\n";
    for output in ["generate.json", "generate.json/samples.txt"] {
        check(
            &format!("{stage}output = \"{output}\"\n"),
            &[],
            &[
                "p.toml:7:1",
                &format!("output \"{output}\" is reserved"),
                "the generate stage writes generate.json itself",
            ],
        );
    }
    // Provenance (issue 14): so does provenance.json.
    for output in ["provenance.json", "provenance.json/samples.txt"] {
        check(
            &format!("{stage}output = \"{output}\"\n"),
            &[],
            &[
                "p.toml:7:1",
                &format!("output \"{output}\" is reserved"),
                "the generate stage writes provenance.json itself",
            ],
        );
    }
    check(
        stage,
        &["--set", "stages.g.output=generate.json"],
        &[
            "--set stages.g.output=generate.json",
            "output \"generate.json\" is reserved",
        ],
    );
    // A name that merely starts like it is not reserved.
    let p = Project::new();
    p.file(
        "p.toml",
        format!("{HEAD}{stage}output = \"generate.json.txt\"\n"),
    );
    let run = p.run(&["run", "p.toml", "--dry-run"]);
    assert!(!run.stderr.contains("reserved"), "{}", run.stderr);
}
