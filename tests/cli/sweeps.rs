//! A sweep through the binary: a finetune with a matrix runs once per combination, a
//! generate stage follows it, adding a value runs only the new combination, and `gptpipe
//! sweep` reports each combination's losses as its `metrics.jsonl` has them.

use super::Project;

fn pipeline(learning_rates: &str) -> String {
    format!(
        r#"
[pipeline]
name = "sweep"
workdir = "work"

[stages.titles]
kind = "prepare"
inputs = ["titles.csv"]

[stages.train]
kind = "finetune"
dataset = "@titles"
model = {{ n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32 }}
steps = 6
batch_size = 2
accumulate_gradients = 1
val_split = 0.2
val_every = 2
sample_every = 0
device = "cpu"

[stages.train.matrix]
learning_rate = {learning_rates}

[stages.samples]
kind = "generate"
model = "@train"
length = 4
nsamples = 1
"#
    )
}

fn finished(run: &super::Run) -> Vec<String> {
    let mut ran = run.stages_with("stage_finished");
    ran.sort();
    ran
}

#[test]
fn a_matrix_runs_each_combination_once_and_sweep_compares_them() {
    let p = Project::new();
    p.file("titles.csv", crate::common::fox_titles_csv());
    p.file("p.toml", pipeline("[1e-3, 1e-2]"));
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(
        finished(&run),
        [
            "samples[learning_rate=0.001]",
            "samples[learning_rate=0.01]",
            "titles",
            "train[learning_rate=0.001]",
            "train[learning_rate=0.01]",
        ]
    );
    let config = p.read("work/train[learning_rate=0.01]/training_state/trainer.json");
    assert!(config.contains("\"step\": 6"), "{config}");
    let lock = p.read("p.toml.lock");
    assert!(
        lock.contains("[stages.\"train[learning_rate=0.01]\"]"),
        "{lock}"
    );
    assert!(
        lock.contains("model = \"@train[learning_rate=0.001]\""),
        "{lock}"
    );

    // One more value: only its finetune and its samples run.
    p.file("p.toml", pipeline("[1e-3, 1e-2, 3e-3]"));
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(
        finished(&run),
        ["samples[learning_rate=0.003]", "train[learning_rate=0.003]"]
    );
    // The name as written selects every combination.
    let status = p.run(&["status", "p.toml", "train", "--json"]).ok();
    let statuses: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(statuses.as_array().unwrap().len(), 4, "{statuses}"); // titles + 3

    // The sweep's figures are those of each combination's metrics.jsonl.
    let sweep = p
        .run(&["sweep", "p.toml", "--json", "--plot", "sweep.svg"])
        .ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(sweep.stdout.trim()).unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let stage = row["stage"].as_str().unwrap();
        let metrics: Vec<serde_json::Value> = p
            .read(&format!("work/{stage}/metrics.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let vals: Vec<(u64, f64)> = metrics
            .iter()
            .filter_map(|m| Some((m["step"].as_u64()?, m["val_loss"].as_f64()?)))
            .collect();
        assert_eq!(vals.len(), 3, "{stage}: {metrics:?}");
        let best = vals.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert_eq!(row["state"], "fresh");
        assert_eq!(row["steps"], 6);
        assert_eq!(row["best_val_loss"].as_f64(), Some(best.1), "{stage}");
        assert_eq!(row["best_step"].as_u64(), Some(best.0), "{stage}");
        assert_eq!(row["final_val_loss"].as_f64(), Some(vals[2].1), "{stage}");
        assert_eq!(
            row["final_loss"].as_f64(),
            metrics.last().unwrap()["avg_loss"].as_f64()
        );
    }
    let best: Vec<f64> = rows
        .iter()
        .map(|r| r["best_val_loss"].as_f64().unwrap())
        .collect();
    assert!(
        best.windows(2).all(|w| w[0] <= w[1]),
        "not best first: {best:?}"
    );
    let svg = p.read("sweep.svg");
    assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
    assert!(svg.contains("train[learning_rate=0.003]"), "{svg}");

    // The table, for people; a stage without a matrix is an error that says what a matrix is.
    let table = p.run(&["sweep", "p.toml"]).ok();
    assert!(table.stdout.starts_with("stage"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 4, "{}", table.stdout);
    // The run left the same summary in the workdir: the table, the rows and the plot.
    assert_eq!(p.read("work/.gptpipe/sweeps/train.txt"), table.stdout);
    let written: serde_json::Value =
        serde_json::from_str(&p.read("work/.gptpipe/sweeps/train.json")).unwrap();
    assert_eq!(written, serde_json::Value::Array(rows.clone()));
    assert_eq!(p.read("work/.gptpipe/sweeps/train.svg"), svg);
    let e = p.run(&["sweep", "p.toml", "titles"]);
    assert_eq!(e.code, 1, "{}", e.stderr);
    assert!(
        e.stderr
            .contains("no finetune stage with a matrix is named titles"),
        "{}",
        e.stderr
    );
}
