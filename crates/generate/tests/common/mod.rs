//! A fake model and tokenizer: deterministic, tiny, and observable, so the driver's
//! batching, stopping and windowing can be checked without a real network.
#![allow(dead_code)]

use anyhow::{ensure, Result};
use gptpipe_generate::Sampling;
use gptpipe_generate::{Backend, Codec, Logits};
use std::sync::{Arc, Mutex};

pub const VOCAB: usize = 13;
/// Token 10 is the tokenizer's `<e>` (the end marker the tests truncate at), 11 is a
/// newline, 12 the start token.
pub const END: u32 = 10;
pub const START: u32 = 12;

/// Tokens 0..=9 are the letters a..j.
pub struct FakeCodec;

impl Codec for FakeCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("<e>") {
                out.push(END);
                rest = r;
                continue;
            }
            let c = rest.chars().next().unwrap();
            out.push(match c {
                'a'..='j' => c as u32 - 'a' as u32,
                '\n' => 11,
                _ => anyhow::bail!("fake codec cannot encode {c:?}"),
            });
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        match id {
            0..=9 => vec![b'a' + id as u8],
            10 => b"<e>".to_vec(),
            11 => b"\n".to_vec(),
            _ => Vec::new(),
        }
    }

    fn start_token(&self) -> u32 {
        START
    }

    fn vocab_len(&self) -> usize {
        VOCAB
    }
}

/// Logits of a context: a hash of every token and of the length, so any difference in
/// what the model sees (a wrong window, a lost row) changes them.
pub fn reference_logits(context: &[u32]) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ context.len() as u64;
    for &t in context {
        h = (h ^ t as u64).wrapping_mul(0x0100_0000_01b3);
    }
    (0..VOCAB as u64)
        .map(|v| {
            let mut x = h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 29;
            // In [-4, 4).
            (x % 8000) as f32 / 1000.0 - 4.0
        })
        .collect()
}

/// What the fake saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    pub starts: usize,
    pub steps: usize,
    /// Sum over steps and starts of the rows run: the compute spent.
    pub row_runs: usize,
    pub max_len: usize,
}

pub struct FakeBackend {
    pub n_ctx: usize,
    /// Tokens per row it samples by itself in one `sample_ahead` (0: it does not).
    pub ahead: usize,
    rows: Vec<Vec<u32>>,
    pub calls: Arc<Mutex<Calls>>,
}

impl FakeBackend {
    pub fn new(n_ctx: usize) -> Self {
        Self {
            n_ctx,
            ahead: 0,
            rows: Vec::new(),
            calls: Arc::default(),
        }
    }
}

impl Backend for FakeBackend {
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn start(&mut self, rows: &[Vec<u32>]) -> Result<()> {
        let len = rows[0].len();
        ensure!(
            rows.iter().all(|r| r.len() == len),
            "rows of unequal length"
        );
        ensure!(
            len >= 1 && len <= self.n_ctx,
            "start of {len} tokens, n_ctx {}",
            self.n_ctx
        );
        self.rows = rows.to_vec();
        let mut c = self.calls.lock().unwrap();
        c.starts += 1;
        c.row_runs += rows.len();
        c.max_len = c.max_len.max(len);
        Ok(())
    }
    fn step(&mut self, tokens: &[u32]) -> Result<()> {
        ensure!(
            tokens.len() == self.rows.len(),
            "step with {} tokens for {} rows",
            tokens.len(),
            self.rows.len()
        );
        for (r, &t) in self.rows.iter_mut().zip(tokens) {
            r.push(t);
        }
        let len = self.rows[0].len();
        ensure!(
            len <= self.n_ctx,
            "a row of {len} tokens overflows n_ctx {}",
            self.n_ctx
        );
        let mut c = self.calls.lock().unwrap();
        c.steps += 1;
        c.row_runs += tokens.len();
        c.max_len = c.max_len.max(len);
        Ok(())
    }
    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        ensure!(
            keep.windows(2).all(|w| w[0] < w[1]),
            "retain indices not increasing"
        );
        self.rows = keep.iter().map(|&i| self.rows[i].clone()).collect();
        Ok(())
    }
    fn logits(&mut self) -> Result<Logits> {
        let data: Vec<f32> = self.rows.iter().flat_map(|r| reference_logits(r)).collect();
        Ok(Logits::new(self.rows.len(), VOCAB, data))
    }
    fn sample_ahead_limit(&self, sampling: &Sampling) -> usize {
        if sampling.penalizes() {
            0
        } else {
            self.ahead
        }
    }
    fn sample_ahead(
        &mut self,
        sampling: &Sampling,
        uniforms: &[Vec<f64>],
    ) -> Result<Vec<Vec<u32>>> {
        let n = uniforms[0].len();
        ensure!(
            n <= self.ahead,
            "a block of {n} tokens, limit {}",
            self.ahead
        );
        let mut out = vec![Vec::new(); self.rows.len()];
        for j in 0..n {
            let tokens: Vec<u32> = self
                .rows
                .iter()
                .zip(uniforms)
                .map(|(r, u)| sampling.sample_row(&mut reference_logits(r), r, u[j]))
                .collect();
            for (o, &t) in out.iter_mut().zip(&tokens) {
                o.push(t);
            }
            self.step(&tokens)?;
        }
        Ok(out)
    }
}

/// The reference Python (transformers, torch): `GPTPIPE_PYTHON`, else the repository's venv.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("GPTPIPE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        })
}

/// Runs `script` in the reference Python with `input` as JSON on stdin; its stdout is JSON.
pub fn run_python(script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python())
        .args(["-c", script])
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the reference python (set GPTPIPE_PYTHON or run scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
