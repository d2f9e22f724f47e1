//! The lock file beside the pipeline (`<pipeline>.lock`, TOML, meant to be committed): for
//! each stage, its cache key, effective params, and input and output hashes.

use crate::config::ConfigError;
use crate::fsutil::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    #[serde(default)]
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub kind: String,
    /// The implementation version of the stage kind.
    pub version: u32,
    pub key: String,
    /// Effective parameters, every key (volatile ones included, for the record).
    pub params: toml::Table,
    /// Input files, relative to the pipeline file -> content hash.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Upstream stage -> its output hash.
    #[serde(default)]
    pub upstream: BTreeMap<String, String>,
    pub output_hash: String,
    /// Output files, relative to the stage folder -> content hash.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Inputs read through a symbolic link -> the real file read. For the record only:
    /// the cache key depends on content, not on where it lives.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
}

impl LockFile {
    /// Reads the lock file; a missing one is empty. One that does not parse (a merge
    /// conflict, a hand edit) is a [`ConfigError`] pointing at the line.
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                let name = path.display().to_string();
                let error = ConfigError::new(format!("not a valid lock file: {}", e.message()))
                    .with_help(
                        "gptpipe writes this file: resolve the merge conflict, or delete it \
                         and run again (results in the cache are reused, not recomputed)",
                    );
                let error = match e.span() {
                    Some(span) => error.at(&name, &text, span, "here"),
                    None => error.from_origin(&name),
                };
                anyhow::Error::new(error)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = String::from(
            "# Written by gptpipe: what produced each stage's outputs. Commit it with the pipeline.\n",
        );
        text.push_str(&toml::to_string_pretty(self)?);
        write_atomic(path, text.as_bytes())
    }
}

/// JSON params as a TOML table (TOML has no null: unset optional keys are left out).
pub fn json_to_toml(value: &serde_json::Value) -> toml::Table {
    fn convert(v: &serde_json::Value) -> Option<toml::Value> {
        use serde_json::Value as J;
        Some(match v {
            J::Null => return None,
            J::Bool(b) => toml::Value::Boolean(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => toml::Value::Integer(i),
                None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => toml::Value::String(s.clone()),
            J::Array(a) => toml::Value::Array(a.iter().filter_map(convert).collect()),
            J::Object(o) => toml::Value::Table(
                o.iter()
                    .filter_map(|(k, v)| convert(v).map(|v| (k.clone(), v)))
                    .collect(),
            ),
        })
    }
    match convert(value) {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}
