//! Known answers: the exact random stream and tokens of a fixed (seed, sample index). The
//! other tests check properties (same seed, same sample; batch-independence); these pin the
//! values themselves, so a change to the generator, the seeding or the sampler, which would
//! silently change every sample of every pipeline for the same seed, fails here.
//!
//! The expected values were computed by this code as of the commit that added this file
//! (gptpipe-generate 0.1.0: xoshiro256** seeded through SplitMix64, inverse-CDF sampling)
//! and printed by the failing assertions. A deliberate change updates them together with
//! the generate stage's version in `gptpipe_core::stage::versions`, so cached samples go
//! stale instead of differing from a fresh run.

use crate::common::*;
use gptpipe_generate::rng::SampleRng;
use gptpipe_generate::{generate_range, Job, Sampling};

const SEED: u64 = 42;
const INDEX: u64 = 3;

/// Fails with a message naming what changed and how the value was pinned.
#[track_caller]
fn pinned<T: PartialEq + std::fmt::Debug>(what: &str, actual: T, expected: T) {
    assert!(
        actual == expected,
        "KNOWN ANSWER CHANGED: {what}\n  expected (pinned): {expected:?}\n  actual:            {actual:?}\n\
         Every generated sample of every pipeline with this seed changes with it. If that is \
         intended, bump the generate stage's version (gptpipe_core::stage::versions) and pin \
         the new value here."
    );
}

#[test]
fn the_random_stream_of_a_sample_is_pinned() {
    let mut rng = SampleRng::for_sample(SEED, INDEX);
    let draws: Vec<u64> = (0..6).map(|_| rng.next_u64()).collect();
    pinned(
        "SampleRng::for_sample(42, 3), first 6 next_u64",
        draws,
        vec![
            11833749774462796356,
            5397008838285031696,
            17593388348686760057,
            12313180390845809950,
            12314553303295501104,
            7907833901230644505,
        ],
    );
    // next_f64 is the top 53 bits of next_u64: the first uniforms of sample 0.
    let mut rng = SampleRng::for_sample(SEED, 0);
    let uniforms: Vec<u64> = (0..4).map(|_| rng.next_f64().to_bits()).collect();
    pinned(
        "SampleRng::for_sample(42, 0), first 4 next_f64 (as f64 bits)",
        uniforms,
        vec![
            4606924101816778845,
            4605020916570679121,
            4604064491118655314,
            4598950630539037480,
        ],
    );
}

/// Fixed logits over 50 tokens with ties, a spread and a long tail.
fn fixed_logits() -> Vec<f32> {
    (0..50u32)
        .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
        .collect()
}

/// The first 12 tokens chosen for sample (42, 3) from [`fixed_logits`], each step seeing
/// the tokens chosen so far (for the repetition penalty).
fn tokens(sampling: Sampling) -> Vec<u32> {
    let mut rng = SampleRng::for_sample(SEED, INDEX);
    let mut seen = Vec::new();
    for _ in 0..12 {
        let mut logits = fixed_logits();
        let t = sampling.sample_row(&mut logits, &seen, rng.next_f64());
        seen.push(t);
    }
    seen
}

#[test]
fn the_tokens_chosen_from_fixed_logits_are_pinned() {
    let cases: [(&str, Sampling, Vec<u32>); 5] = [
        (
            "temperature 1",
            Sampling {
                temperature: 1.0,
                ..Sampling::default()
            },
            vec![32, 22, 49, 32, 32, 27, 27, 39, 7, 27, 27, 32],
        ),
        (
            "temperature 0.7 (the default)",
            Sampling::default(),
            vec![32, 22, 49, 32, 32, 27, 27, 34, 12, 27, 27, 32],
        ),
        (
            "temperature 0.9, top_k 10",
            Sampling {
                temperature: 0.9,
                top_k: 10,
                ..Sampling::default()
            },
            vec![17, 27, 39, 49, 49, 27, 22, 44, 32, 22, 22, 49],
        ),
        (
            "temperature 1.2, top_p 0.8",
            Sampling {
                temperature: 1.2,
                top_p: 0.8,
                ..Sampling::default()
            },
            vec![49, 27, 2, 49, 49, 22, 22, 44, 32, 22, 17, 49],
        ),
        (
            "temperature 0.8, top_k 20, top_p 0.9, repetition_penalty 1.3",
            Sampling {
                temperature: 0.8,
                top_k: 20,
                top_p: 0.9,
                repetition_penalty: 1.3,
            },
            vec![17, 32, 17, 12, 44, 22, 32, 2, 27, 7, 39, 34],
        ),
    ];
    for (name, sampling, expected) in cases {
        pinned(
            &format!("tokens of sample (42, 3) from fixed logits, {name}"),
            tokens(sampling),
            expected,
        );
    }
}

#[test]
fn the_samples_of_the_decoding_loop_are_pinned() {
    // The whole path a sample takes: its stream, the loop, batching of 4 samples by 3 and
    // the sliding window (n_ctx 8 < prompt + length), on the fake model of `common`.
    let sampling = Sampling {
        temperature: 1.0,
        top_k: 8,
        ..Sampling::default()
    };
    let job = Job::new(&FakeCodec, "abc", true, 10, sampling, SEED, &[]).unwrap();
    let mut backend = FakeBackend::new(8);
    let mut samples = Vec::new();
    generate_range(
        &mut backend,
        &FakeCodec,
        &job,
        0..4,
        3,
        &mut |_| Ok(()),
        &mut |b| {
            samples.extend(b);
            Ok(())
        },
    )
    .unwrap();
    samples.sort_by_key(|s| s.index);
    let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    pinned(
        "texts of samples 0..4 (seed 42, prefix \"abc\", length 10, top_k 8) on the fake model",
        texts,
        vec![
            "abcgcid<e><e>ha",
            "abcbibie<e>bdhe",
            "abce\nea<e>j<e>gi",
            "abcecjai<e>agdb",
        ],
    );
}
