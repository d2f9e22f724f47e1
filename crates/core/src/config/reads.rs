//! What each stage kind reads, declared once. The cache key's input files
//! (`inputs::stage_inputs`, strict: a missing file is an error), watch mode's patterns
//! (lenient: a missing file is waited for), the DAG's edges and cycle check
//! ([`StageParams::references`]) and the check that no path input lies in what gptpipe
//! owns (`validate.rs`) all derive from [`StageParams::reads`].

use super::refs::{ModelRef, StageRef, UserPath};
use super::StageParams;

/// One thing a stage reads, with the key that names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Read<'a> {
    /// Another stage's output (`"@stage"`): an edge of the DAG.
    Stage {
        key: &'static str,
        stage: &'a StageRef,
    },
    /// A file, a folder (every file below it) or a glob: prepare's `inputs`.
    Pattern {
        key: &'static str,
        path: &'a UserPath,
    },
    /// A file or a folder (every file below it), never a glob: finetune's `dataset`.
    FileOrTree {
        key: &'static str,
        path: &'a UserPath,
    },
    /// A folder, every file below it: a checkpoint to start from (`restore_from`).
    Checkpoint {
        key: &'static str,
        path: &'a UserPath,
    },
    /// A model that is not another stage's: a local folder in Hugging Face layout is read
    /// whole; a hub id or an inline table reads no file of the pipeline's
    /// (`Pipeline::model_folder` tells which).
    Model {
        key: &'static str,
        model: &'a ModelRef,
    },
}

impl Read<'_> {
    /// The params key the read comes from.
    pub fn key(&self) -> &'static str {
        match *self {
            Read::Stage { key, .. }
            | Read::Pattern { key, .. }
            | Read::FileOrTree { key, .. }
            | Read::Checkpoint { key, .. }
            | Read::Model { key, .. } => key,
        }
    }
}

impl StageParams {
    /// Everything this stage reads, in the order of its keys.
    pub fn reads(&self) -> Vec<Read<'_>> {
        use super::refs::{InputRef, RestoreFrom};
        fn model(model: &ModelRef) -> Read<'_> {
            match model {
                ModelRef::Stage(stage) => Read::Stage {
                    key: "model",
                    stage,
                },
                model => Read::Model {
                    key: "model",
                    model,
                },
            }
        }
        match self {
            Self::Prepare(p) => p
                .inputs
                .iter()
                .map(|input| match input {
                    InputRef::Stage(stage) => Read::Stage {
                        key: "inputs",
                        stage,
                    },
                    InputRef::Path(path) => Read::Pattern {
                        key: "inputs",
                        path,
                    },
                })
                .collect(),
            Self::Finetune(p) => {
                let mut reads = Vec::new();
                match &p.dataset {
                    InputRef::Stage(stage) => reads.push(Read::Stage {
                        key: "dataset",
                        stage,
                    }),
                    // An empty dataset is a config error (validate.rs), not a path.
                    InputRef::Path(path) if !path.as_str().is_empty() => {
                        reads.push(Read::FileOrTree {
                            key: "dataset",
                            path,
                        })
                    }
                    InputRef::Path(_) => {}
                }
                reads.push(model(&p.model));
                if let RestoreFrom::Path(path) = &p.restore_from {
                    reads.push(Read::Checkpoint {
                        key: "restore_from",
                        path,
                    });
                }
                reads
            }
            Self::Export(p) => vec![model(&p.model)],
            Self::Generate(p) => {
                let mut reads = vec![model(&p.model)];
                if let Some(path) = &p.prefix_file {
                    reads.push(Read::FileOrTree {
                        key: "prefix_file",
                        path,
                    });
                }
                // The training rows, only when set (load.rs
                // fills the default), so a stage without them keeps its key.
                for input in p.novelty_against.iter().flat_map(|n| n.refs()) {
                    reads.push(match input {
                        InputRef::Stage(stage) => Read::Stage {
                            key: "novelty_against",
                            stage,
                        },
                        InputRef::Path(path) => Read::Pattern {
                            key: "novelty_against",
                            path,
                        },
                    });
                }
                reads
            }
        }
    }

    /// `(key, stage)` for every `"@stage"` reference this stage makes.
    pub fn references(&self) -> Vec<(&'static str, String)> {
        self.reads()
            .into_iter()
            .filter_map(|r| match r {
                Read::Stage { key, stage } => Some((key, stage.name().to_owned())),
                _ => None,
            })
            .collect()
    }
}
