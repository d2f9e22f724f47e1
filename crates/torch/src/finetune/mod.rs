//! `kind = "finetune"`: train a GPT-2 on a dataset with gpt-2-simple's semantics.
//!
//! One step = `accumulate_gradients` micro-batches of `batch_size` windows of `n_ctx`
//! tokens (fewer when the dataset is shorter), gradients averaged (`accumulate = "mean"`)
//! or summed as gpt-2-simple's `AccumulatingOptimizer` does ("sum"), then one optimizer
//! update. The learning rate warms up linearly: `lr * min(1, step / warmup_steps)` for
//! steps 1, 2, ..., then follows `lr_schedule` (transformers' schedulers, see
//! [`rules::learning_rate`]); gradients are clipped to `max_grad_norm` when it is positive.
//! Mixed precision: fp32 master weights, compute in bf16/fp16 (see
//! [`crate::device::compute_kind`]); fp16 adds dynamic loss scaling. Gradient checkpointing
//! (`use_memory_saving_gradients`) recomputes each block in backward
//! (`Gpt2::loss_backward_checkpointed`); [`options`] decides which weights train and checks
//! the memory before the model loads.
//!
//! Determinism and resume: the windows of step s come from a stateless mix of (seed, s),
//! and libtorch's generator (dropout) is re-seeded from (seed, s) at every step, so a run
//! resumed at step s from a checkpoint continues exactly as the straight run would.
//!
//! Early stopping (`early_stopping_patience > 0`) keeps a copy of the trained weights at
//! every improvement of the validation loss (`trainer::BestWeights`) and, when it stops,
//! restores them: the output holds the best weights seen, not the last. A run that reaches
//! `steps` keeps its final weights.
//!
//! [`run`] checks the params, loads the data and the model, picks the state to resume from
//! and writes the outputs; the loop is `trainer::Trainer`'s, and its rules (learning rate,
//! which steps validate, print, sample and save, early stopping, the fp16 loss scale, which
//! state resumes) are plain functions over numbers in [`rules`].

mod card;
mod data;
pub mod fused;
mod optim;
pub mod options;
mod plot;
pub mod rules;
mod state;
mod trainer;

pub use card::{Card, CARD_FILE};
pub use data::{mix, read_tokens_bin, Dataset};
pub use optim::Optimizer;
pub use rules::learning_rate;
pub use state::{identity, Checkpoint, StateFiles, TrainerState};

use crate::device::{compute_kind, parse_device};
use crate::model::{Config, Gpt2};
use crate::{source, weights};
use anyhow::{bail, Context, Result};
use gptpipe_core::config::{FinetuneParams, RestoreFrom, StageKind, StageParams};
use gptpipe_core::stage::{ModelSource, Registry, StageContext};
use std::path::Path;
use tch::{Kind, Tensor};
use trainer::{BestWeights, Trainer};

/// The implementation version (part of every cache key).
pub const VERSION: u32 = gptpipe_core::stage::versions::FINETUNE;

/// Validation windows evaluated at most per validation.
const MAX_VAL_WINDOWS: usize = 64;

pub fn register(registry: &mut Registry) {
    registry.register(StageKind::Finetune, VERSION, run);
}

fn params<'a>(ctx: &StageContext<'a>) -> Result<&'a FinetuneParams> {
    match ctx.params {
        StageParams::Finetune(p) => Ok(p),
        other => bail!(
            "stage {} is a {} stage, not finetune",
            ctx.name,
            other.kind()
        ),
    }
}

