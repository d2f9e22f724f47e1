//! `provenance.json`: where a generate output came from (the model's content hash and
//! source, the pipeline file, the stage, the seed, the effective parameters, the gptpipe
//! version), so a sample can be traced back to the weights that wrote it.
//!
//! A stage's provenance has no time: a stage's outputs hold no timing, so the same
//! pipeline run twice writes the same files and its lock file records the same output
//! hashes (`tests/safety/reproducible_outputs.rs`). `gptpipe generate`, which caches
//! nothing, stamps its provenance with the time ([`Provenance::stamped`]).

use crate::curation::Counts;
use crate::stage::choose_backend;
use anyhow::{Context as _, Result};
use gptpipe_core::cache::hash::hash_bytes;
use gptpipe_core::cache::memo::Memo;
use gptpipe_core::config::{Backend, GenerateParams};
use gptpipe_core::fsutil::write_atomic;
use gptpipe_core::stage::{ModelSource, StageContext};
use gptpipe_hf::folder::{ONNX_DATA_FILE, ONNX_FILE, WEIGHTS_FILE};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The file name, in the folder the samples are written to.
pub const PROVENANCE_FILE: &str = GenerateParams::PROVENANCE_FILE;

/// The content hash of the weights the backend `auto` loads for `source` (see
/// [`model_hash_for`]).
pub fn model_hash(source: &ModelSource) -> Result<String> {
    model_hash_for(source, Backend::Auto)
}

/// The content hash of the weights `backend` loads for `source`: blake3 of
/// `model.safetensors` (libtorch, or ONNX Runtime on a folder it exports on the fly) or of
/// `model.onnx` (ONNX Runtime; with external data, blake3 of both files' names and hashes). A hub id hashes the snapshot in the Hugging
/// Face cache (downloading it if it is not there, as loading does). An inline model has
/// random weights and no file: its hash is blake3 of its shape's JSON. Files are hashed
/// once per process while their size, times and inode stay the same.
pub fn model_hash_for(source: &ModelSource, backend: Backend) -> Result<String> {
    if let ModelSource::Inline(m) = source {
        let json = serde_json::to_vec(m).expect("an inline model serializes");
        return Ok(hash_bytes(&json));
    }
    let files = weight_files(source, backend)?;
    if let [(_, one)] = files.as_slice() {
        return memo().hash(one);
    }
    let mut listing = String::new();
    for (name, path) in &files {
        listing.push_str(&format!("{name} {}\n", memo().hash(path)?));
    }
    Ok(hash_bytes(listing.as_bytes()))
}

/// The weight files of `source` that `backend` loads: (name in the folder, path).
fn weight_files(source: &ModelSource, backend: Backend) -> Result<Vec<(String, PathBuf)>> {
    let dir = match source {
        ModelSource::Hub(id) => gptpipe_hf::hub::hub_folder(id)?,
        ModelSource::Folder(dir) | ModelSource::Stage { dir, .. } => dir.clone(),
        ModelSource::Inline(_) => unreachable!("an inline model has no files"),
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if gptpipe_hf::gpt2_simple::is_checkpoint(&dir) {
        // The tensor bundle: its index and data shards (not the optimizer's files).
        for path in gptpipe_hf::gpt2_simple::files(&dir)? {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".index") || name.contains(".data-") {
                files.push((name.into_owned(), path));
            }
        }
    // ONNX Runtime exports a folder without `model.onnx` on the fly, from its weights.
    } else if choose_backend(backend, source) == Backend::Onnx && dir.join(ONNX_FILE).is_file() {
        files.push((ONNX_FILE.into(), dir.join(ONNX_FILE)));
        if dir.join(ONNX_DATA_FILE).is_file() {
            files.push((ONNX_DATA_FILE.into(), dir.join(ONNX_DATA_FILE)));
        }
    } else {
        // The file the weights are read from: model.safetensors, else a pickle.
        let (name, path) = gptpipe_hf::weights::find(&dir)
            .map_or((WEIGHTS_FILE, dir.join(WEIGHTS_FILE)), |(f, p)| {
                (f.file_name(), p)
            });
        files.push((name.to_owned(), path));
    }
    for (_, path) in &files {
        if !path.is_file() {
            anyhow::bail!(
                "cannot hash the model's weights: {} is not a file",
                path.display()
            );
        }
    }
    Ok(files)
}

/// The process's file-state memo (in memory only: the runner owns the workdir's).
fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(|| Memo::open(PathBuf::new()))
}

