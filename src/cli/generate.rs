//! `gptpipe generate --model MODEL ...`: one-off generation without a pipeline, with the
//! generate stage's options as flags and the stage's validation and sampling.

use clap::{ArgAction, Args, ValueEnum};
use gptpipe_core::config::{
    check_stage_values, Backend, ConfigError, Device, GenerateParams, ModelRef, SampleFormat,
    SortBy, StageParams, Truncate, UserPath,
};
use gptpipe_core::runner::RunError;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::kept::{generate_kept, group_header, render_all, Kept, Wanted};
use gptpipe_generate::output::{render, OutputFile};
use gptpipe_generate::prompts::{check_fit, jobs_of, listed, read_prefix_file};
use gptpipe_generate::provenance::{model_hash_for, Provenance};
use gptpipe_generate::stage::{choose_backend, known_n_ctx, open_backend};
use gptpipe_generate::Backends;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Text,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    Index,
    Score,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Auto,
    Tch,
    Onnx,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A hub id ("gpt2"), or a folder: Hugging Face layout (config.json +
    /// model.safetensors, e.g. a finetune stage's output) or an export stage's output
    #[arg(long, help_heading = "Model")]
    pub model: String,
    /// "auto", "cpu", "cuda" or "cuda:N"
    #[arg(long, default_value = "auto", help_heading = "Model")]
    pub device: String,
    /// "auto" uses ONNX Runtime for a folder holding model.onnx without safetensors weights
    #[arg(long, value_enum, default_value_t = BackendArg::Auto, help_heading = "Model")]
    pub backend: BackendArg,
    /// CPU threads of the model code (default: the CPUs available; a user's
    /// OMP_NUM_THREADS; a stage's `threads` key); wins over all of them
    #[arg(long, value_name = "N", help_heading = "Model")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Text every sample starts from (empty: start from <|endoftext|>)
    #[arg(long, default_value = "", help_heading = "Text")]
    pub prefix: String,
    /// A file of prefixes, one per line (blank lines skipped): --nsamples samples each,
    /// grouped by prefix
    #[arg(long, conflicts_with = "prefix", help_heading = "Text")]
    pub prefix_file: Option<PathBuf>,
    /// End each sample before the first occurrence of this string (repeat it for several:
    /// the earliest ends the sample)
    #[arg(long, value_name = "STOP", help_heading = "Text")]
    pub truncate: Vec<String>,
    /// Keep the prefix in the samples (--include-prefix false drops it)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", value_name = "BOOL", help_heading = "Text")]
    pub include_prefix: bool,
    /// New tokens per sample; past the model's context the window slides
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1023,
        help_heading = "Text"
    )]
    pub length: usize,

    // Numeric flags take negative values, so the range checks, not the parser, explain them.
    /// 0 means greedy decoding
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 0.7,
        help_heading = "Sampling"
    )]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0: off)
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 0,
        help_heading = "Sampling"
    )]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with this much probability (0: off)
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 0.0,
        help_heading = "Sampling"
    )]
    pub top_p: f64,
    /// Penalise tokens already in the sample (1: off), as transformers does
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1.0,
        help_heading = "Sampling"
    )]
    pub repetition_penalty: f64,
    /// Sample i depends on (seed, i) only
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 42,
        help_heading = "Sampling"
    )]
    pub seed: u64,

    /// Number of samples
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1,
        help_heading = "Batching"
    )]
    pub nsamples: usize,
    /// Samples generated together (does not change the samples)
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1,
        help_heading = "Batching"
    )]
    pub batch_size: usize,

    /// Write the samples to this file instead of stdout: a regular file is replaced
    /// atomically (through a link, its target), a device or FIFO is written in place; its
    /// folder must exist
    #[arg(long, short, help_heading = "Output")]
    pub output: Option<PathBuf>,
    /// "text" (samples separated by --sample-delim) or "jsonl"; default: by the output's
    /// extension, else text
    #[arg(long, value_enum, help_heading = "Output")]
    pub format: Option<FormatArg>,
    /// The order of each prefix's samples: "index", or "score" (best first; printed once
    /// all are done)
    #[arg(long, value_enum, default_value_t = SortArg::Index, help_heading = "Output")]
    pub sort_by: SortArg,
    /// Written after each sample in text format (after a newline)
    #[arg(long, default_value_t = format!("{}\n", "=".repeat(20)), hide_default_value = true,
          help_heading = "Output")]
    pub sample_delim: String,

    // Stop and shape controls (issue 14, part 3).
    /// Generated tokens before a --truncate string may end a sample (0: off)
    #[arg(long, default_value_t = 0, help_heading = "Controls")]
    pub min_length: usize,
    /// No n-gram of this many tokens appears twice in a sample's context (0: off)
    #[arg(long, default_value_t = 0, help_heading = "Controls")]
    pub no_repeat_ngram_size: usize,
    /// A string never generated, whatever its tokenisation (repeat it for several)
    #[arg(long = "bad-word", value_name = "WORD", help_heading = "Controls")]
    pub bad_words: Vec<String>,
}

