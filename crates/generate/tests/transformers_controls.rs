//! The stop and shape controls against transformers' own logits processors, in the order
//! `GenerationMixin._get_logits_processor` applies them (repetition penalty,
//! `NoRepeatNGramLogitsProcessor`, `NoBadWordsLogitsProcessor`,
//! `MinNewTokensLengthLogitsProcessor`), on the same GPT-2 logits rows and contexts.
//!
//! `bad_words` is a byte-level rule (a word is banned whatever its tokenisation), wider
//! than transformers' (which bans the word's own token sequence): the reference side also
//! computes the byte rule by brute force over the vocabulary with transformers' GPT-2
//! tokenizer (its byte-level alphabet), and the test checks that our bans are exactly
//! transformers' bans plus those, that transformers' bad-word bans are among them, and
//! that every logit left finite is transformers' value.

use gptpipe_generate::rng::SampleRng;
use gptpipe_generate::sampling::apply_repetition_penalty;
use gptpipe_generate::{Job, SampleRow, Sampling};

struct Case {
    prefix: &'static str,
    generated: &'static str,
    stops: &'static [&'static str],
    repetition_penalty: f64,
    min_length: usize,
    no_repeat_ngram_size: usize,
    bad_words: &'static [&'static str],
}

const CASES: &[Case] = &[
    // Every control at once; fewer generated tokens than min_length.
    Case {
        prefix: "The cat sat on the mat. The cat",
        generated: " sat on the",
        stops: &["<|endoftext|>", "\n"],
        repetition_penalty: 1.3,
        min_length: 5,
        no_repeat_ngram_size: 3,
        bad_words: &[" dog", "mat"],
    },
    // Past min_length (no eos ban), bigrams, a word split across two tokens whose first
    // token ends the context.
    Case {
        prefix: "Hello world, said the program. It said Hello",
        generated: " again and again, Hello",
        stops: &["<|endoftext|>"],
        repetition_penalty: 1.0,
        min_length: 2,
        no_repeat_ngram_size: 2,
        bad_words: &[" Hello world", "xyz"],
    },
    // A bad word of several tokens, half of it at the end of the context.
    Case {
        prefix: "That story was totally unbel",
        generated: "",
        stops: &["\n"],
        repetition_penalty: 0.9,
        min_length: 3,
        no_repeat_ngram_size: 1,
        bad_words: &["unbelievable", " ok"],
    },
];