/// Runs the stage: everything that can fail on bad input fails before the first step.
pub fn run(ctx: &StageContext) -> Result<()> {
    let p = params(ctx)?;
    let device = parse_device(&p.device)?;
    let group = data_parallel(ctx, p, device)?;
    let device = group.as_ref().map_or(device, |g| g.device);
    let main = crate::dist::is_main(group.as_ref());
    let (compute, why) = compute_kind(p.precision, device)?;
    ctx.log(why);
    let seed = ctx.seed();
    let schedule = rules::Schedule { p };
    if schedule.validates_nothing() {
        ctx.warn("val_every is set but val_split = 0: there is no validation set");
    }
    let identity = state::identity(p, ctx.inputs_hash, VERSION);

    // `restore_from` a gpt-2-simple checkpoint starts from its weights at step 0, as `model`
    // naming it would: its optimizer state (TensorFlow's Adam) is not carried over.
    let imported = match &p.restore_from {
        RestoreFrom::Path(path) => {
            Some(ctx.pipeline.resolve(path)).filter(|path| crate::gpt2_simple::is_checkpoint(path))
        }
        _ => None,
    };
    let model_source = match &imported {
        Some(path) => ModelSource::Folder(path.clone()),
        None => ctx.resolve_model(&p.model),
    };
    let chunks = Dataset::load(&ctx.resolve_input(&p.dataset), p.combine, ctx.pipeline)
        .with_context(|| format!("loading dataset {:?}", p.dataset))?;
    // A GPT-2 size named by its hub id is known before its download: a training that
    // cannot fit is refused before gigabytes come down.
    if let ModelSource::Hub(id) = &model_source {
        if let Some(cfg) = Config::preset(id) {
            let longest = chunks.iter().map(Vec::len).max().unwrap_or(0);
            options::check_freeze(p, &cfg)?;
            let need = options::need(p, &cfg, cfg.n_ctx.min(longest).max(2), compute);
            crate::memory::ensure_training_fits(&need, device)
                .with_context(|| format!("model = {id:?}"))?;
        }
    }
    let folder = source::model_folder(&model_source)?;
    let config = match (&folder, &model_source) {
        (Some(dir), _) if crate::gpt2_simple::is_checkpoint(dir) => {
            crate::gpt2_simple::config(dir)?
        }
        (Some(dir), _) => Config::from_json_file(&dir.join(weights::CONFIG_FILE))?,
        (None, ModelSource::Inline(m)) => Config::from_inline(m)?,
        (None, _) => unreachable!("only inline models have no folder"),
    };
    options::check_freeze(p, &config)?;
    let data = Dataset::new(chunks, config.n_ctx, p.val_split, config.vocab_size)?;
    options::plan_memory(ctx, p, &config, data.window, compute, device)?;

    // Rank 0 finds what to resume from (and removes damaged checkpoints); it gives the
    // others its state once the optimizer exists.
    let resume = match imported {
        Some(_) => None,
        None if main => find_resume(ctx, p, &identity)?,
        None => None,
    };
    let mut model = match (&resume, &folder) {
        (Some(c), _) => weights::load_folder(&c.model_dir, device)?,
        (None, Some(dir)) => weights::load_folder(dir, device)?,
        (None, None) => Gpt2::random(&config, device, seed),
    };
    if model.config != config && resume.is_none() {
        bail!("the model's config changed while loading");
    }
    model.set_compute_kind(compute);
    model.set_dropout(p.dropout);
    // gpt-2-simple's only_train_transformer_layers trains the blocks (`h.*`) only;
    // num_layers_freeze leaves the first blocks. Frozen weights get no gradient and no
    // optimizer state: only the trained ones are in the flat buffer.
    let names: Vec<String> = model
        .named_parameters()
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| options::trains(p, n))
        .collect();
    // One buffer for all trained weights, and the leaf autograd fills: the forward casts
    // it once, backward leaves one gradient, the optimizer updates it in one kernel.
    let (flat, trainable) = model.flatten_for_training(&names);
    let mut best = BestWeights::new(flat.shallow_clone(), &trainable);
    let mut opt = Optimizer::new_flat(p.optimizer, p.weight_decay, &trainable, flat);
    let (mut trainer, metrics) = match &resume {
        Some(c) => {
            opt.load_state(c.trainer.step, c.optimizer_tensors()?)?;
            let metrics = rules::metrics_up_to(c.metrics(), c.trainer.step);
            ctx.log(format!(
                "resuming from step {} ({})",
                c.trainer.step,
                c.model_dir.display()
            ));
            (c.trainer.clone(), metrics)
        }
        None => (
            rules::fresh_state(identity.clone(), compute == Some(Kind::Half)),
            Vec::new(),
        ),
    };
    trainer.identity = identity;
    if let Some(g) = &group {
        // Rank 0's weights, the frozen ones too (the others may have started from random
        // ones), then its optimizer state.
        for (name, t) in model.named_parameters() {
            if !options::trains(p, name) {
                g.broadcast(&t.detach())?;
            }
        }
        opt.broadcast_state(g)?;
        trainer = serde_json::from_slice(&g.broadcast_bytes(&serde_json::to_vec(&trainer)?)?)?;
    }
    if let Some(c) = &resume {
        match rules::best_on_resume(p.early_stopping_patience, &trainer) {
            rules::BestOnResume::None => {}
            rules::BestOnResume::Current => best.keep(),
            rules::BestOnResume::Saved(b) => match c.best_tensors()? {
                Some(tensors) => best.load(&tensors)?,
                None => ctx.warn(format!(
                    "{} lacks the weights of step {b} (the best validation loss): if early \
                     stopping triggers, the output keeps the last weights",
                    c.model_dir.display()
                )),
            },
        }
    }
    ctx.log(format!(
        "training {} parameters ({} trainable) on {:?} in {:?}; {} training tokens, windows of {}{}",
        config.num_parameters(),
        trainable.iter().map(|(_, t)| t.numel()).sum::<usize>(),
        device,
        model.compute_kind(),
        data.train_tokens(),
        data.window,
        if p.gradient_checkpointing() {
            "; gradient checkpointing"
        } else {
            ""
        }
    ));

    let mut trainer = Trainer {
        p,
        seed,
        model: &model,
        data: &data,
        device,
        opt,
        group: group.as_ref(),
        best,
        state: trainer,
        metrics,
    };
    trainer.train(ctx)?;
    if !main {
        return Ok(());
    }
    let files = trainer.state_files();
    let card = Card::of_run(ctx, p, &model_source, &data, &files)?;
    write_outputs(ctx, p, &model, folder.as_deref(), &files, &card)
}

