//! Every shipped pipeline declares the schema and loads, so examples cannot rot.

use super::{gptpipe, root};

#[test]
fn shipped_pipelines_parse_and_declare_the_schema() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#:schema ../schemas/pipeline.schema.json"),
            "{} must start with the #:schema line",
            path.display()
        );
        let out = gptpipe().arg("dag").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not load: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(seen >= 3, "expected the shipped pipelines, found {seen}");
}

#[test]
fn mermaid_ids_stay_distinct_and_clear_of_keywords() {
    // `a-b` and `a_b` would both become `a_b`, and `end` closes a Mermaid block.
    let p = super::Project::new();
    p.file(
        "p.toml",
        "[pipeline]\nname = \"t\"\n[stages.a-b]\nkind = \"prepare\"\ninputs = [\"x.csv\"]\n\
         [stages.a_b]\nkind = \"prepare\"\ninputs = [\"@a-b\"]\n\
         [stages.end]\nkind = \"prepare\"\ninputs = [\"@a_b\"]\n",
    );
    let out = p.run(&["dag", "p.toml", "--format", "mermaid"]).ok();
    assert_eq!(
        out.stdout,
        "graph LR\n  s0[\"a-b (prepare)\"]\n  s1[\"a_b (prepare)\"]\n  s2[\"end (prepare)\"]\n  \
         s0 --> s1\n  s1 --> s2\n"
    );
}
