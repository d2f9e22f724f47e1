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
        let files = crate::fsutil::list_files_following(&path)?
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
                crate::fsutil::list_files_following(&dir)?
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
                // A text file, or a folder of them (every file below it, as the stage reads).
                let path = pipeline.resolve_path(&p.dataset);
                if !path.exists() {
                    bail!(
                        "dataset not found: {} (give \"@prepare-stage\", a text file or a folder)",
                        path.display()
                    );
                }
                files.extend(expand(pipeline, &p.dataset)?);
            }
            if p.restores_from_path() {
                let path = pipeline.resolve_path(&p.restore_from);
                if !path.is_dir() {
                    bail!(
                        "restore_from: checkpoint folder not found: {} (or use \"latest\" or \"fresh\")",
                        path.display()
                    );
                }
                files.extend(expand(pipeline, &p.restore_from)?);
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

/// The inputs of a stage that are reached through a symbolic link (the file itself, or a
/// folder on its way below the pipeline's folder), with the real file each one reads:
/// the lock file records them beside the content hashes.
pub fn symlink_targets(pipeline: &Pipeline, params: &StageParams) -> BTreeMap<String, String> {
    let Ok(inputs) = stage_inputs(pipeline, params) else {
        return BTreeMap::new();
    };
    inputs
        .into_iter()
        .filter(|(_, path)| {
            let below = path.strip_prefix(&pipeline.dir).ok();
            let mut at = path.as_path();
            loop {
                if at
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return true;
                }
                match at.parent() {
                    // Links above the pipeline's folder (a linked home folder) are the
                    // user's layout, not a property of this input.
                    Some(p) if below.is_some() && !p.starts_with(&pipeline.dir) => return false,
                    Some(p) if p == pipeline.dir || p.as_os_str().is_empty() => return false,
                    Some(p) => at = p,
                    None => return false,
                }
            }
        })
        .filter_map(|(name, path)| {
            let real = path.canonicalize().ok()?;
            Some((name, real.to_string_lossy().into_owned()))
        })
        .collect()
}

fn display_path(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
