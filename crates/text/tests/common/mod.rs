//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python with transformers: `$GPTPIPE_PYTHON`, else `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GPTPIPE_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

/// Runs `script` with [`python()`] and returns its stdout; panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let python = python();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/setup.sh",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Pieces that stress GPT-2's pre-tokenizer: contractions, numbers, whitespace runs,
/// Unicode letters, marks, digits and symbols from many scripts, emoji, special tokens.
pub const TRICKY: &[&str] = &[
    "the",
    "The",
    " of",
    "don't",
    "I'm",
    "we'll",
    "you've",
    "they're",
    "she'd",
    "it's",
    "IT'S",
    "'S",
    "'s",
    "''",
    "'",
    "'ll",
    "'ve'",
    "rock'n'roll",
    "1234567890",
    "3.14159",
    "1,000,000",
    "٣٤٥",
    "Ⅻ",
    "½",
    "²",
    " ",
    "  ",
    "   ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n",
    "\n ",
    " \t ",
    "\u{a0}",
    "\u{3000}",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "\u{feff}",
    "naïve",
    "café",
    "Ångström",
    "e\u{301}",
    "Привет",
    "мир",
    "Γειά",
    "שלום",
    "مرحبا",
    "नमस्ते",
    "日本語",
    "テキスト",
    "中文字符",
    "한국어",
    "ไทย",
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "❤️",
    "𝔸𝔹ℂ",
    "𝟘𝟙",
    "𐍈",
    "&amp;",
    "&#39;",
    "&lt;b&gt;",
    "<|endoftext|>",
    "<|startoftext|>",
    "<|endoftext",
    "|>",
    "<|",
    "...",
    "!!!",
    "?!",
    "—",
    "–",
    "«»",
    "„“",
    "()[]{}",
    "@#$%^&*",
    "http://example.com/a?b=c",
    "snake_case",
    "camelCase",
    "x86_64",
    "\u{fffd}",
    "\u{7f}",
    "\u{1}",
    "\0",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "                                ",
    "ẞ",
    "ǅ",
    "ʰ",
    "ー",
    "々",
];

/// `bytes` of random text built from [`TRICKY`] pieces and words, joined by varied
/// separators.
pub fn tricky_text(seed: u64, bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let seps = [
        "", " ", " ", " ", "  ", "\n", "\t", ", ", ". ", "\n\n", " \n",
    ];
    let mut s = String::with_capacity(bytes + 64);
    while s.len() < bytes {
        s.push_str(rng.pick(TRICKY));
        s.push_str(rng.pick(&seps));
    }
    s
}

/// Up to `limit` bytes of real text found on this machine (Debian docs and the Rust
/// sources in the cargo registry), one entry per file, in a fixed order.
pub fn machine_text(limit: usize) -> Vec<String> {
    let mut files = Vec::new();
    collect(Path::new("/usr/share/doc"), &mut files, 0);
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        collect(&home.join("registry/src"), &mut files, 0);
    }
    files.sort();
    // Interleave the two sources by spreading picks over the sorted list.
    let mut out = Vec::new();
    let mut total = 0;
    let step = (files.len() / 2000).max(1);
    for (i, f) in files.iter().enumerate() {
        if i % step != 0 {
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        let text: String = text.chars().take(40_000).collect();
        total += text.len();
        out.push(text);
        if total >= limit {
            break;
        }
    }
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect(&path, out, depth + 1);
        } else if ft.is_file() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if matches!(ext, "rs" | "md" | "txt" | "toml" | "html" | "json")
                || matches!(name, "copyright" | "README" | "NEWS" | "changelog")
            {
                out.push(path);
            }
        }
    }
}

/// What a prepare stage wrote.
pub struct Prepared {
    pub dataset: String,
    pub tokens: Vec<u32>,
    pub report: serde_json::Value,
    pub warnings: Vec<String>,
}

/// Collects warnings.
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<String>>);

impl gptpipe_core::events::EventSink for Collect {
    fn emit(&self, event: gptpipe_core::events::Event) {
        if let gptpipe_core::events::Event::Warning { message } = event {
            self.0.lock().unwrap().push(message);
        }
    }
}

/// Runs stage `stage` of the pipeline file `pipeline` through the registry, as the runner
/// would, with `upstream` outputs; its output goes to `out_dir`.
pub fn run_stage(
    pipeline: &Path,
    stage: &str,
    out_dir: &Path,
    upstream: &std::collections::BTreeMap<String, gptpipe_core::stage::Upstream>,
) -> anyhow::Result<Prepared> {
    use gptpipe_core::config::{load, LoadOptions, StageKind};
    let pipeline = load(pipeline, &LoadOptions::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut registry = gptpipe_core::stage::Registry::new();
    gptpipe_text::register(&mut registry);
    let state = tempfile::tempdir()?;
    let sink = Collect::default();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let ctx = gptpipe_core::stage::StageContext {
        name: stage,
        params: &pipeline.stages[stage],
        pipeline: &pipeline,
        out_dir,
        previous_output: None,
        state_dir: state.path(),
        upstream,
        inputs_hash: "",
        events: &sink,
        cancel: &cancel,
    };
    registry.get(StageKind::Prepare)?(&ctx)?;
    let bytes = std::fs::read(out_dir.join("tokens.bin"))?;
    Ok(Prepared {
        dataset: std::fs::read_to_string(out_dir.join("dataset.txt"))?,
        tokens: bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        report: serde_json::from_slice(&std::fs::read(out_dir.join("report.json"))?)?,
        warnings: sink.0.into_inner().unwrap(),
    })
}

/// Whether every key of `expected` is in `actual` with an equal value (recursively; arrays
/// must have equal lengths).
pub fn json_subset(expected: &serde_json::Value, actual: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let got = a.get(k).ok_or_else(|| format!("missing key {k:?}"))?;
                json_subset(v, got).map_err(|m| format!("{k}: {m}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (v, got)) in e.iter().zip(a).enumerate() {
                json_subset(v, got).map_err(|m| format!("[{i}]: {m}"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("expected {expected}, got {actual}")),
    }
}
