//! prepare's other sources: `format = "lines"`, `format = "records"` with a `separator`,
//! and SQLite databases read through a `query` that can never change them.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pipeline(dir: &Path, stage: &str) -> PathBuf {
    let path = dir.join("gptpipe.toml");
    std::fs::write(
        &path,
        format!("[pipeline]\nname = \"t\"\n\n[stages.data]\nkind = \"prepare\"\n{stage}"),
    )
    .unwrap();
    path
}

fn run(dir: &Path, stage: &str) -> anyhow::Result<common::Prepared> {
    let p = pipeline(dir, stage);
    let out = tempfile::tempdir().unwrap();
    common::run_stage(&p, "data", out.path(), &BTreeMap::new())
}

fn error(dir: &Path, stage: &str) -> String {
    match run(dir, stage) {
        Ok(got) => panic!("the stage did not fail; it wrote {:?}", got.dataset),
        Err(e) => format!("{e:#}"),
    }
}

fn wrapped(rows: &[&str]) -> String {
    rows.iter()
        .map(|r| format!("<|startoftext|>{r}<|endoftext|>\n"))
        .collect()
}

#[test]
fn each_line_is_a_row_and_blank_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("titles.txt"),
        "First &amp; title\r\n\n   \nsecond\nthird without a newline",
    )
    .unwrap();
    let got = run(
        dir.path(),
        "inputs = [\"titles.txt\"]\nformat = \"lines\"\nhtml_unescape = true\n",
    )
    .unwrap();
    assert_eq!(
        got.dataset,
        wrapped(&["First & title", "second", "third without a newline"])
    );
    assert_eq!(got.report["rows_read"], 3);
    assert_eq!(got.report["inputs"][0]["format"], "lines");

    // Invalid UTF-8 names the line; with skip it is one dropped row, not the file.
    std::fs::write(dir.path().join("titles.txt"), b"ok\nbad \xff\nfine\n").unwrap();
    let e = error(
        dir.path(),
        "inputs = [\"titles.txt\"]\nformat = \"lines\"\n",
    );
    assert!(e.contains("titles.txt:2: invalid UTF-8"), "{e}");
    let got = run(
        dir.path(),
        "inputs = [\"titles.txt\"]\nformat = \"lines\"\non_error = \"skip\"\n",
    )
    .unwrap();
    assert_eq!(got.dataset, wrapped(&["ok", "fine"]));
    assert_eq!(got.report["dropped"]["invalid_utf8"], 1);
}

#[test]
fn records_split_at_the_separator_fortune_files_and_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fortunes"),
        "A quote\nthat spans lines.\n%\nAnother one.\n%\n\n%\nLast, 100% sure.\n%\n",
    )
    .unwrap();
    let got = run(
        dir.path(),
        "inputs = [\"fortunes\"]\nformat = \"records\"\nseparator = \"\\n%\\n\"\n",
    )
    .unwrap();
    assert_eq!(
        got.dataset,
        wrapped(&[
            "A quote\nthat spans lines.",
            "Another one.",
            "Last, 100% sure."
        ])
    );

    // The default separator is a blank line; CRLF files split the same, and runs of blank
    // lines leave no empty rows.
    std::fs::write(
        dir.path().join("poems.txt"),
        "Roses\nare red\r\n\r\nViolets\r\nare blue\n\n\n\nSugar\n",
    )
    .unwrap();
    let got = run(
        dir.path(),
        "inputs = [\"poems.txt\"]\nformat = \"records\"\n",
    )
    .unwrap();
    assert_eq!(
        got.dataset,
        wrapped(&["Roses\nare red", "Violets\nare blue", "Sugar"])
    );
}

