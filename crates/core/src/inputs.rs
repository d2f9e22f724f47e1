//! The files a stage reads, found from its params: prepare inputs (files, folders, globs),
//! a dataset file, a local model folder. Their content hashes go into the cache key.

use crate::config::{ModelRef, Pipeline, StageParams};
use crate::stage::{resolve_model, ModelSource};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Expands one `inputs` entry (a file, a folder or a glob, relative to the pipeline file)
/// to the files it names, sorted. Nothing found is an error naming the entry.
pub fn expand(pipeline: &Pipeline, entry: &str) -> Result<Vec<PathBuf>> {
    let path = pipeline.resolve_path(entry);
    if path.is_file() {
        return Ok(vec![path]);
    }
    if path.is_dir() {
        let files = crate::fsutil::list_files(&path)?
            .into_iter()
            .map(|rel| path.join(rel))
            .collect::<Vec<_>>();
        if files.is_empty() {
            bail!("input folder {} is empty", path.display());
        }
        return Ok(files);
    }
    if entry.contains(['*', '?', '[']) {
        let pattern = path.to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = glob::glob(&pattern)
            .with_context(|| format!("invalid glob {entry:?}"))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "input glob {entry:?} matches no file (looked in {})",
                pipeline.dir.display()
            );
        }
        return Ok(files);
    }
    bail!("input file not found: {}", path.display())
}

/// The files a stage reads, keyed by their path as the lock file records it (relative to
/// the pipeline file where possible).
pub fn stage_inputs(
    pipeline: &Pipeline,
    params: &StageParams,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = Vec::new();
    let mut model = |m: &ModelRef| -> Result<()> {
        if let ModelSource::Folder(dir) = resolve_model(pipeline, &BTreeMap::new(), m) {
            if !dir.is_dir() {
                bail!("model folder not found: {}", dir.display());
            }
            files.extend(
                crate::fsutil::list_files(&dir)?
                    .into_iter()
                    .map(|r| dir.join(r)),
            );
        }
        Ok(())
    };
    match params {
        StageParams::Prepare(p) => {
            for entry in p.inputs.iter().filter(|e| !e.starts_with('@')) {
                files.extend(expand(pipeline, entry)?);
            }
        }
        StageParams::Finetune(p) => {
            model(&p.model)?;
            if !p.dataset.starts_with('@') {
                let path = pipeline.resolve_path(&p.dataset);
                if !path.is_file() {
                    bail!("dataset file not found: {}", path.display());
                }
                files.push(path);
            }
        }
        StageParams::Export(p) => model(&p.model)?,
        StageParams::Generate(p) => model(&p.model)?,
    }
    Ok(files
        .into_iter()
        .map(|f| (display_path(&pipeline.dir, &f), f))
        .collect())
}

fn display_path(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
