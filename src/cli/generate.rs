//! `gptpipe generate --model MODEL ...`: one-off generation without a pipeline, with the
//! generate stage's options as flags and the stage's validation and sampling.

use clap::{ArgAction, Args, ValueEnum};
use gptpipe_core::config::{
    check_stage_values, Backend, ConfigError, Device, GenerateParams, ModelRef, SampleFormat,
    StageParams,
};
use gptpipe_core::runner::RunError;
use gptpipe_core::stage::ModelSource;
use gptpipe_generate::output::{render, OutputFile};
use gptpipe_generate::stage::{job_of, known_n_ctx, open_backend};
use gptpipe_generate::{generate_range, Backends};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Text,
    Jsonl,
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

    /// Text every sample starts from (empty: start from <|endoftext|>)
    #[arg(long, default_value = "", help_heading = "Text")]
    pub prefix: String,
    /// End each sample before the first occurrence of this string
    #[arg(long, default_value = "", help_heading = "Text")]
    pub truncate: String,
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
    /// Written after each sample in text format (after a newline)
    #[arg(long, default_value_t = format!("{}\n", "=".repeat(20)), hide_default_value = true,
          help_heading = "Output")]
    pub sample_delim: String,
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
            truncate: self.truncate.clone(),
            include_prefix: self.include_prefix,
            seed: Some(self.seed),
            sample_delim: self.sample_delim.clone(),
            repetition_penalty: self.repetition_penalty,
            // The stage's rule for `output` (a name inside its folder) does not apply here.
            output: "samples.txt".into(),
            format,
            backend: self.backend.into(),
            device,
            // Keys without a flag keep their defaults.
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
        return Err(invalid(key, message));
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
    let job = job_of(&params, seed, codec.as_ref())?;
    if let Some(n_ctx) = known_n_ctx(&source) {
        job.check_fits(n_ctx).map_err(|e| invalid("prefix", e))?;
    }
    let mut backend = open_backend(backends, params.backend, &source, &params.device)?;
    job.check_fits(backend.n_ctx())
        .map_err(|e| invalid("prefix", e))?;

    let mut rendered = Vec::new();
    let stdout = std::io::stdout();
    let to_stdout = args.output.is_none();
    generate_range(
        backend.as_mut(),
        codec.as_ref(),
        &job,
        0..params.nsamples,
        params.batch_size,
        &mut |_| Ok(()),
        &mut |samples| {
            for s in &samples {
                let text = render(s, params.format, &params.sample_delim, seed);
                if to_stdout {
                    // Each batch appears as soon as it is done.
                    let mut out = stdout.lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                } else {
                    rendered.push(text);
                }
            }
            Ok(())
        },
    )?;
    if let Some(output) = &output {
        output.write(rendered.concat().as_bytes())?;
    }
    Ok(())
}
