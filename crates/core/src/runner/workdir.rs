//! The workdir's layout: `<workdir>/<stage>/` holds published outputs; `.gptpipe/` holds the
//! cache, the memo, temporary build folders, stage state and the run lock.

use crate::cache::{Memo, Store};
use crate::events::{Event, EventSink};
use anyhow::{Context, Result};
use fs4::fs_std::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Workdir {
    root: PathBuf,
    meta: PathBuf,
    pub store: Store,
    pub memo: Memo,
}

/// Holds the workdir's run lock until dropped.
pub struct RunLock(File);

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

impl Workdir {
    pub fn open(root: &Path) -> Result<Self> {
        let meta = root.join(".gptpipe");
        std::fs::create_dir_all(&meta)
            .with_context(|| format!("cannot create workdir {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            store: Store::new(meta.join("cache")),
            memo: Memo::open(meta.join("memo.json")),
            meta,
        })
    }

    /// Where `stage` publishes its outputs.
    pub fn output(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    /// Takes the workdir's run lock, waiting (and saying so) while another run holds it.
    pub fn lock(&self, events: &dyn EventSink) -> Result<RunLock> {
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

    /// A new, empty folder to build `stage`'s output in.
    pub fn tmp_dir(&self, stage: &str) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .meta
            .join("tmp")
            .join(format!("{stage}.{}.{n}", std::process::id()));
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

    /// Replaces `stage`'s published output by `built`. The old output stays in place until
    /// the new one is complete; each step is a rename.
    pub fn publish(&self, stage: &str, built: &Path) -> Result<()> {
        let target = self.output(stage);
        if target.exists() {
            let trash = self.meta.join("trash");
            std::fs::create_dir_all(&trash)?;
            let old = trash.join(format!("{stage}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&target, &old)
                .with_context(|| format!("cannot replace {}", target.display()))?;
            std::fs::rename(built, &target)
                .with_context(|| format!("cannot publish {}", target.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(built, &target)
                .with_context(|| format!("cannot publish {}", target.display()))?;
        }
        Ok(())
    }
}
