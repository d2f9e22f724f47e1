//! What watch mode cares about: the pipeline file and each selected stage's input files,
//! folders and globs, as absolute paths. It answers two questions: which folders to hand to
//! the watcher, and which stages a changed path touches.
//!
//! Folders are watched rather than files, so a file an editor replaces (write a temporary
//! file, rename it over the original) is still seen; events are then filtered by path.

use gptpipe_core::config::{Pipeline, Read, StageParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// The paths one stage reads.
#[derive(Debug, Default)]
struct Patterns {
    files: BTreeSet<PathBuf>,
    /// Folders whose every file is an input (input folders, local model folders).
    trees: Vec<PathBuf>,
    globs: Vec<glob::Pattern>,
}

impl Patterns {
    fn matches(&self, path: &Path) -> bool {
        self.files.contains(path)
            || self.trees.iter().any(|t| path.starts_with(t))
            || self.globs.iter().any(|g| g.matches_path(path))
    }
}

#[derive(Debug)]
pub struct Interest {
    pipeline_file: PathBuf,
    /// Never relevant: what gptpipe owns in the workdir (stage outputs, `.gptpipe/`) and the
    /// lock file, which runs write. The rest of the workdir may hold inputs (`workdir = "."`).
    ignored: Vec<PathBuf>,
    stages: BTreeMap<String, Patterns>,
    /// Folder -> watched recursively.
    watches: BTreeMap<PathBuf, bool>,
    /// Folders to watch that do not exist yet.
    pending: Vec<PathBuf>,
}

impl Interest {
    /// Only the pipeline file: what is left to watch while it does not load.
    pub fn pipeline_only(pipeline_file: &Path) -> Self {
        let mut interest = Self {
            pipeline_file: absolute(pipeline_file),
            ignored: Vec::new(),
            stages: BTreeMap::new(),
            watches: BTreeMap::new(),
            pending: Vec::new(),
        };
        interest.watch_parent(&interest.pipeline_file.clone());
        interest
    }

    /// The pipeline file and the inputs of `selected` stages.
    pub fn of(pipeline: &Pipeline, selected: &[String]) -> Self {
        let mut interest = Self::pipeline_only(&pipeline.path);
        interest.ignored = gptpipe_core::inputs::Owned::of(pipeline).roots().to_vec();
        interest.ignored.push(absolute(&pipeline.lock_path()));
        for stage in selected {
            let patterns = stage_patterns(pipeline, &pipeline.stages[stage]);
            for f in &patterns.files {
                interest.watch_parent(f);
            }
            for t in &patterns.trees {
                interest.watch_tree(t);
            }
            interest.stages.insert(stage.clone(), patterns);
        }
        // A glob is watched from its literal base folder down.
        let bases: Vec<PathBuf> = interest
            .stages
            .values()
            .flat_map(|p| p.globs.iter().map(|g| glob_base(g.as_str())))
            .collect();
        for b in bases {
            interest.watch_tree(&b);
        }
        interest
    }

    /// Folders to watch, and whether recursively.
    pub fn watches(&self) -> &BTreeMap<PathBuf, bool> {
        &self.watches
    }

    /// Whether a change at `path` can change what a run does.
    pub fn is_relevant(&self, path: &Path) -> bool {
        if self.ignored.iter().any(|i| path.starts_with(i)) {
            return false;
        }
        path == self.pipeline_file
            || self.stages.values().any(|p| p.matches(path))
            || self.pending.iter().any(|p| p.starts_with(path))
    }

    /// The stages whose inputs include one of `paths` (not their downstream).
    pub fn stages_touched(&self, paths: &[PathBuf]) -> BTreeSet<String> {
        self.stages
            .iter()
            .filter(|(_, p)| paths.iter().any(|path| p.matches(path)))
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn watch_parent(&mut self, file: &Path) {
        if let Some(dir) = file.parent() {
            self.watch_dir(dir, false);
        }
    }

    fn watch_tree(&mut self, dir: &Path) {
        self.watch_dir(dir, true);
    }

    /// Watches `dir`; one that does not exist yet is waited for from its nearest existing
    /// ancestor, where the creation of the first missing folder shows (and is relevant, so
    /// the next cycle watches deeper).
    fn watch_dir(&mut self, dir: &Path, recursive: bool) {
        if dir.is_dir() {
            let entry = self.watches.entry(dir.to_path_buf()).or_insert(false);
            *entry |= recursive;
            return;
        }
        self.pending.push(dir.to_path_buf());
        if let Some(existing) = dir.ancestors().skip(1).find(|a| a.is_dir()) {
            self.watches.entry(existing.to_path_buf()).or_insert(false);
        }
    }
}

/// The files, folders and globs a stage reads ([`StageParams::reads`], as
/// `gptpipe_core::inputs::stage_inputs` expands them for the key) without failing on a
/// missing file: a missing input is exactly what watch mode should wait for.
fn stage_patterns(pipeline: &Pipeline, params: &StageParams) -> Patterns {
    let mut p = Patterns::default();
    let file_or_tree = |p: &mut Patterns, path: &Path| {
        let path = &gptpipe_core::inputs::model_tree(path);
        if path.is_dir() {
            p.trees.push(absolute(path));
        } else {
            add_file(p, path);
        }
    };
    for read in params.reads() {
        match read {
            Read::Stage { .. } => {}
            Read::Pattern { path: entry, .. } => {
                let path = pipeline.resolve(entry);
                if gptpipe_core::inputs::is_glob(&entry.path().to_string_lossy()) {
                    if let Some(g) = glob_pattern(&path) {
                        p.globs.push(g);
                    }
                } else {
                    file_or_tree(&mut p, &path);
                }
            }
            Read::FileOrTree { path, .. } | Read::Checkpoint { path, .. } => {
                file_or_tree(&mut p, &pipeline.resolve(path))
            }
            Read::Model { model, .. } => {
                if let Some(dir) = pipeline.model_folder(model) {
                    p.trees
                        .push(absolute(&gptpipe_core::inputs::model_tree(&dir)));
                }
            }
        }
    }
    // A symlinked input is read through its target: watch where the target lives too.
    let trees = p.trees.clone();
    for t in trees {
        if let Ok(real) = t.canonicalize() {
            if real != t {
                p.trees.push(real);
            }
        }
    }
    p
}

fn add_file(p: &mut Patterns, path: &Path) {
    let abs = absolute(path);
    if let Ok(real) = abs.canonicalize() {
        p.files.insert(real);
    }
    p.files.insert(abs);
}

/// An absolute glob pattern whose literal base folder is canonical, so it matches the
/// paths the watcher reports.
fn glob_pattern(path: &Path) -> Option<glob::Pattern> {
    let (base, rest) = gptpipe_core::inputs::split_glob(&path.to_string_lossy());
    let base = absolute(&base);
    let text = format!(
        "{}/{}",
        glob::Pattern::escape(&base.to_string_lossy()),
        rest.to_string_lossy()
    );
    glob::Pattern::new(&text).ok()
}

/// The literal folder a glob pattern starts from.
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', ']']) {
            break;
        }
        base.push(c);
    }
    base
}

