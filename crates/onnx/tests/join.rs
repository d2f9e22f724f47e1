//! Rows joining a running batch (`Backend::join`, continuous batching): each row's logits
//! equal those of the same row run alone, through rows of different lengths, rows leaving
//! and joining, and the cache's compaction; an export without `attention_mask` and
//! `position_ids` still runs but cannot join.

use crate::backend::exported;
use crate::common::TinyModel;
use gptpipe_core::config::Device;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::Backend;
use gptpipe_onnx::backend::OnnxBackend;
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::Runtime;
use std::path::Path;

const TOL: f32 = 1e-4;

fn open(onnx: &Path) -> OnnxBackend {
    OnnxBackend::open(
        &Runtime::new(),
        &ModelSource::Folder(onnx.to_path_buf()),
        &Device::Cpu,
    )
    .unwrap()
}

/// The next-token logits of `tokens` run alone, from scratch (no cache, no padding).
fn alone(backend: &mut OnnxBackend, tokens: &[u32]) -> Vec<f32> {
    backend.start(&[tokens.to_vec()]).unwrap();
    backend.logits().unwrap().data
}

/// Checks every row's logits against the row alone.
fn check_rows(batch: &mut OnnxBackend, reference: &mut OnnxBackend, rows: &[Vec<u32>], what: &str) {
    let logits = batch.logits().unwrap();
    assert_eq!(logits.rows, rows.len(), "{what}");
    for (r, tokens) in rows.iter().enumerate() {
        let d = gptpipe_testkit::max_abs_diff(logits.row(r), &alone(reference, tokens));
        assert!(
            d <= TOL,
            "{what}: row {r} ({} tokens) differs by {d}",
            tokens.len()
        );
    }
}

/// Steps `steps` of every row (each fed `token(row, step)`), checking the logits of each
/// against the row alone after every one.
fn step_and_check(
    batch: &mut OnnxBackend,
    reference: &mut OnnxBackend,
    rows: &mut [Vec<u32>],
    steps: std::ops::Range<usize>,
) {
    for s in steps {
        let tokens: Vec<u32> = (0..rows.len()).map(|r| token(r, s)).collect();
        batch.step(&tokens).unwrap();
        rows.iter_mut()
            .zip(&tokens)
            .for_each(|(row, &t)| row.push(t));
        check_rows(batch, reference, rows, &format!("step {s}"));
    }
}

/// A token that depends on the row and the step, not on the logits.
fn token(row: usize, step: usize) -> u32 {
    ((row * 131 + step * 17 + 5) % 997) as u32
}

#[test]
fn a_row_joining_a_running_batch_equals_itself_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, onnx) = exported(tmp.path(), TinyModel::default());
    let (mut batch, mut reference) = (open(&onnx), open(&onnx));
    assert!(batch.can_join());

    // Two rows started together, then two of other lengths joined on an existing batch.
    let mut rows: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 5], vec![9, 8, 7, 6, 5]];
    batch.start(&rows).unwrap();
    check_rows(&mut batch, &mut reference, &rows, "start");
    step_and_check(&mut batch, &mut reference, &mut rows, 0..4);
    // Prompts shorter and longer than the rows there (9 tokens in), one of each length
    // twice (prefilled together).
    let joining = vec![vec![40, 41, 42], vec![50; 12], vec![60, 61, 62]];
    batch.join(&joining).unwrap();
    rows.extend(joining);
    check_rows(&mut batch, &mut reference, &rows, "join");
    step_and_check(&mut batch, &mut reference, &mut rows, 4..14);
    assert!(batch.columns() <= batch.n_ctx());
}

#[test]
fn rows_leaving_and_joining_over_rounds_with_compaction_equal_themselves_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TinyModel {
        seed: 3,
        n_positions: 16,
        ..TinyModel::default()
    };
    let (_, onnx) = exported(tmp.path(), model);
    let (mut batch, mut reference) = (open(&onnx), open(&onnx));
    let n_ctx = batch.n_ctx();
    assert_eq!(n_ctx, 16);

    // Joined first on an empty backend, never started.
    let mut rows: Vec<Vec<u32>> = vec![vec![3; 6], vec![4, 5]];
    batch.join(&rows).unwrap();
    check_rows(&mut batch, &mut reference, &rows, "first join");
    let mut steps = 0;
    let mut next_prompt = 0usize;
    for round in 0..8 {
        for _ in 0..3 {
            // Rows at the context leave first (the caller keeps rows under n_ctx).
            let keep: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].len() < n_ctx).collect();
            if keep.len() < rows.len() {
                batch.retain(&keep).unwrap();
                rows = keep.iter().map(|&r| rows[r].clone()).collect();
            }
            if rows.is_empty() {
                break;
            }
            let tokens: Vec<u32> = (0..rows.len()).map(|r| token(r + round, steps)).collect();
            batch.step(&tokens).unwrap();
            steps += 1;
            rows.iter_mut()
                .zip(&tokens)
                .for_each(|(row, &t)| row.push(t));
            check_rows(
                &mut batch,
                &mut reference,
                &rows,
                &format!("round {round} step"),
            );
            assert!(batch.columns() <= n_ctx);
        }
        // Drop every other row (mixed order: first, middle or last), then join one or two.
        let keep: Vec<usize> = (0..rows.len()).filter(|r| (r + round) % 2 == 0).collect();
        batch.retain(&keep).unwrap();
        rows = keep.iter().map(|&r| rows[r].clone()).collect();
        check_rows(
            &mut batch,
            &mut reference,
            &rows,
            &format!("round {round} retain"),
        );
        let joining: Vec<Vec<u32>> = (0..1 + round % 2)
            .map(|_| {
                next_prompt += 1;
                (0..1 + next_prompt * 5 % 11)
                    .map(|i| token(next_prompt, i))
                    .collect()
            })
            .collect();
        batch.join(&joining).unwrap();
        rows.extend(joining);
        check_rows(
            &mut batch,
            &mut reference,
            &rows,
            &format!("round {round} join"),
        );
    }
    // More steps on one batch than the context has columns: without compaction the cache
    // would have outgrown it.
    assert!(steps > n_ctx, "{steps} steps");
}

