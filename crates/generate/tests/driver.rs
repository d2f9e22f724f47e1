//! The decoding loop against a fake model: batching, per-row stops, the sliding window.

use crate::common::*;
use gptpipe_generate::rng::SampleRng;
use gptpipe_generate::{generate_range, Job, Sample, Sampling};

fn job(
    prefix: &str,
    length: usize,
    sampling: Sampling,
    truncate: &str,
    include_prefix: bool,
) -> Job {
    Job::new(
        &FakeCodec,
        prefix,
        include_prefix,
        length,
        sampling,
        42,
        &[truncate.to_owned()],
    )
    .unwrap()
}

fn run(job: &Job, n: usize, batch_size: usize, n_ctx: usize) -> (Vec<Sample>, Calls) {
    run_ahead(job, n, batch_size, n_ctx, 0)
}

/// [`run`] on a backend that samples `ahead` tokens per call by itself (0: never).
fn run_ahead(
    job: &Job,
    n: usize,
    batch_size: usize,
    n_ctx: usize,
    ahead: usize,
) -> (Vec<Sample>, Calls) {
    let mut backend = FakeBackend::new(n_ctx);
    backend.ahead = ahead;
    let mut out = Vec::new();
    generate_range(
        &mut backend,
        &FakeCodec,
        job,
        0..n,
        batch_size,
        &mut |_| Ok(()),
        &mut |b| {
            out.extend(b);
            Ok(())
        },
    )
    .unwrap();
    let calls = backend.calls.lock().unwrap().clone();
    (out, calls)
}

fn sampled() -> Sampling {
    Sampling {
        temperature: 1.0,
        ..Sampling::default()
    }
}

/// Decoding one sample with no cache and no batching: the model sees the whole context,
/// or its last n_ctx - 1 tokens once the context is full.
fn reference(job: &Job, index: usize, n_ctx: usize) -> Vec<u32> {
    let mut rng = SampleRng::for_sample(job.seed, index as u64);
    let mut ctx = job.prompt.clone();
    let mut out = Vec::new();
    let mut window = ctx.len();
    for _ in 0..job.length {
        let mut l = reference_logits(&ctx[ctx.len() - window..]);
        let t = job.sampling.sample_row(&mut l, &ctx, rng.next_f64());
        ctx.push(t);
        out.push(t);
        window = if window < n_ctx {
            window + 1
        } else {
            n_ctx - 1
        };
    }
    out
}

