//! Training throughput of our GPT-2: random init, random tokens, the finetune stage's
//! step (loss, backward, AdamW update). Prints one JSON line.
//!
//! cargo run --release -p gptpipe-torch --example train_bench -- \
//!     [--device cpu|cuda] [--model gpt2|tiny|L,H,E] [--batch 16] [--seq 1024] \
//!     [--steps 10] [--warmup 3] [--precision fp32|bf16] [--threads N] [--breakdown]
//!
//! `--breakdown` then times, averaged over a few iterations, forward+loss alone (no_grad),
//! forward+loss+backward, and the optimizer update alone, and prints them as a second JSON
//! line. `GPTPIPE_PAD_VOCAB=0` turns off the padded (aligned) lm_head on CUDA.

use gptpipe_core::config::Optimizer as Kind;
use gptpipe_torch::finetune::Optimizer;
use gptpipe_torch::model::{Config, Gpt2};
use std::time::Instant;
use tch::{Device, Tensor};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Peak memory our process held on the GPU, from nvidia-smi (includes the CUDA context).
fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Mean milliseconds of `f` over `iters` calls, after one untimed call; `sync` waits for the
/// device before each clock read.
fn time_ms(iters: usize, sync: &dyn Fn(), mut f: impl FnMut()) -> f64 {
    f();
    sync();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync();
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn gpu_memory_mb() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(','))
        .find(|(p, _)| p.trim() == pid)
        .and_then(|(_, m)| m.trim().parse().ok())
}

fn main() -> anyhow::Result<()> {
    // As gptpipe-worker does.
    gptpipe_torch::allocator::keep_freed_memory();
    let device = gptpipe_torch::device::parse_device(&arg("--device", "auto"))?;
    let threads: i32 = arg("--threads", "0").parse()?;
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    let config = match arg("--model", "gpt2").as_str() {
        "tiny" => {
            let mut c = Config::gpt2();
            (c.n_layer, c.n_head, c.n_embd, c.n_inner) = (4, 4, 256, 1024);
            c
        }
        spec if spec.contains(',') => {
            let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
            let mut c = Config::gpt2();
            (c.n_layer, c.n_head, c.n_embd, c.n_inner) = (v[0], v[1], v[2], 4 * v[2]);
            c
        }
        name => Config::preset(name).ok_or_else(|| anyhow::anyhow!("unknown model {name}"))?,
    };
    let batch: i64 = arg("--batch", "16").parse()?;
    let seq: i64 = arg("--seq", "1024").parse()?;
    let steps: usize = arg("--steps", "10").parse()?;
    let warmup: usize = arg("--warmup", "3").parse()?;
    let precision = arg(
        "--precision",
        if device.is_cuda() { "bf16" } else { "fp32" },
    );

    let mut model = Gpt2::random(&config, device, 0);
    if precision == "bf16" {
        model.set_compute_kind(Some(tch::Kind::BFloat16));
    }
    // As the finetune stage does: one buffer for all weights, fp32 master copies.
    let names: Vec<String> = model
        .named_parameters()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let (flat, params) = model.flatten_for_training(&names);
    let mut opt = Optimizer::new_flat(Kind::Adamw, 0.01, &params, flat);
    tch::manual_seed(1);
    let x = Tensor::randint(
        config.vocab_size as i64,
        [batch, seq],
        (tch::Kind::Int64, device),
    );
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut peak = 0.0f64;
    let mut start = Instant::now();
    let mut last_loss = 0.0;
    for i in 0..warmup + steps {
        if i == warmup {
            sync();
            start = Instant::now();
        }
        let loss = model.loss(&x, true);
        loss.backward();
        opt.apply(1e-4);
        opt.zero_grad();
        if i + 1 == warmup + steps {
            last_loss = loss.double_value(&[]);
        }
    }
    sync();
    let secs = start.elapsed().as_secs_f64();
    // After the timed steps (nvidia-smi takes tens of ms): the caching allocator still
    // holds what the steps needed, so this is their peak.
    if device.is_cuda() {
        peak = peak.max(gpu_memory_mb().unwrap_or(0.0));
    }
    let tok_s = (batch * seq) as f64 * steps as f64 / secs;
    let out = serde_json::json!({
        "impl": "gptpipe-tch",
        "device": format!("{device:?}"),
        "precision": precision,
        "params": config.num_parameters(),
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "tokens_per_s": tok_s.round(),
        "peak_gpu_mem_mb": if device.is_cuda() { serde_json::json!(peak) } else { serde_json::Value::Null },
        "final_loss": last_loss,
        "pad_vocab": model.pad_vocab(),
    });
    println!("{out}");

    if flag("--breakdown") {
        let iters = steps.clamp(1, 5);
        let forward_ms = time_ms(iters, &sync, || {
            tch::no_grad(|| {
                let _ = model.loss(&x, true);
            })
        });
        // Gradients stay allocated after zero_grad, so backward accumulates into them
        // here as in a real step; the update then reads the last ones.
        let backward_total_ms = time_ms(iters, &sync, || model.loss(&x, true).backward());
        let optimizer_ms = time_ms(iters, &sync, || opt.apply(1e-4));
        opt.zero_grad();
        let step_ms = time_ms(iters, &sync, || {
            model.loss(&x, true).backward();
            opt.apply(1e-4);
            opt.zero_grad();
        });
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let out = serde_json::json!({
            "iters": iters,
            "forward_ms": round(forward_ms),
            "forward_backward_ms": round(backward_total_ms),
            "backward_ms": round(backward_total_ms - forward_ms),
            "optimizer_ms": round(optimizer_ms),
            "step_ms": round(step_ms),
        });
        println!("{out}");
    }
    Ok(())
}
