//! Content hashes: blake3 of files, and of folders as sorted (path, hash) lists.

use anyhow::{Context, Result};
use std::path::Path;

/// The blake3 hex digest of a file's content.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    // Memory-mapped, multi-threaded hashing pays off only for big files.
    if len > 16 << 20 {
        hasher
            .update_mmap_rayon(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    } else {
        hasher
            .update_reader(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The blake3 hex digest of bytes.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
