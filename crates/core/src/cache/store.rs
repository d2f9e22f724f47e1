//! The content-addressed store: file objects by hash, and run manifests by cache key (a run
//! cache, as DVC has: a key seen before restores its outputs without running anything).

use crate::fsutil::{clone_or_copy, is_plain_relative, list_files, write_atomic};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The files of one stage output: relative path -> content hash.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Hashes every file under `dir`, through `hash` (the memo).
    pub fn of_dir(dir: &Path, hash: impl Fn(&Path) -> Result<String>) -> Result<Self> {
        let mut files = BTreeMap::new();
        for rel in list_files(dir)? {
            let key = rel.to_string_lossy().into_owned();
            files.insert(key, hash(&dir.join(&rel))?);
        }
        Ok(Self { files })
    }

    /// One hash for the whole output.
    pub fn tree_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (path, hash) in &self.files {
            h.update(path.as_bytes());
            h.update(&[0]);
            h.update(hash.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex().to_string()
    }

    /// Why this manifest cannot be trusted to restore from, if it can't: every name must be
    /// a plain relative path (nothing may be written outside the stage folder), no name may
    /// be a folder of another, and every hash must be a blake3 hex digest.
    pub fn problem(&self) -> Option<String> {
        for (name, hash) in &self.files {
            if !is_plain_relative(name) {
                return Some(format!(
                    "it names the file {name:?}, outside the stage folder"
                ));
            }
            if name.len() > MAX_PATH
                || Path::new(name)
                    .components()
                    .any(|c| c.as_os_str().len() > MAX_NAME)
            {
                return Some(format!("the file name {name:?} is too long"));
            }
            if !is_hash(hash) {
                return Some(format!(
                    "its hash {hash:?} for {name} is not a blake3 digest"
                ));
            }
            let mut dir = Path::new(name).parent();
            while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                if self.files.contains_key(d.to_string_lossy().as_ref()) {
                    return Some(format!("{} is both a file and a folder", d.display()));
                }
                dir = d.parent();
            }
        }
        None
    }
}

/// Limits on the names of an output's files (Linux's NAME_MAX, and a path well within
/// PATH_MAX once it is under a workdir): a longer one cannot be restored.
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 1024;

/// A blake3 hex digest, as [`crate::cache::hash`] writes them.
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What `restore` found.
pub enum Restore {
    Restored(Manifest),
    Missing,
    /// The entry could not be trusted (unreadable, a name outside the stage folder, an object
    /// missing or not matching its hash): it was dropped, and the reason is given.
    Corrupt(String),
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the object of `hash` lives; `hash` must be a digest (see [`Manifest::problem`]).
    fn object(&self, hash: &str) -> PathBuf {
        debug_assert!(is_hash(hash), "{hash:?}");
        self.root.join("objects").join(&hash[..2]).join(hash)
    }

    fn run(&self, key: &str) -> PathBuf {
        self.root.join("runs").join(format!("{key}.json"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.run(key).is_file()
    }

    /// Stores the files of `dir` (already hashed in `manifest`) under `key`. Objects are
    /// written first and the manifest last, each atomically, so a killed save leaves at
    /// most unreferenced objects, never an entry that points at missing data.
    pub fn save(&self, key: &str, dir: &Path, manifest: &Manifest) -> Result<()> {
        for (rel, hash) in &manifest.files {
            let object = self.object(hash);
            // Earlier versions hard-linked objects to published files: such an object is
            // replaced by a copy, so that editing the old published file cannot reach it.
            // Anything else at the object's path (a planted link or FIFO) is replaced too.
            if std::fs::symlink_metadata(&object).is_ok_and(|m| m.is_file() && m.nlink() == 1) {
                continue;
            }
            let parent = object.parent().expect("objects have a parent");
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            // Unique per save, not per process: parallel stages (`--jobs`) may store the same
            // object at once, and a shared temporary name made one rename fail.
            static SAVES: AtomicU64 = AtomicU64::new(0);
            let n = SAVES.fetch_add(1, Ordering::Relaxed);
            let tmp = parent.join(format!(".{hash}.{}.{n}.tmp", std::process::id()));
            // A copy, never a hard link: the output folder is published, and an edit of a
            // published file must not reach the cached object.
            clone_or_copy(&dir.join(rel), &tmp)?;
            std::fs::rename(&tmp, &object)
                .with_context(|| format!("cannot write {}", object.display()))?;
        }
        write_atomic(&self.run(key), &serde_json::to_vec_pretty(manifest)?)
    }

    /// Copies the outputs stored under `key` into the empty folder `dest`, checking every
    /// object against its hash on the way. An entry that cannot be trusted is dropped and
    /// reported as [`Restore::Corrupt`]; an error writing `dest` (a full disk) is an error,
    /// and keeps the entry.
    pub fn restore(&self, key: &str, dest: &Path) -> Result<Restore> {
        let run = self.run(key);
        let bytes = match std::fs::read(&run) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restore::Missing),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", run.display())),
        };
        let drop_entry = |why: String| {
            let _ = std::fs::remove_file(&run);
            Ok(Restore::Corrupt(why))
        };
        let manifest = match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) => m,
            Err(e) => return drop_entry(format!("run entry {key} is unreadable ({e})")),
        };
        if let Some(why) = manifest.problem() {
            return drop_entry(format!("run entry {key} is invalid: {why}"));
        }
        for (rel, hash) in &manifest.files {
            let object = self.object(hash);
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            match copy_verified(&object, &target, hash)? {
                Copied::Verified => {}
                Copied::Missing => {
                    return drop_entry(format!("cached object for {rel} is missing"));
                }
                Copied::NotAFile => {
                    let _ =
                        std::fs::remove_file(&object).or_else(|_| std::fs::remove_dir_all(&object));
                    return drop_entry(format!("cached object for {rel} is not a regular file"));
                }
                Copied::Mismatch => {
                    let _ = std::fs::remove_file(&object);
                    return drop_entry(format!(
                        "cached object for {rel} does not match its hash {}",
                        &hash[..12]
                    ));
                }
            }
        }
        Ok(Restore::Restored(manifest))
    }

    /// Drops run entries whose key is not in `keep`, then objects no entry references.
    /// Returns (entries removed, objects removed).
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<(usize, usize)> {
        let mut live = BTreeSet::new();
        let mut runs_removed = 0;
        if let Ok(entries) = std::fs::read_dir(self.root.join("runs")) {
            for e in entries.flatten() {
                let path = e.path();
                let key = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if keep.contains(&key) {
                    if let Ok(m) = serde_json::from_slice::<Manifest>(&std::fs::read(&path)?) {
                        live.extend(m.files.into_values());
                    }
                } else {
                    std::fs::remove_file(&path)?;
                    runs_removed += 1;
                }
            }
        }
        let mut objects_removed = 0;
        if let Ok(shards) = std::fs::read_dir(self.root.join("objects")) {
            for shard in shards.flatten() {
                for e in std::fs::read_dir(shard.path())?.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !live.contains(&name) {
                        std::fs::remove_file(e.path())?;
                        objects_removed += 1;
                    }
                }
            }
        }
        Ok((runs_removed, objects_removed))
    }
}

