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

/// Like [`list_files`], but following symbolic links, as inputs need: a folder of links
/// (a Hugging Face cache snapshot, a data folder assembled from links) lists its targets'
/// files under the links' names. A link that loops back to a folder already being walked
/// is skipped; a dangling link is an error naming it.
pub fn list_files_following(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(
        root: &Path,
        dir: &Path,
        open: &mut Vec<PathBuf>,
        out: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let real = dir
            .canonicalize()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        if open.contains(&real) {
            return Ok(());
        }
        open.push(real);
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("{} is a broken link", path.display()))?;
            if meta.is_dir() {
                walk(root, &path, open, out)?;
            } else if meta.is_file() {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
        open.pop();
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut Vec::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Hard-links `from` to `to`, or copies it where links are impossible.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