#[test]
fn separator_and_query_beside_another_format_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "x\n").unwrap();
    for (stage, key, says) in [
        (
            "format = \"lines\"\nseparator = \"%\"",
            "separator",
            "format = \"records\"",
        ),
        (
            "format = \"records\"\nseparator = \"\"",
            "separator",
            "separator is empty",
        ),
        ("format = \"csv\"\nquery = \"SELECT 1\"", "query", "SQLite"),
        ("format = \"sqlite\"", "query", "needs a query"),
    ] {
        let e = error(dir.path(), &format!("inputs = [\"a.txt\"]\n{stage}\n"));
        assert!(e.contains(key) && e.contains(says), "{stage}: {e}");
    }
    // A query with no database among the inputs would be ignored: an error instead.
    let e = error(dir.path(), "inputs = [\"a.txt\"]\nquery = \"SELECT 1\"\n");
    assert!(e.contains("no input is a SQLite database"), "{e}");
}

/// `posts.db`: titles with entities, a NULL, a number, a blob and a non-UTF-8 text.
fn posts_db(dir: &Path) -> PathBuf {
    let path = dir.join("posts.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, title, subreddit TEXT, score INTEGER);
         INSERT INTO posts (title, subreddit, score) VALUES
           ('Fish &amp; chips   tonight', 'food', 10),
           ('What&#39;s the best idea?', 'AskReddit', 52),
           (NULL, 'AskReddit', 3),
           ('ok', 'food', 1),
           (42, 'numbers', 7),
           (2.5, 'numbers', 7),
           (X'00ff', 'blobs', 9),
           (CAST(X'ff41' AS TEXT), 'latin1', 9);",
    )
    .unwrap();
    path
}

/// The bytes and side files of a database, to show a run changed nothing.
fn state_of(db: &Path) -> (Vec<u8>, Vec<String>) {
    let dir = db.parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("posts.db"))
        .collect();
    names.sort();
    (std::fs::read(db).unwrap(), names)
}

#[test]
fn query_rows_go_through_the_same_cleaning_as_csv_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = posts_db(dir.path());
    let before = state_of(&db);
    let clean = "html_unescape = true\nnormalize_whitespace = true\nmin_length = 3\n";
    let got = run(
        dir.path(),
        &format!(
            "inputs = [\"posts.db\"]\nquery = \"SELECT title FROM posts WHERE subreddit IN \
             ('food', 'AskReddit') ORDER BY id\"\n{clean}"
        ),
    )
    .unwrap();
    // The same rows exported to CSV (NULL as an empty field) come out byte for byte.
    std::fs::write(
        dir.path().join("posts.csv"),
        "title\nFish &amp; chips   tonight\nWhat&#39;s the best idea?\n\"\"\nok\n",
    )
    .unwrap();
    let csv = run(dir.path(), &format!("inputs = [\"posts.csv\"]\n{clean}")).unwrap();
    assert_eq!(got.dataset, csv.dataset);
    assert_eq!(
        got.dataset,
        wrapped(&["Fish & chips tonight", "What's the best idea?"])
    );
    assert_eq!(got.report["dropped"], csv.report["dropped"]);
    assert_eq!(got.report["inputs"][0]["format"], "sqlite");
    assert_eq!(
        state_of(&db),
        before,
        "the database or its side files changed"
    );
}

