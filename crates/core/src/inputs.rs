//! The files a stage reads, found from its params: prepare inputs (files, folders, globs),
//! a dataset file, a local model folder. Their content hashes go into the cache key.

use crate::config::{Pipeline, Read, StageParams, UserPath};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The files a stage has already listed, by identity (device and inode), so that a file
/// reached twice (named twice, through a link, or through a link loop) is read once.
#[derive(Debug, Default)]
pub struct FileSet(HashSet<(u64, u64)>);

impl FileSet {
    /// True the first time `path`'s file is seen.
    pub fn first_time(&mut self, path: &Path) -> Result<bool> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read input {}", path.display()))?;
        Ok(self.0.insert((meta.dev(), meta.ino())))
    }
}

/// Expands one `inputs` entry (a file, a folder or a glob, relative to the pipeline file)
/// to the files it names, sorted, leaving out files `seen` already holds. Folders and
/// globs never reach into what gptpipe owns (the workdir's `.gptpipe/` and stage folders),
/// never follow a link loop, and list each folder once. Nothing found is an error naming
/// the entry.
pub fn expand(pipeline: &Pipeline, input: &UserPath, seen: &mut FileSet) -> Result<Vec<PathBuf>> {
    let written = input.as_str();
    let entry = input.path().to_string_lossy();
    let entry: &str = &entry;
    let path = pipeline.resolve(input);
    let owned = Owned::of(pipeline);
    let mut keep_new = |files: Vec<PathBuf>| -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            if seen.first_time(&f)? {
                out.push(f);
            }
        }
        Ok(out)
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => return keep_new(vec![path]),
        Ok(meta) if meta.is_dir() => {
            let files = walk(&path, &owned, None, &broken_link_is_an_error)?;
            if files.is_empty() {
                bail!("input folder {} is empty", path.display());
            }
            return keep_new(files);
        }
        Ok(_) => bail!(
            "input {} is not a regular file or folder (a device, FIFO or socket): gptpipe \
             reads only files",
            path.display()
        ),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot read input {}", path.display()))
        }
        Err(_) => {}
    }
    if is_glob(entry) {
        let (root, rest) = split_glob(entry);
        let root: PathBuf = pipeline
            .resolve_path(&root.to_string_lossy())
            .components()
            .collect();
        let full = format!(
            "{}/{}",
            glob::Pattern::escape(&root.to_string_lossy()),
            rest.to_string_lossy()
        );
        let pattern =
            glob::Pattern::new(&full).with_context(|| format!("invalid glob {written:?}"))?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        // A glob without `**` reaches as many folders deep as it has components; a
        // dangling link matters only where the glob would have read it.
        let depth = (!rest.components().any(|c| c.as_os_str() == "**"))
            .then(|| rest.components().count().saturating_sub(1));
        let on_broken = |path: &Path| -> Result<()> {
            if pattern.matches_path_with(path, options) {
                broken_link_is_an_error(path)
            } else {
                Ok(())
            }
        };
        let files: Vec<PathBuf> = if root.is_dir() {
            walk(&root, &owned, depth, &on_broken)?
                .into_iter()
                .filter(|f| pattern.matches_path_with(f, options))
                .collect()
        } else {
            Vec::new()
        };
        if files.is_empty() {
            bail!(
                "input glob {written:?} matches no file (looked in {})",
                pipeline.dir.display()
            );
        }
        return keep_new(files);
    }
    bail!("input file not found: {}", path.display())
}

/// Whether an input is a glob (has a wildcard), not a file or folder name.
pub fn is_glob(entry: &str) -> bool {
    entry.contains(['*', '?', '['])
}

