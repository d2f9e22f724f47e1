//! The JSON Schema in `schemas/` is generated from the config types and must not drift.

use super::{gptpipe, root};

#[test]
fn schema_file_matches_the_types() {
    let out = gptpipe().arg("schema").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = root().join("schemas/pipeline.schema.json");
    if std::env::var_os("GPTPIPE_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "schemas/pipeline.schema.json is out of date: rerun with GPTPIPE_UPDATE_SCHEMA=1"
    );
    let schema: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let kinds = schema.to_string();
    for key in [
        "prepare",
        "finetune",
        "export",
        "generate",
        "top_p",
        "accumulate_gradients",
        "html_unescape",
    ] {
        assert!(kinds.contains(key), "schema lacks {key}");
    }
}
