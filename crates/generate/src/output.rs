//! Sample files: `samples.txt` (gpt-2-simple's layout: text, newline, `sample_delim`) or
//! `samples.jsonl`, plus `generate.json`, the record that lets a later run with a larger
//! `nsamples` keep these samples byte for byte.

use crate::driver::Job;
use crate::kept::Kept;
use anyhow::{bail, Context, Result};
use gptpipe_core::config::{GenerateParams, SampleFormat};
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// The file beside the samples that records how they were made (a name `output` may not
/// take: the config check refuses it).
pub const META_FILE: &str = GenerateParams::META_FILE;

/// One kept sample of `job` as it appears in the output file. A jsonl row also carries
/// the prefix, the hash of the model that wrote it, its score and its novelty when known.
pub fn render(
    kept: &Kept,
    job: &Job,
    format: SampleFormat,
    sample_delim: &str,
    model_hash: &str,
) -> String {
    let sample = &kept.sample;
    match format {
        SampleFormat::Text => format!("{}\n{}", sample.text, sample_delim),
        SampleFormat::Jsonl => {
            let mut line = serde_json::json!({
                "index": sample.index,
                "prefix": job.prefix,
                "seed": job.seed,
                "text": sample.text,
                "tokens": sample.tokens,
                "truncated": sample.truncated(),
                "model": model_hash,
            });
            let row = line.as_object_mut().expect("an object");
            if let Some(score) = kept.score {
                row.insert("logprob".into(), score.mean_logprob.into());
                row.insert("perplexity".into(), score.perplexity.into());
            }
            if let Some(n) = kept.novelty {
                row.insert("copied".into(), n.copied.into());
                row.insert("overlap".into(), n.overlap.into());
                row.insert("nearest".into(), serde_json::json!(n.nearest));
            }
            format!("{line}\n")
        }
    }
}

/// What `generate.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The stage implementation version that wrote the samples.
    pub version: u32,
    /// The stage's inputs (the model) when the samples were made.
    pub inputs_hash: String,
    /// The effective seed.
    pub seed: u64,
    /// Every parameter but `nsamples` and `batch_size`, which do not change a sample.
    pub params: serde_json::Value,
    /// Byte length of each sample in the output file, in order.
    pub sample_bytes: Vec<usize>,
    /// How a sample is rendered: samples of another layout are not reused.
    #[serde(default)]
    pub layout: u32,
}

/// The current [`Meta::layout`] of jsonl samples: 1 added the prefix, the scores, the
/// novelty and the model hash to each row (0 before).
const LAYOUT: u32 = 1;

impl Meta {
    pub fn new(version: u32, inputs_hash: &str, seed: u64, generate: &GenerateParams) -> Self {
        let mut params = serde_json::to_value(generate).expect("params serialize");
        if let Some(map) = params.as_object_mut() {
            map.remove("nsamples");
            map.remove("batch_size");
            map.remove("seed");
        }
        Self {
            version,
            inputs_hash: inputs_hash.to_owned(),
            seed,
            params,
            sample_bytes: Vec::new(),
            // Text samples render as they always did.
            layout: match generate.format {
                SampleFormat::Jsonl => LAYOUT,
                SampleFormat::Text => 0,
            },
        }
    }

    fn same_recipe(&self, other: &Meta) -> bool {
        self.version == other.version
            && self.inputs_hash == other.inputs_hash
            && self.seed == other.seed
            && self.params == other.params
            && self.layout == other.layout
    }
}

/// The text written after each sample of a text output: `sample_delim`, but nothing when
/// the stage makes one sample (`nsamples = 1`), as gpt-2-simple's `generate` writes it.
pub fn sample_delim(params: &GenerateParams) -> &str {
    delimiter(&params.sample_delim, params.nsamples)
}

fn delimiter(sample_delim: &str, nsamples: usize) -> &str {
    if nsamples == 1 {
        ""
    } else {
        sample_delim
    }
}

/// The rendered samples of an earlier output made with the same recipe, if there is one
/// (its `generate.json` matches and its sample file has the recorded size), each ending
/// as `params` ends a sample now (an output of one sample has no delimiter).
pub fn previous_samples(dir: &Path, now: &Meta, params: &GenerateParams) -> Option<Vec<String>> {
    let output = &params.output;
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
    if !meta.same_recipe(now) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(output)).ok()?;
    if meta.sample_bytes.iter().sum::<usize>() != text.len() {
        return None;
    }
    let mut out = Vec::with_capacity(meta.sample_bytes.len());
    let mut at = 0;
    for &n in &meta.sample_bytes {
        out.push(text.get(at..at + n)?.to_owned());
        at += n;
    }
    if params.format == SampleFormat::Text {
        // Every sample of a reused output was kept, so it held `nsamples` of them then.
        let (then, now) = (
            delimiter(&params.sample_delim, out.len()),
            sample_delim(params),
        );
        if then != now {
            out = out
                .into_iter()
                .map(|s| s.strip_suffix(then).map(|body| format!("{body}{now}")))
                .collect::<Option<_>>()?;
        }
    }
    Some(out)
}

