//! Typed parameters of each stage kind, with the spec's defaults.
//!
//! These types are the single source of the pipeline schema (`gptpipe schema`) and of what
//! stages receive. Stages never read TOML: they get one of these, already validated.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::refs::{Device, InputRef, ModelRef, RestoreFrom, StageRef, UserPath};

/// The shape of a fresh, randomly initialised GPT-2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineModel {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    #[serde(default = "d_n_ctx")]
    pub n_ctx: usize,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Dropout of residual, embedding and attention layers during training.
    #[serde(default = "d_dropout")]
    pub dropout: f64,
}

fn d_n_ctx() -> usize {
    gptpipe_hf::config::gpt2::N_POSITIONS
}
fn d_vocab() -> usize {
    gptpipe_hf::config::gpt2::VOCAB_SIZE
}
fn d_dropout() -> f64 {
    0.1
}

/// Input formats the prepare stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Text,
    Jsonl,
}

/// A CSV column, by header name or 0-based index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnRef {
    Index(usize),
    Name(String),
}

impl Default for ColumnRef {
    fn default() -> Self {
        ColumnRef::Index(0)
    }
}

/// What to do with a record that cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Error,
    Skip,
}

/// One regex replacement, applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub pattern: String,
    #[serde(default)]
    pub with: String,
}

/// `kind = "prepare"`: read, clean and tokenize a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareParams {
    /// Files, folders or globs, relative to the pipeline file.
    pub inputs: Vec<InputRef>,
    /// Input format; by default taken from each file's extension.
    pub format: Option<InputFormat>,
    /// CSV column: header name or 0-based index.
    pub column: ColumnRef,
    /// Whether the first CSV record is a header.
    pub header: bool,
    /// CSV field delimiter (one character).
    pub delimiter: String,
    /// JSONL field holding the text.
    pub field: String,
    pub html_unescape: bool,
    pub remove_chars: Vec<String>,
    pub replace: Vec<Replace>,
    pub normalize_whitespace: bool,
    /// Minimum row length in characters, after cleaning.
    pub min_length: Option<usize>,
    /// Maximum row length in characters, after cleaning.
    pub max_length: Option<usize>,
    pub dedupe: bool,
    /// Wrap each row in start/end tokens; default true for csv and jsonl, false for text.
    pub wrap: Option<bool>,
    pub start_token: String,
    pub end_token: String,
    pub on_error: OnError,
    // Conditioned rows (issue 14, template).
    /// Builds each row from several CSV columns (by header name, or `{0}` by index without
    /// a header) or JSONL fields, as `"{subreddit} | {title}"` (`{{` and `}}` are braces),
    /// before cleaning; instead of `column`/`field`.
    // Unset, it is left out of the params' JSON: stages without it keep their cache keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl Default for PrepareParams {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            format: None,
            column: ColumnRef::default(),
            header: true,
            delimiter: ",".into(),
            field: "text".into(),
            html_unescape: false,
            remove_chars: Vec::new(),
            replace: Vec::new(),
            normalize_whitespace: false,
            min_length: None,
            max_length: None,
            dedupe: false,
            wrap: None,
            start_token: "<|startoftext|>".into(),
            end_token: "<|endoftext|>".into(),
            on_error: OnError::Error,
            template: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    #[default]
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 compute on CUDA, fp32 on CPU.
    #[default]
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

/// `kind = "finetune"`: train a GPT-2 on a dataset. Defaults follow gpt-2-simple.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneParams {
    /// `"@prepare-stage"` or a path to a text file.
    pub dataset: InputRef,
    pub model: ModelRef,
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub accumulate_gradients: usize,
    pub optimizer: Optimizer,
    pub sample_every: u64,
    pub sample_length: usize,
    pub sample_num: usize,
    pub save_every: u64,
    pub print_every: u64,
    pub max_checkpoints: usize,
    /// `"latest"`, `"fresh"` or a path to a checkpoint folder.
    pub restore_from: RestoreFrom,
    pub only_train_transformer_layers: bool,
    pub combine: usize,
    /// Defaults to the pipeline's seed.
    pub seed: Option<u64>,
    /// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: Device,
    pub precision: Precision,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// Gradient clipping by global norm; 0 is off.
    pub max_grad_norm: f64,
    pub val_split: f64,
    pub val_every: u64,
    pub early_stopping_patience: u64,
}

