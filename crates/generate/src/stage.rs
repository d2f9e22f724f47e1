//! `kind = "generate"`: the stage, and the pieces `gptpipe generate` shares with it.

use crate::backend::{Backend, BackendFactory, Backends};
use crate::codec::Codec;
use crate::curation::Curation;
use crate::driver::Job;
use crate::kept::{generate_kept, render_all, Kept, Wanted};
use crate::novelty;
use crate::output::{previous_samples, write_outputs, Meta};
use crate::prompts::{check_fit, jobs_of, listed, read_prefix_file};
use crate::provenance::Provenance;
use crate::sampling::Sampling;
use anyhow::{bail, Context, Result};
use gptpipe_core::config::{
    Backend as BackendChoice, Device, GenerateParams, ModelRef, Pipeline, SortBy, StageKind,
    StageParams,
};
use gptpipe_core::stage::{resolve_model, ModelSource, StageContext};

/// Version of this stage's implementation: part of its cache key. Raise it when the same
/// parameters would give different samples.
pub const VERSION: u32 = gptpipe_core::stage::versions::GENERATE;

/// The sampling knobs of `params`.
pub fn sampling_of(params: &GenerateParams) -> Sampling {
    Sampling {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        repetition_penalty: params.repetition_penalty,
    }
}

/// The job of `params` for `prefix` (encoded) with `seed`.
pub fn job_of(params: &GenerateParams, prefix: &str, seed: u64, codec: &dyn Codec) -> Result<Job> {
    Job::new(
        codec,
        prefix,
        params.include_prefix,
        params.length,
        sampling_of(params),
        seed,
        &params.truncate.stops(),
    )?
    .with_controls(
        codec,
        params.min_length,
        params.no_repeat_ngram_size,
        &params.bad_words,
    )
}

/// Which backend runs `source`: `auto` is ONNX Runtime for an export stage's output (or a
/// folder with `model.onnx` and no safetensors weights), libtorch otherwise.
pub fn choose_backend(choice: BackendChoice, source: &ModelSource) -> BackendChoice {
    match choice {
        BackendChoice::Auto => {
            let onnx = match source {
                ModelSource::Stage { kind, .. } => *kind == StageKind::Export,
                ModelSource::Folder(dir) => {
                    dir.join(gptpipe_hf::folder::ONNX_FILE).is_file()
                        && gptpipe_hf::weights::find(dir).is_none()
                }
                _ => false,
            };
            if onnx {
                BackendChoice::Onnx
            } else {
                BackendChoice::Tch
            }
        }
        other => other,
    }
}

/// The model's context length when it can be read without loading the model: an inline
/// table's `n_ctx`, `n_positions` (else `n_ctx`) of a folder's `config.json`, or that of
/// OpenAI's GPT-2 repositories on the hub. Lets a prefix that cannot fit fail before any
/// model is loaded or downloaded.
pub fn known_n_ctx(source: &ModelSource) -> Option<usize> {
    let dir = match source {
        ModelSource::Inline(m) => return Some(m.n_ctx),
        ModelSource::Folder(dir) | ModelSource::Stage { dir, .. } => dir,
        ModelSource::Hub(id) => {
            let bare = id.strip_prefix("openai-community/").unwrap_or(id);
            return matches!(bare, "gpt2" | "gpt2-medium" | "gpt2-large" | "gpt2-xl")
                .then_some(HUB_GPT2_N_CTX);
        }
    };
    if gptpipe_hf::gpt2_simple::is_checkpoint(dir) {
        return gptpipe_hf::gpt2_simple::hparams(dir).ok().map(|h| h.n_ctx);
    }
    let text = std::fs::read_to_string(dir.join(gptpipe_hf::CONFIG_FILE)).ok()?;
    gptpipe_hf::HfConfig::parse(&text).ok()?.context()
}

/// The context of OpenAI's GPT-2 repositories on the hub (all four sizes have 1024
/// positions).
const HUB_GPT2_N_CTX: usize = 1024;

/// The context of the model `model` names in `pipeline`, when it is known before anything
/// runs: an inline table, a folder's `config.json`, one of OpenAI's GPT-2 hub ids, or a
/// stage that trains or exports such a model.
pub fn planned_n_ctx(pipeline: &Pipeline, model: &ModelRef) -> Option<usize> {
    if let ModelRef::Stage(stage) = model {
        return match pipeline.stages.get(stage.name())? {
            StageParams::Finetune(p) => planned_n_ctx(pipeline, &p.model),
            StageParams::Export(p) => planned_n_ctx(pipeline, &p.model),
            _ => None,
        };
    }
    known_n_ctx(&resolve_model(pipeline, &Default::default(), model))
}

/// The spec's "a prefix longer than the context is a config error before any work
/// starts": measures the prefix when the model's context is known from the pipeline (the
/// stage checks again against the loaded model).
pub fn check_prefix_fits(
    pipeline: &Pipeline,
    params: &StageParams,
) -> Result<(), (&'static str, String)> {
    let StageParams::Generate(p) = params else {
        return Ok(());
    };
    // GPT-2's tokens are byte-level, at least one byte each: a prefix of at most n_ctx
    // bytes fits without loading the tokenizer (tens of ms on every `status` and no-op run).
    let Some(n_ctx) = planned_n_ctx(pipeline, &p.model) else {
        return Ok(());
    };
    let (key, prefixes) = if p.prefixes.is_empty() {
        ("prefix", std::slice::from_ref(&p.prefix))
    } else {
        ("prefixes", p.prefixes.as_slice())
    };
    let mut codec = None;
    for (i, prefix) in prefixes.iter().enumerate() {
        if prefix.len() <= n_ctx {
            continue;
        }
        let checked = match &codec {
            Some(c) => Ok(c),
            None => crate::codec::gpt2().map(|c| &*codec.insert(c)),
        }
        .and_then(|codec| job_of(p, prefix, 0, codec.as_ref()))
        .and_then(|job| job.check_fits(n_ctx));
        if let Err(e) = checked {
            let at = if key == "prefixes" {
                format!("{}: ", crate::prompts::origin_of(p, None, i))
            } else {
                String::new()
            };
            return Err((key, format!("{at}{e:#}")));
        }
    }
    Ok(())
}

