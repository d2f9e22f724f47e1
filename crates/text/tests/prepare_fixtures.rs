//! The prepare stage against hand-written expected files.
//!
//! Each folder in `tests/fixtures/prepare/` holds a pipeline (`gptpipe.toml`, stage
//! `data`), its inputs and `expected/`: `dataset.txt` (byte-exact), `report.json` (the keys
//! it lists must match) or `error.txt` (each line must appear in the error message).
//! `tokens.bin` must hold tiktoken's `r50k_base` ids of `dataset.txt`.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

fn check_case(case: &Path, peer: &tiktoken_rs::CoreBPE) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    let expected = case.join("expected");
    let result = common::run_stage(
        &case.join("gptpipe.toml"),
        "data",
        out.path(),
        &BTreeMap::new(),
    );
    if let Ok(want) = std::fs::read_to_string(expected.join("error.txt")) {
        let message = match result {
            Ok(_) => return Err("succeeded; expected an error".into()),
            Err(e) => format!("{e:#}"),
        };
        for line in want.lines().filter(|l| !l.is_empty()) {
            if !message.contains(line) {
                return Err(format!("error {message:?} does not contain {line:?}"));
            }
        }
        return Ok(());
    }
    let got = result.map_err(|e| format!("failed: {e:#}"))?;
    let want = std::fs::read_to_string(expected.join("dataset.txt")).map_err(|e| e.to_string())?;
    if got.dataset != want {
        return Err(format!(
            "dataset.txt\n  got:  {:?}\n  want: {want:?}",
            got.dataset
        ));
    }
    let ids = peer.encode_with_special_tokens(&got.dataset);
    if got.tokens != ids {
        return Err(format!("tokens.bin {:?} != tiktoken {ids:?}", got.tokens));
    }
    let r = &got.report;
    if r["tokens"] != ids.len() || r["bytes"] != want.len() {
        return Err(format!("report tokens/bytes wrong: {r}"));
    }
    if r["rows_read"].as_u64()
        != Some(r["rows_kept"].as_u64().unwrap() + r["rows_dropped"].as_u64().unwrap())
    {
        return Err(format!("rows do not add up: {r}"));
    }
    if let Ok(want) = std::fs::read_to_string(expected.join("report.json")) {
        let want: serde_json::Value = serde_json::from_str(&want).unwrap();
        common::json_subset(&want, r).map_err(|m| format!("report.json {m}\n{r:#}"))?;
    }
    Ok(())
}

#[test]
fn fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prepare");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "fixtures missing in {}", root.display());
    let peer = tiktoken_rs::r50k_base().unwrap();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            check_case(case, &peer)
                .err()
                .map(|e| format!("{name}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