impl FinetuneParams {
    /// Keys of reporting and checkpoint cadence: they never change the trained weights.
    pub const REPORTING_KEYS: [&'static str; 6] = [
        "print_every",
        "sample_every",
        "sample_length",
        "sample_num",
        "save_every",
        "max_checkpoints",
    ];

    /// Whether `restore_from` names a checkpoint folder rather than "latest" or "fresh".
    pub fn restores_from_path(&self) -> bool {
        matches!(self.restore_from, RestoreFrom::Path(_))
    }
}

impl Default for FinetuneParams {
    fn default() -> Self {
        Self {
            dataset: InputRef::default(),
            model: ModelRef::default(),
            steps: 1000,
            batch_size: 1,
            learning_rate: 1e-4,
            accumulate_gradients: 5,
            optimizer: Optimizer::Adam,
            sample_every: 100,
            sample_length: 1023,
            sample_num: 1,
            save_every: 1000,
            print_every: 1,
            max_checkpoints: 1,
            restore_from: RestoreFrom::Latest,
            only_train_transformer_layers: false,
            combine: 50000,
            seed: None,
            device: Device::Auto,
            precision: Precision::Auto,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            val_split: 0.0,
            val_every: 0,
            early_stopping_patience: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Onnx,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportPrecision {
    #[default]
    Fp32,
    Fp16,
}

/// `kind = "export"`: write the model as ONNX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExportParams {
    pub model: ModelRef,
    pub format: ExportFormat,
    pub opset: u32,
    pub precision: ExportPrecision,
}

impl Default for ExportParams {
    fn default() -> Self {
        Self {
            model: ModelRef::default(),
            format: ExportFormat::Onnx,
            opset: 17,
            precision: ExportPrecision::Fp32,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    #[default]
    Text,
    Jsonl,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ONNX Runtime for `@export` stages, libtorch otherwise.
    #[default]
    Auto,
    Tch,
    Onnx,
}

/// `kind = "generate"`: sample text. Defaults follow gpt-2-simple.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateParams {
    pub model: ModelRef,
    /// New tokens per sample.
    pub length: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 0 disables nucleus sampling.
    pub top_p: f64,
    pub nsamples: usize,
    pub batch_size: usize,
    pub prefix: String,
    /// Stop each sample before this string; empty for none.
    pub truncate: String,
    pub include_prefix: bool,
    /// Defaults to the pipeline's seed.
    pub seed: Option<u64>,
    pub sample_delim: String,
    pub repetition_penalty: f64,
    /// File name inside the stage's output folder.
    pub output: String,
    pub format: SampleFormat,
    pub backend: Backend,
    /// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: Device,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            model: ModelRef::default(),
            length: 1023,
            temperature: 0.7,
            top_k: 0,
            top_p: 0.0,
            nsamples: 1,
            batch_size: 1,
            prefix: String::new(),
            truncate: String::new(),
            include_prefix: true,
            seed: None,
            sample_delim: format!("{}\n", "=".repeat(20)),
            repetition_penalty: 1.0,
            output: "samples.txt".into(),
            format: SampleFormat::Text,
            backend: Backend::Auto,
            device: Device::Auto,
        }
    }
}

impl GenerateParams {
    /// The file the generate stage writes beside its samples: how they were made, so that
    /// a larger `nsamples` keeps them (`gptpipe_generate::output::META_FILE`).
    pub const META_FILE: &'static str = "generate.json";
    /// Names in a generate stage's folder that `output` may not take (or be below): the
    /// stage writes them itself.
    pub const RESERVED_OUTPUTS: &'static [&'static str] = &[Self::META_FILE, Self::PROVENANCE_FILE];
    // Provenance (issue 14).
    /// Where the samples came from (`gptpipe_generate::provenance`), beside `generate.json`.
    pub const PROVENANCE_FILE: &'static str = "provenance.json";
}
