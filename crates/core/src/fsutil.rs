//! File-system helpers that never leave a half-written file behind.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// readers see the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Created as an ordinary file would be (0666 less the umask), not 0600 as temporary
    // files are: outputs and lock files are meant to be read by others.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// All regular files under `dir`, as paths relative to it, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Copies `from` to a new file `to`, sharing blocks (a reflink) where the file system can,
/// so that the two never share an inode: editing one never changes the other. Cache
/// objects and published outputs are made this way (a hard link would let an edit of a
/// published file damage the cached object).
pub fn clone_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if !reflink(from, to) {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// A reflink of `from` as the new file `to` (Btrfs, XFS, bcachefs...); false, leaving no
/// `to`, where the file system cannot.
#[cfg(target_os = "linux")]
fn reflink(from: &Path, to: &Path) -> bool {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let (Ok(src), Ok(dst)) = (
        std::fs::File::open(from),
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(to),
    ) else {
        return false;
    };
    // SAFETY: both descriptors are open for the duration of the call.
    let ok = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) } == 0;
    if !ok {
        drop(dst);
        let _ = std::fs::remove_file(to);
    }
    ok
}

#[cfg(not(target_os = "linux"))]
fn reflink(_: &Path, _: &Path) -> bool {
    false
}

/// A relative path made only of ordinary names: no root, no `..`, no `.`, not empty.
/// Names read from files gptpipe does not control (cache manifests) must be such paths
/// before anything is written under them.
pub fn is_plain_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_clone_is_a_separate_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("sub/b"));
        std::fs::write(&a, b"original").unwrap();
        clone_or_copy(&a, &b).unwrap();
        std::fs::write(&a, b"edited!!").unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"original");
    }

    #[test]
    fn plain_relative_paths() {
        for ok in ["a", "a/b.txt", "a/./b"] {
            assert!(is_plain_relative(ok), "{ok}");
        }
        for bad in ["", "/etc/x", "../x", "a/../../x", "./a", ".."] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn atomic_writes_get_ordinary_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Whatever the umask takes away, others can read it unless the umask says no,
        // as with any file the user creates.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o}");
    }
}
