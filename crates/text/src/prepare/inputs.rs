//! Which files a prepare stage reads, and how to read each.

use anyhow::{bail, Context as _};
use gptpipe_core::config::{InputFormat, InputRef, PrepareParams, StageKind};
use gptpipe_core::stage::{InputSource, StageContext};
use std::path::{Path, PathBuf};

/// One file to read.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub path: PathBuf,
    /// The path as messages and `report.json` show it: relative to the pipeline file
    /// where possible.
    pub display: String,
    pub format: InputFormat,
    /// CSV delimiter.
    pub delimiter: u8,
    pub bytes: u64,
}

pub(crate) fn format_name(f: InputFormat) -> &'static str {
    match f {
        InputFormat::Csv => "csv",
        InputFormat::Text => "text",
        InputFormat::Jsonl => "jsonl",
        InputFormat::Lines => "lines",
        InputFormat::Records => "records",
        InputFormat::Sqlite => "sqlite",
    }
}

/// Expands `inputs` (files, folders, globs, `@stage`) into files, in order.
pub(crate) fn resolve(ctx: &StageContext, p: &PrepareParams) -> anyhow::Result<Vec<Input>> {
    // One ASCII character: validate.rs refuses anything else, in the runner and the worker.
    let &[delimiter] = p.delimiter.as_bytes() else {
        anyhow::bail!("unvalidated params: delimiter {:?}", p.delimiter);
    };
    let mut out = Vec::new();
    // A file named twice, or reached again through a link, is read once.
    let mut seen = gptpipe_core::inputs::FileSet::default();
    for entry in &p.inputs {
        let files = match entry {
            InputRef::Stage(_) => stage_files(ctx, entry)?,
            InputRef::Path(path) => gptpipe_core::inputs::expand(ctx.pipeline, path, &mut seen)?,
        };
        for path in files {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            let format = p.format.unwrap_or(match ext.as_str() {
                "csv" | "tsv" => InputFormat::Csv,
                "jsonl" | "ndjson" => InputFormat::Jsonl,
                "sqlite" | "sqlite3" | "db" => InputFormat::Sqlite,
                _ => InputFormat::Text,
            });
            // A .tsv file is tab-separated unless the pipeline says otherwise.
            let delimiter = if ext == "tsv" && p.delimiter == "," {
                b'\t'
            } else {
                delimiter
            };
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("cannot read input file {}", path.display()))?
                .len();
            out.push(Input {
                display: display(&ctx.pipeline.dir, &path),
                path,
                format,
                delimiter,
                bytes,
            });
        }
    }
    if p.query.is_some() && !out.iter().any(|i| i.format == InputFormat::Sqlite) {
        bail!(
            "query is set, but no input is a SQLite database (.sqlite, .sqlite3, .db, or \
             format = \"sqlite\")"
        );
    }
    Ok(out)
}

/// The files an `@stage` input stands for.
fn stage_files(ctx: &StageContext, input: &InputRef) -> anyhow::Result<Vec<PathBuf>> {
    let entry = input.to_string();
    let InputSource::Stage { name, kind, dir } = ctx.resolve_input(input) else {
        bail!("input {entry:?} names no upstream stage");
    };
    match kind {
        StageKind::Prepare => {
            let file = dir.join("dataset.txt");
            if !file.is_file() {
                bail!("stage {name:?} has no dataset.txt in {}", dir.display());
            }
            Ok(vec![file])
        }
        StageKind::Generate => {
            let files: Vec<PathBuf> = gptpipe_core::fsutil::list_files(&dir)?
                .into_iter()
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("txt" | "jsonl")
                    )
                })
                .map(|f| dir.join(f))
                .collect();
            if files.is_empty() {
                bail!(
                    "stage {name:?} has no .txt or .jsonl output in {}",
                    dir.display()
                );
            }
            Ok(files)
        }
        other => {
            bail!("input {entry:?} is a {other} stage; prepare reads prepare and generate outputs")
        }
    }
}

fn display(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
