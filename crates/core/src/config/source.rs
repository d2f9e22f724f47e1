//! Where each key of a loaded pipeline came from, so errors found after merging the layers
//! can still point at a file position, an environment variable or a `--set` argument.

use super::error::ConfigError;
use std::collections::BTreeMap;
use std::ops::Range;
use toml_edit::{Item, Value};

#[derive(Debug, Clone)]
pub enum Origin {
    Env(String),
    Set(String),
}

impl Origin {
    /// "environment variable GPTPIPE_…" or "--set KEY=VALUE".
    pub fn describe(&self) -> String {
        match self {
            Origin::Env(var) => format!("environment variable {var}"),
            Origin::Set(arg) => format!("--set {arg}"),
        }
    }
}

/// The pipeline file's text with its spans, and the keys that later layers overrode.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub file_name: String,
    pub text: String,
    doc: Option<toml_edit::ImDocument<String>>,
    overrides: BTreeMap<Vec<String>, Origin>,
    /// The stage of the file that each stage of a matrix comes from.
    stage_of: BTreeMap<String, String>,
    /// `(stage, key)` of the keys a stage's matrix sets: they are written under `matrix`.
    matrix_keys: std::collections::BTreeSet<(String, String)>,
}

impl Origins {
    pub fn new(file_name: String, text: String, doc: toml_edit::ImDocument<String>) -> Self {
        Self {
            file_name,
            text,
            doc: Some(doc),
            overrides: BTreeMap::new(),
            stage_of: BTreeMap::new(),
            matrix_keys: Default::default(),
        }
    }

    /// Records that stage `stage` sets `key` in its matrix.
    pub fn matrix_key(&mut self, stage: &str, key: &str) {
        self.matrix_keys.insert((stage.to_owned(), key.to_owned()));
    }

    /// Records that stage `expanded` (`train[lr=0.1]`) was written as stage `written`, so
    /// errors about it point at the file's stage.
    pub fn expanded_from(&mut self, expanded: &str, written: &str) {
        self.stage_of
            .insert(expanded.to_owned(), written.to_owned());
    }

    pub fn record(&mut self, path: Vec<String>, origin: Origin) {
        self.overrides.insert(path, origin);
    }

    /// The keys later layers set, and where.
    pub fn overrides(&self) -> &BTreeMap<Vec<String>, Origin> {
        &self.overrides
    }

    /// An error about the key at `path` (or the deepest part of it that exists), located
    /// where that key was written.
    pub fn error_at(&self, path: &[String], error: ConfigError) -> ConfigError {
        let mut path = path.to_vec();
        if let (Some("stages"), Some(written)) = (
            path.first().map(String::as_str),
            path.get(1).and_then(|s| self.stage_of.get(s)),
        ) {
            path[1] = written.clone();
        }
        if path.len() >= 3
            && path[0] == "stages"
            && self
                .matrix_keys
                .contains(&(path[1].clone(), path[2].clone()))
        {
            path.insert(2, super::matrix::MATRIX_KEY.to_owned());
        }
        let path = path.as_slice();
        for len in (1..=path.len()).rev() {
            if let Some(origin) = self.overrides.get(&path[..len]) {
                return error.from_origin(&origin.describe());
            }
        }
        match self.span_of(path) {
            Some((span, label)) => error.at(&self.file_name, &self.text, span, label),
            None => error.from_origin(&self.file_name),
        }
    }

    /// The span of the deepest existing key on `path`, and a label for it.
    fn span_of(&self, path: &[String]) -> Option<(Range<usize>, &'static str)> {
        let doc = self.doc.as_ref()?;
        let mut found: Option<Range<usize>> = None;
        let mut item: Option<&Item> = Some(doc.as_item());
        let mut inline: Option<&Value> = None;
        let mut element: Option<&toml_edit::Table> = None;
        for key in path {
            // An array element: figment's path names it by its index.
            let index = key.parse::<usize>().ok();
            if let Some(value) = inline {
                if let (Some(i), Some(array)) = (index, value.as_array()) {
                    let Some(element) = array.get(i) else { break };
                    found = element.span().or(found);
                    inline = Some(element);
                    continue;
                }
                let Some((k, v)) = value.as_inline_table().and_then(|t| t.get_key_value(key))
                else {
                    break;
                };
                found = k.span().or(v.span()).or(found);
                inline = v.as_value();
                continue;
            }
            if let (Some(i), Some(Item::ArrayOfTables(array))) = (index, item) {
                let Some(table) = array.get(i) else { break };
                found = table.span().or(found);
                item = None;
                element = Some(table);
                continue;
            }
            let table: Option<&dyn toml_edit::TableLike> = match element.take() {
                Some(t) => Some(t as &dyn toml_edit::TableLike),
                None => item.and_then(Item::as_table_like),
            };
            let Some((k, v)) = table.and_then(|t| t.get_key_value(key)) else {
                break;
            };
            found = k.span().or(v.span()).or(found);
            match v {
                Item::Value(value) => inline = Some(value),
                other => item = Some(other),
            }
        }
        found.map(|span| (span, "here"))
    }
}
