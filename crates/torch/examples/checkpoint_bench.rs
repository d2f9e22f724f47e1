//! Peak memory and speed of training with and without gradient checkpointing
//! (`use_memory_saving_gradients`), on the CPU: the finetune stage's step (loss, backward,
//! Adam update over the flat buffer) on a random model and random tokens. One mode per
//! process, since the peak resident set (`VmHWM`) only grows: `benches/checkpointing.sh`
//! runs both and prints a table. Prints one JSON line.
//!
//! cargo run -p gptpipe-torch --example checkpoint_bench -- \
//!     --checkpointing on|off [--model gpt2|L,H,E] [--batch 4] [--seq 256] [--steps 3]
//!     [--threads N]

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

/// The peak resident set of this process so far, in MB (`VmHWM` of /proc/self/status).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let checkpointing = arg("--checkpointing", "off") == "on";
    let threads: i32 = arg("--threads", "0").parse()?;
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    let config = match arg("--model", "gpt2").as_str() {
        spec if spec.contains(',') => {
            let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
            let mut c = Config::gpt2();
            (c.n_layer, c.n_head, c.n_embd, c.n_inner) = (v[0], v[1], v[2], 4 * v[2]);
            c
        }
        name => Config::preset(name).ok_or_else(|| anyhow::anyhow!("unknown model {name}"))?,
    };
    let batch: i64 = arg("--batch", "4").parse()?;
    let seq: i64 = arg("--seq", "256").parse()?;
    let steps: usize = arg("--steps", "3").parse()?;

    let mut model = Gpt2::random(&config, Device::Cpu, 1);
    let names: Vec<String> = model
        .named_parameters()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let (flat, params) = model.flatten_for_training(&names);
    let mut opt = Optimizer::new_flat(Kind::Adam, 0.0, &params, flat);
    let vocab = config.vocab_size as i64;
    let ids = || Tensor::randint_low(0, vocab, [batch, seq], (tch::Kind::Int64, Device::Cpu));
    let mut step = |s: usize| {
        tch::manual_seed(s as i64);
        let batch = ids();
        let loss = if checkpointing {
            model.loss_backward_checkpointed(&batch, 1.0, &mut |i| {
                tch::manual_seed((s * 4096 + i) as i64)
            })
        } else {
            let loss = model.loss(&batch, true);
            loss.backward();
            loss.detach()
        };
        opt.apply(1e-4);
        opt.zero_grad();
        loss.double_value(&[])
    };
    // The first step allocates the gradient and the moments: the resident set after it,
    // less the activations, is the state every later step keeps.
    let before = peak_rss_mb();
    let _ = step(0);
    let start = Instant::now();
    let mut loss = 0.0;
    for s in 1..=steps {
        loss = step(s);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "checkpointing": checkpointing,
            "model": format!("{},{},{}", config.n_layer, config.n_head, config.n_embd),
            "parameters": config.num_parameters(),
            "batch": batch,
            "seq": seq,
            "threads": tch::get_num_threads(),
            "peak_rss_mb": peak_rss_mb().round(),
            "rss_before_training_mb": before.round(),
            "tokens_per_s": ((batch * seq) as f64 * steps as f64 / elapsed).round(),
            "last_loss": loss,
        })
    );
    Ok(())
}