/// A glob split into the folder its matches lie in (its components before the first
/// wildcard, cleaned of `.`) and the pattern below that folder. Watch mode splits its
/// globs the same way.
pub fn split_glob(entry: &str) -> (PathBuf, PathBuf) {
    let wild = |c: &std::path::Component| is_glob(&c.as_os_str().to_string_lossy());
    let parts: Vec<_> = Path::new(entry).components().collect();
    let at = parts.iter().position(wild).unwrap_or(parts.len());
    let root: PathBuf = parts[..at].iter().collect();
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    (root, parts[at..].iter().collect())
}

/// The regular files below `dir`, following links (a data folder assembled from links, a
/// Hugging Face snapshot), as paths under `dir`, sorted. Each real folder is listed once,
/// so neither a loop nor two links to one folder reads anything twice; what gptpipe owns
/// is skipped, also when a link leads there. `depth` limits how many folders deep the walk
/// goes (a glob without `**`); `on_broken` decides what a dangling link is.
fn walk(
    dir: &Path,
    owned: &Owned,
    depth: Option<usize>,
    on_broken: &dyn Fn(&Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    struct Walk<'a> {
        owned: &'a Owned,
        on_broken: &'a dyn Fn(&Path) -> Result<()>,
        done: HashSet<PathBuf>,
        out: Vec<PathBuf>,
    }
    fn visit(w: &mut Walk, dir: &Path, depth: Option<usize>) -> Result<()> {
        let real = dir
            .canonicalize()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        if w.owned.holds(&real) || !w.done.insert(real.clone()) {
            return Ok(());
        }
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?.is_symlink()))))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        entries.sort();
        for (path, link) in entries {
            let Ok(meta) = std::fs::metadata(&path) else {
                (w.on_broken)(&path)?;
                continue;
            };
            if meta.is_dir() {
                if depth != Some(0) {
                    visit(w, &path, depth.map(|d| d - 1))?;
                }
            } else if meta.is_file() {
                // A file in a folder gptpipe does not own is its own only when it is the
                // lock file, or a link that leads into what gptpipe owns.
                let real = match (link, path.file_name()) {
                    (false, Some(name)) => real.join(name),
                    _ => path.canonicalize().unwrap_or_else(|_| path.clone()),
                };
                if !w.owned.holds(&real) {
                    w.out.push(path);
                }
            }
        }
        Ok(())
    }
    let mut w = Walk {
        owned,
        on_broken,
        done: HashSet::new(),
        out: Vec::new(),
    };
    visit(&mut w, dir, depth)?;
    w.out.sort();
    Ok(w.out)
}

/// A dangling link in an input folder is an error naming it: it was meant to be read.
fn broken_link_is_an_error(path: &Path) -> Result<()> {
    bail!("{} is a broken link", path.display())
}

/// What gptpipe owns: the workdir's `.gptpipe/` and every stage's output folder, and the
/// pipeline's lock file. Never an input: a folder or glob over them would read the stages'
/// own outputs (the dataset growing at every run), the cache, or a file every run rewrites.
pub struct Owned(Vec<PathBuf>);

impl Owned {
    pub fn of(pipeline: &Pipeline) -> Self {
        let workdir = &pipeline.workdir;
        let mut roots = vec![normalize(&workdir.join(crate::runner::META_DIR))];
        roots.extend(pipeline.stages.keys().map(|s| normalize(&workdir.join(s))));
        roots.push(normalize(&pipeline.lock_path()));
        Self(roots)
    }

    /// The owned folders, absolute and normalized.
    pub fn roots(&self) -> &[PathBuf] {
        &self.0
    }

    /// The owned folder `path` (absolute, normalized) is in or is, if any.
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        self.0
            .iter()
            .find(|r| path.starts_with(r))
            .map(PathBuf::as_path)
    }

    fn holds(&self, path: &Path) -> bool {
        self.root_of(path).is_some()
    }
}

/// `path` made absolute, with the links of its longest existing ancestor resolved and the
/// rest (which does not exist yet) cleaned lexically: two spellings of one place compare
/// equal before the place exists.
pub fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    let base = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // `..` at the end, or the root: clean what is left lexically.
            _ => break existing.to_path_buf(),
        }
    };
    let mut out = base;
    for part in rest.iter().rev() {
        out.push(part);
    }
    let mut clean = PathBuf::new();
    for c in out.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            c => clean.push(c),
        }
    }
    clean
}