/// Greedy continuation of rows joined at different times equals each row alone.
#[test]
fn greedy_tokens_of_joined_rows_equal_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, onnx) = exported(tmp.path(), TinyModel::default());
    let (mut batch, mut reference) = (open(&onnx), open(&onnx));
    let argmax = |b: &mut OnnxBackend| -> Vec<u32> {
        b.top_k(1).unwrap().iter().map(|row| row[0].1).collect()
    };
    let new = 40;
    let prompts: Vec<Vec<u32>> = vec![vec![11, 12, 13, 14], vec![7; 9], vec![500, 2]];
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            reference.start(std::slice::from_ref(p)).unwrap();
            let mut out = Vec::new();
            for _ in 0..new {
                let t = argmax(&mut reference)[0];
                out.push(t);
                reference.step(&[t]).unwrap();
            }
            out
        })
        .collect();

    // Row i joins at step 12 i; rows leave after `new` tokens.
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut active: Vec<usize> = Vec::new();
    for step in 0.. {
        if step % 12 == 0 && step / 12 < prompts.len() {
            batch.join(&[prompts[step / 12].clone()]).unwrap();
            active.push(step / 12);
        }
        let tokens = argmax(&mut batch);
        for (&i, &t) in active.iter().zip(&tokens) {
            got[i].push(t);
        }
        let keep: Vec<usize> = (0..active.len())
            .filter(|&r| got[active[r]].len() < new)
            .collect();
        if keep.is_empty() && step / 12 >= prompts.len() {
            break;
        }
        let tokens: Vec<u32> = keep.iter().map(|&r| tokens[r]).collect();
        batch.retain(&keep).unwrap();
        active = keep.iter().map(|&r| active[r]).collect();
        if !active.is_empty() {
            batch.step(&tokens).unwrap();
        }
    }
    assert_eq!(got, want);
}

#[test]
fn bad_prompts_to_join_are_errors_and_leave_the_batch_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, onnx) = exported(tmp.path(), TinyModel::default());
    let (mut batch, mut reference) = (open(&onnx), open(&onnx));
    let n_ctx = batch.n_ctx();
    assert!(batch.join(&[]).is_err());
    assert!(batch.join(&[vec![]]).is_err());
    let rows = vec![vec![1, 2, 3]];
    batch.join(&rows).unwrap();
    for bad in [vec![vec![5], vec![]], vec![vec![5; n_ctx + 1]]] {
        let err = batch.join(&bad).unwrap_err().to_string();
        assert!(err.contains("tokens"), "{err}");
    }
    check_rows(&mut batch, &mut reference, &rows, "after refused joins");
    // A whole context as a prompt is fine, but that row cannot step further.
    batch.join(&[vec![6; n_ctx]]).unwrap();
    let err = batch.step(&[1, 2]).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    batch.retain(&[0]).unwrap();
    batch.step(&[4]).unwrap();
    check_rows(
        &mut batch,
        &mut reference,
        &[vec![1, 2, 3, 4]],
        "after a refused step",
    );
}

/// An export made before `attention_mask`/`position_ids` existed still loads and
/// generates like a current one, but refuses to join.
#[test]
fn an_export_without_mask_inputs_runs_but_cannot_join() {
    let tmp = tempfile::tempdir().unwrap();
    let (hf, onnx) = exported(tmp.path(), TinyModel::default());
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let opts = ExportOptions {
        mask_inputs: false,
        ..ExportOptions::default()
    };
    export_folder(&hf, &old, &opts).unwrap();
    let (mut old, mut new) = (open(&old), open(&onnx));
    assert!(!old.can_join() && new.can_join());
    let rows = vec![vec![1, 2, 3], vec![4, 5, 6]];
    old.start(&rows).unwrap();
    new.start(&rows).unwrap();
    for s in 0..5 {
        let tokens = [token(0, s), token(1, s)];
        old.step(&tokens).unwrap();
        new.step(&tokens).unwrap();
        old.retain(&[0, 1]).unwrap();
        let d =
            gptpipe_testkit::max_abs_diff(&old.logits().unwrap().data, &new.logits().unwrap().data);
        assert!(d <= TOL, "step {s}: {d}");
    }
    let err = old.join(&[vec![1]]).unwrap_err().to_string();
    assert!(err.contains("attention_mask"), "{err}");
}
