//! The content-addressed store: file objects by hash, and run manifests by cache key (a run
//! cache, as DVC has: a key seen before restores its outputs without running anything).

use crate::fsutil::{link_or_copy, list_files, write_atomic};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
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
}

/// What `restore` found.
pub enum Restore {
    Restored(Manifest),
    Missing,
    /// An object did not match its hash: the entry was dropped.
    Corrupt(String),
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn object(&self, hash: &str) -> PathBuf {
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
            if object.is_file() {
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
            link_or_copy(&dir.join(rel), &tmp)?;
            std::fs::rename(&tmp, &object)
                .with_context(|| format!("cannot write {}", object.display()))?;
        }
        write_atomic(&self.run(key), &serde_json::to_vec_pretty(manifest)?)
    }

    /// Copies the outputs stored under `key` into the empty folder `dest`, checking every
    /// object against its hash on the way.
    pub fn restore(&self, key: &str, dest: &Path) -> Result<Restore> {
        let Ok(bytes) = std::fs::read(self.run(key)) else {
            return Ok(Restore::Missing);
        };
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
            let _ = std::fs::remove_file(self.run(key));
            return Ok(Restore::Corrupt(format!("run entry {key} is unreadable")));
        };
        for (rel, hash) in &manifest.files {
            let object = self.object(hash);
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match copy_verified(&object, &target, hash) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    let _ = std::fs::remove_file(&object);
                    let _ = std::fs::remove_file(self.run(key));
                    return Ok(Restore::Corrupt(format!(
                        "cached object for {rel} does not match its hash {}",
                        &hash[..12]
                    )));
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

/// Copies `from` to `to` while hashing it; false (and no `to`) when the hash differs.
fn copy_verified(from: &Path, to: &Path, expected: &str) -> Result<bool> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::File::create(to)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    if hasher.finalize().to_hex().as_str() != expected {
        drop(dst);
        let _ = std::fs::remove_file(to);
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
