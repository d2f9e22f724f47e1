//! The prepare stage through the CLI: real CSV exports in, exact files out, clear errors.

use super::Project;

fn pipeline(p: &Project, stage_extra: &str) {
    p.file(
        "p.toml",
        format!(
            "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n[stages.d]\nkind = \"prepare\"\ninputs = [\"data/in.csv\"]\n{stage_extra}\n"
        ),
    );
}

#[test]
fn bom_crlf_and_quoted_fields_with_commas_and_newlines() {
    // Line breaks inside a field are normalised to \n, whatever the file used.
    let p = Project::new();
    let mut csv = b"\xEF\xBB\xBFtitle,score\r\n".to_vec();
    csv.extend_from_slice(
        b"\"Hello, world\",1\r\n\"two\r\nlines\",2\r\n\"she said \"\"hi\"\"\",3\r\n",
    );
    p.file("data/in.csv", csv);
    pipeline(&p, "column = \"title\"");
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(
        p.read("work/d/dataset.txt"),
        "<|startoftext|>Hello, world<|endoftext|>\n\
         <|startoftext|>two\nlines<|endoftext|>\n\
         <|startoftext|>she said \"hi\"<|endoftext|>\n"
    );
    let tokens = std::fs::read(p.path("work/d/tokens.bin")).unwrap();
    assert_eq!(tokens.len() % 2, 0);
    let ids: Vec<u16> = tokens
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        ids.iter().filter(|&&t| t == 50256).count(),
        3,
        "one <|endoftext|> per row"
    );
    let report: serde_json::Value = serde_json::from_str(&p.read("work/d/report.json")).unwrap();
    assert_eq!(report["tokens"].as_u64(), Some(ids.len() as u64));
}

#[test]
fn cleanup_of_a_sql_export() {
    let p = Project::new();
    p.file(
        "data/in.csv",
        "title\nFish &amp; chips   tonight\nok\nFish &amp; chips tonight\nWhat&#39;s the  best \u{FFFD}idea? [Serious]\n",
    );
    pipeline(
        &p,
        "html_unescape = true\nremove_chars = [\"\\uFFFD\"]\nnormalize_whitespace = true\nmin_length = 8\ndedupe = true\n\
         [[stages.d.replace]]\npattern = \"\\\\s*\\\\[Serious\\\\]$\"\nwith = \"\"\n",
    );
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(
        p.read("work/d/dataset.txt"),
        "<|startoftext|>Fish & chips tonight<|endoftext|>\n<|startoftext|>What's the best idea?<|endoftext|>\n"
    );
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let p = Project::new();
    p.file("data/in.csv", b"title\nfine\nbad \xff byte\n");
    pipeline(&p, "");
    let run = p.run(&["run", "p.toml"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("data/in.csv:3:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("on_error = \"skip\" to drop such rows"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("utf-8"),
        "{}",
        run.stderr
    );
    // With on_error = "skip" the row is dropped and counted.
    pipeline(&p, "on_error = \"skip\"");
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(
        p.read("work/d/dataset.txt"),
        "<|startoftext|>fine<|endoftext|>\n"
    );
    assert!(
        p.read("work/d/report.json").contains("utf"),
        "{}",
        p.read("work/d/report.json")
    );
}

#[test]
fn invalid_utf8_in_a_text_file_says_skip_drops_the_file() {
    // A text file is one row: its line is named, and the hint says what skip would drop.
    let p = Project::new();
    p.file("data/in.txt", b"line one\nline \xff two\n");
    p.file(
        "p.toml",
        "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n[stages.d]\nkind = \"prepare\"\ninputs = [\"data/in.txt\"]\n",
    );
    let run = p.run(&["run", "p.toml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("data/in.txt:2: invalid UTF-8 (set on_error = \"skip\" to drop this file)"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_column_lists_the_columns() {
    let p = Project::new();
    p.file("data/in.csv", "title,score\nx,1\n");
    pipeline(&p, "column = \"titel\"");
    let run = p.run(&["run", "p.toml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("titel")
            && run.stderr.contains("title")
            && run.stderr.contains("score"),
        "{}",
        run.stderr
    );
}

#[test]
fn empty_result_is_an_error_and_keeps_the_old_output() {
    let p = Project::new();
    p.file("data/in.csv", "title\na fine row\n");
    pipeline(&p, "");
    p.run(&["run", "p.toml"]).ok();
    let before = p.read("work/d/dataset.txt");
    pipeline(&p, "min_length = 100");
    let run = p.run(&["run", "p.toml"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no rows"), "{}", run.stderr);
    assert_eq!(p.read("work/d/dataset.txt"), before);
    assert!(
        std::fs::read_dir(p.path("work/.gptpipe/cache/runs"))
            .unwrap()
            .count()
            == 1
    );
}

#[test]
fn the_last_progress_event_carries_the_final_counts() {
    let p = Project::new();
    let mut csv = String::from("title\n");
    for i in 0..50 {
        csv.push_str(&format!("a short title number {i}\n"));
    }
    p.file("data/in.csv", csv);
    pipeline(&p, "");
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    let progress: Vec<serde_json::Value> = run
        .events()
        .into_iter()
        .filter(|e| e["event"] == "stage_progress")
        .collect();
    let last = progress.last().unwrap();
    assert_eq!(last["step"], last["total"], "{last}");
    let report: serde_json::Value = serde_json::from_str(&p.read("work/d/report.json")).unwrap();
    assert_eq!(last["tokens"], report["tokens"], "{last} vs {report}");
    assert_eq!(last["rows"], 50);
    // Only that one says step == total.
    assert_eq!(
        progress.iter().filter(|e| e["step"] == e["total"]).count(),
        1
    );
}

/// A SQLite input is hashed into the stage's key like any input file: a new row makes the
/// stage stale, and reading it leaves no journal or other file beside the database.
#[test]
fn a_sqlite_database_is_an_input_of_the_key_and_is_left_as_it_was() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("data")).unwrap();
    let db = rusqlite::Connection::open(p.path("data/posts.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE posts (title TEXT, score INTEGER);
         INSERT INTO posts VALUES ('A good title', 12), ('A low one', 1);",
    )
    .unwrap();
    drop(db);
    p.file(
        "p.toml",
        "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n[stages.d]\nkind = \"prepare\"\n\
         inputs = [\"data/posts.db\"]\nquery = \"SELECT title FROM posts WHERE score > 10\"\n",
    );
    let side_files = || {
        let mut names: Vec<String> = std::fs::read_dir(p.path("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = std::fs::read(p.path("data/posts.db")).unwrap();
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(
        p.read("work/d/dataset.txt"),
        "<|startoftext|>A good title<|endoftext|>\n"
    );
    assert_eq!(std::fs::read(p.path("data/posts.db")).unwrap(), before);
    assert_eq!(side_files(), ["posts.db"]);
    let state = |p: &Project| {
        let run = p.run(&["status", "p.toml", "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        v[0].clone()
    };
    assert_eq!(state(&p)["state"], "fresh");

    let db = rusqlite::Connection::open(p.path("data/posts.db")).unwrap();
    db.execute("INSERT INTO posts VALUES ('Another good one', 50)", [])
        .unwrap();
    drop(db);
    let st = state(&p);
    assert_eq!(st["state"], "stale", "{st}");
    assert!(st["reasons"].to_string().contains("posts.db"), "{st}");
    p.run(&["run", "p.toml"]).ok();
    assert_eq!(
        p.read("work/d/dataset.txt"),
        "<|startoftext|>A good title<|endoftext|>\n<|startoftext|>Another good one<|endoftext|>\n"
    );
}
