//! Matrix stages: `[stages.X.matrix]` expands X into one stage per combination, named by
//! its values; stages that read `@X` follow the fan-out; one combination can be named;
//! every combination keys the cache on its own.

use gptpipe_core::config::{Pipeline, StageParams};
use gptpipe_core::dag::Dag;

use crate::load_in;

const SWEEP: &str = "
[stages.data]
kind = \"prepare\"
inputs = [\"a.csv\"]

[stages.train]
kind = \"finetune\"
dataset = \"@data\"
steps = 10

[stages.train.matrix]
learning_rate = [1e-4, 3e-4]
batch_size = [1, 2]

[stages.sample]
kind = \"generate\"
model = \"@train\"

[stages.onnx]
kind = \"export\"
model = \"@train[batch_size=2,learning_rate=0.0003]\"
";

fn names(p: &Pipeline) -> Vec<&str> {
    p.stages.keys().map(String::as_str).collect()
}

#[test]
fn a_matrix_expands_and_readers_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = load_in(dir.path(), SWEEP).unwrap();
    assert_eq!(
        names(&p),
        [
            "data",
            "onnx",
            "sample[batch_size=1,learning_rate=0.0001]",
            "sample[batch_size=1,learning_rate=0.0003]",
            "sample[batch_size=2,learning_rate=0.0001]",
            "sample[batch_size=2,learning_rate=0.0003]",
            "train[batch_size=1,learning_rate=0.0001]",
            "train[batch_size=1,learning_rate=0.0003]",
            "train[batch_size=2,learning_rate=0.0001]",
            "train[batch_size=2,learning_rate=0.0003]",
        ]
    );
    let StageParams::Finetune(t) = &p.stages["train[batch_size=2,learning_rate=0.0001]"] else {
        panic!()
    };
    assert_eq!((t.batch_size, t.learning_rate, t.steps), (2, 1e-4, 10));
    // Each sample reads its own combination; the export names one.
    for (name, params) in &p.stages {
        let refs = params.references();
        if let Some(label) = name.strip_prefix("sample") {
            assert_eq!(refs, [("model", format!("train{label}"))]);
        }
    }
    assert_eq!(
        p.stages["onnx"].references(),
        [(
            "model",
            "train[batch_size=2,learning_rate=0.0003]".to_owned()
        )]
    );
    // The name as written selects every combination (and what they read).
    let dag = Dag::new(&p);
    let selected = dag.select(&["train".to_owned()]).unwrap();
    assert_eq!(selected.len(), 5, "{selected:?}");
    assert!(dag.select(&["trai".to_owned()]).is_err());
}

#[test]
fn a_chain_fans_out_all_the_way_and_a_second_matrix_multiplies() {
    let dir = tempfile::tempdir().unwrap();
    let p = load_in(
        dir.path(),
        "[stages.train]\nkind = \"finetune\"\ndataset = \"a.txt\"\n\
         [stages.train.matrix]\nseed = [1, 2]\n\
         [stages.onnx]\nkind = \"export\"\nmodel = \"@train\"\n\
         [stages.sample]\nkind = \"generate\"\nmodel = \"@onnx\"\n\
         [stages.sample.matrix]\ntemperature = [0.7, 1.0]\n",
    )
    .unwrap();
    let samples: Vec<&str> = names(&p)
        .into_iter()
        .filter(|n| n.starts_with("sample"))
        .collect();
    assert_eq!(
        samples,
        [
            "sample[temperature=0.7,seed=1]",
            "sample[temperature=0.7,seed=2]",
            "sample[temperature=1,seed=1]",
            "sample[temperature=1,seed=2]",
        ]
    );
    assert_eq!(
        p.stages["sample[temperature=1,seed=2]"].references(),
        [("model", "onnx[seed=2]".to_owned())]
    );
}

