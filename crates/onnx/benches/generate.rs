//! Generation speed of the ONNX Runtime backend beside transformers' `generate`, same
//! model, same run; plus the exported files' sizes and load times.
//!
//!   cargo bench -p gptpipe-onnx --bench generate
//!   cargo bench -p gptpipe-onnx --bench generate -- --layers 12 --heads 12 --embd 768 --new 64
//!
//! Settings are the tch bench's (both include crates/generate/benches/common/mod.rs), so
//! its figures sit beside these: a random GPT-2 saved by transformers (seed 0, vocab
//! 50257), an 8-token prompt, top_k = 40, temperature = 0.7, one short warm-up run before
//! each measurement.

#[path = "../../generate/benches/common/mod.rs"]
mod common;

use common::{arg, ours, theirs};
use gptpipe_core::stage::ModelSource;
use gptpipe_onnx::backend::OnnxBackend;
use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::graph::Float;
use gptpipe_onnx::runtime::{Runtime, SessionOptions};
use std::path::Path;
use std::time::Instant;

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
    common::save_random_model(&hf, layers, heads, embd);
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
    let runtime = Runtime::new();
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
        drop(runtime.session(&dir, &SessionOptions::default()).unwrap());
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
            let mut backend = OnnxBackend::open(
                &runtime,
                &ModelSource::Folder(dir.clone()),
                &gptpipe_core::config::Device::Cpu,
            )
            .unwrap();
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
