//! The runner's promises: a cached rerun runs nothing; a changed key reruns exactly that
//! stage and its downstream; reverting restores from the run cache; --frozen exits 3.

use super::Project;

/// a -> b (b reads a's dataset), and an independent c.
fn project() -> Project {
    let p = Project::new();
    p.file(
        "data/a.csv",
        "title\nshort\na longer title here\nanother title\n",
    );
    p.file("data/c.csv", "title\nsomething else\n");
    p.file(
        "p.toml",
        "[pipeline]\nname = \"t\"\nworkdir = \"work\"\n\n\
         [stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"@a\"]\nformat = \"text\"\n\n\
         [stages.c]\nkind = \"prepare\"\ninputs = [\"data/c.csv\"]\n",
    );
    p
}

fn status(p: &Project, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["status", "p.toml", "--json"];
    args.extend_from_slice(extra);
    let run = p.run(&args).ok();
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn rerun_set_revert_and_frozen() {
    let p = project();
    let first = p.run(&["run", "p.toml", "--json"]).ok();
    let mut finished = first.stages_with("stage_finished");
    finished.sort();
    assert_eq!(finished, vec!["a", "b", "c"]);
    let dataset = p.read("work/a/dataset.txt");
    assert!(dataset.contains("<|startoftext|>a longer title here<|endoftext|>"));

    // Unchanged: nothing runs.
    let again = p.run(&["run", "p.toml", "--json"]).ok();
    assert!(
        again.stages_with("stage_started").is_empty(),
        "{}",
        again.stdout
    );
    assert_eq!(again.stages_with("stage_cached").len(), 3);
    assert!(status(&p, &[]).iter().all(|s| s["state"] == "fresh"));

    // One key changed: that stage and its downstream, nothing else.
    let changed = p
        .run(&["run", "p.toml", "--json", "--set", "stages.a.min_length=8"])
        .ok();
    let mut ran = changed.stages_with("stage_started");
    ran.sort();
    assert_eq!(ran, vec!["a", "b"]);
    assert!(!p.read("work/a/dataset.txt").contains(">short<"));

    // Status explains what differs from the lock file.
    let st = status(&p, &[]);
    let a = st.iter().find(|s| s["stage"] == "a").unwrap();
    assert_eq!(a["state"], "stale");
    assert_eq!(a["reasons"][0], "param min_length changed: 8 -> (unset)");
    let b = st.iter().find(|s| s["stage"] == "b").unwrap();
    assert_eq!(b["reasons"][0], "upstream a is stale");
    assert_eq!(
        st.iter().find(|s| s["stage"] == "c").unwrap()["state"],
        "fresh"
    );

    // --frozen: stale exits 3 and runs nothing.
    let frozen = p.run(&["run", "p.toml", "--frozen"]);
    assert_eq!(frozen.code, 3, "{}", frozen.stderr);
    assert!(frozen.stderr.contains("param min_length changed"));

    // Reverting restores the earlier outputs without running anything.
    let revert = p.run(&["run", "p.toml", "--json"]).ok();
    assert!(
        revert.stages_with("stage_started").is_empty(),
        "{}",
        revert.stdout
    );
    let restored: Vec<_> = revert
        .events()
        .into_iter()
        .filter(|e| e["event"] == "stage_cached" && e["restored"] == true)
        .map(|e| e["stage"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(restored, vec!["a", "b"]);
    assert_eq!(p.read("work/a/dataset.txt"), dataset);
    assert_eq!(p.run(&["run", "p.toml", "--frozen"]).code, 0);

    // A fresh checkout has the lock file but no outputs: --frozen checks that the lock file
    // describes the pipeline and its inputs; status still says what is missing.
    std::fs::remove_dir_all(p.path("work")).unwrap();
    assert_eq!(p.run(&["run", "p.toml", "--frozen"]).code, 0);
    assert!(status(&p, &[])
        .iter()
        .any(|s| s["reasons"][0] == "output missing"));
    p.file("data/c.csv", "title\nchanged\n");
    assert_eq!(p.run(&["run", "p.toml", "--frozen"]).code, 3);
}

#[test]
fn volatile_and_targets_and_force() {
    let p = project();
    // Selecting b runs b and its upstream only.
    let run = p.run(&["run", "p.toml", "b", "--json"]).ok();
    let mut ran = run.stages_with("stage_started");
    ran.sort();
    assert_eq!(ran, vec!["a", "b"]);
    assert!(!p.path("work/c").exists());
    // --dry-run runs nothing.
    let dry = p.run(&["run", "p.toml", "--dry-run", "--json"]).ok();
    assert!(dry.stages_with("stage_started").is_empty());
    assert!(!p.path("work/c").exists());
    // --force reruns fresh stages.
    let forced = p.run(&["run", "p.toml", "a", "--force", "--json"]).ok();
    assert_eq!(forced.stages_with("stage_started"), vec!["a"]);
    // Parallel run of what is left.
    let par = p.run(&["run", "p.toml", "--jobs", "2", "--json"]).ok();
    assert_eq!(par.stages_with("stage_started"), vec!["c"]);
}

#[test]
fn lock_file_records_keys_params_and_hashes() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    let lock: toml::Table = toml::from_str(&p.read("p.toml.lock")).unwrap();
    let a = lock["stages"]["a"].as_table().unwrap();
    assert_eq!(a["kind"].as_str(), Some("prepare"));
    assert_eq!(a["key"].as_str().unwrap().len(), 64);
    assert_eq!(a["params"]["column"].as_integer(), Some(0));
    assert_eq!(a["inputs"]["data/a.csv"].as_str().unwrap().len(), 64);
    assert!(a["outputs"].as_table().unwrap().contains_key("dataset.txt"));
    let b = lock["stages"]["b"].as_table().unwrap();
    assert_eq!(b["upstream"]["a"].as_str(), a["output_hash"].as_str());
}

#[test]
fn changed_input_file_reruns_and_status_says_which() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    p.file("data/c.csv", "title\nsomething different\n");
    let st = status(&p, &[]);
    let c = st.iter().find(|s| s["stage"] == "c").unwrap();
    assert!(
        c["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("input data/c.csv changed:"),
        "{c}"
    );
    let run = p.run(&["run", "p.toml", "--json"]).ok();
    assert_eq!(run.stages_with("stage_started"), vec!["c"]);
}

#[test]
fn missing_input_fails_clearly_and_keeps_outputs() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    let before = p.read("work/c/dataset.txt");
    std::fs::remove_file(p.path("data/c.csv")).unwrap();
    let run = p.run(&["run", "p.toml", "--keep-going"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("input file not found") && run.stderr.contains("c.csv"),
        "{}",
        run.stderr
    );
    assert_eq!(p.read("work/c/dataset.txt"), before);
}

#[test]
fn every_planned_stage_is_accounted_for_when_a_failure_stops_the_run() {
    let p = project();
    std::fs::remove_file(p.path("data/a.csv")).unwrap();
    let run = p.run(&["run", "p.toml", "--json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stages_with("stage_failed"), ["a"]);
    // b waits on a; c is independent but the run stopped before it (no --keep-going).
    assert_eq!(run.stages_with("stage_skipped"), ["b", "c"]);
    let finished = run.events().pop().unwrap();
    assert_eq!(finished["event"], "run_finished");
    assert_eq!(
        (&finished["ran"], &finished["failed"], &finished["skipped"]),
        (&0.into(), &1.into(), &2.into()),
        "{finished}"
    );
    let human = p.run(&["run", "p.toml"]);
    assert!(
        human
            .stderr
            .contains("[c] skipped: the run stopped after a failure")
            || human
                .stdout
                .contains("[c] skipped: the run stopped after a failure"),
        "{}{}",
        human.stdout,
        human.stderr
    );
    let keep_going = p.run(&["run", "p.toml", "--json", "--keep-going"]);
    assert_eq!(keep_going.stages_with("stage_finished"), ["c"]);
    assert_eq!(keep_going.stages_with("stage_skipped"), ["b"]);
}

#[test]
fn dry_run_and_frozen_events_have_the_frame_of_a_run() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    p.file("data/c.csv", "title\nchanged\n");
    for args in [&["--dry-run"][..], &["--frozen"]] {
        let mut full = vec!["run", "p.toml", "--json"];
        full.extend_from_slice(args);
        let events = p.run(&full).events();
        assert_eq!(events.first().unwrap()["event"], "plan", "{args:?}");
        let last = events.last().unwrap();
        assert_eq!(last["event"], "run_finished", "{args:?}");
        assert_eq!((&last["cached"], &last["skipped"]), (&2.into(), &1.into()));
        assert!(events
            .iter()
            .any(|e| e["stage"] == "c"
                && e["message"].as_str().unwrap_or("").starts_with("would run")));
    }
}

#[test]
fn gc_drops_entries_the_lock_file_does_not_reference() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    p.run(&["run", "p.toml", "--set", "stages.c.dedupe=true"])
        .ok();
    let runs = || {
        std::fs::read_dir(p.path("work/.gptpipe/cache/runs"))
            .unwrap()
            .count()
    };
    assert_eq!(runs(), 4);
    let gc = p.run(&["gc", "p.toml"]).ok();
    assert!(
        gc.stderr.contains("removed 1 cache entries"),
        "{}",
        gc.stderr
    );
    assert_eq!(runs(), 3);
    // What the lock file references still restores.
    std::fs::remove_dir_all(p.path("work/a")).unwrap();
    let run = p
        .run(&["run", "p.toml", "--json", "--set", "stages.c.dedupe=true"])
        .ok();
    assert!(run.stages_with("stage_started").is_empty());
}

/// Two pipelines in one folder sharing the workdir `work`: a has stage `a`; b has `b` and
/// `b2` (reading b's dataset).
fn shared_workdir() -> Project {
    let p = Project::new();
    p.file("data/a.csv", "title\nshort\na longer title here\n");
    p.file("data/b.csv", "title\nsomething else\nand more\n");
    p.file("a.toml", shared_a(None));
    p.file(
        "b.toml",
        "[pipeline]\nname = \"b\"\nworkdir = \"work\"\n\n\
         [stages.b]\nkind = \"prepare\"\ninputs = [\"data/b.csv\"]\n\n\
         [stages.b2]\nkind = \"prepare\"\ninputs = [\"@b\"]\nformat = \"text\"\n",
    );
    p
}

fn shared_a(min_length: Option<u32>) -> String {
    let extra = min_length.map_or(String::new(), |n| format!("min_length = {n}\n"));
    format!(
        "[pipeline]\nname = \"a\"\nworkdir = \"work\"\n\n\
         [stages.a]\nkind = \"prepare\"\ninputs = [\"data/a.csv\"]\n{extra}"
    )
}

/// The cache keys a lock file records, by stage.
fn lock_keys(p: &Project, lock: &str) -> std::collections::BTreeMap<String, String> {
    let lock: toml::Table = toml::from_str(&p.read(lock)).unwrap();
    lock["stages"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(s, e)| (s.clone(), e["key"].as_str().unwrap().to_owned()))
        .collect()
}

fn cached(p: &Project, key: &str) -> bool {
    p.path(&format!("work/.gptpipe/cache/runs/{key}.json"))
        .is_file()
}

#[test]
fn gc_removes_the_cached_novelty_indexes() {
    let p = project();
    p.run(&["run", "p.toml"]).ok();
    let dir = p.path("work/.gptpipe/novelty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{}.idx", "a".repeat(64))), [0u8; 100]).unwrap();
    std::fs::write(dir.join(format!("{}.idx", "b".repeat(64))), [0u8; 23]).unwrap();
    let gc = p.run(&["gc", "p.toml"]).ok();
    assert!(
        gc.stderr.contains("and 2 novelty indexes (123 bytes)"),
        "{}",
        gc.stderr
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let gc = p.run(&["gc", "p.toml"]).ok();
    assert!(
        gc.stderr.contains("and 0 novelty indexes (0 bytes)"),
        "{}",
        gc.stderr
    );
}

#[test]
fn gc_keeps_what_another_pipeline_sharing_the_workdir_references() {
    let p = shared_workdir();
    p.run(&["run", "a.toml"]).ok();
    p.run(&["run", "b.toml"]).ok();
    let old_a = lock_keys(&p, "a.toml.lock")["a"].clone();
    let b_keys = lock_keys(&p, "b.toml.lock");
    assert_eq!(b_keys.len(), 2);

    // A changed parameter of a leaves a's old entry stale.
    p.file("a.toml", shared_a(Some(8)));
    let changed = p.run(&["run", "a.toml", "--json"]).ok();
    assert_eq!(changed.stages_with("stage_started"), vec!["a"]);
    let new_a = lock_keys(&p, "a.toml.lock")["a"].clone();
    assert_ne!(old_a, new_a);

    let gc = p.run(&["gc", "a.toml"]).ok();
    // The old entry and the objects only it used (its outputs all differ).
    assert!(
        gc.stderr.contains("removed 1 cache entries and 3 objects"),
        "{}",
        gc.stderr
    );
    assert!(!cached(&p, &old_a) && cached(&p, &new_a));
    assert!(b_keys.values().all(|k| cached(&p, k)));

    // b restores everything from the cache: nothing runs.
    for stage in ["b", "b2"] {
        std::fs::remove_dir_all(p.path(&format!("work/{stage}"))).unwrap();
    }
    let rerun = p.run(&["run", "b.toml", "--json"]).ok();
    assert!(
        rerun.stages_with("stage_started").is_empty(),
        "{}",
        rerun.stdout
    );
    assert_eq!(rerun.stages_with("stage_cached"), vec!["b", "b2"]);
    // And gc from b's side keeps a's entry.
    let gc = p.run(&["gc", "b.toml"]).ok();
    assert!(
        gc.stderr.contains("removed 0 cache entries and 0 objects"),
        "{}",
        gc.stderr
    );
    assert!(cached(&p, &new_a));
}

#[test]
fn gc_collects_the_entries_of_a_deleted_lock_file_and_keeps_all_for_a_broken_one() {
    let p = shared_workdir();
    p.run(&["run", "a.toml"]).ok();
    p.run(&["run", "b.toml"]).ok();
    let a_keys = lock_keys(&p, "a.toml.lock");
    let b_keys = lock_keys(&p, "b.toml.lock");

    // A lock file that does not parse: nothing is removed, and the warning names it.
    let b_lock = p.read("b.toml.lock");
    p.file("b.toml.lock", "stages = [broken");
    let gc = p.run(&["gc", "a.toml"]).ok();
    assert!(
        gc.stderr.contains("warning:") && gc.stderr.contains("b.toml.lock"),
        "{}",
        gc.stderr
    );
    assert!(
        gc.stderr.contains("removed 0 cache entries and 0 objects"),
        "{}",
        gc.stderr
    );
    assert!(b_keys.values().all(|k| cached(&p, k)));
    p.file("b.toml.lock", b_lock);

    // A deleted lock file: its entries go, a's stay, and it is forgotten.
    std::fs::remove_file(p.path("b.toml.lock")).unwrap();
    let gc = p.run(&["gc", "a.toml"]).ok();
    assert!(
        gc.stderr.contains("removed 2 cache entries"),
        "{}",
        gc.stderr
    );
    assert!(!gc.stderr.contains("warning"), "{}", gc.stderr);
    assert!(b_keys.values().all(|k| !cached(&p, k)));
    assert!(a_keys.values().all(|k| cached(&p, k)));
    let records = std::fs::read_dir(p.path("work/.gptpipe/lockfiles"))
        .unwrap()
        .count();
    assert_eq!(records, 1);
}