impl GenerateArgs {
    /// The generate stage's parameters these flags stand for.
    pub fn params(&self) -> Result<GenerateParams, RunError> {
        let device: Device = self.device.parse().map_err(|e| invalid("device", e))?;
        let by_extension = self
            .output
            .as_ref()
            .is_some_and(|p| p.extension().is_some_and(|e| e == "jsonl"));
        let format = match self.format {
            Some(FormatArg::Jsonl) => SampleFormat::Jsonl,
            Some(FormatArg::Text) => SampleFormat::Text,
            None if by_extension => SampleFormat::Jsonl,
            None => SampleFormat::Text,
        };
        Ok(GenerateParams {
            model: ModelRef::from(self.model.as_str()),
            length: self.length,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            nsamples: self.nsamples,
            batch_size: self.batch_size,
            prefix: self.prefix.clone(),
            truncate: Truncate::from_list(self.truncate.clone()),
            include_prefix: self.include_prefix,
            seed: Some(self.seed),
            sample_delim: self.sample_delim.clone(),
            repetition_penalty: self.repetition_penalty,
            // The stage's rule for `output` (a name inside its folder) does not apply here.
            output: "samples.txt".into(),
            format,
            backend: self.backend.into(),
            device,
            min_length: self.min_length,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            bad_words: self.bad_words.clone(),
            prefix_file: self
                .prefix_file
                .as_ref()
                .map(|p| UserPath::from_path(p.clone())),
            // Keys without a flag keep their defaults.
            sort_by: match self.sort_by {
                SortArg::Index => SortBy::Index,
                SortArg::Score => SortBy::Score,
            },
            ..GenerateParams::default()
        })
    }
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Tch => Backend::Tch,
            BackendArg::Onnx => Backend::Onnx,
        }
    }
}

/// A usage error naming the flag that causes it (exit code 2).
pub(super) fn invalid(flag: &str, message: impl std::fmt::Display) -> RunError {
    RunError::Config(ConfigError::new(format!(
        "--{}: {message}",
        flag.replace('_', "-")
    )))
}

/// Where `--model` points, without a pipeline: a folder (relative to the working folder),
/// else a hub id.
pub fn model_source(model: &ModelRef) -> Result<ModelSource, RunError> {
    let written = model.as_written().unwrap_or_default();
    if let ModelRef::Stage(_) = model {
        return Err(invalid(
            "model",
            format!(
                "{written:?} refers to a pipeline stage; outside a pipeline, point --model at \
                 the stage's output folder (<workdir>/<stage>)"
            ),
        ));
    }
    Ok(match model.folder_in(Path::new("")) {
        Some(dir) => ModelSource::Folder(dir),
        None => ModelSource::Hub(written.into_owned()),
    })
}

/// Runs `gptpipe generate` with the backends of this build.
pub fn run(args: GenerateArgs, backends: &Backends) -> Result<(), RunError> {
    let params = args.params()?;
    if let Err((key, message)) = check_stage_values(&StageParams::Generate(params.clone())) {
        // The one key whose flag is not its name: `--bad-word`, repeated.
        let flag = if key == "bad_words" { "bad_word" } else { key };
        return Err(invalid(flag, message));
    }
    let source = model_source(&params.model)?;
    // Where the samples go is checked before any work (a missing folder is not created).
    let output = match &args.output {
        Some(path) => {
            Some(OutputFile::check(path).map_err(|e| invalid("output", format!("{e:#}")))?)
        }
        None => None,
    };
    let seed = args.seed;
    let codec = gptpipe_generate::codec::gpt2()?;
    let file = match &args.prefix_file {
        Some(path) => {
            Some(read_prefix_file(path).map_err(|e| invalid("prefix_file", format!("{e:#}")))?)
        }
        None => None,
    };
    let prefix_flag = if file.is_some() {
        "prefix_file"
    } else {
        "prefix"
    };
    let jobs = jobs_of(&params, seed, codec.as_ref(), file.as_ref())
        .map_err(|e| invalid(prefix_flag, format!("{e:#}")))?;
    let fits = |n_ctx: usize| {
        check_fit(&params, file.as_ref(), &jobs, n_ctx)
            .map_err(|e| invalid(prefix_flag, format!("{e:#}")))
    };
    if let Some(n_ctx) = known_n_ctx(&source) {
        fits(n_ctx)?;
    }
    let mut backend = open_backend(backends, params.backend, &source, &params.device)?;
    fits(backend.n_ctx())?;

    let chosen = choose_backend(params.backend, &source);
    let model_hash = model_hash_for(&source, chosen)?;
    let mut kept: Vec<Vec<Kept>> = vec![Vec::new(); jobs.len()];
    let stdout = std::io::stdout();
    // Each batch appears on stdout as soon as it is done, unless the samples are sorted.
    let streaming = args.output.is_none() && params.sort_by == SortBy::Index;
    generate_kept(
        backend.as_mut(),
        codec.as_ref(),
        &Wanted {
            params: &params,
            jobs: &jobs,
            start: 0,
        },
        None,
        &mut |_| Ok(()),
        &mut |j, batch| {
            if streaming {
                let mut text = String::new();
                if kept[j].is_empty() && listed(&params) && params.format == SampleFormat::Text {
                    text.push_str(&group_header(&jobs[j].prefix));
                }
                for k in &batch {
                    text.push_str(&render(
                        k,
                        &jobs[j],
                        params.format,
                        gptpipe_generate::output::sample_delim(&params),
                        &model_hash,
                    ));
                }
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            kept[j].extend(batch);
            Ok(())
        },
    )?;
    if !streaming {
        let text = render_all(&params, &jobs, &model_hash, Vec::new(), kept).concat();
        match &output {
            Some(output) => output.write(text.as_bytes())?,
            None => {
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(anyhow::Error::from)?;
            }
        }
    }
    // A regular file's provenance goes beside it (not for stdout or a device).
    if let Some(path) = args.output.as_deref().filter(|p| p.is_file()) {
        Provenance::new(&params, &source, chosen, seed)?
            .stamped()
            .write_beside(path)?;
    }
    Ok(())
}