/// What `provenance.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    pub model: ModelProvenance,
    /// The pipeline, when the samples come from a stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineProvenance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageProvenance>,
    /// The effective seed: sample i depends on (seed, i) and the model only.
    pub seed: u64,
    /// Every effective parameter of the generation, defaults included.
    pub params: serde_json::Value,
    pub gptpipe_version: String,
    /// When the samples were made, RFC 3339 in UTC; only `gptpipe generate` writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// How many samples were generated, kept and dropped by each rule, when samples were
    /// judged (the curation keys, or `novelty_against`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curation: Option<Counts>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelProvenance {
    /// `model` as written: a hub id, a folder, `"@stage"` or an inline table.
    pub source: serde_json::Value,
    /// `hub`, `folder`, `stage` or `inline`.
    pub kind: &'static str,
    /// [`model_hash_for`] of the weights that were loaded.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineProvenance {
    /// The `[pipeline]` name.
    pub name: String,
    /// The pipeline file's name (no machine path, so the output stays the same elsewhere).
    pub file: String,
    /// blake3 of the pipeline file's bytes.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageProvenance {
    pub name: String,
    /// The generate stage's implementation version.
    pub version: u32,
    /// The hash of the stage's inputs (its model's files or upstream output), the part of
    /// the cache key a `StageContext` exposes; with `params` and `version` it fixes the key.
    pub inputs_hash: String,
}

impl Provenance {
    /// The provenance of a generate stage's output: `params` are its effective params,
    /// `source` its resolved model, `backend` the backend that ran it (as configured:
    /// `auto` is resolved as the stage resolves it).
    pub fn for_stage(
        ctx: &StageContext,
        params: &GenerateParams,
        source: &ModelSource,
        backend: Backend,
    ) -> Result<Self> {
        let pipeline = ctx.pipeline;
        let bytes = std::fs::read(&pipeline.path)
            .with_context(|| format!("cannot read {}", pipeline.path.display()))?;
        let mut p = Self::new(params, source, backend, ctx.seed())?;
        p.pipeline = Some(PipelineProvenance {
            name: pipeline.name.clone(),
            file: pipeline
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hash: hash_bytes(&bytes),
        });
        p.stage = Some(StageProvenance {
            name: ctx.name.to_owned(),
            version: crate::stage::VERSION,
            inputs_hash: ctx.inputs_hash.to_owned(),
        });
        Ok(p)
    }

    /// The provenance of samples made without a pipeline (`gptpipe generate`): no pipeline
    /// nor stage, and no time until [`Self::stamped`].
    pub fn new(
        params: &GenerateParams,
        source: &ModelSource,
        backend: Backend,
        seed: u64,
    ) -> Result<Self> {
        let kind = match source {
            ModelSource::Hub(_) => "hub",
            ModelSource::Folder(_) => "folder",
            ModelSource::Stage { .. } => "stage",
            ModelSource::Inline(_) => "inline",
        };
        Ok(Self {
            model: ModelProvenance {
                source: serde_json::to_value(&params.model).expect("a model serializes"),
                kind,
                hash: model_hash_for(source, backend)?,
            },
            pipeline: None,
            stage: None,
            seed,
            params: params.effective_json(),
            gptpipe_version: gptpipe_core::GPTPIPE_VERSION.to_owned(),
            time: None,
            curation: None,
        })
    }

    /// With the time now (or `SOURCE_DATE_EPOCH`'s, the reproducible-builds convention).
    pub fn stamped(mut self) -> Self {
        let secs = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
        self.time = Some(rfc3339(secs));
        self
    }

    /// Writes `<samples>.provenance.json` beside the samples file `samples` (what
    /// `gptpipe generate --output FILE` writes: a name of its own, so that no file of the
    /// user's is replaced).
    pub fn write_beside(&self, samples: &Path) -> Result<()> {
        let name = samples
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = samples.with_file_name(format!("{name}.{PROVENANCE_FILE}"));
        write_atomic(&path, &self.to_json(&name))
    }

    /// The file's bytes: which samples file it describes, then the provenance.
    fn to_json(&self, samples: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Written<'a> {
            samples: &'a str,
            #[serde(flatten)]
            provenance: &'a Provenance,
        }
        let written = Written {
            samples,
            provenance: self,
        };
        let mut json = serde_json::to_vec_pretty(&written).expect("provenance serializes");
        json.push(b'\n');
        json
    }

    /// Writes `provenance.json` into `dir` (the stage folder, or the folder of
    /// `gptpipe generate --output`), atomically; `output` is the samples file it
    /// describes, relative to `dir`, and may not be `provenance.json` itself.
    pub fn write(&self, dir: &Path, output: &str) -> Result<()> {
        anyhow::ensure!(
            Path::new(output) != Path::new(PROVENANCE_FILE),
            "the samples cannot be written to {PROVENANCE_FILE}: gptpipe writes it itself"
        );
        write_atomic(&dir.join(PROVENANCE_FILE), &self.to_json(output))
    }
}