/// Builds the backend for `source`, or says why this build cannot.
pub fn open_backend(
    backends: &Backends,
    choice: BackendChoice,
    source: &ModelSource,
    device: &Device,
) -> Result<Box<dyn Backend>> {
    let chosen = choose_backend(choice, source);
    let factory: &BackendFactory = match chosen {
        BackendChoice::Onnx => backends.onnx.as_ref().context(
            "the ONNX Runtime backend is not in this build (built without the `onnx` feature); \
             use backend = \"tch\" with a safetensors model",
        )?,
        _ => backends.tch.as_ref().context(
            "the libtorch backend is not in this build (built without the `worker` feature); \
             generate from an exported model (model = \"@export-stage\") or set backend = \"onnx\"",
        )?,
    };
    if matches!(source, ModelSource::Inline(_)) && chosen == BackendChoice::Onnx {
        bail!("an inline random model has no ONNX file: export it first or use backend = \"tch\"");
    }
    factory(source, device)
}

/// The shortest time between two progress events of a generate stage.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs the generate stage for `ctx`.
pub fn run_stage(ctx: &StageContext, backends: &Backends, codec: &dyn Codec) -> Result<()> {
    let StageParams::Generate(params) = ctx.params else {
        bail!("stage `{}` is not a generate stage", ctx.name);
    };
    let seed = ctx.seed();
    let file = match &params.prefix_file {
        Some(path) => Some(read_prefix_file(&ctx.pipeline.resolve(path)).context("prefix_file")?),
        None => None,
    };
    let jobs = jobs_of(params, seed, codec, file.as_ref())?;
    let source = ctx.resolve_model(&params.model);
    let index = novelty::for_stage(ctx, params, codec)?;
    let mut curation = match index {
        Some(index) => Some(Curation::from_params(params, Some(index), codec)?),
        None if params.curates() => Some(Curation::from_params(params, None, codec)?),
        None => None,
    };
    let meta = Meta::new(VERSION, ctx.inputs_hash, seed, params);
    // An earlier output's samples are reused only where sample i of this run is sample i of
    // that one: `prefix` (a listed prefix has a header), every sample kept, in index order.
    let reusable = !listed(params) && curation.is_none() && params.sort_by == SortBy::Index;
    let mut earlier: Vec<String> = ctx
        .previous_output
        .filter(|_| reusable)
        .and_then(|dir| previous_samples(dir, &meta, params))
        .unwrap_or_default();
    earlier.truncate(params.nsamples);
    if !earlier.is_empty() {
        ctx.log(format!(
            "keeping {} samples from the previous run",
            earlier.len()
        ));
    }
    let mut kept: Vec<Vec<Kept>> = vec![Vec::new(); jobs.len()];
    if earlier.len() < jobs.len() * params.nsamples {
        if let Some(n_ctx) = known_n_ctx(&source) {
            check_fit(params, file.as_ref(), &jobs, n_ctx)?;
        }
        let mut backend = open_backend(backends, params.backend, &source, &params.device)?;
        check_fit(params, file.as_ref(), &jobs, backend.n_ctx())?;
        let needed = jobs.len() * params.nsamples - earlier.len();
        let total = (needed * params.length) as u64;
        // Tokens of kept samples so far, for progress across batches.
        let done_before = std::cell::Cell::new(0u64);
        // A decoding step can take well under a millisecond: progress events go out at
        // most every PROGRESS_EVERY, not once per token.
        let last_progress = std::cell::Cell::new(None::<std::time::Instant>);
        let mut check = |done: usize| {
            ctx.check_cancelled()?;
            if last_progress
                .get()
                .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
            {
                last_progress.set(Some(std::time::Instant::now()));
                // Dropped samples make the batch's tokens overshoot what is kept.
                let step = (done_before.get() + done as u64).min(total);
                ctx.progress(step, total, serde_json::json!({}));
            }
            Ok(())
        };
        generate_kept(
            backend.as_mut(),
            codec,
            &Wanted {
                params,
                jobs: &jobs,
                start: earlier.len(),
            },
            curation.as_mut(),
            &mut check,
            &mut |j, batch| {
                let n: u64 = batch.iter().map(|k| k.sample.tokens.len() as u64).sum();
                done_before.set(done_before.get() + n);
                kept[j].extend(batch);
                Ok(())
            },
        )?;
    }
    // After generating: the model's files are those the backend loaded (a hub model has
    // been downloaded).
    let chosen = choose_backend(params.backend, &source);
    let mut provenance = Provenance::for_stage(ctx, params, &source, chosen)?;
    if let Some(c) = &curation {
        let counts = c.counts();
        if params.curates() {
            ctx.log(format!(
                "kept {} of {} samples generated (dropped: {})",
                counts.kept,
                counts.generated,
                counts.dropped_summary(true)
            ));
        }
        provenance.curation = Some(counts.clone());
    }
    let rendered = render_all(params, &jobs, &provenance.model.hash, earlier, kept);
    write_outputs(ctx.out_dir, &params.output, &rendered, meta)?;
    provenance.write(ctx.out_dir, &params.output)
}