/// The data-parallel ranks `devices` asks for (joined, or started here), or `None` for one
/// process. Checked before anything loads: a batch the ranks cannot share equally, or
/// `device = "cuda:N"` (one device) with several ranks.
fn data_parallel(
    ctx: &StageContext,
    p: &FinetuneParams,
    device: tch::Device,
) -> Result<Option<crate::dist::Group>> {
    let group = crate::dist::Group::for_stage(ctx, p.devices, device)?;
    let Some(g) = &group else {
        return Ok(None);
    };
    if !p.batch_size.is_multiple_of(g.world) {
        bail!(
            "batch_size = {} cannot be shared by {} ranks: each trains an equal share of \
             every batch, so batch_size must be a multiple of devices",
            p.batch_size,
            g.world
        );
    }
    if matches!(p.device, gptpipe_core::config::Device::CudaIndex(_)) {
        bail!(
            "device = \"{}\" names one GPU but devices asks for {} ranks: use device = \
             \"cuda\" (rank r trains on cuda:r)",
            p.device,
            g.world
        );
    }
    Ok(group)
}

/// Where to continue from: `restore_from = "latest"` takes the newest compatible state (a
/// checkpoint of a killed run, or the previous output when `steps` was raised), "fresh"
/// nothing, anything else is a checkpoint or output folder.
fn find_resume(
    ctx: &StageContext,
    p: &FinetuneParams,
    identity: &str,
) -> Result<Option<Checkpoint>> {
    match &p.restore_from {
        RestoreFrom::Fresh => Ok(None),
        RestoreFrom::Latest => {
            // Checkpoints of the state folder must pass their checksums; a damaged one is
            // said and removed, and the resume falls back to an older one (or to a fresh
            // start). The previous output is the cache's to check.
            let (checkpoints, unreadable) = state::scan_checkpoints(ctx.state_dir);
            for (dir, e) in unreadable {
                ctx.warn(format!(
                    "checkpoint {} is damaged ({e:#}): not resuming from it; removed it",
                    dir.display()
                ));
                let _ = std::fs::remove_dir_all(&dir);
            }
            let mut candidates: Vec<(Checkpoint, bool)> =
                checkpoints.into_iter().map(|c| (c, true)).collect();
            if let Some(prev) = ctx.previous_output {
                if let Ok(c) = Checkpoint::open(prev) {
                    candidates.push((c, false));
                }
            }
            // Newest first; at the same step, the previous output before a checkpoint.
            let candidates = rules::resume_order(candidates, identity, p.steps, |c| {
                (c.trainer.identity.as_str(), c.trainer.step)
            });
            for (c, checked) in candidates {
                if !checked {
                    return Ok(Some(c));
                }
                match c.verify() {
                    Ok(()) => return Ok(Some(c)),
                    // Written by an earlier gptpipe: it cannot be checked, so it is not
                    // resumed from, but it is not known to be damaged either: kept.
                    Err(_) if !c.has_checksums() => ctx.warn(format!(
                        "checkpoint {} has no checksums (an earlier gptpipe wrote it): not \
                         resuming from it",
                        c.model_dir.display()
                    )),
                    Err(e) => {
                        ctx.warn(format!(
                            "checkpoint {} is damaged ({e:#}): not resuming from it; removed it",
                            c.model_dir.display()
                        ));
                        let _ = std::fs::remove_dir_all(&c.model_dir);
                    }
                }
            }
            Ok(None)
        }
        RestoreFrom::Path(path) => {
            let path = ctx.pipeline.resolve(path);
            let c = Checkpoint::open(&path)
                .with_context(|| format!("restore_from = {:?}", p.restore_from))?;
            if c.has_checksums() {
                c.verify().with_context(|| {
                    format!(
                        "restore_from = {:?}: {} is damaged",
                        p.restore_from,
                        path.display()
                    )
                })?;
            }
            if c.trainer.identity != identity {
                ctx.warn(format!(
                    "restoring from {} although it was trained with other parameters or data",
                    path.display()
                ));
            }
            Ok(Some(c))
        }
    }
}

