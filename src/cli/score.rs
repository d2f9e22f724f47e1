//! `gptpipe score --model MODEL FILE...`: the mean log-probability and perplexity of
//! existing texts under a model (`gptpipe_generate::score`), one jsonl row per text.

use super::generate::{invalid, model_source, BackendArg};
use clap::{Args, ValueEnum};
use gptpipe_core::config::{Device, ModelRef};
use gptpipe_core::runner::RunError;
use gptpipe_generate::output::OutputFile;
use gptpipe_generate::score::{score_rows, text_row};
use gptpipe_generate::stage::open_backend;
use gptpipe_generate::{Backends, Codec, Score};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One text per line
    Text,
    /// One JSON object per line; the text is in --field
    Jsonl,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Files of texts to score
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// A hub id ("gpt2"), or a folder: Hugging Face layout (config.json +
    /// model.safetensors, e.g. a finetune stage's output) or an export stage's output
    #[arg(long)]
    pub model: String,
    /// "auto", "cpu", "cuda" or "cuda:N"
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// "auto" uses ONNX Runtime for a folder holding model.onnx without safetensors weights
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// CPU threads of the model code (default: the CPUs available; a user's
    /// OMP_NUM_THREADS; a stage's `threads` key); wins over all of them
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Texts run through the model together (does not change the scores beyond rounding)
    #[arg(long, default_value_t = 8, value_parser = super::at_least_one)]
    pub batch_size: usize,
    /// How the files hold texts; default: jsonl for a .jsonl file, else text
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// The field of a jsonl line that holds its text
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Best first (highest logprob, lowest perplexity) instead of input order
    #[arg(long)]
    pub sort: bool,
    /// Write the rows to this file instead of stdout (as `gptpipe generate --output`)
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// One text of an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    pub text: String,
}

/// The texts of `path`: every non-blank line (text), or the string `field` of every
/// non-blank line (jsonl). Errors name the file and line.
pub fn read_texts(path: &Path, format: InputFormat, field: &str) -> anyhow::Result<Vec<Text>> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut texts = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let at = || format!("{}:{line}", path.display());
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let s = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!("{}: invalid UTF-8 (at byte {})", at(), e.valid_up_to())
        })?;
        if s.trim().is_empty() {
            continue;
        }
        let text = match format {
            InputFormat::Text => s.to_owned(),
            InputFormat::Jsonl => {
                let value: serde_json::Value = serde_json::from_str(s)
                    .map_err(|e| anyhow::anyhow!("{}: not a JSON line: {e}", at()))?;
                match value.get(field) {
                    Some(serde_json::Value::String(t)) => t.clone(),
                    Some(_) => anyhow::bail!("{}: field {field:?} is not a string", at()),
                    None => {
                        anyhow::bail!("{}: no field {field:?} (choose another with --field)", at())
                    }
                }
            }
        };
        texts.push(Text {
            file: path.to_owned(),
            line,
            text,
        });
    }
    Ok(texts)
}

/// The format of `path` when `--format` is not given.
fn format_of(path: &Path, chosen: Option<InputFormat>) -> InputFormat {
    chosen.unwrap_or(if path.extension().is_some_and(|e| e == "jsonl") {
        InputFormat::Jsonl
    } else {
        InputFormat::Text
    })
}

/// The output row of a scored text.
fn row_json(t: &Text, s: &Score) -> String {
    let row = serde_json::json!({
        "file": t.file.display().to_string(),
        "line": t.line,
        "text": t.text,
        "logprob": s.mean_logprob,
        "perplexity": s.perplexity,
        "tokens": s.tokens,
    });
    format!("{row}\n")
}

/// Runs `gptpipe score` with the backends of this build.
pub fn run(args: ScoreArgs, backends: &Backends) -> Result<(), RunError> {
    let device: Device = args.device.parse().map_err(|e| invalid("device", e))?;
    let source = model_source(&ModelRef::from(args.model.as_str()))?;
    let output = match &args.output {
        Some(path) => {
            Some(OutputFile::check(path).map_err(|e| invalid("output", format!("{e:#}")))?)
        }
        None => None,
    };
    // Every input is read and encoded before the model loads: bad input fails fast.
    let codec = gptpipe_generate::codec::gpt2()?;
    let mut texts = Vec::new();
    for path in &args.files {
        texts.extend(read_texts(path, format_of(path, args.format), &args.field)?);
    }
    let rows = encode(codec.as_ref(), &texts)?;
    let mut backend = open_backend(backends, args.backend.into(), &source, &device)?;
    let from = vec![1; rows.len()];
    let scores = score_rows(backend.as_mut(), &rows, &from, args.batch_size)?;
    let mut scored: Vec<(&Text, Score)> = texts
        .iter()
        .zip(scores)
        .map(|(t, s)| (t, s.expect("every row has a token to score")))
        .collect();
    if args.sort {
        // Stable: equal scores keep input order.
        scored.sort_by(|a, b| b.1.mean_logprob.total_cmp(&a.1.mean_logprob));
    }
    let out: String = scored.iter().map(|(t, s)| row_json(t, s)).collect();
    match output {
        Some(file) => file.write(out.as_bytes())?,
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(anyhow::Error::from)?;
        }
    }
    Ok(())
}

/// Each text's row for scoring; a text that encodes to nothing is an error at its line.
fn encode(codec: &dyn Codec, texts: &[Text]) -> anyhow::Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| {
            text_row(codec, &t.text)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", t.file.display(), t.line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_lines_and_jsonl_naming_the_line_of_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t = file(d, "a.txt", b"one\n\n  \r\ntwo\r\n");
        let got = read_texts(&t, format_of(&t, None), "text").unwrap();
        let lines: Vec<(usize, &str)> = got.iter().map(|t| (t.line, t.text.as_str())).collect();
        assert_eq!(lines, [(1, "one"), (4, "two")]);

        let j = file(d, "b.jsonl", b"{\"text\": \"x\"}\n{\"body\": \"y\"}\n");
        assert_eq!(format_of(&j, None), InputFormat::Jsonl);
        let e = read_texts(&j, InputFormat::Jsonl, "text").unwrap_err();
        assert!(
            e.to_string().contains("b.jsonl:2: no field \"text\""),
            "{e}"
        );
        let got = read_texts(&j, InputFormat::Jsonl, "body").unwrap_err();
        assert!(got.to_string().contains("b.jsonl:1:"), "{got}");

        let bad = file(d, "c.txt", b"fine\nbad \xff byte\n");
        let e = read_texts(&bad, InputFormat::Text, "text").unwrap_err();
        assert!(e.to_string().contains("c.txt:2: invalid UTF-8"), "{e}");

        let nonjson = file(d, "d.jsonl", b"{\"text\": 1}\n");
        let e = read_texts(&nonjson, InputFormat::Jsonl, "text").unwrap_err();
        assert!(
            e.to_string()
                .contains("d.jsonl:1: field \"text\" is not a string"),
            "{e}"
        );

        let codec = gptpipe_generate::codec::gpt2().unwrap();
        let empty = file(d, "e.jsonl", b"{\"text\": \"a\"}\n{\"text\": \"\"}\n");
        let texts = read_texts(&empty, InputFormat::Jsonl, "text").unwrap();
        let e = encode(codec.as_ref(), &texts).unwrap_err();
        assert!(
            e.to_string()
                .contains("e.jsonl:2: the text encodes to no tokens"),
            "{e}"
        );
    }
}
