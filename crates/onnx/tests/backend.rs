//! The ONNX Runtime generation backend through `gptpipe_generate`'s driver: greedy
//! decoding equals transformers' greedy `generate`, and the KV cache (with rows dropped as
//! they finish) gives the same tokens as recomputing every step without it. Scoring: the
//! one-pass `token_log_probs` equals transformers' `log_softmax` of its logits.

use crate::common::{reference_logits, run_py_stdin, TinyModel};
use gptpipe_core::config::Device;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{generate_batch, Backend, Codec, Job, Logits, Sampling};
use gptpipe_onnx::backend::OnnxBackend;
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::Runtime;
use std::path::Path;

/// Token `i` is the text `"<i>"`; `truncate` can then stop rows at chosen tokens.
struct NumberCodec;

impl Codec for NumberCodec {
    fn encode(&self, _: &str) -> anyhow::Result<Vec<u32>> {
        unimplemented!("the tests build jobs from token ids")
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        format!("<{id}>").into_bytes()
    }
    fn start_token(&self) -> u32 {
        0
    }
    fn vocab_len(&self) -> usize {
        unimplemented!("the tests set no bad_words")
    }
}

fn job(prompt: Vec<u32>, length: usize, sampling: Sampling, truncate: &str) -> Job {
    Job {
        prompt,
        prefix: String::new(),
        include_prefix: false,
        length,
        sampling,
        seed: 5,
        stops: [truncate]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect(),
        controls: None,
    }
}

fn run(backend: &mut dyn Backend, job: &Job, rows: usize) -> Vec<Vec<u32>> {
    generate_batch(backend, &NumberCodec, job, 0..rows, &mut |_| Ok(()))
        .unwrap()
        .into_iter()
        .map(|s| s.tokens)
        .collect()
}

pub fn exported(dir: &Path, model: TinyModel) -> (std::path::PathBuf, std::path::PathBuf) {
    let hf = model.cached();
    let onnx = dir.join("onnx");
    std::fs::create_dir_all(&onnx).unwrap();
    export_folder(&hf, &onnx, &ExportOptions::default()).unwrap();
    (hf, onnx)
}

#[test]
fn greedy_equals_transformers_generate() {
    let runtime = Runtime::new();
    let tmp = tempfile::tempdir().unwrap();
    let (hf, onnx) = exported(tmp.path(), TinyModel::default());
    let prompts: Vec<Vec<u32>> = vec![
        vec![7],
        vec![10, 200, 30, 999],
        vec![1, 2, 3, 4, 5, 6, 7, 8],
    ];
    let new = 50;
    let input = serde_json::json!({ "prompts": prompts, "new": new }).to_string();
    let want: Vec<Vec<u32>> = serde_json::from_value(
        run_py_stdin("greedy.py", &[hf.to_str().unwrap()], &input)["tokens"].clone(),
    )
    .unwrap();
    let mut backend =
        OnnxBackend::open(&runtime, &ModelSource::Folder(onnx), &Device::Cpu).unwrap();
    for (prompt, want) in prompts.iter().zip(&want) {
        // Two rows: every row of a greedy batch must follow the same path.
        let got = run(
            &mut backend,
            &job(prompt.clone(), new, Sampling::greedy(), ""),
            2,
        );
        assert_eq!(&got[0], want, "prompt {prompt:?}");
        assert_eq!(&got[1], want, "prompt {prompt:?}, second row");
    }
}

/// A backend without a KV cache: every step re-runs the whole rows.
struct Recompute {
    inner: OnnxBackend,
    rows: Vec<Vec<u32>>,
}

impl Backend for Recompute {
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn start(&mut self, rows: &[Vec<u32>]) -> anyhow::Result<()> {
        self.rows = rows.to_vec();
        self.inner.start(rows)
    }
    fn step(&mut self, tokens: &[u32]) -> anyhow::Result<()> {
        for (row, &t) in self.rows.iter_mut().zip(tokens) {
            row.push(t);
        }
        self.inner.start(&self.rows)
    }
    fn retain(&mut self, keep: &[usize]) -> anyhow::Result<()> {
        self.rows = keep.iter().map(|&i| self.rows[i].clone()).collect();
        self.inner.start(&self.rows)
    }
    fn logits(&mut self) -> anyhow::Result<Logits> {
        self.inner.logits()
    }
}