pub use gptpipe_core::fsutil::write_atomic;

/// A file a user named for the samples (`gptpipe generate --output`), checked before any
/// work and written once the samples are done:
/// - a regular file, or a missing one, is replaced atomically (temporary file and rename),
///   keeping an existing file's permissions;
/// - a symbolic link is followed: its final target is replaced atomically, so the link
///   stays a link;
/// - a file that is not a regular one once links are followed (a character device such as
///   `/dev/null`, `/dev/full` or a terminal, a FIFO, a socket) is opened and written in
///   place, never renamed over; so is the file behind this process's stdout or stderr
///   (`/dev/stdout` while stdout goes to a file: the bytes go through stdout, appending
///   where `>>` appends);
/// - a missing parent folder is an error naming it: no folder is created.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// The path as given, for messages.
    path: PathBuf,
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    /// Replace this regular (or missing) file atomically: `path`, or a link's target.
    Atomic(PathBuf),
    /// Open the path for writing and write in place.
    InPlace,
    /// The same file as this process's stdout (1) or stderr (2).
    Stdio(i32),
}

impl OutputFile {
    /// Checks `path` (see the type's docs): errors say why it cannot be written.
    pub fn check(path: &Path) -> Result<Self> {
        let how = match std::fs::metadata(path) {
            Ok(meta) => {
                if let Some(fd) = stdio_of(&meta) {
                    How::Stdio(fd)
                } else if meta.is_dir() {
                    bail!("{} is a folder, not a file", path.display());
                } else if meta.is_file() {
                    How::Atomic(resolve_links(path)?)
                } else {
                    How::InPlace
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => How::Atomic(resolve_links(path)?),
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        };
        if let How::Atomic(target) = &how {
            let parent = target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let via = if target != path {
                format!(" ({} links to {})", path.display(), target.display())
            } else {
                String::new()
            };
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!(
                    "cannot write {}{via}: {} is not a folder",
                    path.display(),
                    parent.display()
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                    "cannot write {}{via}: the folder {} does not exist (gptpipe does not \
                     create it)",
                    path.display(),
                    parent.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot write {}", path.display()))
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            how,
        })
    }

    /// Writes `bytes` as the whole content of the file.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        let context = || format!("cannot write {}", self.path.display());
        match &self.how {
            How::Atomic(target) => replace_file(target, bytes).with_context(context),
            How::InPlace => {
                // No create, no truncate: a device or FIFO is written as it is.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .with_context(context)?;
                f.write_all(bytes)
                    .and_then(|_| f.flush())
                    .with_context(context)
            }
            How::Stdio(1) => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|_| out.flush())
                    .with_context(context)
            }
            How::Stdio(_) => {
                let mut err = std::io::stderr().lock();
                err.write_all(bytes)
                    .and_then(|_| err.flush())
                    .with_context(context)
            }
        }
    }
}

/// 1 or 2 when `meta` is the file this process's stdout or stderr is open on.
fn stdio_of(meta: &std::fs::Metadata) -> Option<i32> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let same = |fd: std::os::fd::BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let m = file.metadata().ok()?;
        Some(m.dev() == meta.dev() && m.ino() == meta.ino())
    };
    if same(std::io::stdout().as_fd()) == Some(true) {
        Some(1)
    } else if same(std::io::stderr().as_fd()) == Some(true) {
        Some(2)
    } else {
        None
    }
}

/// `path` with symbolic links followed to the last one's target, which may not exist.
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .with_context(|| format!("cannot read the link {}", p.display()))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// Replaces the regular (or missing) file `path` with `bytes` through a temporary file in
/// its folder, keeping the permissions of the file it replaces.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let old_mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode());
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    if let Some(mode) = old_mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes the samples file and `generate.json` into `dir`.
pub fn write_outputs(dir: &Path, output: &str, rendered: &[String], mut meta: Meta) -> Result<()> {
    meta.sample_bytes = rendered.iter().map(String::len).collect();
    write_atomic(&dir.join(output), rendered.concat().as_bytes())?;
    let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
    write_atomic(&dir.join(META_FILE), &json)
}
