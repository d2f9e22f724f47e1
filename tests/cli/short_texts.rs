//! Issue 14's short-text features through the binary, on a tiny model finetuned on titles:
//! many prefixes in one stage or one command, each sampled on its own.

use super::Project;

/// A pipeline whose `train` stage finetunes a tiny model on titles; `extra` adds stages.
fn project(extra: &str) -> Project {
    let p = Project::new();
    p.file("data/titles.csv", crate::common::fox_titles_csv());
    p.file(
        "p.toml",
        format!(
            "[pipeline]\nname = \"s\"\nworkdir = \"work\"\nseed = 3\n\n[stages.titles]\n\
             kind = \"prepare\"\ninputs = [\"data/titles.csv\"]\n\n[stages.train]\n\
             kind = \"finetune\"\ndataset = \"@titles\"\n\
             model = {{ n_layer = 1, n_head = 2, n_embd = 32, n_ctx = 32, dropout = 0.0 }}\n\
             steps = 3\nbatch_size = 2\naccumulate_gradients = 1\ndevice = \"cpu\"\n\
             sample_every = 0\n\n{extra}"
        ),
    );
    p
}

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn each_prefix_gets_nsamples_from_its_own_stream() {
    let generate = |name: &str, prefixes: &str, format: &str| {
        format!(
            "[stages.{name}]\nkind = \"generate\"\nmodel = \"@train\"\nprefixes = {prefixes}\n\
             length = 5\nnsamples = 3\nbatch_size = 2\ntemperature = 1.0\nformat = \"{format}\"\n\
             output = \"samples.{format}\"\n\n"
        )
    };
    let p = project(
        &[
            generate("both", r#"["A fox", "The dog"]"#, "jsonl"),
            generate("one", r#"["The dog"]"#, "jsonl"),
            generate("grouped", r#"["A fox", "The dog"]"#, "text"),
        ]
        .concat(),
    );
    p.run(&["run", "p.toml"]).ok();
    let both = jsonl(&p.read("work/both/samples.jsonl"));
    assert_eq!(both.len(), 6);
    for (i, row) in both.iter().enumerate() {
        let prefix = if i < 3 { "A fox" } else { "The dog" };
        assert_eq!(row["prefix"], prefix, "{row}");
        assert_eq!(row["index"], i % 3, "{row}");
        assert!(row["text"].as_str().unwrap().starts_with(prefix), "{row}");
    }
    // A prefix's samples do not depend on the other prefixes.
    assert_eq!(jsonl(&p.read("work/one/samples.jsonl")), both[3..]);
    // The two prefixes draw different streams.
    assert_ne!(both[0]["seed"], both[3]["seed"]);

    let text = p.read("work/grouped/samples.text");
    let delim = format!("{}\n", "=".repeat(20));
    let groups: Vec<&str> = text.split("# prefix: ").skip(1).collect();
    assert_eq!(groups.len(), 2, "{text}");
    assert!(groups[0].starts_with("\"A fox\"\n"), "{text}");
    assert!(groups[1].starts_with("\"The dog\"\n"), "{text}");
    for (g, rows) in groups.iter().zip([&both[..3], &both[3..]]) {
        assert_eq!(g.matches(&delim).count(), 3, "{g}");
        for row in rows {
            let t = row["text"].as_str().unwrap();
            assert!(g.contains(&format!("{t}\n{delim}")), "{t:?} not in {g}");
        }
    }
}

#[test]
fn a_prefix_file_is_read_line_by_line_and_is_part_of_the_key() {
    let p = project(
        "[stages.prompted]\nkind = \"generate\"\nmodel = \"@train\"\n\
         prefix_file = \"prompts.txt\"\nlength = 4\nnsamples = 2\nformat = \"jsonl\"\n",
    );
    p.file("prompts.txt", "A fox\r\n\nThe dog\n");
    p.run(&["run", "p.toml"]).ok();
    let rows = jsonl(&p.read("work/prompted/samples.jsonl"));
    let prefixes: Vec<&str> = rows.iter().map(|r| r["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes, ["A fox", "A fox", "The dog", "The dog"]);

    // A new line is a change of the stage's input: only this stage runs again.
    p.file("prompts.txt", "A fox\nThe dog\nOne cat\n");
    let again = p.run(&["run", "p.toml"]).ok();
    assert!(again.stderr.contains("prompted"), "{}", again.stderr);
    let rows2 = jsonl(&p.read("work/prompted/samples.jsonl"));
    assert_eq!(rows2.len(), 6);
    assert_eq!(rows2[..4], rows[..]);

    // A prefix listed twice is an error naming the file and line; nothing is published.
    p.file("prompts.txt", "A fox\nThe dog\nA fox\n");
    let bad = p.run(&["run", "p.toml"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("prompts.txt:3: this prefix is line 1 again"),
        "{}",
        bad.stderr
    );
    assert_eq!(jsonl(&p.read("work/prompted/samples.jsonl")), rows2);
}

#[test]
fn one_off_generate_takes_a_prefix_file() {
    let p = project("");
    p.run(&["run", "p.toml"]).ok();
    p.file("prompts.txt", "A fox\nThe dog\n");
    let args = [
        "generate",
        "--model",
        "work/train",
        "--device",
        "cpu",
        "--length",
        "4",
        "--nsamples",
        "2",
        "--prefix-file",
        "prompts.txt",
    ];
    let out = p.run(&args).ok();
    assert!(
        out.stdout.starts_with("# prefix: \"A fox\"\nA fox"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("# prefix: ").count(),
        2,
        "{}",
        out.stdout
    );
    // The same samples in a file, whatever the batch size.
    p.run(&[&args[..], &["--batch-size", "3", "-o", "s.txt"]].concat())
        .ok();
    assert_eq!(p.read("s.txt"), out.stdout);
    let bad = p.run(&[&args[..9], &["--prefix-file", "missing.txt"]].concat());
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--prefix-file: cannot read the prefix file missing.txt"),
        "{}",
        bad.stderr
    );
}
