//! prepare + tokenize throughput on a generated CSV, beside tiktoken-rs `r50k_base`
//! encoding the same text in the same run.
//!
//! `cargo bench -p gptpipe-text --bench prepare [-- --mb 100] [--prepare-only]`

use gptpipe_core::config::{load, LoadOptions};
use gptpipe_core::events::NullSink;
use gptpipe_core::stage::StageContext;
use gptpipe_text::Gpt2Tokenizer;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const COMMON: &[&str] = &[
    "the",
    "a",
    "to",
    "of",
    "and",
    "I",
    "you",
    "what",
    "is",
    "in",
    "your",
    "that",
    "for",
    "it",
    "my",
    "do",
    "have",
    "are",
    "with",
    "on",
    "be",
    "was",
    "how",
    "this",
    "who",
    "would",
    "can",
    "most",
    "people",
    "Reddit",
    "ever",
    "best",
    "worst",
    "thing",
    "why",
    "if",
    "not",
    "about",
    "like",
    "at",
    "as",
    "from",
    "or",
    "when",
    "has",
    "an",
    "did",
    "they",
    "we",
    "me",
    "so",
    "don't",
    "what's",
    "it's",
    "you've",
    "they're",
    "I'm",
    "we'll",
    "he'd",
    "time",
    "life",
    "game",
    "favorite",
    "first",
    "think",
    "know",
    "get",
    "make",
    "would",
    "really",
    "ask",
    "question",
    "story",
    "job",
    "money",
    "friend",
    "movie",
    "song",
    "book",
    "food",
    "world",
    "never",
    "always",
    "something",
    "someone",
    "anyone",
    "everyone",
    "today",
    "year",
    "old",
    "new",
    "day",
    "night",
    "work",
    "school",
    "home",
    "family",
    "love",
    "hate",
    "weird",
    "funny",
    "scariest",
    "happened",
    "experience",
    "opinion",
    "unpopular",
    "advice",
    "secret",
    "real",
    "Americans",
    "Europeans",
    "parents",
    "kids",
    "teachers",
    "doctors",
    "nurses",
    "gamers",
    "COVID-19",
    "2020",
    "2021",
    "10",
    "$100",
    "5%",
    "&amp;",
    "&#x27;",
    "&quot;",
    "...",
    "?",
    "!",
    "(serious)",
    "[NSFW]",
    "—",
    "café",
    "naïve",
    "😂",
    "🤔",
    "❤️",
    "日本",
    "Москва",
    "über",
];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "tre", "zon", "ver", "ash", "bel", "cor", "dun", "el", "fi", "gra", "hul",
    "ix", "jen", "kru", "lim", "mor", "nax", "op", "pri", "qua", "ros", "sil", "tam", "ung", "vol",
    "wes", "xy", "yor", "zed", "ar", "ble", "cha", "dro", "ent", "fla", "gor", "his",
];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A Reddit-like CSV: `id,title,score`, short titles, many quoted (commas, quotes,
/// newlines), a long tail of rare words, some duplicates and entities.
fn generate_csv(bytes: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut csv = String::with_capacity(bytes + 1024);
    csv.push_str("id,title,score\r\n");
    let mut id = 0u64;
    let mut title = String::new();
    while csv.len() < bytes {
        title.clear();
        for w in 0..3 + rng.below(14) {
            if w > 0 {
                title.push_str(match rng.below(20) {
                    0 => ", ",
                    1 => "  ",
                    2 => "\n",
                    _ => " ",
                });
            }
            if rng.below(8) == 0 {
                // A rare word: about 40^3 of them, so the BPE cache misses now and then.
                for _ in 0..2 + rng.below(2) {
                    title.push_str(SYLLABLES[rng.below(SYLLABLES.len())]);
                }
            } else {
                title.push_str(COMMON[rng.below(COMMON.len())]);
            }
        }
        title.push_str(["?", "", "!", "?", " \"quoted\"", "..."][rng.below(6)]);
        let score = rng.below(5000);
        if title.contains([',', '"', '\n']) {
            let _ = write!(csv, "{id},\"{}\",{score}\r\n", title.replace('"', "\"\""));
        } else {
            let _ = write!(csv, "{id},{title},{score}\r\n");
        }
        id += 1;
    }
    csv
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args
        .iter()
        .position(|a| a == "--mb")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let threads = rayon::current_num_threads();
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let csv = generate_csv(mb * 1_000_000);
    std::fs::write(dir.path().join("titles.csv"), &csv)?;
    println!(
        "generated titles.csv: {:.1} MB in {:.1}s; {threads} rayon threads",
        csv.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    drop(csv);
    let pipeline_path = dir.path().join("bench.toml");
    std::fs::write(
        &pipeline_path,
        "[pipeline]\nname = \"bench\"\n\n[stages.titles]\nkind = \"prepare\"\n\
         inputs = [\"titles.csv\"]\ncolumn = \"title\"\nhtml_unescape = true\n\
         normalize_whitespace = true\nmin_length = 8\ndedupe = true\n",
    )?;
    let pipeline =
        load(&pipeline_path, &LoadOptions::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = dir.path().join("out");
    std::fs::create_dir(&out)?;
    let cancel = AtomicBool::new(false);
    let ctx = StageContext {
        name: "titles",
        params: &pipeline.stages["titles"],
        pipeline: &pipeline,
        out_dir: &out,
        previous_output: None,
        state_dir: dir.path(),
        upstream: &BTreeMap::new(),
        inputs_hash: "",
        events: &NullSink,
        cancel: &cancel,
    };
    // Load the vocabularies before timing either side.
    let ours = Gpt2Tokenizer::new()?;
    let peer = tiktoken_rs::r50k_base()?;

    let csv_bytes = std::fs::metadata(dir.path().join("titles.csv"))?.len() as usize;
    let t = Instant::now();
    gptpipe_text::prepare::run(&ctx)?;
    let prepare_s = t.elapsed().as_secs_f64();
    if args.iter().any(|a| a == "--prepare-only") {
        println!(
            "prepare+tokenize: {:.2} MB/s of CSV",
            mbps(csv_bytes, prepare_s)
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(out.join("dataset.txt"))?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;

    // Tokenizing alone, ours: the whole text on one thread, then on the rayon pool.
    let t = Instant::now();
    let mut ours_ids = Vec::new();
    ours.encode_into(&text, &mut ours_ids);
    let ours_1 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ours_par = ours.encode(&text);
    let ours_n = t.elapsed().as_secs_f64();

    // tiktoken-rs, line by line, on one thread and on two.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let t = Instant::now();
    let mut peer_ids = Vec::new();
    for line in &lines {
        peer_ids.extend(peer.encode_with_special_tokens(line));
    }
    let peer_1 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let halves = lines.split_at(lines.len() / 2);
    let peer_2_ids: Vec<u32> = std::thread::scope(|s| {
        let peer = &peer;
        let a = s.spawn(move || {
            halves
                .0
                .iter()
                .flat_map(|l| peer.encode_with_special_tokens(l))
                .collect::<Vec<_>>()
        });
        let b = s.spawn(move || {
            halves
                .1
                .iter()
                .flat_map(|l| peer.encode_with_special_tokens(l))
                .collect::<Vec<_>>()
        });
        let mut ids = a.join().expect("thread");
        ids.extend(b.join().expect("thread"));
        ids
    });
    let peer_2 = t.elapsed().as_secs_f64();

    let whole = peer.encode_with_special_tokens(&text);
    let same = ours_ids == whole && ours_par == whole;
    println!(
        "dataset.txt: {:.1} MB, {} rows kept of {}, {} tokens; ids equal to tiktoken's (whole text): {same}",
        text.len() as f64 / 1e6,
        report["rows_kept"],
        report["rows_read"],
        report["tokens"],
    );
    std::hint::black_box((&peer_ids, &peer_2_ids));

    let n = text.len();
    let e2e = mbps(csv_bytes, prepare_s);
    let e2e_text = mbps(n, prepare_s);
    let p1 = mbps(n, peer_1);
    println!();
    println!("{:<58} {:>9} {:>12}", "", "MB/s", "vs tiktoken");
    let row = |name: &str, v: f64| println!("{name:<58} {v:>9.2} {:>11.2}x", v / p1);
    row("gptpipe prepare+tokenize, CSV in (all threads)", e2e);
    row(
        "gptpipe prepare+tokenize, dataset text out (all threads)",
        e2e_text,
    );
    row("gptpipe tokenizer, 1 thread", mbps(n, ours_1));
    row(
        &format!("gptpipe tokenizer, rayon ({threads} threads)"),
        mbps(n, ours_n),
    );
    row("tiktoken-rs r50k_base, line by line, 1 thread", p1);
    row(
        "tiktoken-rs r50k_base, line by line, 2 threads",
        mbps(n, peer_2),
    );
    println!();
    // The goal counts the slower of the two prepare figures.
    let ours = e2e.min(e2e_text);
    let goal = p1 * threads as f64;
    println!(
        "goal: prepare+tokenize >= tiktoken 1-thread x {threads} threads = {goal:.2} MB/s: {} ({ours:.2} MB/s)",
        if ours >= goal { "met" } else { "NOT met" },
    );
    anyhow::ensure!(same, "our ids differ from tiktoken's");
    Ok(())
}
