//! Pipeline files: typed stages, layered loading (defaults < file < `GPTPIPE_*` < `--set`),
//! validation with file:line:col, and the JSON Schema. Knows nothing of models or the cache.

mod error;
mod load;
mod params;
mod schema;
mod source;
mod validate;

pub use error::{suggest as suggest_name, ConfigError};
pub use load::{load, LoadOptions};
pub use params::*;
pub use schema::{pipeline_schema, pipeline_schema_json};
pub use validate::check_stage_values;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The `[pipeline]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Required; names the default workdir `runs/<name>`.
    pub name: String,
    /// Where stage outputs and the cache live, relative to the pipeline file.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Default seed of stages that sample.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    42
}

/// The kinds of stage a pipeline may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Prepare,
    Finetune,
    Export,
    Generate,
}

impl StageKind {
    pub const ALL: [StageKind; 4] = [Self::Prepare, Self::Finetune, Self::Export, Self::Generate];

    pub fn name(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Finetune => "finetune",
            Self::Export => "export",
            Self::Generate => "generate",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stage's typed parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum StageParams {
    Prepare(PrepareParams),
    Finetune(FinetuneParams),
    Export(ExportParams),
    Generate(GenerateParams),
}

impl StageParams {
    pub fn kind(&self) -> StageKind {
        match self {
            Self::Prepare(_) => StageKind::Prepare,
            Self::Finetune(_) => StageKind::Finetune,
            Self::Export(_) => StageKind::Export,
            Self::Generate(_) => StageKind::Generate,
        }
    }

    /// Keys that do not change a stage's output, so they stay out of its cache key.
    pub fn volatile_keys(&self) -> Vec<&'static str> {
        match self {
            Self::Prepare(_) | Self::Export(_) => vec![],
            Self::Finetune(p) => {
                let mut keys = FinetuneParams::REPORTING_KEYS.to_vec();
                // "latest" resumes this same training (a resume is exact) and "fresh"
                // starts it over: the same weights either way. A path starts from other
                // weights: it stays in the key, and its files are inputs.
                if !p.restores_from_path() {
                    keys.push("restore_from");
                }
                keys
            }
            // A sample depends on (seed, index) only, never on how samples are batched.
            Self::Generate(_) => vec!["batch_size"],
        }
    }

    /// The effective parameters that enter the cache key: [`Self::to_json`] without the
    /// volatile keys.
    pub fn keyed_json(&self) -> serde_json::Value {
        let mut json = self.to_json();
        if let Some(o) = json.as_object_mut() {
            for k in self.volatile_keys() {
                o.remove(k);
            }
        }
        json
    }

    /// Parameters of `kind` from their JSON form (as [`Self::to_json`] writes it).
    pub fn from_json(kind: StageKind, value: serde_json::Value) -> serde_json::Result<Self> {
        Ok(match kind {
            StageKind::Prepare => Self::Prepare(serde_json::from_value(value)?),
            StageKind::Finetune => Self::Finetune(serde_json::from_value(value)?),
            StageKind::Export => Self::Export(serde_json::from_value(value)?),
            StageKind::Generate => Self::Generate(serde_json::from_value(value)?),
        })
    }

    /// The effective parameters as JSON, every key present.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Self::Prepare(p) => serde_json::to_value(p),
            Self::Finetune(p) => serde_json::to_value(p),
            Self::Export(p) => serde_json::to_value(p),
            Self::Generate(p) => serde_json::to_value(p),
        };
        value.expect("stage parameters serialize to JSON")
    }

    /// `(key, stage)` for every `"@stage"` reference this stage makes.
    pub fn references(&self) -> Vec<(&'static str, String)> {
        let mut refs = Vec::new();
        let model = |m: &ModelRef| match m {
            ModelRef::Named(s) => s.strip_prefix('@').map(str::to_owned),
            ModelRef::Inline(_) => None,
        };
        match self {
            Self::Prepare(p) => {
                for input in &p.inputs {
                    if let Some(s) = input.strip_prefix('@') {
                        refs.push(("inputs", s.to_owned()));
                    }
                }
            }
            Self::Finetune(p) => {
                if let Some(s) = p.dataset.strip_prefix('@') {
                    refs.push(("dataset", s.to_owned()));
                }
                refs.extend(model(&p.model).map(|s| ("model", s)));
            }
            Self::Export(p) => refs.extend(model(&p.model).map(|s| ("model", s))),
            Self::Generate(p) => refs.extend(model(&p.model).map(|s| ("model", s))),
        }
        refs
    }

    /// `(key, value)` for every input this stage names by path, not as `"@stage"` or a hub
    /// id: prepare's `inputs` (files, folders, globs), finetune's `dataset` and a
    /// `restore_from` folder, a model folder.
    pub fn path_inputs(&self, pipeline: &Pipeline) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let model = |m: &ModelRef| match crate::stage::resolve_model(pipeline, &BTreeMap::new(), m)
        {
            crate::stage::ModelSource::Folder(_) => match m {
                ModelRef::Named(s) => Some(("model", s.clone())),
                ModelRef::Inline(_) => None,
            },
            _ => None,
        };
        match self {
            Self::Prepare(p) => out.extend(
                p.inputs
                    .iter()
                    .filter(|i| !i.starts_with('@'))
                    .map(|i| ("inputs", i.clone())),
            ),
            Self::Finetune(p) => {
                if !p.dataset.starts_with('@') && !p.dataset.is_empty() {
                    out.push(("dataset", p.dataset.clone()));
                }
                if p.restores_from_path() {
                    out.push(("restore_from", p.restore_from.clone()));
                }
                out.extend(model(&p.model));
            }
            Self::Export(p) => out.extend(model(&p.model)),
            Self::Generate(p) => out.extend(model(&p.model)),
        }
        out
    }

    /// The seed a sampling stage uses, if the kind samples.
    pub fn seed(&self) -> Option<u64> {
        match self {
            Self::Finetune(p) => p.seed,
            Self::Generate(p) => p.seed,
            _ => None,
        }
    }
}

/// A loaded, validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    /// The folder relative paths are taken from.
    pub dir: PathBuf,
    pub name: String,
    pub workdir: PathBuf,
    pub seed: u64,
    /// Stages by name, with the pipeline seed filled in where a stage samples.
    pub stages: BTreeMap<String, StageParams>,
    /// Where each key came from, for error messages after loading.
    pub origins: source::Origins,
}

impl Pipeline {
    /// The lock file that sits beside the pipeline file.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// Resolves a path written in the pipeline relative to the pipeline file.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }
}

pub use source::Origins;