#[test]
fn kv_cache_with_finishing_rows_equals_recomputing() {
    let runtime = Runtime::new();
    let tmp = tempfile::tempdir().unwrap();
    // A small vocabulary so that "<7" (tokens 7 and 70..=79) stops rows at
    // different steps; the window slides past the 32-token context.
    let model = TinyModel {
        seed: 4,
        vocab: 200,
        n_positions: 32,
        ..TinyModel::default()
    };
    let (_, onnx) = exported(tmp.path(), model);
    let sampling = Sampling {
        temperature: 1.0,
        ..Sampling::greedy()
    };
    let open =
        || OnnxBackend::open(&runtime, &ModelSource::Folder(onnx.clone()), &Device::Auto).unwrap();
    let j = job(vec![3, 4, 5], 40, sampling, "<7");
    let cached = run(&mut open(), &j, 6);
    let mut recompute = Recompute {
        inner: open(),
        rows: Vec::new(),
    };
    let plain = run(&mut recompute, &j, 6);
    assert_eq!(cached, plain);
    // The truncate string really stopped rows at different lengths, and one ran long
    // enough to slide the window.
    let lens: std::collections::BTreeSet<usize> = cached.iter().map(Vec::len).collect();
    assert!(lens.len() > 2, "{lens:?}");

    // top_k sampling reads candidates through `Backend::top_k` (overridden by ours, the
    // trait's default in `Recompute`).
    let top_k = Sampling {
        top_k: 40,
        ..sampling
    };
    let j = job(vec![3, 4, 5], 20, top_k, "<7");
    let mut recompute = Recompute {
        inner: open(),
        rows: Vec::new(),
    };
    assert_eq!(run(&mut open(), &j, 4), run(&mut recompute, &j, 4));

    let j = job(vec![3, 4, 5], 40, sampling, "");
    let long = run(&mut open(), &j, 2);
    assert!(long.iter().all(|t| t.len() == 40));
    let mut recompute = Recompute {
        inner: open(),
        rows: Vec::new(),
    };
    assert_eq!(long, run(&mut recompute, &j, 2));
}

#[test]
fn safetensors_folder_is_exported_on_the_fly_and_cuda_is_refused() {
    let runtime = Runtime::new();
    let hf = TinyModel::default().cached();
    let mut backend =
        OnnxBackend::open(&runtime, &ModelSource::Folder(hf.clone()), &Device::Cpu).unwrap();
    assert_eq!((backend.n_ctx(), backend.vocab_size()), (64, 1000));
    backend.start(&[vec![1, 2, 3]]).unwrap();
    assert_eq!(backend.logits().unwrap().rows, 1);
    let err = OnnxBackend::open(&runtime, &ModelSource::Folder(hf), &Device::Cuda)
        .err()
        .unwrap();
    assert!(err.to_string().contains("CPU"), "{err}");
}

/// A folder whose only weights are a pickle is read through the weights-only unpickler
/// (tests/safety/pickles.rs): a file that is not torch.save's is an error naming it, not a
/// bare "file missing".
#[test]
fn a_pickle_that_torch_save_did_not_write_is_an_error_naming_it() {
    let runtime = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 16, "vocab_size": 50257}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really a pickle").unwrap();
    let err = match OnnxBackend::open(
        &runtime,
        &ModelSource::Folder(dir.path().to_path_buf()),
        &Device::Cpu,
    ) {
        Ok(_) => panic!("a damaged pickle should be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("pytorch_model.bin"), "{err}");
    assert!(err.contains("neither a zip nor a pickle"), "{err}");
}

#[test]
fn token_log_probs_equal_transformers_log_softmax_for_ragged_rows_and_past_the_context() {
    use gptpipe_generate::score::{log_prob_of, score_window};
    let runtime = Runtime::new();
    let tmp = tempfile::tempdir().unwrap();
    let n_ctx = 16;
    let (hf, onnx) = exported(
        tmp.path(),
        TinyModel {
            n_positions: n_ctx,
            ..TinyModel::default()
        },
    );
    let rows: Vec<Vec<u32>> = [2usize, 7, 16, 35]
        .iter()
        .enumerate()
        .map(|(r, &len)| {
            (0..len)
                .map(|c| ((r * 131 + c * 37 + c * c) % 1000) as u32)
                .collect()
        })
        .collect();
    let from = [1usize, 4, 1, 3];
    let mut backend =
        OnnxBackend::open(&runtime, &ModelSource::Folder(onnx), &Device::Cpu).unwrap();
    let got = backend.token_log_probs(&rows, &from).unwrap();

    // transformers' logits of each window a scored token's context starts, the token's
    // context being exactly that window up to it.
    let mut windows: Vec<(usize, usize)> = Vec::new(); // (row, start)
    for (r, (row, &f)) in rows.iter().zip(&from).enumerate() {
        for j in f..row.len() {
            let s = score_window(j, n_ctx);
            if !windows.contains(&(r, s)) {
                windows.push((r, s));
            }
        }
    }
    let inputs: Vec<Vec<i64>> = windows
        .iter()
        .map(|&(r, s)| {
            rows[r][s..rows[r].len().min(s + n_ctx)]
                .iter()
                .map(|&t| t as i64)
                .collect()
        })
        .collect();
    let logits = reference_logits(&hf, &inputs);
    for (r, (row, &f)) in rows.iter().zip(&from).enumerate() {
        assert_eq!(got[r].len(), row.len() - f, "row {r}");
        for (k, j) in (f..row.len()).enumerate() {
            let s = score_window(j, n_ctx);
            let w = windows.iter().position(|&x| x == (r, s)).unwrap();
            let want = log_prob_of(&logits[w][j - 1 - s], row[j]);
            let diff = (got[r][k] - want).abs();
            assert!(
                diff < 1e-4,
                "row {r} token {j}: {} vs transformers {want}",
                got[r][k]
            );
        }
    }
    // The backend still generates after scoring.
    backend.start(&[vec![1, 2, 3]]).unwrap();
    assert_eq!(backend.logits().unwrap().rows, 1);
}
