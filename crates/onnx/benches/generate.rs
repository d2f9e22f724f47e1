//! Generation speed of the ONNX Runtime backend beside transformers' `generate`, same
//! model, same run; plus the exported files' sizes and load times.
//!
//!   cargo bench -p gptpipe-onnx --bench generate
//!   cargo bench -p gptpipe-onnx --bench generate -- --layers 12 --heads 12 --embd 768 --new 64
//!
//! Settings are the tch bench's (crates/torch/benches/generate.rs), so its figures sit
//! beside these: a random GPT-2 saved by transformers (seed 0, vocab 50257), an 8-token
//! prompt, top_k = 40, temperature = 0.7, one short warm-up run before each measurement.

use gptpipe_core::stage::ModelSource;
use gptpipe_generate::{generate_range, Backend, Job, Sampling};
use gptpipe_onnx::backend::OnnxBackend;
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::graph::Float;
use gptpipe_onnx::runtime::{OnnxGpt2, SessionOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn python() -> PathBuf {
    std::env::var_os("GPTPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

fn sampling() -> Sampling {
    Sampling {
        temperature: 0.7,
        top_k: 40,
        ..Sampling::default()
    }
}

/// Tokens/s of ours: `batch` samples of `new` tokens each, after one short warm-up.
fn ours(backend: &mut dyn Backend, batch: usize, new: usize) -> f64 {
    let codec = gptpipe_generate::codec::gpt2().unwrap();
    let prompt: Vec<u32> = (0..8).map(|i| (i * 977 + 13) % 50257).collect();
    let run = |backend: &mut dyn Backend, length: usize| {
        let job = Job {
            prompt: prompt.clone(),
            prefix: String::new(),
            include_prefix: false,
            length,
            sampling: sampling(),
            seed: 0,
            truncate: String::new(),
        };
        let mut tokens = 0;
        let t = Instant::now();
        generate_range(
            backend,
            codec.as_ref(),
            &job,
            0..batch,
            batch,
            &mut |_| Ok(()),
            &mut |s| {
                tokens += s.iter().map(|s| s.tokens.len()).sum::<usize>();
                Ok(())
            },
        )
        .unwrap();
        tokens as f64 / t.elapsed().as_secs_f64()
    };
    run(backend, 16);
    run(backend, new)
}

/// Tokens/s of transformers' `generate` on the model in `dir`, same settings.
fn theirs(dir: &Path, batch: usize, new: usize, threads: usize) -> f64 {
    let script = r#"
import sys, time, torch, transformers
d, batch, new, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
m = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
x = torch.tensor([[(i * 977 + 13) % 50257 for i in range(8)]] * batch)
kw = dict(do_sample=True, top_k=40, temperature=0.7, pad_token_id=0,
          attention_mask=torch.ones_like(x))
with torch.no_grad():
    m.generate(x, max_new_tokens=16, min_new_tokens=16, **kw)
    t = time.time()
    m.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
print(batch * new / (time.time() - t))
"#;
    let out = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap()])
        .args([batch.to_string(), new.to_string(), threads.to_string()])
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("cannot run the reference python (GPTPIPE_PYTHON or .venv/bin/python)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn size_mb(dir: &Path) -> f64 {
    let f = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
    (f("model.onnx") + f("model.onnx.data")) as f64 / 1e6
}

fn main() {
    let (layers, heads, embd) = (arg("--layers", 4), arg("--heads", 4), arg("--embd", 256));
    let new = arg("--new", 64);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let script = r#"
import sys, torch, transformers
d, L, H, E = sys.argv[1], *map(int, sys.argv[2:5])
torch.manual_seed(0)
transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=L, n_head=H, n_embd=E)).save_pretrained(d)
"#;
    let status = Command::new(python())
        .args(["-c", script, hf.to_str().unwrap()])
        .args([layers, heads, embd].map(|x| x.to_string()))
        .env("TRANSFORMERS_VERBOSITY", "error")
        .status()
        .unwrap();
    assert!(status.success());
    let st_mb = std::fs::metadata(hf.join("model.safetensors"))
        .unwrap()
        .len() as f64
        / 1e6;
    println!(
        "CPU, {threads} threads, GPT-2 n_layer={layers} n_head={heads} n_embd={embd} (vocab 50257), \
         8-token prompt, {new} new tokens, top_k=40, temperature=0.7"
    );
    println!("model.safetensors: {st_mb:.1} MB");
    println!(
        "{:>9} {:>10} {:>10} {:>12}",
        "export", "size MB", "export s", "load s"
    );
    let mut dirs = Vec::new();
    for (name, precision) in [("fp32", Float::F32), ("fp16", Float::F16)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let opts = ExportOptions {
            precision,
            ..ExportOptions::default()
        };
        let t = Instant::now();
        export_folder(&hf, &dir, &opts).unwrap();
        let export_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        drop(OnnxGpt2::load(&dir, &SessionOptions::default()).unwrap());
        let load_s = t.elapsed().as_secs_f64();
        println!(
            "{name:>9} {:>10.1} {export_s:>10.2} {load_s:>12.3}",
            size_mb(&dir)
        );
        dirs.push((name, dir));
    }
    println!(
        "{:>6} {:>12} {:>12} {:>16} {:>12}",
        "batch", "onnx fp32", "onnx fp16", "transformers", "fp32 ratio"
    );
    for batch in [1, 20] {
        let mut rates = Vec::new();
        for (_, dir) in &dirs {
            let mut backend = OnnxBackend::open(&ModelSource::Folder(dir.clone()), "cpu").unwrap();
            rates.push(ours(&mut backend, batch, new));
        }
        let b = theirs(&hf, batch, new, threads);
        println!(
            "{batch:>6} {:>12.1} {:>12.1} {b:>16.1} {:>11.2}x",
            rates[0],
            rates[1],
            rates[0] / b
        );
    }
}
