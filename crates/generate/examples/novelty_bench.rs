//! The novelty index's benchmark (`benches/novelty.sh`): builds the index over the rows of
//! ROWS (one per line), saves and reloads it as the stage's cache does, judges each line
//! of SAMPLES, and prints one JSON line of figures. `--out FILE` writes each sample's
//! `copied`, `overlap`, `nearest` and tokens (one JSON line each) for the Python baseline
//! to check.
//!
//! cargo run --release -p gptpipe-generate --example novelty_bench -- ROWS SAMPLES [--out F]

use anyhow::{Context, Result};
use gptpipe_generate::novelty::{self, store, NoveltyIndex};
use std::io::Write;
use std::time::Instant;

fn lines(path: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(text.lines().map(str::to_owned).collect())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rows, samples) = (lines(&args[0])?, lines(&args[1])?);
    let out = args.iter().position(|a| a == "--out").map(|i| &args[i + 1]);
    let codec = gptpipe_generate::codec::gpt2()?;

    let t = Instant::now();
    let index = NoveltyIndex::build(&rows, codec.as_ref())?;
    let build_s = t.elapsed().as_secs_f64();
    // The two parts of a build: tokenising the rows, and the suffix array over them.
    let t = Instant::now();
    let tokens: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| novelty::tokens_of(&novelty::normalize(r), codec.as_ref()))
        .collect::<Result<_>>()?;
    let tokenize_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    NoveltyIndex::from_tokens(&tokens, Vec::new())?;
    let suffix_array_s = t.elapsed().as_secs_f64();
    let n_tokens: usize = tokens.iter().map(Vec::len).sum();

    let bytes = store::encode(&index);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("index.idx");
    std::fs::write(&path, &bytes)?;
    let t = Instant::now();
    let loaded = store::decode(&std::fs::read(&path)?)?;
    let load_s = t.elapsed().as_secs_f64();
    assert!(loaded == index);

    let t = Instant::now();
    let judged: Vec<novelty::Novelty> = samples
        .iter()
        .map(|s| loaded.judge(s, codec.as_ref()))
        .collect::<Result<_>>()?;
    let query_s = t.elapsed().as_secs_f64();

    if let Some(out) = out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
        for (s, n) in samples.iter().zip(&judged) {
            let tokens = novelty::tokens_of(&novelty::normalize(s), codec.as_ref())?;
            let line = serde_json::json!({
                "copied": n.copied, "overlap": n.overlap, "nearest": n.nearest,
                "tokens": tokens,
            });
            writeln!(f, "{line}")?;
        }
        // The rows' tokens too, so the baseline compares runs of the same tokens.
        let mut f = std::io::BufWriter::new(std::fs::File::create(format!("{out}.rows"))?);
        for r in &rows {
            let tokens = novelty::tokens_of(&novelty::normalize(r), codec.as_ref())?;
            writeln!(f, "{}", serde_json::to_string(&tokens)?)?;
        }
    }
    let peak_rss_mb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "rows": rows.len(),
            "samples": samples.len(),
            "tokens": n_tokens,
            "build_s": build_s,
            "tokenize_s": tokenize_s,
            "suffix_array_s": suffix_array_s,
            "load_cached_s": load_s,
            "query_s": query_s,
            "query_us_per_sample": query_s * 1e6 / samples.len().max(1) as f64,
            "copied": judged.iter().filter(|n| n.copied).count(),
            "index_file_mb": bytes.len() as f64 / 1e6,
            "peak_rss_mb": peak_rss_mb,
        })
    );
    Ok(())
}