#[test]
fn adding_a_value_keeps_the_other_combinations_keys() {
    let dir = tempfile::tempdir().unwrap();
    let one = load_in(dir.path(), SWEEP).unwrap();
    let more = load_in(
        dir.path(),
        &SWEEP.replace("[1e-4, 3e-4]", "[1e-4, 3e-4, 1e-3]"),
    )
    .unwrap();
    assert_eq!(more.stages.len(), one.stages.len() + 4);
    for (name, params) in &one.stages {
        assert_eq!(
            params.keyed_json(),
            more.stages[name].keyed_json(),
            "{name} changed"
        );
    }
    // A combination keys as the same stage written without a matrix does.
    let plain = load_in(
        dir.path(),
        &SWEEP[..SWEEP.find("[stages.onnx]").unwrap()]
            .replace(
                "[stages.train.matrix]\nlearning_rate = [1e-4, 3e-4]\nbatch_size = [1, 2]\n",
                "",
            )
            .replace(
                "steps = 10",
                "steps = 10\nlearning_rate = 1e-4\nbatch_size = 1",
            ),
    )
    .unwrap();
    assert_eq!(
        plain.stages["train"].keyed_json(),
        one.stages["train[batch_size=1,learning_rate=0.0001]"].keyed_json()
    );
}

#[test]
fn bad_matrices_are_errors_at_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[stages.train]\nkind = \"finetune\"\ndataset = \"a.txt\"\n";
    for (matrix, says, line) in [
        ("matrix = 3\n", "`matrix` must be a table", 6),
        ("[stages.train.matrix]\n", "`matrix` lists no key", 6),
        (
            "[stages.train.matrix]\nsteps = 3\n",
            "must be a non-empty list",
            7,
        ),
        (
            "[stages.train.matrix]\nsteps = []\n",
            "must be a non-empty list",
            7,
        ),
        (
            "[stages.train.matrix]\nkind = [\"generate\"]\n",
            "`kind` cannot vary",
            7,
        ),
        (
            "[stages.train.matrix]\ndataset = [\"b.txt\"]\n",
            "both in the stage and in its matrix",
            7,
        ),
        (
            "[stages.train.matrix]\nsteps = [1, \"x\"]\n",
            "expected u64",
            7,
        ),
        (
            "[stages.train.matrix]\nstepz = [1, 2]\n",
            "unknown key `stepz`",
            7,
        ),
        (
            "[stages.train.matrix]\na = [1,2,3,4,5,6,7,8,9,10,11]\nb = [1,2,3,4,5,6,7,8,9,10,11]\n\
             c = [1,2,3,4,5,6,7,8,9,10,11]\n",
            "more than 1024",
            6,
        ),
    ] {
        let e = load_in(dir.path(), &format!("{base}{matrix}")).unwrap_err();
        assert!(e.contains(says), "{matrix}: {e}");
        assert!(e.contains(&format!("p.toml:{line}:")), "{matrix}: {e}");
    }
    // Two matrices read by one stage: it cannot follow both.
    let e = load_in(
        dir.path(),
        "[stages.a]\nkind = \"prepare\"\ninputs = [\"a.csv\"]\n[stages.a.matrix]\nmin_length = [1, 2]\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"b.csv\"]\n[stages.b.matrix]\nmin_length = [1, 2]\n\
         [stages.t]\nkind = \"finetune\"\ndataset = \"@a\"\n\
         [stages.g]\nkind = \"generate\"\nmodel = \"@t\"\nnovelty_against = \"@b\"\ndrop_copies = true\n",
    )
    .unwrap_err();
    assert!(
        e.contains("stage `g` refers to 2 matrix stages (@b, @t)"),
        "{e}"
    );
    assert!(e.contains("p.toml:19:"), "{e}");
    // A combination that does not exist is named with the ones that do.
    let e = load_in(
        dir.path(),
        &SWEEP.replace("learning_rate=0.0003]", "learning_rate=0.003]"),
    )
    .unwrap_err();
    assert!(
        e.contains("unknown stage `@train[batch_size=2,learning_rate=0.003]`"),
        "{e}"
    );
    assert!(
        e.contains("did you mean `@train[batch_size=2,learning_rate=0.0003]`"),
        "{e}"
    );
}
