//! The workdir's layout: `<workdir>/<stage>/` holds published outputs; `.gptpipe/` holds the
//! cache, the memo, temporary build folders, stage state, the run lock, and the lock files
//! that use the workdir (`lockfiles/`: one small file per lock file, named by a hash of its
//! absolute path and holding that path), which `gc` must all respect.

use crate::cache::hash::hash_bytes;
use crate::cache::{LockEntry, LockFile, Manifest, Memo, Store};
use crate::events::{Event, EventSink};
use anyhow::{bail, Context, Result};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The workdir's own folder, beside the stage folders.
pub const META_DIR: &str = ".gptpipe";

pub struct Workdir {
    root: PathBuf,
    meta: PathBuf,
    pub store: Store,
    pub memo: Memo,
}

/// The folder of the workdir at `root` that holds [`Workdir::tmp_dir`]'s build folders.
pub fn tmp_root(root: &Path) -> PathBuf {
    root.join(META_DIR).join("tmp")
}

/// The stage a build folder named by [`Workdir::tmp_dir`] belongs to: its name less the
/// `.<pid>.<n>` it ends with (a stage's name may hold dots itself).
pub fn tmp_dir_stage(name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (rest, n) = name.rsplit_once('.')?;
    let (stage, pid) = rest.rsplit_once('.')?;
    (digits(n) && digits(pid) && !stage.is_empty()).then_some(stage)
}

/// Holds the workdir's run lock until dropped.
pub struct RunLock(File);

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

impl Workdir {
    /// Opens the workdir without writing anything: read-only commands (`status`,
    /// `--dry-run`, `--frozen`) work on a workdir that does not exist or cannot be written.
    /// [`Workdir::lock`] creates it.
    pub fn open(root: &Path) -> Self {
        let meta = root.join(META_DIR);
        Self {
            root: root.to_path_buf(),
            store: Store::new(meta.join("cache")),
            memo: Memo::open(meta.join("memo.json")),
            meta,
        }
    }

    /// Whether a run ever used this workdir (made its `.gptpipe/`).
    pub fn exists(&self) -> bool {
        self.meta.is_dir()
    }