/// The files a stage reads ([`StageParams::reads`]), keyed by their path as the lock file
/// records it (relative to the pipeline file where possible). Strict: an input that is
/// missing is an error (watch mode's patterns wait for it instead).
pub fn stage_inputs(
    pipeline: &Pipeline,
    params: &StageParams,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = Vec::new();
    // Files named twice among `inputs` / `dataset` are read once; a model folder and a
    // checkpoint are listed whole.
    let mut seen = FileSet::default();
    for read in params.reads() {
        match read {
            Read::Stage { .. } => {}
            Read::Pattern { path, .. } => files.extend(expand(pipeline, path, &mut seen)?),
            Read::FileOrTree { path: entry, .. } => {
                // A text file, or a folder of them (every file below it, as the stage reads).
                let path = pipeline.resolve(entry);
                if !path.exists() {
                    bail!(
                        "dataset not found: {} (give \"@prepare-stage\", a text file or a folder)",
                        path.display()
                    );
                }
                files.extend(expand(pipeline, entry, &mut seen)?);
            }
            Read::Checkpoint { path: entry, .. } => {
                let path = pipeline.resolve(entry);
                if gptpipe_hf::gpt2_simple::is_checkpoint(&path) {
                    files.extend(gpt2_simple_files(&path)?);
                    continue;
                }
                if !path.is_dir() {
                    bail!(
                        "restore_from: checkpoint folder not found: {} (or use \"latest\" or \"fresh\")",
                        path.display()
                    );
                }
                files.extend(expand(pipeline, entry, &mut FileSet::default())?);
            }
            Read::Model { model, .. } => {
                let Some(dir) = pipeline.model_folder(model) else {
                    continue;
                };
                if gptpipe_hf::gpt2_simple::is_checkpoint(&dir) {
                    files.extend(gpt2_simple_files(&dir)?);
                    continue;
                }
                if !dir.is_dir() {
                    bail!("model folder not found: {}", dir.display());
                }
                // Checked before anything is hashed: `model = "/"` would hash the whole disk.
                let config = dir.join(gptpipe_hf::folder::CONFIG_FILE);
                if !config.is_file() {
                    bail!(
                        "{} is not a model folder: it has no {} (a Hugging Face folder needs {} \
                         and {})",
                        dir.display(),
                        gptpipe_hf::folder::CONFIG_FILE,
                        gptpipe_hf::folder::CONFIG_FILE,
                        gptpipe_hf::folder::WEIGHTS_FILE
                    );
                }
                files.extend(walk(
                    &dir,
                    &Owned(Vec::new()),
                    None,
                    &broken_link_is_an_error,
                )?);
            }
        }
    }
    Ok(files
        .into_iter()
        .map(|f| (display_path(&pipeline.dir, &f), f))
        .collect())
}

/// The folder that holds a model or checkpoint path: the path itself, or for one step of a
/// gpt-2-simple checkpoint (`checkpoint/run1/model-500`, not a folder) its run folder.
pub fn model_tree(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !path.is_dir() && gptpipe_hf::gpt2_simple::is_checkpoint(path) => {
            parent.to_path_buf()
        }
        _ => path.to_path_buf(),
    }
}

/// The files of the gpt-2-simple checkpoint `path` names (one step's, not the whole run
/// folder's: other steps, samples and event logs do not change the model).
fn gpt2_simple_files(path: &Path) -> Result<Vec<PathBuf>> {
    let files = gptpipe_hf::gpt2_simple::files(path)?;
    for f in &files {
        if !f.is_file() {
            bail!(
                "{} not found: it belongs to the gpt-2-simple checkpoint {}",
                f.display(),
                path.display()
            );
        }
    }
    Ok(files)
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