/// `path` made absolute with symlinks in its folders resolved (the file itself may not
/// exist yet), the form the watcher reports paths in.
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        // Keep the last component as written when it is a symlink: the link itself is
        // what the user names, its target is added separately.
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
                return absolute(parent).join(name);
            }
        }
        return p;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match (parent, path.file_name()) {
        (Some(parent), Some(name)) => absolute(parent).join(name),
        (None, Some(name)) => std::env::current_dir()
            .map(|d| absolute(&d).join(name))
            .unwrap_or_else(|_| PathBuf::from(name)),
        _ => normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())),
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptpipe_core::config::{load, LoadOptions};

    fn pipeline(dir: &Path, stages: &str) -> Pipeline {
        let path = dir.join("gptpipe.toml");
        std::fs::write(&path, format!("[pipeline]\nname = \"t\"\n{stages}")).unwrap();
        load(&path, &LoadOptions::default()).unwrap()
    }

    #[test]
    fn files_folders_and_globs_touch_their_stage_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("data/more")).unwrap();
        std::fs::write(d.join("a.csv"), "x\n").unwrap();
        let p = pipeline(
            &d,
            "[stages.a]\nkind = \"prepare\"\ninputs = [\"a.csv\"]\n\
             [stages.b]\nkind = \"prepare\"\ninputs = [\"data\"]\n\
             [stages.c]\nkind = \"prepare\"\ninputs = [\"logs/*.txt\"]\n",
        );
        let i = Interest::of(&p, &["a".into(), "b".into(), "c".into()]);
        let touched = |p: &Path| i.stages_touched(&[p.to_path_buf()]);
        assert_eq!(touched(&d.join("a.csv")), ["a".to_string()].into());
        assert_eq!(
            touched(&d.join("data/more/x.txt")),
            ["b".to_string()].into()
        );
        assert_eq!(touched(&d.join("logs/1.txt")), ["c".to_string()].into());
        assert!(touched(&d.join("logs/1.csv")).is_empty());
        assert!(i.is_relevant(&d.join("gptpipe.toml")));
        assert!(!i.is_relevant(&d.join("gptpipe.toml.lock")));
        assert!(!i.is_relevant(&d.join("notes.md")));
        assert!(!i.is_relevant(&d.join("runs/t/a/dataset.txt")));
        assert_eq!(i.watches().get(&d), Some(&false));
        assert_eq!(i.watches().get(&d.join("data")), Some(&true));
    }

    #[test]
    fn with_the_workdir_as_the_project_folder_inputs_are_still_watched() {
        // Watch ignored the whole workdir: with `workdir = "."`, every input.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::write(d.join("a.csv"), "x\n").unwrap();
        let path = d.join("gptpipe.toml");
        std::fs::write(
            &path,
            "[pipeline]\nname = \"t\"\nworkdir = \".\"\n\
             [stages.a]\nkind = \"prepare\"\ninputs = [\"*.csv\"]\n",
        )
        .unwrap();
        let p = load(&path, &LoadOptions::default()).unwrap();
        let i = Interest::of(&p, &["a".into()]);
        assert!(i.is_relevant(&d.join("a.csv")));
        assert!(i.is_relevant(&d.join("b.csv")));
        assert!(!i.is_relevant(&d.join("a/dataset.txt")));
        assert!(!i.is_relevant(&d.join(".gptpipe/memo.json")));
        assert!(!i.is_relevant(&d.join("gptpipe.toml.lock")));
    }

    #[test]
    fn a_finetune_dataset_folder_and_restore_folder_are_watched_as_trees() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("corpus/part")).unwrap();
        std::fs::create_dir_all(d.join("ckpt")).unwrap();
        let p = pipeline(
            &d,
            "[stages.t]\nkind = \"finetune\"\ndataset = \"corpus\"\nrestore_from = \"ckpt\"\n\
             model = { n_layer = 1, n_head = 1, n_embd = 8 }\n",
        );
        let i = Interest::of(&p, &["t".into()]);
        let touched = |p: &Path| i.stages_touched(&[p.to_path_buf()]);
        assert_eq!(touched(&d.join("corpus/new.txt")), ["t".to_string()].into());
        assert_eq!(
            touched(&d.join("corpus/part/f1.txt")),
            ["t".to_string()].into()
        );
        assert_eq!(
            touched(&d.join("ckpt/model.safetensors")),
            ["t".to_string()].into()
        );
        assert_eq!(i.watches().get(&d.join("corpus")), Some(&true));
    }

    #[test]
    fn an_input_under_folders_not_made_yet_is_waited_for_from_the_nearest_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        let p = pipeline(
            &d,
            "[stages.a]\nkind = \"prepare\"\ninputs = [\"incoming/today/new.csv\"]\n",
        );
        let i = Interest::of(&p, &["a".into()]);
        assert_eq!(i.watches().get(&d), Some(&false));
        assert!(i.is_relevant(&d.join("incoming")));
        assert!(!i.is_relevant(&d.join("elsewhere")));
        // Once `incoming` exists, the next plan watches it, down to the file's folder.
        std::fs::create_dir_all(d.join("incoming")).unwrap();
        let i = Interest::of(&p, &["a".into()]);
        assert_eq!(i.watches().get(&d.join("incoming")), Some(&false));
        assert!(i.is_relevant(&d.join("incoming/today")));
        std::fs::create_dir_all(d.join("incoming/today")).unwrap();
        let i = Interest::of(&p, &["a".into()]);
        assert_eq!(i.watches().get(&d.join("incoming/today")), Some(&false));
        assert!(i.is_relevant(&d.join("incoming/today/new.csv")));
    }

    #[test]
    fn outputs_inside_the_workdir_are_ignored_even_under_a_watched_tree() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let p = pipeline(
            &d,
            "workdir = \"data/out\"\n[stages.a]\nkind = \"prepare\"\ninputs = [\"data\"]\n",
        );
        let i = Interest::of(&p, &["a".into()]);
        assert!(i.is_relevant(&d.join("data/x.csv")));
        assert!(!i.is_relevant(&d.join("data/out/a/dataset.txt")));
    }

    #[test]
    fn a_symlinked_input_is_watched_at_its_target_too() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        std::fs::write(d.join("elsewhere/real.csv"), "x\n").unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere/real.csv"), d.join("link.csv")).unwrap();
        let p = pipeline(
            &d,
            "[stages.a]\nkind = \"prepare\"\ninputs = [\"link.csv\"]\n",
        );
        let i = Interest::of(&p, &["a".into()]);
        assert!(i.is_relevant(&d.join("link.csv")));
        assert!(i.is_relevant(&d.join("elsewhere/real.csv")));
        assert!(i.watches().contains_key(&d.join("elsewhere")));
    }
}
