//! Reads a gpt-2-simple checkpoint as gptpipe imports it (index, every variable's bytes and
//! CRC-32C, f32 in Hugging Face's layout) and prints one JSON line with the time it took:
//! the gptpipe side of `benches/tf_import.sh`.
//!
//!     cargo run --release -p gptpipe-hf --example read_tf_checkpoint -- PATH [REPEATS]

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: read_tf_checkpoint PATH [REPEATS]");
    let repeats: usize = args.next().map_or(Ok(3), |r| r.parse())?;
    let mut best = f64::INFINITY;
    let mut bytes = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let ckpt = gptpipe_hf::gpt2_simple::read_checkpoint(std::path::Path::new(&path))?;
        best = best.min(t.elapsed().as_secs_f64());
        bytes = ckpt.tensors.iter().map(|t| 4 * t.data.len()).sum::<usize>();
    }
    println!(
        "{}",
        serde_json::json!({"who": "gptpipe", "seconds": best, "bytes": bytes})
    );
    Ok(())
}