#[test]
fn columns_by_name_templates_numbers_nulls_and_blobs() {
    let dir = tempfile::tempdir().unwrap();
    posts_db(dir.path());
    let q = "inputs = [\"posts.db\"]\nquery = \"SELECT id, title, subreddit, score FROM posts ORDER BY id\"\n";
    // `column` picks a result column by name; numbers read as SQLite writes them as text.
    let got = run(
        dir.path(),
        &format!("{q}column = \"title\"\non_error = \"skip\"\n"),
    )
    .unwrap();
    assert!(
        got.dataset.ends_with(&wrapped(&["ok", "42", "2.5"])),
        "{}",
        got.dataset
    );
    assert_eq!(got.report["dropped"]["empty"], 1); // the NULL
    assert_eq!(got.report["dropped"]["malformed"], 1); // the blob
    assert_eq!(got.report["dropped"]["invalid_utf8"], 1);
    // Without skip, the blob is an error naming the file, the row and the column.
    let e = error(dir.path(), &format!("{q}column = \"title\"\n"));
    assert!(
        e.contains("posts.db:7: query row 7: column \"title\" is a blob"),
        "{e}"
    );
    let e = error(dir.path(), &format!("{q}column = \"headline\"\n"));
    assert!(
        e.contains("no column \"headline\"") && e.contains("id, title, subreddit, score"),
        "{e}"
    );
    let e = error(dir.path(), &format!("{q}column = 9\n"));
    assert!(e.contains("returns 4 columns"), "{e}");
    // A template names result columns; a NULL in one is a missing field.
    let got = run(
        dir.path(),
        &format!("{q}template = \"{{subreddit}} ({{score}}) | {{title}}\"\non_error = \"skip\"\n"),
    )
    .unwrap();
    assert!(got
        .dataset
        .starts_with(&wrapped(&["food (10) | Fish &amp; chips   tonight"])));
    assert_eq!(got.report["dropped"]["missing_field"], 1);
}

#[test]
fn queries_that_write_are_refused_and_the_database_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = posts_db(dir.path());
    let before = state_of(&db);
    for query in [
        "DELETE FROM posts",
        "UPDATE posts SET title = 'x'",
        "INSERT INTO posts (title) VALUES ('x') RETURNING title",
        "DROP TABLE posts",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = WAL",
        "VACUUM",
        "SELECT title FROM posts; DELETE FROM posts",
    ] {
        let e = error(
            dir.path(),
            &format!("inputs = [\"posts.db\"]\nquery = {}\n", toml_string(query)),
        );
        assert!(e.contains("posts.db"), "{query}: {e}");
        assert!(
            e.contains("does not only read rows")
                || e.contains("readonly")
                || e.contains("Multiple"),
            "{query}: {e}"
        );
        assert_eq!(state_of(&db), before, "{query} changed the database");
    }
    assert!(!dir.path().join("other.db").exists());
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn query_errors_name_the_query_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    posts_db(dir.path());
    let e = error(
        dir.path(),
        "inputs = [\"posts.db\"]\nquery = \"SELECT titel FROM posts\"\n",
    );
    assert!(
        e.contains("posts.db: query \"SELECT titel FROM posts\" failed") && e.contains("titel"),
        "{e}"
    );
    // A file planted under a database's name is not read as one.
    std::fs::write(
        dir.path().join("fake.db"),
        "title\nnot a database\n".repeat(100),
    )
    .unwrap();
    let e = error(
        dir.path(),
        "inputs = [\"fake.db\"]\nquery = \"SELECT title FROM posts\"\n",
    );
    assert!(e.contains("fake.db is not a SQLite database"), "{e}");
    // A database without a query says what to add.
    let e = error(dir.path(), "inputs = [\"posts.db\"]\n");
    assert!(e.contains("set query"), "{e}");
}

#[test]
fn a_huge_blob_is_a_bad_row_and_pending_changes_in_a_wal_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("CREATE TABLE t (body); INSERT INTO t VALUES ('fine'), (zeroblob(20000000));")
        .unwrap();
    drop(db);
    let e = error(
        dir.path(),
        "inputs = [\"big.db\"]\nquery = \"SELECT body FROM t\"\n",
    );
    assert!(
        e.contains("big.db:2: query row 2: column \"body\" is a blob"),
        "{e}"
    );

    // A writer that keeps a WAL open: its rows are not in the file yet.
    let live = rusqlite::Connection::open(&path).unwrap();
    live.execute_batch("PRAGMA journal_mode = WAL; INSERT INTO t VALUES ('new');")
        .unwrap();
    let e = error(
        dir.path(),
        "inputs = [\"big.db\"]\nquery = \"SELECT body FROM t\"\n",
    );
    assert!(e.contains("big.db has a -wal file"), "{e}");
    drop(live);
}
