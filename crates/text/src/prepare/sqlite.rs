//! SQLite inputs: the rows of `query`, read from a database that is never changed.
//!
//! The file is opened read-only and immutable (`?mode=ro&immutable=1`: no lock, no journal,
//! no `-shm`, nothing written beside it), with SQLite's defensive mode on, and only a single
//! statement that reads and returns columns runs. What is read is the file's own bytes,
//! which are what the stage's cache key hashes: a write-ahead log or hot journal holding
//! changes that are not in the file yet is an error, not silently ignored.

use super::inputs::Input;
use super::read::Sink;
use super::report::DropReason;
use super::template::Template;
use anyhow::{bail, Context as _};
use gptpipe_core::config::{ColumnRef, PrepareParams};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::fmt::Write as _;

pub(super) fn read(input: &Input, p: &PrepareParams, out: &mut Sink) -> anyhow::Result<()> {
    let name = &input.display;
    let Some(query) = p.query.as_deref() else {
        bail!("{name} is a SQLite database: set query = \"SELECT ...\" to say which rows to read");
    };
    for suffix in ["-wal", "-journal"] {
        let side = format!("{}{suffix}", input.path.display());
        if std::fs::metadata(&side).is_ok_and(|m| m.len() > 0) {
            bail!(
                "{name} has a {suffix} file holding changes not yet in the database: close the \
                 program writing it (or run `sqlite3 {name} \"PRAGMA wal_checkpoint(TRUNCATE)\"`) \
                 so the file holds all its rows"
            );
        }
    }
    let conn = open(input)?;
    let failed = |e: rusqlite::Error| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            anyhow::anyhow!("{name} is not a SQLite database ({e})")
        } else {
            anyhow::anyhow!("{name}: query {query:?} failed: {e}")
        }
    };
    let mut stmt = conn.prepare(query).map_err(failed)?;
    let first: String = query
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    let select = ["SELECT", "WITH", "VALUES"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k));
    if !select || !stmt.readonly() || stmt.column_count() == 0 {
        bail!(
            "{name}: query {query:?} does not only read rows: gptpipe runs one SELECT (or WITH \
             ... SELECT) on a database it never changes"
        );
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let template = Template::of(p)?;
    let picks = match &template {
        Some(t) => t.csv_columns(&columns, true, name)?,
        None => vec![column(p, &columns, name, query)?],
    };
    let mut rows = stmt.query([]).map_err(failed)?;
    let (mut n, mut row, mut values) = (0u64, String::new(), Vec::<String>::new());
    while let Some(r) = rows.next().map_err(failed)? {
        n += 1;
        values.clear();
        let mut bad = None;
        for &i in &picks {
            let value = r.get_ref(i).map_err(failed)?;
            match text_of(value, template.is_some()) {
                Ok(v) => values.push(v),
                Err((why, what)) => {
                    bad = Some((why, format!("column {:?} is {what}", columns[i])));
                    break;
                }
            }
        }
        if let Some((why, message)) = bad {
            out.bad(n, why, format!("query row {n}: {message}"))?;
            continue;
        }
        match &template {
            Some(t) => {
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                row.clear();
                t.fill(&refs, &mut row);
                out.row(&row, 0)?;
            }
            None => out.row(&values[0], 0)?,
        }
    }
    Ok(())
}

/// The database, read-only and immutable, through a URI (the only way to say immutable).
fn open(input: &Input) -> anyhow::Result<Connection> {
    let path = input
        .path
        .canonicalize()
        .with_context(|| format!("cannot open {}", input.display))?;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            let _ = write!(uri, "%{b:02X}");
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags)
        .with_context(|| format!("cannot open {} as a SQLite database", input.display))?;
    // No writes to the schema, no ATTACH of other files by a query.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .context("cannot set SQLite's defensive mode")?;
    conn.execute_batch("PRAGMA trusted_schema = OFF")
        .with_context(|| format!("{} is not a SQLite database", input.display))?;
    Ok(conn)
}

/// The column read without a template: `column` by result name or 0-based index.
fn column(p: &PrepareParams, columns: &[String], name: &str, query: &str) -> anyhow::Result<usize> {
    match &p.column {
        ColumnRef::Name(want) => columns.iter().position(|c| c == want).with_context(|| {
            format!(
                "{name}: query {query:?} returns no column {want:?}; its columns are: {}",
                columns.join(", ")
            )
        }),
        ColumnRef::Index(i) if *i < columns.len() => Ok(*i),
        ColumnRef::Index(i) => bail!(
            "{name}: query {query:?} returns {} columns, so column {i} does not exist; they \
             are: {}",
            columns.len(),
            columns.join(", ")
        ),
    }
}

/// A value as row text: text as it is, numbers as SQLite's `CAST(x AS TEXT)` writes them,
/// NULL as an empty row (dropped as `empty` after cleaning; a missing field in a
/// template). A blob, or text that is not UTF-8, is a bad row.
fn text_of(value: ValueRef, in_template: bool) -> Result<String, (DropReason, &'static str)> {
    match value {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(str::to_owned)
            .map_err(|_| (DropReason::InvalidUtf8, "text that is not valid UTF-8")),
        ValueRef::Integer(i) => Ok(i.to_string()),
        ValueRef::Real(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
            Ok(format!("{f:.1}"))
        }
        ValueRef::Real(f) => Ok(f.to_string()),
        ValueRef::Null if in_template => Err((DropReason::MissingField, "NULL")),
        ValueRef::Null => Ok(String::new()),
        ValueRef::Blob(_) => Err((
            DropReason::Malformed,
            "a blob, not text (CAST it AS TEXT in the query if it holds text)",
        )),
    }
}
