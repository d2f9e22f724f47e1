//! Generation speed: the tch backend beside transformers' `generate`, same model, same run.
//!
//! CPU (default): a small random GPT-2 saved by transformers; tokens/s at batch 1 and 20.
//!   cargo bench -p gptpipe-torch --bench generate
//!   cargo bench -p gptpipe-torch --bench generate -- --layers 6 --heads 8 --embd 512 --new 64
//! GPU: GPT-2 124M, random init, bf16: batch 1 x 256 and batch 20 x 1000 new tokens, with
//! each decoding part (`DecodeOptions`) switched on in turn, and greedy agreement with eager
//! decoding (ours only; `crates/torch/benches/gpu_generate.sh` runs it and then the peer,
//! `benches/peers/hf_generate.py`, for transformers' figures); `--parts` adds per-step
//! times without the driver:
//!   cargo bench -p gptpipe-torch --bench generate -- --gpu [--parts]
//! Both use the peer's settings: an 8-token prompt, top_k = 40, temperature = 0.7.

#[path = "../../generate/benches/common/mod.rs"]
mod common;

use common::{arg, ours, sampling, theirs};
use gptpipe_generate::{Backend, Sampling};
use gptpipe_torch::generation::TchBackend;
use gptpipe_torch::model::{Config, Gpt2};
use std::time::Instant;
use tch::Device;

/// The CPU benches' model: a random GPT-2 of `--layers`, `--heads`, `--embd` saved by
/// transformers, `--new` tokens per sample, libtorch's thread count.
struct CpuModel {
    dir: tempfile::TempDir,
    layers: usize,
    heads: usize,
    embd: usize,
    new: usize,
    threads: i32,
}

impl CpuModel {
    fn from_args() -> Self {
        let (layers, heads, embd) = (arg("--layers", 4), arg("--heads", 4), arg("--embd", 256));
        let dir = tempfile::tempdir().unwrap();
        common::save_random_model(dir.path(), layers, heads, embd);
        Self {
            dir,
            layers,
            heads,
            embd,
            new: arg("--new", 64),
            threads: tch::get_num_threads(),
        }
    }
}

fn cpu() {
    let CpuModel {
        dir: tmp,
        layers,
        heads,
        embd,
        new,
        threads,
    } = CpuModel::from_args();
    println!(
        "CPU, {threads} threads, GPT-2 n_layer={layers} n_head={heads} n_embd={embd} (vocab 50257), \
         8-token prompt, {new} new tokens, top_k=40, temperature=0.7"
    );
    println!(
        "{:>6} {:>14} {:>16} {:>7}",
        "batch", "ours tok/s", "transformers", "ratio"
    );
    for batch in [1, 20] {
        let model = gptpipe_torch::weights::load_folder(tmp.path(), Device::Cpu).unwrap();
        let mut backend = TchBackend::new(model);
        let a = ours(&mut backend, batch, new);
        let b = theirs(tmp.path(), batch, new, threads as usize);
        println!("{batch:>6} {a:>14.1} {b:>16.1} {:>6.2}x", a / b);
    }
}

fn greedy_tokens(backend: &mut dyn Backend, rows: usize, length: usize) -> Vec<Vec<u32>> {
    common::tokens(
        backend,
        common::codec().as_ref(),
        Sampling::greedy(),
        rows,
        length,
    )
}

fn gpu() {
    use gptpipe_torch::generation::DecodeOptions;
    assert!(tch::Cuda::is_available(), "no CUDA GPU visible to libtorch");
    println!(
        "GPU, GPT-2 124M random init, bf16 weights, 8-token prompt, top_k=40, temperature=0.7"
    );
    let off = DecodeOptions {
        graphs: false,
        flash: false,
        sample_on_device: false,
    };
    // Each part switched on in turn, on the same weights; the last is the default.
    let variants = [
        ("eager", off),
        (
            "graphs",
            DecodeOptions {
                graphs: true,
                ..off
            },
        ),
        (
            "+sample",
            DecodeOptions {
                graphs: true,
                sample_on_device: true,
                ..off
            },
        ),
        ("+flash", DecodeOptions::for_device(Device::Cuda(0))),
    ];
    let mut reference: Option<Vec<Vec<u32>>> = None;
    for (name, opts) in variants {
        let model = Gpt2::random(&Config::gpt2(), Device::Cuda(0), 0);
        let mut backend = TchBackend::with_options(model, opts);
        let greedy = greedy_tokens(&mut backend, 3, 200);
        let mut line = format!("{name:>8} {:?}:", backend.options());
        for (batch, new) in [(1, 256), (20, 1000)] {
            let t = ours(&mut backend, batch, new);
            line += &format!("  b{batch} x {new}: {t:>9.1} tok/s");
        }
        // bf16 rounding differs between attention kernels, so greedy paths may part after
        // a near tie; report how long each row agrees with eager decoding.
        let reference = reference.get_or_insert(greedy.clone());
        let agree: Vec<usize> = reference
            .iter()
            .zip(&greedy)
            .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
            .collect();
        println!("{line}  greedy agrees with eager for {agree:?} of 200 tokens");
        if name == "+flash" && std::env::args().any(|a| a == "--parts") {
            parts(&mut backend);
        }
    }
}

