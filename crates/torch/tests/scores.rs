//! Token log-probabilities of the libtorch backend, through its one-pass path and through
//! the default path (`start`/`step`/`logits`), against transformers' `log_softmax` of
//! `GPT2LMHeadModel`'s logits, each token run on its own context.

use crate::common::{make_hf_model, run_python};
use gptpipe_generate::score::{log_probs_by_steps, score_window};
use gptpipe_generate::Backend;
use gptpipe_torch::generation::TchBackend;
use gptpipe_torch::weights::load_folder;
use tch::Device;

/// transformers' log-probability of each `(context, target)`: one forward pass per case.
const REFERENCE: &str = r#"
import sys, json, torch, transformers
m = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
out = []
with torch.no_grad():
    for ctx, target in json.load(open(sys.argv[2])):
        logits = m(torch.tensor([ctx])).logits[0, -1].double()
        out.append(torch.log_softmax(logits, -1)[target].item())
print(json.dumps(out))
"#;

#[test]
fn log_probs_equal_transformers_for_rows_of_different_lengths_and_past_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let (n_ctx, vocab) = (16, 97);
    make_hf_model(dir.path(), 2, 2, 32, n_ctx, vocab, 5);
    // Shorter than, equal to and longer than the context (the last slides through
    // windows); `from` past the first token for some.
    let lengths = [2usize, 5, 16, 17, 41];
    let from = [1usize, 3, 1, 9, 2];
    let rows: Vec<Vec<u32>> = lengths
        .iter()
        .enumerate()
        .map(|(r, &len)| {
            (0..len)
                .map(|c| ((r * 31 + c * 17 + c * c) % vocab) as u32)
                .collect()
        })
        .collect();

    // The reference: token j of a row on exactly the context the contract promises.
    let mut cases = Vec::new();
    for (row, &f) in rows.iter().zip(&from) {
        for j in f..row.len() {
            let s = score_window(j, n_ctx);
            assert!(j - s < n_ctx && (j < n_ctx || j - s >= n_ctx / 2));
            cases.push((row[s..j].to_vec(), row[j]));
        }
    }
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&cases).unwrap()).unwrap();
    let want: Vec<f64> = serde_json::from_str(&run_python(
        REFERENCE,
        &[dir.path().to_str().unwrap(), cases_file.to_str().unwrap()],
    ))
    .unwrap();

    let mut backend = TchBackend::new(load_folder(dir.path(), Device::Cpu).unwrap());
    let fast = backend.token_log_probs(&rows, &from).unwrap();
    let stepped = log_probs_by_steps(&mut backend, &rows, &from).unwrap();
    for (name, got) in [("one pass", &fast), ("by steps", &stepped)] {
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        let want_lens: Vec<usize> = lengths.iter().zip(&from).map(|(l, f)| l - f).collect();
        assert_eq!(lens, want_lens, "{name}");
        let flat: Vec<f64> = got.iter().flatten().map(|&l| l as f64).collect();
        let worst = flat
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{name}: max |difference| {worst}");
        // Not a constant: the tokens' log-probabilities differ.
        assert!(flat.iter().any(|&l| (l - flat[0]).abs() > 1e-2), "{name}");
    }

    // A batch of one row gives that row's figures: rows do not affect each other.
    let alone = backend.token_log_probs(&rows[3..4], &from[3..4]).unwrap();
    let worst = alone[0]
        .iter()
        .zip(&fast[3])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn sample_scores_cover_the_kept_tokens_after_the_prompt_as_transformers_scores_them() {
    use gptpipe_generate::score::{kept_tokens, score_samples};
    use gptpipe_generate::{generate_range, Job, Sampling};
    let dir = tempfile::tempdir().unwrap();
    let (n_ctx, vocab) = (16, 97);
    make_hf_model(dir.path(), 2, 2, 32, n_ctx, vocab, 9);
    let codec = gptpipe_generate::codec::gpt2().unwrap();
    // Ids under 94 are single printable bytes in GPT-2's vocabulary ("!" is 0); samples
    // stop at any of five of them, or after 20 tokens (past the context: windows).
    let job = Job {
        prompt: vec![40, 41, 42],
        prefix: String::new(),
        include_prefix: false,
        length: 20,
        sampling: Sampling {
            temperature: 1.0,
            ..Sampling::default()
        },
        seed: 3,
        stops: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
        controls: None,
    };
    let mut backend = TchBackend::new(load_folder(dir.path(), Device::Cpu).unwrap());
    let mut samples = Vec::new();
    generate_range(
        &mut backend,
        codec.as_ref(),
        &job,
        0..8,
        3,
        &mut |_| Ok(()),
        &mut |b| {
            samples.extend(b);
            Ok(())
        },
    )
    .unwrap();
    let scores = score_samples(&mut backend, codec.as_ref(), &job, &samples, 3).unwrap();
    assert!(
        samples.iter().any(|s| s.truncated()),
        "no sample reached a stop"
    );

    let mut cases = Vec::new();
    let mut counts = Vec::new();
    for s in &samples {
        let kept = kept_tokens(s, codec.as_ref());
        // The kept tokens spell the sample's text, which ends before the stop.
        let text: Vec<u8> = kept.iter().flat_map(|&t| codec.token_bytes(t)).collect();
        assert_eq!(gptpipe_generate::codec::text_of(&text), s.text);
        assert_eq!(kept.len() < s.tokens.len(), s.truncated());
        let row = [job.prompt.as_slice(), kept].concat();
        for j in job.prompt.len()..row.len() {
            cases.push((row[score_window(j, n_ctx)..j].to_vec(), row[j]));
        }
        counts.push(kept.len());
    }
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&cases).unwrap()).unwrap();
    let want: Vec<f64> = serde_json::from_str(&run_python(
        REFERENCE,
        &[dir.path().to_str().unwrap(), cases_file.to_str().unwrap()],
    ))
    .unwrap();
    let mut rest = want.as_slice();
    for (score, n) in scores.iter().zip(counts) {
        let (mine, tail) = rest.split_at(n);
        rest = tail;
        match score {
            None => assert_eq!(n, 0),
            Some(s) => {
                assert_eq!(s.tokens, n);
                let mean = mine.iter().sum::<f64>() / n as f64;
                assert!(
                    (s.mean_logprob - mean).abs() < 1e-4,
                    "{} vs {mean}",
                    s.mean_logprob
                );
                assert!((s.perplexity - (-mean).exp()).abs() / s.perplexity < 1e-4);
            }
        }
    }
}
