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
/// `dir` must be a real folder (or not exist yet): a link there would have the index
/// written outside the workdir, so it is an error. A cached entry that is not a regular
/// file (a link, a FIFO, a folder) is damaged: removed, rebuilt and replaced, never read.
pub fn open(dir: &Path, rows: &[String], codec: &dyn Codec) -> Result<(NoveltyIndex, Origin)> {
    check_dir(dir)?;
    let path = dir.join(format!("{}.idx", key(rows)));
    let origin = match read_cached(&path) {
        Ok(None) => Origin::Built,
        Ok(Some(bytes)) => match decode(&bytes) {
            Ok(index) => return Ok((index, Origin::Cached)),
            Err(e) => Origin::Rebuilt(format!("{e:#}")),
        },
        Err(why) => Origin::Rebuilt(why),
    };
    let index = NoveltyIndex::build(rows, codec)?;
    gptpipe_core::fsutil::write_atomic(&path, &encode(&index))
        .with_context(|| format!("saving the novelty index {}", path.display()))?;
    Ok((index, origin))
}

/// Refuses a `dir` that exists but is not a real folder (a link, even to a folder).
fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "{} is not a folder of gptpipe's (it is a link or a file): gptpipe writes novelty \
             indexes only into a real folder inside the workdir, so it refuses to go on. \
             Remove it if you did not put it there",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// The bytes of the cached file at `path`, `None` when there is none; `Err(why)` when it
/// cannot be trusted to be one (not a regular file: removed so that the rebuilt index
/// can take its place) or cannot be read.
fn read_cached(path: &Path) -> std::result::Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let not_a_file = |path: &Path, is_dir: bool| {
        let _ = if is_dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        Err(format!(
            "{} is not a regular file (a link, a FIFO or a folder)",
            path.display()
        ))
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(meta) => return not_a_file(path, meta.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    // No link is followed and no FIFO waited on, should one be swapped in since the check.
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let mut file = match file.map(|f| (f.metadata(), f)) {
        Ok((Ok(meta), f)) if meta.is_file() => f,
        Ok((Ok(meta), _)) => return not_a_file(path, meta.is_dir()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return not_a_file(path, false),
        Ok((Err(e), _)) | Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(bytes))
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
    fn a_cached_entry_that_is_not_a_regular_file_is_replaced_never_read() {
        let codec = crate::codec::gpt2().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{}.idx", key(&rows())));
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("target.idx");
        std::fs::write(&target, b"the user's file").unwrap();
        let fifo = |p: &Path| {
            let status = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap();
            assert!(status.success());
        };
        let folder = |p: &Path| std::fs::create_dir(p).unwrap();
        let link = |p: &Path| std::os::unix::fs::symlink(&target, p).unwrap();
        for (plant, what) in [
            (&fifo as &dyn Fn(&Path), "FIFO"),
            (&folder, "folder"),
            (&link, "link"),
        ] {
            plant(&path);
            // A FIFO would block a plain read forever: run it in a thread with a deadline.
            let (tx, rx) = std::sync::mpsc::channel();
            let wanted = rows();
            let dir_path = dir.path().to_owned();
            std::thread::spawn(move || {
                let codec = crate::codec::gpt2().unwrap();
                let _ = tx.send(open(&dir_path, &wanted, codec.as_ref()).map(|(_, o)| o));
            });
            let origin = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{what}: the open hangs"))
                .unwrap();
            assert!(
                matches!(&origin, Origin::Rebuilt(e) if e.contains("not a regular file")),
                "{what}: {origin:?}"
            );
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file(), "{what}: replaced by a regular file");
            assert_eq!(std::fs::read(&target).unwrap(), b"the user's file");
            let (_, origin) = open(dir.path(), &rows(), codec.as_ref()).unwrap();
            assert_eq!(origin, Origin::Cached, "{what}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_linked_cache_folder_is_refused() {
        let codec = crate::codec::gpt2().unwrap();
        let workdir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = dir_in(workdir.path());
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &dir).unwrap();
        let e = open(&dir, &rows(), codec.as_ref()).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a folder of gptpipe's"),
            "{e:#}"
        );
        // Nothing written through the link.
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
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