/// Where a decoding step's time goes, per row count: a host-fed step (`step`, then
/// `top_k(40)` to the host), and a step inside `sample_ahead` blocks of 16 (sampling on the
/// device; the host waits once per block), without the driver around them.
fn parts(backend: &mut TchBackend) {
    let sampling = sampling();
    for rows in [1usize, 8, 20] {
        let prompt: Vec<u32> = (0..8).collect();
        let time_ms = |backend: &mut TchBackend, steps: usize, f: &dyn Fn(&mut TchBackend)| {
            backend.start(&vec![prompt.clone(); rows]).unwrap();
            f(backend);
            tch::Cuda::synchronize(0);
            backend.start(&vec![prompt.clone(); rows]).unwrap();
            tch::Cuda::synchronize(0);
            let t = Instant::now();
            for _ in 0..steps {
                f(backend);
            }
            tch::Cuda::synchronize(0);
            t.elapsed().as_secs_f64() * 1e3
        };
        let fed = time_ms(backend, 512, &|b| {
            b.step(&vec![5u32; rows]).unwrap();
            b.top_k(40).unwrap();
        }) / 512.0;
        let uniforms = vec![vec![0.5f64; 16]; rows];
        let ahead = time_ms(backend, 32, &|b| {
            b.sample_ahead(&sampling, &uniforms).unwrap();
        }) / 512.0;
        println!(
            "rows {rows:>2}: host-fed step + top_k {fed:.3} ms, device-sampled step {ahead:.3} ms ({:.0} tokens/s)",
            rows as f64 * 1e3 / ahead
        );
    }
}

/// What the short-text features cost on the CPU: tokens/s plain, with the stop and shape
/// controls, and with the controls and scores (a jsonl output's `logprob`), same model,
/// same run (`-- --controls`).
fn controls() {
    let CpuModel {
        dir: tmp,
        layers,
        heads,
        embd,
        new,
        threads,
    } = CpuModel::from_args();
    println!(
        "CPU, {threads} threads, GPT-2 n_layer={layers} n_head={heads} n_embd={embd}, {new} new \
         tokens, top_k=40, temperature=0.7; controls: truncate <|endoftext|>, min_length 8, \
         no_repeat_ngram_size 3, bad_words [\" the\", \"zz\"]; scores: each sample's \
         log-probability after its batch"
    );
    println!(
        "{:>6} {:>12} {:>14} {:>7} {:>17} {:>7}",
        "batch", "plain tok/s", "controls tok/s", "ratio", "+scores tok/s", "ratio"
    );
    for batch in [1, 20] {
        let model = gptpipe_torch::weights::load_folder(tmp.path(), Device::Cpu).unwrap();
        let mut backend = TchBackend::new(model);
        // Alternated, three rounds, medians: the machine may be shared.
        let mut runs: [Vec<f64>; 3] = Default::default();
        for _ in 0..3 {
            runs[0].push(common::ours_with(&mut backend, batch, new, false, false));
            runs[1].push(common::ours_with(&mut backend, batch, new, true, false));
            runs[2].push(common::ours_with(&mut backend, batch, new, true, true));
        }
        let [a, b, c] = runs.map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[1]
        });
        println!(
            "{batch:>6} {a:>12.1} {b:>14.1} {:>6.2}x {c:>17.1} {:>6.2}x",
            b / a,
            c / a
        );
    }
}

fn main() {
    // As gptpipe-worker does.
    gptpipe_torch::allocator::keep_freed_memory();
    if std::env::args().any(|a| a == "--controls") {
        controls();
    } else if std::env::args().any(|a| a == "--gpu") {
        gpu();
    } else {
        cpu();
    }
}
