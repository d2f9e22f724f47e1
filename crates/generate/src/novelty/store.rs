//! The novelty index cached on disk, built once per dataset: `<workdir>/.gptpipe/novelty/
//! <key>.idx`, where the key is the blake3 of the format version and the rows. A file is
//! written to a temporary name and renamed into place, so two runs building the same index
//! at once each rename a whole file and a reader never sees half of one. A file that does
//! not check (length, trailing blake3 of its content, positions in range) is rebuilt and
//! replaced, never trusted.
//!
//! File layout, little-endian: magic `GPTPNOV1`; u64 counts of text codes, rows,
//! suffix-array entries and copy hashes; the text (u16), row starts (u32), suffix array
//! (u32), copy hashes (16 bytes each); blake3 of everything before it (32 bytes).

use super::NoveltyIndex;
use crate::codec::Codec;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"GPTPNOV1";
/// Part of the key: a change of layout, normalisation or tokenizer makes a new file.
const FORMAT: &str = "gptpipe novelty index 1; gpt2 tokens; whitespace-normalised rows";
const HEADER: usize = 8 + 4 * 8;
const TRAILER: usize = 32;

/// The folder of cached indexes under a workdir.
pub fn dir_in(workdir: &Path) -> PathBuf {
    workdir.join(gptpipe_core::runner::META_DIR).join("novelty")
}

