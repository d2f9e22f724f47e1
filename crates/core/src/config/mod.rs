//! Pipeline files: typed stages, layered loading (defaults < file < `GPTPIPE_*` < `--set`),
//! validation with file:line:col, and the JSON Schema. Knows nothing of models or the cache.

mod curation;
mod error;
mod load;
mod matrix;
mod params;
mod reads;
mod refs;
mod resources;
mod schema;
mod source;
mod template;
mod validate;

pub use error::{suggest as suggest_name, ConfigError};
pub use load::{load, LoadOptions};
pub use matrix::{MATRIX_KEY, MAX_EXPANDED};
pub use params::*;
pub use reads::Read;
pub use resources::{Executor, Resources, RESOURCES_KEY};
pub use schema::{pipeline_schema, pipeline_schema_json};
pub use template::{parse_template, TemplatePart};
pub use validate::{check_stage_values, MAX_BAD_WORDS, MAX_BAD_WORD_BYTES, MAX_NSAMPLES};

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
    /// Where stages run: "local" processes or "slurm" jobs (see `[stages.X.resources]`).
    #[serde(default)]
    pub executor: Executor,
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
                keys.push("threads");
                if !p.devices_change_weights() {
                    keys.push("devices");
                }
                keys
            }
            // A sample depends on (seed, index) only, never on how samples are batched.
            Self::Generate(_) => vec!["batch_size", "threads"],
        }
    }

    /// The stage's `threads` key (CPU threads of its worker; see [`crate::threads`]).
    pub fn threads(&self) -> Option<std::num::NonZeroUsize> {
        match self {
            Self::Finetune(p) => p.threads,
            Self::Generate(p) => p.threads,
            Self::Prepare(_) | Self::Export(_) => None,
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
    pub executor: Executor,
    /// Each stage's `[resources]`, where it has them (a matrix's stages share theirs).
    pub resources: BTreeMap<String, Resources>,
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

    /// Resolves a path value (`~` already expanded) relative to the pipeline file.
    pub fn resolve(&self, p: &UserPath) -> PathBuf {
        self.dir.join(p.path())
    }

    /// The local folder `model` names, if it names one: a path (`./m`, `/m`, `~/m`), or a
    /// bare name that is a folder beside the pipeline file (else it is a hub id).
    pub fn model_folder(&self, model: &ModelRef) -> Option<PathBuf> {
        model.folder_in(&self.dir)
    }
}

pub use source::Origins;