/// Mean next-token loss of `model` over `data`'s validation windows (at most
/// `MAX_VAL_WINDOWS`, in batches of up to `batch_size`, dropout off): the `val_loss` of the
/// metrics and of early stopping.
pub fn validation_loss(model: &Gpt2, data: &Dataset, batch_size: usize) -> f64 {
    let windows = data.val_windows(MAX_VAL_WINDOWS);
    let (mut sum, mut count) = (0.0, 0.0);
    tch::no_grad(|| {
        let mut i = 0;
        while i < windows.len() {
            let len = windows[i].len();
            let mut j = i;
            while j < windows.len() && j - i < batch_size.max(1) && windows[j].len() == len {
                j += 1;
            }
            let rows: Vec<i64> = windows[i..j]
                .iter()
                .flat_map(|w| w.iter().map(|&t| t as i64))
                .collect();
            let ids = Tensor::from_slice(&rows)
                .reshape([(j - i) as i64, len as i64])
                .to_device(model.device());
            let n = ((j - i) * (len - 1)) as f64;
            sum += model.loss(&ids, false).double_value(&[]) * n;
            count += n;
            i = j;
        }
    });
    sum / count.max(1.0)
}

/// The output folder: the model in Hugging Face layout (with tokenizer files and the model
/// card), metrics, the loss plot and the training state; plus a final checkpoint in the
/// state folder.
fn write_outputs(
    ctx: &StageContext,
    p: &FinetuneParams,
    model: &Gpt2,
    source_dir: Option<&Path>,
    files: &StateFiles,
    card: &Card,
) -> Result<()> {
    let out = ctx.out_dir;
    let metrics = files.metrics;
    weights::save_folder(model, out)?;
    write_tokenizer(out, source_dir, &model.config)?;
    weights::write_atomic(&out.join(CARD_FILE), card.render().as_bytes())?;
    let state_dir = out.join(state::OUTPUT_STATE_DIR);
    std::fs::create_dir_all(&state_dir)?;
    state::write_state_files(&state_dir, files)?;
    let mut lines = String::new();
    for m in metrics {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    weights::write_atomic(&out.join(state::METRICS_FILE), lines.as_bytes())?;
    if let Err(e) = plot::write_loss_svg(&out.join("loss.svg"), metrics) {
        ctx.warn(format!("could not draw loss.svg: {e:#}"));
    }
    // The state folder keeps a copy until the runner has published the output (it then
    // empties the folder): a run killed before that resumes from it at the last step.
    state::save_checkpoint(ctx.state_dir, model, files, p.max_checkpoints)?;
    Ok(())
}

/// The source model's tokenizer files when it has them, else GPT-2's (when the
/// vocabulary is GPT-2's).
fn write_tokenizer(out: &Path, source_dir: Option<&Path>, config: &Config) -> Result<()> {
    if let Some(dir) =
        source_dir.filter(|d| d.join("vocab.json").is_file() && d.join("merges.txt").is_file())
    {
        for f in gptpipe_hf::folder::TOKENIZER_FILES {
            let src = dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, out.join(f))
                    .with_context(|| format!("cannot copy {}", src.display()))?;
            }
        }
        return Ok(());
    }
    if config.vocab_size == gptpipe_text::tokenizer::VOCAB_SIZE {
        gptpipe_text::tokenizer::write_tokenizer_files_with_max_length(out, config.n_ctx)?;
    }
    Ok(())
}