#[test]
fn samples_do_not_depend_on_batch_size() {
    let j = job("ab", 12, sampled(), "", true);
    let (one, _) = run(&j, 10, 1, 64);
    let (seven, _) = run(&j, 10, 7, 64);
    let (all, _) = run(&j, 10, 10, 64);
    assert_eq!(one, seven);
    assert_eq!(one, all);
    assert_eq!(
        one.iter().map(|s| s.index).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // And they are not all the same sample.
    assert!(one.iter().any(|s| s.tokens != one[0].tokens));
}

#[test]
fn batched_decoding_equals_one_row_without_cache() {
    let j = job(
        "abc",
        20,
        Sampling {
            temperature: 0.9,
            top_k: 5,
            ..Sampling::default()
        },
        "",
        true,
    );
    let (samples, _) = run(&j, 6, 4, 64);
    for s in &samples {
        assert_eq!(s.tokens, reference(&j, s.index, 64), "sample {}", s.index);
    }
}

#[test]
fn length_past_the_context_slides_the_window() {
    let n_ctx = 8;
    let j = job("abcde", 30, sampled(), "", true);
    let (samples, calls) = run(&j, 3, 3, n_ctx);
    assert!(calls.max_len <= n_ctx);
    for s in &samples {
        assert_eq!(s.tokens.len(), 30);
        assert_eq!(
            s.tokens,
            reference(&j, s.index, n_ctx),
            "sample {}",
            s.index
        );
    }
}

#[test]
fn truncate_stops_each_row_before_the_string_and_stops_its_compute() {
    let full = job("a", 12, sampled(), "", true);
    let cut = job("a", 12, sampled(), "<e>", true);
    let (full_s, full_calls) = run(&full, 12, 12, 64);
    let (cut_s, cut_calls) = run(&cut, 12, 12, 64);
    let mut stopped = 0;
    for (f, c) in full_s.iter().zip(&cut_s) {
        assert!(!c.text.contains("<e>"), "{:?}", c.text);
        match f.text.find("<e>") {
            Some(at) => {
                stopped += 1;
                assert!(c.truncated());
                assert_eq!(c.text, f.text[..at]);
                assert_eq!(*c.tokens.last().unwrap(), END);
                assert_eq!(c.tokens, f.tokens[..c.tokens.len()]);
            }
            None => {
                assert!(!c.truncated());
                assert_eq!(c.text, f.text);
            }
        }
    }
    assert!(
        (3..12).contains(&stopped),
        "the fake should stop some rows early ({stopped})"
    );
    // Finished rows were dropped from the batch.
    assert!(
        cut_calls.row_runs < full_calls.row_runs,
        "{cut_calls:?} vs {full_calls:?}"
    );
    let generated: usize = cut_s.iter().map(|s| s.tokens.len()).sum();
    // Each token but the last of each row costs one row-run; the prompt costs one per row.
    assert_eq!(cut_calls.row_runs, generated);
}

#[test]
fn truncate_matches_across_token_boundaries() {
    // "ab" needs two tokens; the sample must end before the "a".
    let full = job("c", 30, sampled(), "", true);
    let (full_s, _) = run(&full, 20, 5, 64);
    let cut = job("c", 30, sampled(), "ab", true);
    let (cut_s, _) = run(&cut, 20, 5, 64);
    let mut seen = false;
    for (f, c) in full_s.iter().zip(&cut_s) {
        if let Some(at) = f.text.find("ab") {
            seen = true;
            assert_eq!(c.text, f.text[..at]);
        }
    }
    assert!(seen, "no sample of the fake contains \"ab\"");
}

#[test]
fn include_prefix_false_drops_the_prefix_with_or_without_truncate() {
    for truncate in ["", "<e>"] {
        let with = job("bad", 15, sampled(), truncate, true);
        let without = job("bad", 15, sampled(), truncate, false);
        let (w, _) = run(&with, 5, 2, 64);
        let (wo, _) = run(&without, 5, 2, 64);
        for (a, b) in w.iter().zip(&wo) {
            assert_eq!(a.text, format!("bad{}", b.text));
        }
    }
}

#[test]
fn empty_prefix_starts_from_the_start_token() {
    let j = job("", 5, sampled(), "", true);
    assert_eq!(j.prompt, vec![START]);
    let (s, _) = run(&j, 2, 2, 64);
    assert!(s.iter().all(|s| s.tokens.len() == 5));
}

#[test]
fn a_prefix_longer_than_the_context_fails_before_any_work() {
    let j = job("abcdefghij", 5, sampled(), "", true);
    let mut backend = FakeBackend::new(8);
    let err = generate_range(
        &mut backend,
        &FakeCodec,
        &j,
        0..2,
        1,
        &mut |_| Ok(()),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("longer than the model's context of 8"),
        "{err}"
    );
    assert_eq!(backend.calls.lock().unwrap().starts, 0);
}

#[test]
fn greedy_rows_agree_and_last_batch_is_smaller() {
    let j = job("ab", 10, Sampling::greedy(), "", true);
    let (s, calls) = run(&j, 5, 2, 64);
    assert_eq!(s.len(), 5);
    assert!(s.iter().all(|x| x.tokens == s[0].tokens));
    // Batches of 2, 2, 1: one start each.
    assert_eq!(calls.starts, 3);
}

#[test]
fn sampling_ahead_on_the_backend_gives_the_same_samples() {
    let jobs = [
        job("ab", 40, sampled(), "", true),
        job("ab", 40, sampled(), "<e>", false),
        job("", 25, Sampling::greedy(), "", true),
        job(
            "c",
            30,
            Sampling {
                temperature: 0.8,
                top_k: 4,
                top_p: 0.9,
                ..Sampling::default()
            },
            "<e>",
            true,
        ),
    ];
    for j in &jobs {
        // n_ctx 8 makes the window slide inside and between blocks.
        for n_ctx in [8, 64] {
            let (want, _) = run(j, 7, 3, n_ctx);
            for (ahead, batch) in [(1, 1), (4, 3), (16, 7)] {
                let (got, calls) = run_ahead(j, 7, batch, n_ctx, ahead);
                assert_eq!(
                    got, want,
                    "ahead {ahead}, batch {batch}, n_ctx {n_ctx}, {j:?}"
                );
                assert!(calls.max_len <= n_ctx);
            }
        }
    }
}

/// A job with stop strings `stops` and the controls, from the prefix "ja", no prefix in
/// the text.
fn controlled(stops: &[&str], min_length: usize, ngram: usize, bad: &[&str]) -> Job {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
    Job::new(&FakeCodec, "ja", false, 40, sampled(), 42, &stops)
        .unwrap()
        .with_controls(&FakeCodec, min_length, ngram, &bad)
        .unwrap()
}

#[test]
fn controls_need_the_full_row_so_device_sampling_is_not_used() {
    let plain = controlled(&[], 0, 0, &[]);
    assert!(plain.controls.is_none());
    let j = controlled(&[], 0, 2, &["ea", "c"]);
    let (host, _) = run_ahead(&j, 8, 4, 64, 0);
    let (ahead, _) = run_ahead(&j, 8, 4, 64, 16);
    assert_eq!(host, ahead);
    let (free, _) = run(&plain, 8, 4, 64);
    let text = |s: &[Sample]| s.iter().map(|s| s.text.clone()).collect::<Vec<_>>();
    // Without the key the words appear; with it, never (in the prefix and text together).
    assert!(text(&free).iter().any(|t| t.contains("ea")));
    assert!(text(&free).iter().any(|t| t.contains('c')));
    for (s, t) in host.iter().zip(text(&host)) {
        let full = format!("ja{t}");
        assert!(!full.contains("ea") && !full.contains('c'), "{full:?}");
        // No bigram twice in the context (prompt and generated).
        let ctx: Vec<u32> = j.prompt.iter().chain(&s.tokens).copied().collect();
        let mut seen = std::collections::BTreeSet::new();
        for w in ctx.windows(2) {
            assert!(seen.insert(w.to_vec()), "bigram {w:?} twice in {ctx:?}");
        }
    }
}

#[test]
fn truncate_list_stops_at_the_earliest_string() {
    let j = controlled(&["<e>", "\n"], 0, 0, &[]);
    let (samples, _) = run(&j, 30, 8, 64);
    let (end, newline) = (END, 11);
    let stopped_by = |t: u32| {
        samples
            .iter()
            .filter(|s| s.truncated() && *s.tokens.last().unwrap() == t)
            .count()
    };
    assert!(stopped_by(end) > 0 && stopped_by(newline) > 0);
    for s in &samples {
        assert!(!s.text.contains("<e>") && !s.text.contains('\n'), "{s:?}");
        // The sample ends at its first stop token: none before it.
        let body = &s.tokens[..s.tokens.len() - s.truncated() as usize];
        assert!(!body.contains(&end) && !body.contains(&newline), "{s:?}");
    }
}

#[test]
fn min_length_holds_back_one_token_stops_and_ignores_earlier_matches() {
    let m = 6;
    // A one-token stop: it cannot be generated before m tokens (its logit is -inf), so a
    // truncated sample has at least m tokens before it; without min_length some stop
    // earlier.
    let early = |j: &Job| {
        let (samples, _) = run(j, 40, 8, 64);
        assert!(samples.iter().any(|s| s.truncated()));
        samples
            .iter()
            .filter(|s| s.truncated() && s.tokens.len() <= m)
            .count()
    };
    assert!(early(&controlled(&["<e>"], 0, 0, &[])) > 0);
    assert_eq!(early(&controlled(&["<e>"], m, 0, &[])), 0);
    // A stop of two tokens: a match ending in the first m tokens is kept in the text, the
    // first that ends later ends the sample.
    let j = controlled(&["da"], m, 0, &[]);
    let (samples, _) = run(&j, 300, 32, 64);
    let mut kept_early = 0;
    for s in samples.iter().filter(|s| s.truncated()) {
        // One byte per token: a match ending at byte i ends in token i.
        let ends: Vec<usize> = s.text.match_indices("da").map(|(i, _)| i + 1).collect();
        assert!(ends.iter().all(|&e| e < m), "{s:?}");
        kept_early += ends.len();
        assert!(s.tokens.len() > m);
    }
    assert!(kept_early > 0, "no early match to ignore");
}