    /// Where `stage` publishes its outputs.
    pub fn output(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    /// Takes the workdir's run lock, waiting (and saying so) while another run holds it.
    pub fn lock(&self, events: &dyn EventSink) -> Result<RunLock> {
        self.check_own_folders()?;
        std::fs::create_dir_all(&self.meta)
            .with_context(|| format!("cannot create workdir {}", self.root.display()))?;
        let path = self.meta.join("run.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !file.try_lock_exclusive().unwrap_or(false) {
            events.emit(Event::Warning {
                message: format!(
                    "another gptpipe run is using {}; waiting for it to finish",
                    self.root.display()
                ),
            });
            file.lock_exclusive()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Ok(RunLock(file))
    }

    /// Refuses a `.gptpipe/` whose folders are links (or files): runs and `gc` remove and
    /// write below them, and a link planted in a cloned repository or a shared workdir
    /// would turn that into deleting or overwriting the user's files elsewhere.
    fn check_own_folders(&self) -> Result<()> {
        let mut folders = vec![self.meta.clone()];
        for sub in [
            "tmp",
            "trash",
            "displaced",
            "cache",
            "cache/runs",
            "cache/objects",
            "published",
            "state",
            "lockfiles",
            "novelty",
            "detached",
            "sweeps",
        ] {
            folders.push(self.meta.join(sub));
        }
        for parent in ["cache/objects", "state"] {
            if let Ok(entries) = std::fs::read_dir(self.meta.join(parent)) {
                folders.extend(entries.flatten().map(|e| e.path()));
            }
        }
        for folder in folders {
            match std::fs::symlink_metadata(&folder) {
                Ok(meta) if !meta.is_dir() => bail!(
                    "{} is not a folder of gptpipe's (it is a link or a file): gptpipe removes \
                     and writes below it, so it refuses to go on. Remove it if you did not \
                     put it there",
                    folder.display()
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes build folders left by killed runs (only called under the run lock).
    pub fn clear_tmp(&self) -> Result<()> {
        for dir in ["tmp", "trash"] {
            let path = self.meta.join(dir);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot clean {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// A new, empty folder to build `stage`'s output in: `<tmp>/<stage>.<pid>.<n>`
    /// ([`tmp_root`], [`tmp_dir_stage`]).
    pub fn tmp_dir(&self, stage: &str) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp_root(&self.root).join(format!("{stage}.{}.{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// A folder that survives failed and killed runs of `stage`.
    pub fn state_dir(&self, stage: &str) -> Result<PathBuf> {
        let dir = self.meta.join("state").join(stage);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Removes `stage`'s state folder once its new output is published and recorded (see
    /// [`crate::stage::StageContext::state_dir`]). The folder is first moved into a fresh
    /// build folder, so a kill during the removal leaves either all of it or none of it (the
    /// build folders are cleared at the start of every run).
    pub fn clear_state(&self, stage: &str) -> Result<()> {
        let dir = self.meta.join("state").join(stage);
        if !dir.exists() {
            return Ok(());
        }
        let tmp = self.tmp_dir(stage)?;
        std::fs::rename(&dir, tmp.join("state"))
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))
    }

    /// Replaces `stage`'s published output by `built`, whose content hash is `built_tree`.
    /// The old output stays in place until the new one is complete; each step is a rename.
    /// A folder gptpipe did not publish is never replaced (see [`Workdir::check_ours`]):
    /// that is an error, and nothing moves. `recorded` is what the lock file records for
    /// `stage`, if anything. When the old folder holds files the stage never wrote (added
    /// by hand), it is kept whole in `.gptpipe/displaced/`, whose path is returned.
    pub fn publish(
        &self,
        stage: &str,
        built: &Path,
        built_tree: &str,
        recorded: Option<&LockEntry>,
    ) -> Result<Option<PathBuf>> {
        let target = self.output(stage);
        let old = self.check_publishable(stage, recorded)?;
        // Recorded before the rename, with the old folder: a kill at any point leaves a
        // record that names whichever of the two is in place, and what it holds.
        let new = FolderId::of(
            &std::fs::metadata(built)
                .with_context(|| format!("cannot read {}", built.display()))?,
        );
        let mut record = Published {
            folders: old.into_iter().chain([new]).collect(),
            trees: vec![built_tree.to_owned()],
        };
        record.trees.extend(recorded.map(|e| e.output_hash.clone()));
        crate::fsutil::write_atomic(&self.published_record(stage), &serde_json::to_vec(&record)?)?;
        if old.is_none() {
            std::fs::rename(built, &target)
                .with_context(|| format!("cannot publish {}", target.display()))?;
            return Ok(None);
        }
        let mut known: BTreeSet<String> = crate::fsutil::list_files(built)?
            .into_iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        known.extend(recorded.into_iter().flat_map(|e| e.outputs.keys().cloned()));
        let keep = has_foreign_entries(&target, &known);
        let trash = self.meta.join(if keep { "displaced" } else { "trash" });
        std::fs::create_dir_all(&trash)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let old = trash.join(format!("{stage}.{stamp}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&target, &old)
            .with_context(|| format!("cannot replace {}", target.display()))?;
        std::fs::rename(built, &target)
            .with_context(|| format!("cannot publish {}", target.display()))?;
        if keep {
            return Ok(Some(old));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(None)
    }

    /// Checks that `stage` may be published (see [`Workdir::check_ours`]), before any work
    /// is done for it; returns the identity of the folder in place, if any.
    pub fn check_publishable(
        &self,
        stage: &str,
        recorded: Option<&LockEntry>,
    ) -> Result<Option<FolderId>> {
        let target = self.output(stage);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) => {
                self.check_ours(stage, &target, &meta, recorded)?;
                Ok(Some(FolderId::of(&meta)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", target.display())),
        }
    }

    /// Refuses a folder at `stage`'s output path that gptpipe did not publish there: the
    /// user's own folder (a stage named `data` in `workdir = "."`), a link, a file. Ours is
    /// the folder [`Workdir::publish`] put there (same device, inode and birth time, so a
    /// new folder that reuses a freed inode is not; where the file system keeps no birth
    /// time, it must also hold what was recorded), or a folder that holds exactly an output
    /// gptpipe recorded (the lock file's, or the last one published): a workdir copied or
    /// restored elsewhere, or made before these records. Replacing such a folder loses
    /// nothing the cache does not hold.
    fn check_ours(
        &self,
        stage: &str,
        target: &Path,
        meta: &std::fs::Metadata,
        recorded: Option<&LockEntry>,
    ) -> Result<()> {
        let published = self.published(stage);
        let id = FolderId::of(meta);
        let recorded_hash = recorded.map(|e| e.output_hash.as_str());
        let ours = meta.is_dir()
            && (published
                .folders
                .iter()
                .any(|f| *f == id && f.born_ns.is_some())
                || self.holds_only_recorded(target, recorded_hash, &published.trees));
        if ours {
            return Ok(());
        }
        bail!(
            "{} already exists, and gptpipe cannot tell it made it: publishing stage \
             `{stage}` would replace it. Nothing was changed. If it is yours, move it away, \
             rename the stage or choose another `workdir`; if it is an earlier output of \
             this stage whose records were removed (the lock file, `.gptpipe/`), or one you \
             edited in a copied workdir, delete it and run again",
            target.display()
        )
    }

    /// Whether `dir` holds regular files only (no links, no empty folders, at least one
    /// file) whose names and contents make one of the output hashes `recorded` or `trees`.
    fn holds_only_recorded(&self, dir: &Path, recorded: Option<&str>, trees: &[String]) -> bool {
        let Some(c) = Contents::of(dir) else {
            return false;
        };
        if c.files.is_empty() || c.other || c.empty_folders {
            return false;
        }
        let hashes: Result<BTreeMap<String, String>> = c
            .files
            .into_iter()
            .map(|f| {
                let hash = self.memo.hash(&dir.join(&f))?;
                Ok((f, hash))
            })
            .collect();
        let Ok(files) = hashes else {
            return false;
        };
        let tree = Manifest { files }.tree_hash();
        recorded == Some(tree.as_str()) || trees.contains(&tree)
    }

    fn published_record(&self, stage: &str) -> PathBuf {
        self.meta.join("published").join(format!("{stage}.json"))
    }

    /// What [`Workdir::publish`] recorded for `stage` (nothing when unreadable).
    fn published(&self, stage: &str) -> Published {
        std::fs::read(self.published_record(stage))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records that the lock file `lock` describes outputs cached in this workdir, so that
    /// `gc` run from any pipeline sharing the workdir keeps what it references. Idempotent;
    /// one file per lock file, so concurrent runs of different pipelines never collide.
    pub fn remember_lock(&self, lock: &Path) -> Result<()> {
        let lock = absolute_lock_path(lock)?;
        let bytes = path_to_bytes(&lock);
        let record = self.meta.join("lockfiles").join(&hash_bytes(&bytes)[..32]);
        if std::fs::read(&record).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        crate::fsutil::write_atomic(&record, &bytes)
    }

    /// Drops cache entries and objects that no lock file using this workdir references:
    /// `own` (the pipeline being collected; an unreadable one is an error) and every lock
    /// file recorded by [`Workdir::remember_lock`]. A recorded lock file that no longer
    /// exists is forgotten; one that cannot be read or parsed keeps the whole cache, with a
    /// warning naming it. Call under the run lock. Returns (entries removed, objects removed).
    pub fn gc(&self, own: &Path, events: &dyn EventSink) -> Result<(usize, usize)> {
        self.remove_partial_checkpoints();
        let own_lock = LockFile::read(own)?;
        if own.is_file() {
            self.remember_lock(own)?;
        }
        let own = absolute_lock_path(own)?;
        let mut keep: BTreeSet<String> = own_lock.stages.into_values().map(|e| e.key).collect();
        let mut unsure = false;
        let dir = self.meta.join("lockfiles");
        let records = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.collect::<std::io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        for record in records {
            let record = record.path();
            // Temporary files of an interrupted `write_atomic`.
            if record
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let mut warn = |why: String| {
                unsure = true;
                events.emit(Event::Warning {
                    message: format!(
                        "{why}; gc keeps every cache entry until it is fixed or deleted"
                    ),
                });
            };
            let lock = match std::fs::read(&record) {
                Ok(bytes) => path_from_bytes(bytes),
                Err(e) => {
                    warn(format!("cannot read {}: {e}", record.display()));
                    continue;
                }
            };
            if !lock.is_absolute() {
                warn(format!("{} does not name a lock file", record.display()));
                continue;
            }
            match lock.try_exists() {
                Ok(false) => std::fs::remove_file(&record)
                    .with_context(|| format!("cannot remove {}", record.display()))?,
                Ok(true) if lock == own => {}
                Ok(true) => match LockFile::read(&lock) {
                    Ok(l) => keep.extend(l.stages.into_values().map(|e| e.key)),
                    Err(e) => warn(format!("{e:#}")),
                },
                Err(e) => warn(format!("cannot read {}: {e}", lock.display())),
            }
        }
        if unsure {
            return Ok((0, 0));
        }
        self.store.gc(&keep)
    }

    /// Removes every cached novelty index (`novelty/*.idx`, see `gptpipe_generate::novelty`):
    /// each edit of the training rows leaves one more, and a run rebuilds the one it needs
    /// in seconds. Returns (files removed, bytes freed). Only regular files are removed;
    /// the folder itself was checked to be a real one (`check_own_folders`).
    pub fn remove_novelty_indexes(&self) -> Result<(usize, u64)> {
        let dir = self.meta.join("novelty");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let (mut files, mut bytes) = (0, 0);
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() || path.extension().is_none_or(|e| e != "idx") {
                continue;
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            files += 1;
            bytes += meta.len();
        }
        Ok((files, bytes))
    }

    /// Removes the `.tmp-*` leftovers of checkpoint saves that did not finish (a kill, a
    /// full disk) from every stage's state folder, `.gptpipe/state/<stage>/`; complete
    /// checkpoints stay. Called under the run lock, so no save is under way. Returns how
    /// many it removed.
    fn remove_partial_checkpoints(&self) -> usize {
        let mut removed = 0;
        let stages = std::fs::read_dir(self.meta.join("state"));
        for stage in stages.into_iter().flatten().filter_map(|e| e.ok()) {
            // A `run --detach` job holds no run lock and may be saving a checkpoint now.
            let mut record = stage.file_name();
            record.push(".json");
            if self.meta.join("detached").join(record).exists() {
                continue;
            }
            let entries = std::fs::read_dir(stage.path());
            for entry in entries.into_iter().flatten().filter_map(|e| e.ok()) {
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let path = entry.path();
                let gone = match entry.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
                removed += usize::from(gone.is_ok());
            }
        }
        removed
    }
}

/// A folder's identity: its device, inode and birth time (where the file system keeps
/// one), which a rename keeps and another folder made at the same path does not have, even
/// when it gets the freed inode back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderId {
    dev: u64,
    ino: u64,
    born_ns: Option<i128>,
}

impl FolderId {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let born_ns = meta.created().ok().and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_nanos() as i128)
        });
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            born_ns,
        }
    }
}

/// `.gptpipe/published/<stage>.json`: the folders [`Workdir::publish`] put in place (the
/// one replaced and the new one, so a kill between the record and the rename leaves the
/// one in place listed) and the output hashes they hold.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Published {
    folders: Vec<FolderId>,
    trees: Vec<String>,
}

/// What a folder holds: its regular files, as paths relative to it (as manifests name
/// them), and whether it also holds anything else: links, devices, FIFOs (`other`), or
/// folders without any file (`empty_folders`). `None` when it cannot be read whole.
struct Contents {
    files: Vec<String>,
    other: bool,
    empty_folders: bool,
}

impl Contents {
    fn of(dir: &Path) -> Option<Self> {
        fn visit(root: &Path, dir: &Path, c: &mut Contents) -> Option<()> {
            let mut any = false;
            for entry in std::fs::read_dir(dir).ok()? {
                let entry = entry.ok()?;
                let ty = entry.file_type().ok()?;
                let path = entry.path();
                any = true;
                if ty.is_dir() {
                    visit(root, &path, c)?;
                } else if ty.is_file() {
                    let rel = path.strip_prefix(root).ok()?;
                    c.files.push(rel.to_string_lossy().into_owned());
                } else {
                    c.other = true;
                }
            }
            c.empty_folders |= !any && dir != root;
            Some(())
        }
        let mut c = Contents {
            files: Vec::new(),
            other: false,
            empty_folders: false,
        };
        visit(dir, dir, &mut c)?;
        Some(c)
    }
}

/// Whether the tree below `dir` holds anything but regular files named in `known` (paths
/// relative to `dir`) and folders: files added by hand, links, devices.
fn has_foreign_entries(dir: &Path, known: &BTreeSet<String>) -> bool {
    Contents::of(dir).is_none_or(|c| c.other || c.files.iter().any(|f| !known.contains(f)))
}

/// `lock` as an absolute path with its folder's symbolic links resolved, so that one lock
/// file reached through different paths is recorded once. The file itself need not exist.
fn absolute_lock_path(lock: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(lock)
        .with_context(|| format!("cannot make {} absolute", lock.display()))?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => match dir.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => abs,
        },
        _ => abs,
    })
}

#[cfg(unix)]
fn path_to_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}

#[cfg(not(unix))]
fn path_to_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    String::from_utf8_lossy(&bytes).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{LockEntry, Manifest};
    use std::sync::Mutex;

    #[test]
    fn a_build_folders_name_gives_back_its_stage() {
        let dir = tempfile::tempdir().unwrap();
        let wd = Workdir::open(dir.path());
        for stage in ["train", "train[lr=0.0001]", "a.1"] {
            let made = wd.tmp_dir(stage).unwrap();
            assert_eq!(made.parent().unwrap(), tmp_root(dir.path()));
            let name = made.file_name().unwrap().to_str().unwrap();
            assert_eq!(tmp_dir_stage(name), Some(stage));
        }
        for name in ["train", "train.12", "train.12.x", ".12.3", "train.12.3.job"] {
            assert_eq!(tmp_dir_stage(name), None, "{name}");
        }
    }

    #[derive(Default)]
    struct Warnings(Mutex<Vec<String>>);

    impl EventSink for Warnings {
        fn emit(&self, event: Event) {
            if let Event::Warning { message } = event {
                self.0.lock().unwrap().push(message);
            }
        }
    }

    /// Caches one file with `content` under `key`.
    fn cache(workdir: &Workdir, key: &str, content: &str) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out.txt"), content).unwrap();
        let manifest = Manifest::of_dir(dir.path(), crate::cache::hash::hash_file).unwrap();
        workdir.store.save(key, dir.path(), &manifest).unwrap();
    }

    fn write_lock(path: &Path, key: &str) {
        let entry = LockEntry {
            kind: "prepare".into(),
            version: 1,
            key: key.into(),
            params: toml::Table::new(),
            inputs: Default::default(),
            upstream: Default::default(),
            output_hash: String::new(),
            outputs: Default::default(),
            links: Default::default(),
        };
        let mut lock = LockFile::default();
        lock.stages.insert("s".into(), entry);
        lock.write(path).unwrap();
    }

    fn records(root: &Path) -> usize {
        std::fs::read_dir(root.join(".gptpipe/lockfiles"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[test]
    fn gc_keeps_what_any_recorded_lock_file_references() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work");
        let workdir = Workdir::open(&root);
        let (a, b) = (
            dir.path().join("a.toml.lock"),
            dir.path().join("b.toml.lock"),
        );
        for (key, content) in [("ka", "a"), ("kb", "b"), ("old", "old")] {
            cache(&workdir, key, content);
        }
        write_lock(&a, "ka");
        write_lock(&b, "kb");
        workdir.remember_lock(&a).unwrap();
        workdir.remember_lock(&b).unwrap();
        // Recording again, through another spelling of the same path, adds nothing.
        workdir
            .remember_lock(&dir.path().join(".").join("b.toml.lock"))
            .unwrap();
        assert_eq!(records(&root), 2);

        let warnings = Warnings::default();
        assert_eq!(workdir.gc(&a, &warnings).unwrap(), (1, 1));
        assert!(workdir.store.has("ka") && workdir.store.has("kb"));
        assert!(!workdir.store.has("old"));

        // A lock file that does not parse keeps everything, and says which file it is.
        cache(&workdir, "old", "old");
        std::fs::write(&b, "not = [a lock").unwrap();
        assert_eq!(workdir.gc(&a, &warnings).unwrap(), (0, 0));
        assert!(workdir.store.has("old") && workdir.store.has("kb"));
        let said = warnings.0.lock().unwrap().clone();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("b.toml.lock"), "{said:?}");

        // A deleted lock file is forgotten and its entries are collected.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(workdir.gc(&a, &warnings).unwrap(), (2, 2));
        assert!(workdir.store.has("ka"));
        assert!(!workdir.store.has("kb") && !workdir.store.has("old"));
        assert_eq!(records(&root), 1);
        assert_eq!(warnings.0.lock().unwrap().len(), 1);
    }
}
