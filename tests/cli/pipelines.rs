//! Every shipped pipeline declares the schema and loads, so examples cannot rot.

use crate::{gptpipe, root};

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