/// Seconds since the Unix epoch as RFC 3339 in UTC (`2026-11-29T05:00:00Z`).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptpipe_core::cache::hash::hash_file;
    use gptpipe_core::config::{load, LoadOptions, StageKind, StageParams};
    use std::collections::BTreeMap;

    #[test]
    fn model_hash_is_the_weights_content_hash_and_follows_a_changed_byte() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join(WEIGHTS_FILE);
        std::fs::write(&weights, b"safetensors bytes").unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let source = ModelSource::Folder(dir.path().to_path_buf());
        let first = model_hash(&source).unwrap();
        assert_eq!(first, hash_file(&weights).unwrap());
        // A README.md (the model card) or any other file does not change it.
        std::fs::write(dir.path().join("README.md"), b"---\n---\n").unwrap();
        assert_eq!(model_hash(&source).unwrap(), first);
        // The same file, the same hash; one byte changed (same size), another.
        std::fs::write(&weights, b"safetensors bytez").unwrap();
        let second = model_hash(&source).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, hash_file(&weights).unwrap());
        assert_eq!(model_hash(&source).unwrap(), second);
    }

    #[test]
    fn an_export_hashes_its_onnx_files() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join(ONNX_FILE);
        std::fs::write(&onnx, b"graph").unwrap();
        let stage = ModelSource::Stage {
            name: "onnx".into(),
            kind: StageKind::Export,
            dir: dir.path().to_path_buf(),
        };
        let folder = ModelSource::Folder(dir.path().to_path_buf());
        assert_eq!(model_hash(&stage).unwrap(), hash_file(&onnx).unwrap());
        // A folder with model.onnx and no safetensors is an export too (backend auto).
        assert_eq!(model_hash(&folder).unwrap(), hash_file(&onnx).unwrap());
        let err = model_hash_for(&folder, Backend::Tch)
            .unwrap_err()
            .to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");
        std::fs::write(dir.path().join(ONNX_DATA_FILE), b"weights").unwrap();
        let both = model_hash(&stage).unwrap();
        assert_ne!(both, hash_file(&onnx).unwrap());
        std::fs::write(dir.path().join(ONNX_DATA_FILE), b"weightz").unwrap();
        assert_ne!(model_hash(&stage).unwrap(), both);
    }

    #[test]
    fn a_stage_provenance_serializes_every_field_and_no_time() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("work/train");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join(WEIGHTS_FILE), b"w").unwrap();
        let text = "[pipeline]\nname = \"prov\"\nworkdir = \"work\"\nseed = 9\n\n\
                    [stages.samples]\nkind = \"generate\"\nmodel = \"@train\"\nlength = 5\n\n\
                    [stages.train]\nkind = \"finetune\"\ndataset = \"d.txt\"\n";
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let pipeline = load(&dir.path().join("p.toml"), &LoadOptions::default()).unwrap();
        let StageParams::Generate(params) = &pipeline.stages["samples"] else {
            panic!("not a generate stage");
        };
        let upstream = BTreeMap::from([(
            "train".to_owned(),
            gptpipe_core::stage::Upstream {
                kind: StageKind::Finetune,
                dir: model.clone(),
            },
        )]);
        let out = tempfile::tempdir().unwrap();
        let ctx = StageContext {
            name: "samples",
            params: &pipeline.stages["samples"],
            pipeline: &pipeline,
            out_dir: out.path(),
            previous_output: None,
            state_dir: out.path(),
            upstream: &upstream,
            inputs_hash: "abc",
            events: &gptpipe_core::events::NullSink,
            cancel: &std::sync::atomic::AtomicBool::new(false),
        };
        let source = ctx.resolve_model(&params.model);
        let p = Provenance::for_stage(&ctx, params, &source, Backend::Auto).unwrap();
        p.write(out.path(), "samples.txt").unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join(PROVENANCE_FILE)).unwrap())
                .unwrap();
        let expected = serde_json::json!({
            "samples": "samples.txt",
            "model": {
                "source": "@train",
                "kind": "stage",
                "hash": hash_file(&model.join(WEIGHTS_FILE)).unwrap(),
            },
            "pipeline": {"name": "prov", "file": "p.toml", "hash": hash_bytes(text.as_bytes())},
            "stage": {"name": "samples", "version": crate::stage::VERSION, "inputs_hash": "abc"},
            "seed": 9,
            "params": params.effective_json(),
            "gptpipe_version": env!("CARGO_PKG_VERSION"),
        });
        assert_eq!(json, expected);
        assert_eq!(json["params"]["length"], 5);
        // The same inputs, the same bytes: a stage's output stays reproducible.
        let before = std::fs::read(out.path().join(PROVENANCE_FILE)).unwrap();
        p.write(out.path(), "samples.txt").unwrap();
        assert_eq!(
            std::fs::read(out.path().join(PROVENANCE_FILE)).unwrap(),
            before
        );

        let stamped = Provenance::new(params, &source, Backend::Auto, 9)
            .unwrap()
            .stamped();
        let json = serde_json::to_value(&stamped).unwrap();
        assert!(
            json.get("pipeline").is_none() && json.get("stage").is_none(),
            "{json}"
        );
        let time = json["time"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        let err = stamped.write(out.path(), PROVENANCE_FILE).unwrap_err();
        assert!(
            err.to_string().contains("gptpipe writes it itself"),
            "{err}"
        );
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
