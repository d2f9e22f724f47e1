//! The sampler's filters against transformers' own logits processors (repetition penalty,
//! temperature, top-k, top-p) on the same logits: the tokens left with a finite score there
//! must be exactly the tokens we can pick, and every draw must land among them.

use gptpipe_generate::rng::SampleRng;
use gptpipe_generate::Sampling;

/// Deterministic logits with a realistic spread (a few large, a long tail).
fn logits(row: u64, vocab: usize) -> Vec<f32> {
    let mut rng = SampleRng::for_sample(1234, row);
    (0..vocab)
        .map(|_| {
            let u = rng.next_f64();
            let v = rng.next_f64();
            // Normal-ish via Box-Muller, scaled, plus an occasional spike.
            let z = (-2.0 * (u + 1e-12).ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            (z * 1.5 + if v > 0.99 { 2.0 } else { 0.0 }) as f32
        })
        .collect()
}

#[test]
fn filters_match_transformers_logits_processors() {
    let vocab = 500;
    let seen: Vec<u32> = vec![3, 17, 17, 256, 499];
    let settings = [
        Sampling {
            temperature: 1.0,
            top_k: 10,
            ..Sampling::default()
        },
        Sampling {
            temperature: 0.7,
            top_p: 0.9,
            ..Sampling::default()
        },
        Sampling {
            temperature: 1.3,
            top_p: 0.5,
            ..Sampling::default()
        },
        Sampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.8,
            ..Sampling::default()
        },
        Sampling {
            temperature: 0.9,
            top_k: 25,
            repetition_penalty: 1.3,
            ..Sampling::default()
        },
        Sampling {
            temperature: 0.8,
            top_p: 0.95,
            repetition_penalty: 0.8,
            ..Sampling::default()
        },
    ];
    let rows: Vec<Vec<f32>> = (0..settings.len() as u64)
        .map(|r| logits(r, vocab))
        .collect();
    let spec = serde_json::json!({
        "rows": rows,
        "seen": seen,
        "settings": settings.iter().map(|s| serde_json::json!({
            "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
        })).collect::<Vec<_>>(),
    });
    let script = r#"
import sys, json, torch
from transformers.generation.logits_process import (LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
spec = json.loads(sys.stdin.read())
seen = torch.tensor([spec["seen"]])
out = []
for row, s in zip(spec["rows"], spec["settings"]):
    procs = LogitsProcessorList()
    if s["repetition_penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s["repetition_penalty"]))
    procs.append(TemperatureLogitsWarper(s["temperature"]))
    if s["top_k"] > 0:
        procs.append(TopKLogitsWarper(s["top_k"]))
    if 0 < s["top_p"] < 1:
        procs.append(TopPLogitsWarper(s["top_p"]))
    scores = procs(seen, torch.tensor([row], dtype=torch.float32))
    out.append(torch.isfinite(scores[0]).nonzero().flatten().tolist())
print(json.dumps(out))
"#;
    let expected: Vec<Vec<u32>> =
        serde_json::from_value(crate::common::run_python(script, &spec)).unwrap();

    for ((s, row), want) in settings.iter().zip(&rows).zip(&expected) {
        assert!(
            want.len() > 1 && want.len() < vocab,
            "{s:?}: a trivial reference set"
        );
        assert_eq!(&s.support(row, &seen), want, "{s:?}");
        let mut rng = SampleRng::for_sample(5, 0);
        for _ in 0..300 {
            let t = s.sample_row(&mut row.clone(), &seen, rng.next_f64());
            assert!(
                want.binary_search(&t).is_ok(),
                "{s:?}: drew {t} outside {want:?}"
            );
        }
    }
}
