//! Time of one decoding step of an export, with and without the backend around it:
//! `cargo run --release -p gptpipe-onnx --example step_time -- DIR [BATCH] [STEPS]`.

use gptpipe_onnx::runtime::{Runtime, SessionOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().expect("usage: step_time DIR [BATCH] [STEPS]");
    let batch: usize = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let mut m = Runtime::new().session(dir.as_ref(), &SessionOptions::default())?;
    let prompt: Vec<i64> = (0..8 * batch as i64).map(|i| i * 13 % 50000).collect();
    // Prefill of a long prompt: all positions' logits, then only the last position's.
    let long: Vec<i64> = (0..256 * batch as i64).map(|i| i * 7 % 50000).collect();
    for last in [false, true] {
        let t = Instant::now();
        let empty = m.empty_cache(batch)?;
        let _ = if last {
            m.run_last(&long, batch, &empty)?
        } else {
            m.run(&long, batch, &empty)?
        };
        let what = if last {
            "last position"
        } else {
            "all positions"
        };
        println!(
            "prefill {batch} x 256 tokens, logits of {what}: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut out = m.run(&prompt, batch, &m.empty_cache(batch)?)?;
    let t = Instant::now();
    for _ in 0..steps {
        let ids = vec![5i64; batch];
        out = m.run(&ids, batch, &out.cache)?;
    }
    let per = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "batch {batch}: {:.2} ms per step, {:.1} tokens/s",
        per * 1e3,
        batch as f64 / per
    );
    Ok(())
}