/// The cache key of an index over `rows`.
pub fn key(rows: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    for row in rows {
        h.update(&(row.len() as u64).to_le_bytes());
        h.update(row.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// How [`open`] got its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Read from the cache.
    Cached,
    /// Built: there was no cached file.
    Built,
    /// Built: the cached file did not check (why), and was replaced.
    Rebuilt(String),
}

/// The index over `rows`, from `dir` when cached there, else built and saved there.
pub fn open(dir: &Path, rows: &[String], codec: &dyn Codec) -> Result<(NoveltyIndex, Origin)> {
    let path = dir.join(format!("{}.idx", key(rows)));
    let origin = match std::fs::read(&path) {
        Ok(bytes) => match decode(&bytes) {
            Ok(index) => return Ok((index, Origin::Cached)),
            Err(e) => Origin::Rebuilt(format!("{e:#}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Origin::Built,
        Err(e) => Origin::Rebuilt(format!("cannot read {}: {e}", path.display())),
    };
    let index = NoveltyIndex::build(rows, codec)?;
    gptpipe_core::fsutil::write_atomic(&path, &encode(&index))
        .with_context(|| format!("saving the novelty index {}", path.display()))?;
    Ok((index, origin))
}

pub fn encode(index: &NoveltyIndex) -> Vec<u8> {
    let size = HEADER
        + index.text.len() * 2
        + (index.starts.len() + index.sa.len()) * 4
        + index.copies.len() * 16
        + TRAILER;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    for n in [
        index.text.len(),
        index.starts.len(),
        index.sa.len(),
        index.copies.len(),
    ] {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend(index.text.iter().flat_map(|t| t.to_le_bytes()));
    out.extend(index.starts.iter().flat_map(|t| t.to_le_bytes()));
    out.extend(index.sa.iter().flat_map(|t| t.to_le_bytes()));
    out.extend(index.copies.iter().flatten());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<NoveltyIndex> {
    ensure!(
        bytes.len() >= HEADER + TRAILER && &bytes[..8] == MAGIC,
        "not a novelty index file"
    );
    let count = |i: usize| u64::from_le_bytes(bytes[8 + i * 8..16 + i * 8].try_into().unwrap());
    let [n_text, n_rows, n_sa, n_copies] = [0, 1, 2, 3].map(count);
    let size = [(n_text, 2), (n_rows, 4), (n_sa, 4), (n_copies, 16)]
        .iter()
        .try_fold(HEADER as u64 + TRAILER as u64, |acc, &(n, w)| {
            n.checked_mul(w).and_then(|b| acc.checked_add(b))
        });
    ensure!(
        size == Some(bytes.len() as u64),
        "truncated novelty index: {} bytes, its header says {size:?}",
        bytes.len()
    );
    let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
    ensure!(
        blake3::hash(body).as_bytes() == sum,
        "damaged novelty index: its checksum does not match"
    );
    let mut at = HEADER;
    let mut take = |n: u64, w: usize| {
        let part = &body[at..at + n as usize * w];
        at += part.len();
        part
    };
    let text: Vec<u16> = take(n_text, 2)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let u32s = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let starts = u32s(take(n_rows, 4));
    let sa = u32s(take(n_sa, 4));
    let copies: Vec<[u8; 16]> = take(n_copies, 16)
        .chunks_exact(16)
        .map(|c| c.try_into().unwrap())
        .collect();
    // A file that checks but does not describe an index (written by another program)
    // must not make queries index out of bounds.
    let n = text.len();
    ensure!(
        text.last().is_none_or(|&t| t == 0)
            && starts.windows(2).all(|w| w[0] < w[1])
            && starts.iter().all(|&s| (s as usize) < n)
            && sa
                .iter()
                .all(|&p| (p as usize) < n && text[p as usize] != 0)
            && (n == 0 || starts.first() == Some(&0)),
        "inconsistent novelty index"
    );
    Ok(NoveltyIndex::from_parts(text, starts, sa, copies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<String> {
        [
            "Hello world",
            "The quick brown fox",
            "",
            "What is your favourite food?",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn an_index_is_built_once_then_read_from_the_cache() {
        let codec = crate::codec::gpt2().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (built, origin) = open(dir.path(), &rows(), codec.as_ref()).unwrap();
        assert_eq!(origin, Origin::Built);
        let (cached, origin) = open(dir.path(), &rows(), codec.as_ref()).unwrap();
        assert_eq!(origin, Origin::Cached);
        assert_eq!(cached, built);
        assert_eq!(cached.rows(), 4);
        // Other rows, another file.
        let (_, origin) = open(dir.path(), &rows()[..2], codec.as_ref()).unwrap();
        assert_eq!(origin, Origin::Built);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_damaged_cached_index_is_rebuilt_never_trusted() {
        let codec = crate::codec::gpt2().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (good, _) = open(dir.path(), &rows(), codec.as_ref()).unwrap();
        let path = dir.path().join(format!("{}.idx", key(&rows())));
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        let mut huge_count = bytes.clone();
        huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        for (damage, why) in [
            (bytes[..bytes.len() / 2].to_vec(), "truncated"),
            (bytes[..HEADER].to_vec(), "not a novelty index"),
            (Vec::new(), "not a novelty index"),
            (flipped, "checksum does not match"),
            (huge_count, "truncated"),
            (b"garbage".to_vec(), "not a novelty index"),
        ] {
            std::fs::write(&path, &damage).unwrap();
            let (index, origin) = open(dir.path(), &rows(), codec.as_ref()).unwrap();
            assert!(
                matches!(&origin, Origin::Rebuilt(e) if e.contains(why)),
                "{why}: {origin:?}"
            );
            assert_eq!(index, good);
            // Replaced by a good file.
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
        // A file whose checksum matches but whose positions are out of range.
        let mut bad = good.clone();
        bad.sa[0] = u32::MAX;
        assert!(format!("{:#}", decode(&encode(&bad)).unwrap_err()).contains("inconsistent"));
    }

    #[test]
    fn runs_building_the_same_index_at_once_leave_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<String> = (0..3000)
            .map(|i| format!("row number {i} of many"))
            .collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let codec = crate::codec::gpt2().unwrap();
                    open(dir.path(), &many, codec.as_ref()).unwrap();
                });
            }
        });
        let path = dir.path().join(format!("{}.idx", key(&many)));
        let index = decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(index.rows(), 3000);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