/// Deterministic logits with a realistic spread.
fn logits(row: u64, vocab: usize) -> Vec<f32> {
    let mut rng = SampleRng::for_sample(77, row);
    (0..vocab)
        .map(|_| {
            let u = rng.next_f64();
            let v = rng.next_f64();
            let z = (-2.0 * (u + 1e-12).ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            (z * 2.0) as f32
        })
        .collect()
}

#[test]
fn controls_match_transformers_logits_processors() {
    let codec = gptpipe_generate::codec::gpt2().unwrap();
    let vocab = codec.vocab_len();
    let tok_dir = tempfile::tempdir().unwrap();
    gptpipe_text::write_tokenizer_files(tok_dir.path()).unwrap();
    let mut ours = Vec::new();
    let mut spec_cases = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let stops: Vec<String> = c.stops.iter().map(|s| s.to_string()).collect();
        let bad: Vec<String> = c.bad_words.iter().map(|s| s.to_string()).collect();
        let sampling = Sampling {
            repetition_penalty: c.repetition_penalty,
            ..Sampling::default()
        };
        let job = Job::new(codec.as_ref(), c.prefix, true, 100, sampling, 0, &stops)
            .unwrap()
            .with_controls(codec.as_ref(), c.min_length, c.no_repeat_ngram_size, &bad)
            .unwrap();
        let mut row = SampleRow::new(&job, 0);
        for t in codec.encode(c.generated).unwrap() {
            assert!(row.push(t, codec.as_ref(), &job), "case {i} stopped early");
        }
        let raw = logits(i as u64, vocab);
        let mut l = raw.clone();
        apply_repetition_penalty(&mut l, row.context(), c.repetition_penalty as f32);
        row.mask(&job, &mut l);
        ours.push(l);
        // transformers' eos ids: the stop strings that are one token.
        let eos: Vec<u32> = stops
            .iter()
            .filter_map(|s| match codec.encode(s).unwrap()[..] {
                [t] => Some(t),
                _ => None,
            })
            .collect();
        spec_cases.push(serde_json::json!({
            "prompt": job.prompt, "generated": row.generated(), "logits": raw,
            "penalty": c.repetition_penalty, "ngram": c.no_repeat_ngram_size,
            "min_length": c.min_length, "eos": eos, "bad_words": c.bad_words,
        }));
    }
    let spec = serde_json::json!({ "tokenizer": tok_dir.path(), "cases": spec_cases });
    let script = r#"
import sys, json, math, torch
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.generation.logits_process import (LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
    NoBadWordsLogitsProcessor, MinNewTokensLengthLogitsProcessor)
spec = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
byte_of = {u: b for b, u in bytes_to_unicode().items()}
vocab = [bytes(byte_of[ch] for ch in tok.convert_ids_to_tokens(i)) for i in range(len(tok))]
out = []
for c in spec["cases"]:
    ids = torch.tensor([c["prompt"] + c["generated"]])
    procs = LogitsProcessorList()
    if c["penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(c["penalty"]))
    if c["ngram"] > 0:
        procs.append(NoRepeatNGramLogitsProcessor(c["ngram"]))
    bad_ids = [tok(w)["input_ids"] for w in c["bad_words"]]
    if bad_ids:
        procs.append(NoBadWordsLogitsProcessor(bad_ids))
    if c["min_length"] > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(len(c["prompt"]), c["min_length"], c["eos"]))
    scores = procs(ids, torch.tensor([c["logits"]], dtype=torch.float32))[0].tolist()
    only_bad = NoBadWordsLogitsProcessor(bad_ids)(ids, torch.zeros(1, len(vocab)))[0]
    tf_bad = torch.isinf(only_bad).nonzero().flatten().tolist()
    # The byte rule by brute force: appending the token's bytes completes a word.
    text = b"".join(vocab[i] for i in ids[0].tolist())
    words = [w.encode() for w in c["bad_words"]]
    brute = [t for t, b in enumerate(vocab)
             if any(w in text[len(text) - (len(w) - 1):] + b for w in words)]
    out.append({"scores": [s if math.isfinite(s) else None for s in scores],
                "tf_bad": tf_bad, "brute": brute})
print(json.dumps(out))
"#;
    let expected: Vec<serde_json::Value> =
        serde_json::from_value(crate::common::run_python(script, &spec)).unwrap();
    for (i, (mine, want)) in ours.iter().zip(&expected).enumerate() {
        let scores = want["scores"].as_array().unwrap();
        let ids = |k: &str| -> Vec<usize> {
            want[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let (tf_bad, brute) = (ids("tf_bad"), ids("brute"));
        assert!(
            !tf_bad.is_empty(),
            "case {i}: transformers bans no bad word"
        );
        for t in &tf_bad {
            assert!(
                brute.contains(t),
                "case {i}: {t} banned by transformers only"
            );
        }
        assert_eq!(mine.len(), scores.len());
        let mut banned = 0;
        for (t, (&m, s)) in mine.iter().zip(scores).enumerate() {
            match s.as_f64() {
                _ if brute.binary_search(&t).is_ok() => {
                    assert_eq!(m, f32::NEG_INFINITY, "case {i}: token {t} not banned")
                }
                None => {
                    banned += 1;
                    assert_eq!(m, f32::NEG_INFINITY, "case {i}: token {t}: {m} vs -inf")
                }
                Some(v) => assert_eq!(m, v as f32, "case {i}: token {t}"),
            }
        }
        assert!(banned > 0, "case {i}: transformers banned nothing else");
    }
}
