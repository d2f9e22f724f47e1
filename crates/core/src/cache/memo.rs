//! The file-state memo: remembers each file's hash with its size, mtime, ctime and inode,
//! so an unchanged file is never read again (a no-op rerun over gigabytes of inputs stays
//! fast). The ctime is there because a user can set the mtime back after an edit (`touch
//! -r`, `cp -p`, an unpacked archive) but not the ctime, which every write moves.

use super::hash::hash_file;
use crate::fsutil::write_atomic;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileState {
    size: u64,
    mtime_ns: i128,
    /// Absent (0) in memos of earlier versions, which then never match and are rehashed.
    #[serde(default)]
    ctime_ns: i128,
    inode: u64,
}

impl FileState {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            inode: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    state: FileState,
    hash: String,
}

/// A thread-safe memo persisted as JSON.
pub struct Memo {
    path: PathBuf,
    entries: Mutex<HashMap<PathBuf, Entry>>,
    dirty: Mutex<bool>,
}

impl Memo {
    /// Opens the memo at `path`; a missing or unreadable memo is simply empty.
    pub fn open(path: PathBuf) -> Self {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// The content hash of `path`, read only when its state changed since last time.
    ///
    /// A file that changes while it is hashed is hashed again; one that never holds still
    /// is an error rather than a recorded wrong hash.
    pub fn hash(&self, path: &Path) -> Result<String> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        for attempt in 0..8 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(5 << attempt.min(5)));
            }
            let before = FileState::of(
                &std::fs::metadata(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            );
            if let Some(e) = self.entries.lock().unwrap().get(&key) {
                if e.state == before {
                    return Ok(e.hash.clone());
                }
            }
            let hash = hash_file(path)?;
            let after = FileState::of(&std::fs::metadata(path)?);
            if after != before {
                continue;
            }
            // Timestamps are coarse (a clock tick, or worse): a file written within the
            // last moments can change during the read without a new mtime, and the read
            // then mixes two versions. Such a file must read the same twice in a row, and
            // its state is not remembered until it is older.
            let recent = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|now| ((now - Duration::from_secs(2)).as_nanos() as i128) < after.mtime_ns)
                .unwrap_or(true);
            if recent {
                let again = hash_file(path)?;
                if again != hash || FileState::of(&std::fs::metadata(path)?) != before {
                    continue;
                }
            } else {
                self.entries.lock().unwrap().insert(
                    key,
                    Entry {
                        state: after,
                        hash: hash.clone(),
                    },
                );
                *self.dirty.lock().unwrap() = true;
            }
            return Ok(hash);
        }
        bail!("{} kept changing while it was being hashed", path.display())
    }

    /// Writes the memo if it changed.
    pub fn save(&self) -> Result<()> {
        let mut dirty = self.dirty.lock().unwrap();
        if *dirty {
            let entries = self.entries.lock().unwrap();
            write_atomic(&self.path, &serde_json::to_vec(&*entries)?)?;
            *dirty = false;
        }
        Ok(())
    }
}
