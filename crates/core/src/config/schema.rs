//! The JSON Schema of pipeline files, generated from the same types the loader uses.

use super::params::*;
use super::PipelineSection;
use schemars::{JsonSchema, Schema};
use std::collections::BTreeMap;

// Only describes the file for the schema; loading goes through figment layering instead.
/// A gptpipe pipeline file: a `[pipeline]` table and named `[stages.NAME]` tables.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(title = "gptpipe pipeline", deny_unknown_fields)]
struct PipelineFile {
    pipeline: PipelineSection,
    #[serde(default)]
    stages: BTreeMap<String, StageSchema>,
}

/// One stage; `kind` selects which keys it takes.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum StageSchema {
    Prepare(PrepareParams),
    Finetune(FinetuneParams),
    Export(ExportParams),
    Generate(GenerateParams),
}

pub fn pipeline_schema() -> Schema {
    let mut schema = schemars::schema_for!(PipelineFile);
    // Every kind takes a `matrix` (see matrix.rs), which the loader removes before typing.
    let matrix = serde_json::json!({
        "description": "Lists of values for this stage's own keys: the stage becomes one stage per \
                        combination, named `NAME[key=value,...]`; stages that read `@NAME` follow.",
        "type": "object",
        "additionalProperties": {"type": "array", "minItems": 1}
    });
    let kinds = schema
        .get_mut("$defs")
        .and_then(|d| d.get_mut("StageSchema"))
        .and_then(|s| s.get_mut("oneOf"))
        .and_then(|o| o.as_array_mut());
    let resources =
        serde_json::to_value(schemars::schema_for!(super::Resources)).expect("schema serializes");
    for kind in kinds.into_iter().flatten() {
        if let Some(props) = kind.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.insert(super::matrix::MATRIX_KEY.to_owned(), matrix.clone());
            props.insert(super::RESOURCES_KEY.to_owned(), resources.clone());
        }
    }
    schema
}

/// The schema as pretty JSON with a trailing newline, as `schemas/pipeline.schema.json` holds it.
pub fn pipeline_schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&pipeline_schema()).expect("schema serializes");
    s.push('\n');
    s
}

/// The top-level keys a params struct accepts.
pub(crate) fn property_names<T: JsonSchema>() -> Vec<String> {
    let schema = schemars::schema_for!(T);
    schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}
