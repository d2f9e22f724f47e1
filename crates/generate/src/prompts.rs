//! The prompts of a generate stage: `prefix` (one), or `prefixes` / `prefix_file` (many,
//! `nsamples` samples each). Each prompt is a [`Job`] of its own.
//!
//! A listed prefix samples from its own stream, seeded from the stage's seed and the
//! prefix's text: adding, removing or reordering prefixes leaves the samples of the others
//! as they were. `prefix` alone keeps the stage's seed, so its samples are those of earlier
//! versions.

use crate::codec::Codec;
use crate::driver::Job;
use anyhow::{bail, Context, Result};
use gptpipe_core::config::GenerateParams;
use std::io::Read;
use std::path::Path;

/// A prefix file's size at most: it is read whole, and each prefix is a job.
pub const MAX_PREFIX_FILE_BYTES: u64 = 64 << 20;

/// The prefixes of a prefix file, with the line each is on.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixFile {
    pub path: std::path::PathBuf,
    pub prefixes: Vec<String>,
    /// The 1-based line of each prefix.
    pub lines: Vec<usize>,
}

/// The prefixes of a prefix file: one per line (a trailing `\r` dropped), blank lines
/// skipped. Errors name the file and the line.
pub fn read_prefix_file(path: &Path) -> Result<PrefixFile> {
    let cannot = || format!("cannot read the prefix file {}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PREFIX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .with_context(cannot)?;
    if bytes.len() as u64 > MAX_PREFIX_FILE_BYTES {
        bail!(
            "the prefix file {} is larger than the limit of {} MiB",
            path.display(),
            MAX_PREFIX_FILE_BYTES >> 20
        );
    }
    let mut file = PrefixFile {
        path: path.to_path_buf(),
        prefixes: Vec::new(),
        lines: Vec::new(),
    };
    let mut first_line = std::collections::HashMap::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            bail!("{}:{n}: the line is not valid UTF-8", path.display());
        };
        if text.trim().is_empty() {
            continue;
        }
        if let Some(first) = first_line.insert(text, n) {
            bail!(
                "{}:{n}: this prefix is line {first} again: each prefix already gets nsamples \
                 samples",
                path.display()
            );
        }
        file.prefixes.push(text.to_owned());
        file.lines.push(n);
    }
    if file.prefixes.is_empty() {
        bail!(
            "the prefix file {} has no prefixes (every line is blank)",
            path.display()
        );
    }
    Ok(file)
}

/// Where job `j`'s prefix was written, for errors: `prefix`, `prefixes[j]` or the prefix
/// file's `path:line`.
pub fn origin_of(params: &GenerateParams, file: Option<&PrefixFile>, j: usize) -> String {
    match file {
        Some(f) => format!("{}:{}", f.path.display(), f.lines[j]),
        None if listed(params) => format!("prefixes[{j}]"),
        None => "prefix".to_owned(),
    }
}

/// Fails, naming the prefix's origin, when a job's prompt does not fit `n_ctx` tokens.
pub fn check_fit(
    params: &GenerateParams,
    file: Option<&PrefixFile>,
    jobs: &[Job],
    n_ctx: usize,
) -> Result<()> {
    for (j, job) in jobs.iter().enumerate() {
        let fits = job.check_fits(n_ctx);
        if listed(params) {
            fits.with_context(|| origin_of(params, file, j))?;
        } else {
            fits?;
        }
    }
    Ok(())
}

/// Whether `params` list their prefixes (`prefixes` or `prefix_file`) rather than give one.
pub fn listed(params: &GenerateParams) -> bool {
    !params.prefixes.is_empty() || params.prefix_file.is_some()
}

/// The seed of a listed prefix's samples.
pub fn prompt_seed(seed: u64, prefix: &str) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(prefix.as_bytes());
    let hex = gptpipe_core::cache::hash::hash_bytes(&bytes);
    u64::from_str_radix(&hex[..16], 16).expect("a blake3 hex digest")
}

/// The jobs of `params`: one for `prefix`, else one per prefix of `file` (when
/// `prefix_file` is set) or of `prefixes`.
pub fn jobs_of(
    params: &GenerateParams,
    seed: u64,
    codec: &dyn Codec,
    file: Option<&PrefixFile>,
) -> Result<Vec<Job>> {
    if !listed(params) {
        return Ok(vec![crate::stage::job_of(
            params,
            &params.prefix,
            seed,
            codec,
        )?]);
    }
    let prefixes = file.map_or(&params.prefixes, |f| &f.prefixes);
    let total = prefixes.len().saturating_mul(params.nsamples);
    if total > gptpipe_core::config::MAX_NSAMPLES {
        let from = file.map_or("prefixes".to_owned(), |f| {
            format!("the prefix file {}", f.path.display())
        });
        bail!(
            "{from}: {} prefixes of {} samples are more than the limit of {} samples",
            prefixes.len(),
            params.nsamples,
            gptpipe_core::config::MAX_NSAMPLES
        );
    }
    prefixes
        .iter()
        .enumerate()
        .map(|(i, prefix)| {
            crate::stage::job_of(params, prefix, prompt_seed(seed, prefix), codec)
                .with_context(|| origin_of(params, file, i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_prefix_file_has_one_prefix_per_line_blank_lines_skipped() {
        let f = file(b"first\r\n\n  \nsecond line | x\nthird");
        let got = read_prefix_file(f.path()).unwrap();
        assert_eq!(got.prefixes, ["first", "second line | x", "third"]);
        assert_eq!(got.lines, [1, 4, 5]);
    }

    #[test]
    fn prefix_file_errors_name_the_line() {
        let f = file(b"a\nb\n\xff\xfe\n");
        let e = format!("{:#}", read_prefix_file(f.path()).unwrap_err());
        assert!(e.ends_with(":3: the line is not valid UTF-8"), "{e}");
        let f = file(b"a\nb\na\n");
        let e = format!("{:#}", read_prefix_file(f.path()).unwrap_err());
        assert!(e.contains(":3: this prefix is line 1 again"), "{e}");
        let f = file(b"\n \n");
        let e = format!("{:#}", read_prefix_file(f.path()).unwrap_err());
        assert!(e.contains("has no prefixes"), "{e}");
    }

    #[test]
    fn each_prefix_has_its_own_seed() {
        assert_ne!(prompt_seed(1, "a"), prompt_seed(1, "b"));
        assert_ne!(prompt_seed(1, "a"), prompt_seed(2, "a"));
        assert_eq!(prompt_seed(7, "a"), prompt_seed(7, "a"));
    }
}