enum Copied {
    Verified,
    /// `from` does not exist.
    Missing,
    /// `from` is a link, a folder, a FIFO or a device: never read (a link to /dev/zero
    /// would fill the disk, a FIFO would block forever).
    NotAFile,
    /// `from`'s content does not match the expected hash (`to` was removed).
    Mismatch,
}

/// Copies `from` to `to` while hashing it. Reading `from` and writing `to` fail with
/// errors that name the file, so a full disk is not mistaken for a damaged object.
fn copy_verified(from: &Path, to: &Path, expected: &str) -> Result<Copied> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(from) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(Copied::NotAFile),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Copied::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", from.display())),
    }
    // No link is followed and no FIFO waited on, should one be swapped in since the check.
    let src = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from);
    let (src, len) = match src.map(|f| (f.metadata(), f)) {
        Ok((Ok(meta), f)) if meta.is_file() => (f, meta.len()),
        Ok(_) => return Ok(Copied::NotAFile),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Copied::NotAFile),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", from.display())),
    };
    // Never more than the object held when opened, whatever grows it meanwhile.
    let mut src = src.take(len);
    let mut dst =
        std::fs::File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", from.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", to.display()))?;
    }
    if hasher.finalize().to_hex().as_str() != expected {
        drop(dst);
        let _ = std::fs::remove_file(to);
        return Ok(Copied::Mismatch);
    }
    Ok(Copied::Verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk while restoring is the disk's error, and the valid entry and its
    /// objects stay (they were reported as damaged and deleted).
    #[test]
    fn a_restore_onto_a_full_disk_reports_it_and_keeps_the_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let full = tmp.path().join("full");
        std::fs::create_dir_all(&full).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&full)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("note: cannot mount a tmpfs here (not root?); skipped");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&full);
        let store = Store::new(tmp.path().join("cache"));
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("big.bin"), vec![7u8; 1 << 20]).unwrap();
        let manifest = Manifest::of_dir(&out, crate::cache::hash::hash_file).unwrap();
        store.save("k", &out, &manifest).unwrap();

        let err = match store.restore("k", &full) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("a restore onto a full disk succeeded"),
        };
        assert!(err.contains("No space left on device"), "{err}");
        assert!(store.has("k"));
        let restored = tmp.path().join("restored");
        std::fs::create_dir_all(&restored).unwrap();
        assert!(matches!(
            store.restore("k", &restored).unwrap(),
            Restore::Restored(_)
        ));
    }

    #[test]
    fn parallel_saves_of_the_same_object_all_succeed() {
        for round in 0..40 {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::new(tmp.path().join("cache"));
            let outputs: Vec<PathBuf> = (0..4)
                .map(|i| {
                    let dir = tmp.path().join(format!("out{i}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join("shared.json"), format!("same {round}")).unwrap();
                    dir
                })
                .collect();
            let manifest = Manifest::of_dir(&outputs[0], crate::cache::hash::hash_file).unwrap();
            let start = std::sync::Barrier::new(outputs.len());
            std::thread::scope(|s| {
                for (i, dir) in outputs.iter().enumerate() {
                    let (store, manifest, start) = (&store, &manifest, &start);
                    s.spawn(move || {
                        start.wait();
                        store.save(&format!("key{i}"), dir, manifest).unwrap();
                    });
                }
            });
            for (i, dir) in outputs.iter().enumerate() {
                let restored = tmp.path().join(format!("restored{i}"));
                std::fs::create_dir_all(&restored).unwrap();
                assert!(matches!(
                    store.restore(&format!("key{i}"), &restored).unwrap(),
                    Restore::Restored(_)
                ));
                assert_eq!(
                    std::fs::read(restored.join("shared.json")).unwrap(),
                    std::fs::read(dir.join("shared.json")).unwrap()
                );
            }
        }
    }
}
