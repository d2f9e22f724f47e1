//! `kind = "finetune"`: train a GPT-2 on a dataset with gpt-2-simple's semantics.
//!
//! One step = `accumulate_gradients` micro-batches of `batch_size` windows of `n_ctx`
//! tokens (fewer when the dataset is shorter), gradients averaged, then one optimizer
//! update (gpt-2-simple's `AccumulatingOptimizer`). The learning rate warms up linearly:
//! `lr * min(1, step / warmup_steps)` for steps 1, 2, ...; gradients are clipped to
//! `max_grad_norm` when it is positive. Mixed precision: fp32 master weights, compute in
//! bf16/fp16 (see [`crate::device::compute_kind`]); fp16 adds dynamic loss scaling.
//!
//! Determinism and resume: the windows of step s come from a stateless mix of (seed, s),
//! and libtorch's generator (dropout) is re-seeded from (seed, s) at every step, so a run
//! resumed at step s from a checkpoint continues exactly as the straight run would.
//!
//! Early stopping (`early_stopping_patience > 0`) keeps a copy of the trained weights at
//! every improvement of the validation loss ([`BestWeights`]) and, when it stops, restores
//! them: the output holds the best weights seen, not the last. A run that reaches `steps`
//! keeps its final weights.

mod data;
pub mod fused;
mod optim;
mod plot;
mod state;

pub use data::{mix, read_tokens_bin, Dataset};
pub use optim::Optimizer;
pub use state::{identity, Checkpoint, StateFiles, TrainerState};

use crate::device::{compute_kind, parse_device};
use crate::model::{Config, Gpt2};
use crate::{source, weights};
use anyhow::{bail, Context, Result};
use gptpipe_core::config::{FinetuneParams, StageKind, StageParams};
use gptpipe_core::stage::{ModelSource, Registry, StageContext};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The implementation version (part of every cache key).
pub const VERSION: u32 = gptpipe_core::stage::versions::FINETUNE;

/// Validation windows evaluated at most per validation.
const MAX_VAL_WINDOWS: usize = 64;
/// gpt-2-simple samples with top-k 40 at temperature 1 during training.
const SAMPLE_TOP_K: i64 = 40;

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
    let compute = compute_kind(p.precision, device)?;
    let seed = ctx.seed();
    if p.val_every > 0 && p.val_split == 0.0 {
        ctx.warn("val_every is set but val_split = 0: there is no validation set");
    }
    let identity = state::identity(p, ctx.inputs_hash, VERSION);

    let model_source = ctx.resolve_model(&p.model);
    let folder = source::model_folder(&model_source)?;
    let config = match (&folder, &model_source) {
        (Some(dir), _) => Config::from_json_file(&dir.join(weights::CONFIG_FILE))?,
        (None, ModelSource::Inline(m)) => Config::from_inline(m)?,
        (None, _) => unreachable!("only inline models have no folder"),
    };
    let chunks = Dataset::load(&ctx.resolve_input(&p.dataset), p.combine, ctx.pipeline)
        .with_context(|| format!("loading dataset {:?}", p.dataset))?;
    let data = Dataset::new(chunks, config.n_ctx, p.val_split, config.vocab_size)?;
    // Before any weight is allocated: a model or batch that cannot fit is an error that
    // says so, not an allocation failure inside libtorch.
    let sample_num = if p.sample_every > 0 { p.sample_num } else { 0 };
    let need = crate::memory::finetune(
        &config,
        data.window,
        p.batch_size,
        compute,
        p.optimizer,
        sample_num,
    );
    crate::memory::ensure_fits(&need, device)?;

    let resume = find_resume(ctx, p, &identity)?;
    let mut model = match (&resume, &folder) {
        (Some(c), _) => weights::load_folder(&c.model_dir, device)?,
        (None, Some(dir)) => weights::load_folder(dir, device)?,
        (None, None) => Gpt2::random(&config, device, seed),
    };
    if model.config != config && resume.is_none() {
        bail!("the model's config changed while loading");
    }
    model.set_compute_kind(compute);
    // gpt-2-simple's only_train_transformer_layers trains the blocks (`h.*`) only.
    let names: Vec<String> = model
        .named_parameters()
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !p.only_train_transformer_layers || n.starts_with("transformer.h."))
        .collect();
    // One buffer for all trained weights, and the leaf autograd fills: the forward casts
    // it once, backward leaves one gradient, the optimizer updates it in one kernel.
    let flat = model.flatten_parameters(&names).set_requires_grad(true);
    let trainable: Vec<(String, Tensor)> = model
        .named_parameters()
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut best = BestWeights::new(flat.shallow_clone(), &trainable);
    let mut opt = Optimizer::new_flat(p.optimizer, p.weight_decay, &trainable, flat);
    let (mut trainer, mut metrics) = match &resume {
        Some(c) => {
            opt.load_state(c.trainer.step, c.optimizer_tensors()?)?;
            let metrics: Vec<_> = c
                .metrics()
                .into_iter()
                .filter(|m| m["step"].as_u64().is_some_and(|s| s <= c.trainer.step))
                .collect();
            ctx.log(format!(
                "resuming from step {} ({})",
                c.trainer.step,
                c.model_dir.display()
            ));
            (c.trainer.clone(), metrics)
        }
        None => (
            TrainerState {
                identity: identity.clone(),
                step: 0,
                avg_loss: (0.0, 0.0),
                best_val_loss: None,
                best_step: None,
                evals_without_improvement: 0,
                stopped_early: false,
                loss_scale: if compute == Some(Kind::Half) {
                    65536.0
                } else {
                    1.0
                },
                good_steps: 0,
            },
            Vec::new(),
        ),
    };
    trainer.identity = identity;
    if p.early_stopping_patience > 0 && !trainer.stopped_early {
        if let (Some(c), Some(b)) = (&resume, trainer.best_step) {
            if b == trainer.step {
                best.keep();
            } else if let Some(tensors) = c.best_tensors()? {
                best.load(&tensors)?;
            } else {
                ctx.warn(format!(
                    "{} lacks the weights of step {b} (the best validation loss): if early \
                     stopping triggers, the output keeps the last weights",
                    c.model_dir.display()
                ));
            }
        }
    }
    ctx.log(format!(
        "training {} parameters ({} trainable) on {:?} in {:?}; {} training tokens, windows of {}",
        config.num_parameters(),
        trainable.iter().map(|(_, t)| t.numel()).sum::<usize>(),
        device,
        model.compute_kind(),
        data.train_tokens(),
        data.window
    ));

    let mut run = Run {
        p,
        seed,
        model: &model,
        data: &data,
        device,
    };
    let tokens_per_step = (p.batch_size * p.accumulate_gradients * data.window) as f64;
    let mut window_start = (Instant::now(), trainer.step);
    while trainer.step < p.steps && !trainer.stopped_early {
        if let Err(e) = ctx.check_cancelled() {
            if trainer.step > 0 {
                let files = state_files(p, &trainer, &opt, &best, &metrics);
                let _ = state::save_checkpoint(ctx.state_dir, &model, &files, p.max_checkpoints);
            }
            return Err(e);
        }
        let step = trainer.step + 1;
        let loss = run.train_step(&mut opt, &mut trainer, step)?;
        trainer.step = step;
        let lr = learning_rate(p, step);
        trainer.avg_loss = (
            trainer.avg_loss.0 * 0.99 + loss,
            trainer.avg_loss.1 * 0.99 + 1.0,
        );
        let avg_loss = trainer.avg_loss.0 / trainer.avg_loss.1;

        // Every `val_every` steps, or only at the end when it is 0 (a fixed schedule keeps
        // resumed runs identical to straight ones, early stopping included).
        let validate = p.val_split > 0.0
            && if p.val_every > 0 {
                step % p.val_every == 0
            } else {
                step == p.steps
            };
        let val_loss = if validate { Some(run.evaluate()) } else { None };
        if let Some(v) = val_loss {
            if trainer.best_val_loss.is_none_or(|b| v < b) {
                trainer.best_val_loss = Some(v);
                trainer.best_step = Some(step);
                trainer.evals_without_improvement = 0;
                if p.early_stopping_patience > 0 {
                    best.keep();
                }
            } else {
                trainer.evals_without_improvement += 1;
                if p.early_stopping_patience > 0
                    && trainer.evals_without_improvement >= p.early_stopping_patience
                {
                    // The stop is final: the output (and the final checkpoint) hold the
                    // best step's weights with the stopping step's counters, metrics and
                    // optimizer moments, marked `stopped_early`, so a resume from either
                    // (a raised `steps`, a killed publish) trains no further and writes
                    // the same weights. Moments that match the restored weights would
                    // need a second copy of them, for a state that never trains again.
                    trainer.stopped_early = true;
                    let n = trainer.evals_without_improvement;
                    let best_loss = trainer.best_val_loss.unwrap_or(f64::NAN);
                    match trainer.best_step.filter(|_| best.restore()) {
                        Some(b) => ctx.log(format!(
                            "early stopping at step {step}: restored the weights of step {b} \
                             (val_loss {best_loss:.4}); validation loss had not improved for \
                             {n} evaluations"
                        )),
                        None => ctx.warn(format!(
                            "early stopping at step {step}: validation loss has not improved \
                             for {n} evaluations (best {best_loss:.4}), but the best weights \
                             are unknown: keeping the last ones"
                        )),
                    }
                }
            }
        }
        let elapsed = window_start.0.elapsed().as_secs_f64();
        let tokens_per_s = tokens_per_step * (step - window_start.1) as f64 / elapsed.max(1e-9);
        // Only what the training computed: a timing would make the output (and everything
        // downstream of it) differ between two runs that trained the same weights.
        metrics.push(json!({
            "step": step,
            "loss": loss,
            "avg_loss": avg_loss,
            "val_loss": val_loss,
            "lr": lr,
        }));
        if p.print_every > 0 && (step % p.print_every == 0 || step == p.steps) {
            let mut fields = json!({"loss": loss, "avg_loss": avg_loss, "tokens_per_s": tokens_per_s.round(), "lr": lr});
            if let Some(v) = val_loss {
                fields["val_loss"] = json!(v);
            }
            ctx.progress(step, p.steps, fields);
            window_start = (Instant::now(), step);
        }
        if p.sample_every > 0 && step % p.sample_every == 0 {
            let text = run.sample(step);
            ctx.log(format!("sample at step {step}:\n{text}"));
        }
        if p.save_every > 0 && step % p.save_every == 0 && step < p.steps {
            let files = state_files(p, &trainer, &opt, &best, &metrics);
            state::save_checkpoint(ctx.state_dir, &model, &files, p.max_checkpoints)?;
        }
    }
    let files = state_files(p, &trainer, &opt, &best, &metrics);
    write_outputs(ctx, p, &model, folder.as_deref(), &files)
}

/// What a checkpoint (or the output's training state) holds besides the model, as of now.
fn state_files<'a>(
    p: &FinetuneParams,
    trainer: &'a TrainerState,
    opt: &Optimizer,
    best: &BestWeights,
    metrics: &'a [serde_json::Value],
) -> StateFiles<'a> {
    StateFiles {
        trainer,
        optimizer: opt.state_tensors(),
        best: best.to_save(p, trainer),
        metrics,
    }
}

/// Early stopping's copy of the trained weights at the best validation loss so far (the
/// step is `TrainerState::best_step`): a copy of the flat buffer training updates (see
/// `Gpt2::flatten_parameters`), taken at every improvement.
///
/// The copy lives in host memory whatever the device: on a GPU it would be a fifth buffer
/// the size of the trained weights next to the four training holds (weights, gradient, two
/// Adam moments), 6 GB more for GPT-2 XL, while the copy to the host costs one transfer per
/// improvement, rare next to training steps and cheap next to the evaluation that decides
/// it.
struct BestWeights {
    /// The buffer training updates (a handle on the optimizer's).
    flat: Tensor,
    /// Its copy, on the CPU; `None` until the first improvement.
    copy: Option<Tensor>,
    /// The names and shapes that tile the buffer, in order.
    names: Vec<String>,
    shapes: Vec<Vec<i64>>,
}

impl BestWeights {
    fn new(flat: Tensor, trainable: &[(String, Tensor)]) -> Self {
        Self {
            flat,
            copy: None,
            names: trainable.iter().map(|(n, _)| n.clone()).collect(),
            shapes: trainable.iter().map(|(_, t)| t.size()).collect(),
        }
    }

    /// Copies the current weights (the buffer is allocated once).
    fn keep(&mut self) {
        let flat = &self.flat;
        let copy = self
            .copy
            .get_or_insert_with(|| Tensor::empty(flat.size(), (flat.kind(), Device::Cpu)));
        tch::no_grad(|| copy.copy_(flat));
    }

    /// Puts the kept weights back into the buffer; false when there are none.
    fn restore(&self) -> bool {
        let Some(copy) = &self.copy else {
            return false;
        };
        tch::no_grad(|| self.flat.shallow_clone().copy_(copy));
        true
    }

    /// The kept weights by name, as views of the copy.
    fn named(&self, copy: &Tensor) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(crate::model::tile(copy, &self.shapes))
            .collect()
    }

    /// What a checkpoint must hold for an exact resume: the kept weights while early
    /// stopping may still restore them and they are not the current ones; else nothing.
    fn to_save(&self, p: &FinetuneParams, trainer: &TrainerState) -> Vec<(String, Tensor)> {
        match &self.copy {
            Some(copy)
                if p.early_stopping_patience > 0
                    && !trainer.stopped_early
                    && trainer.best_step.is_some_and(|b| b < trainer.step) =>
            {
                self.named(copy)
            }
            _ => Vec::new(),
        }
    }

    /// Takes the kept weights from a checkpoint's [`state::BEST_FILE`].
    fn load(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let copy = Tensor::empty(self.flat.size(), (self.flat.kind(), Device::Cpu));
        for (n, mut view) in self.named(&copy) {
            let Some(src) = map.get(n.as_str()) else {
                bail!("the saved best weights lack {n}");
            };
            if src.size() != view.size() {
                bail!(
                    "the saved best weight {n} has shape {:?}, expected {:?}",
                    src.size(),
                    view.size()
                );
            }
            tch::no_grad(|| view.copy_(src));
        }
        self.copy = Some(copy);
        Ok(())
    }
}

/// Where to continue from: `restore_from = "latest"` takes the newest compatible state (a
/// checkpoint of a killed run, or the previous output when `steps` was raised), "fresh"
/// nothing, anything else is a checkpoint or output folder.
fn find_resume(
    ctx: &StageContext,
    p: &FinetuneParams,
    identity: &str,
) -> Result<Option<Checkpoint>> {
    match p.restore_from.as_str() {
        "fresh" => Ok(None),
        "latest" => {
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
            candidates.retain(|(c, _)| c.trainer.identity == identity && c.trainer.step <= p.steps);
            // Newest first; at the same step, the previous output before a checkpoint.
            candidates.sort_by_key(|(c, checked)| (std::cmp::Reverse(c.trainer.step), *checked));
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
        path => {
            let path = ctx.pipeline.resolve_path(path);
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

pub fn learning_rate(p: &FinetuneParams, step: u64) -> f64 {
    if p.warmup_steps > 0 {
        p.learning_rate * (step as f64 / p.warmup_steps as f64).min(1.0)
    } else {
        p.learning_rate
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

struct Run<'a> {
    p: &'a FinetuneParams,
    seed: u64,
    model: &'a Gpt2,
    data: &'a Dataset,
    device: Device,
}

impl Run<'_> {
    /// One optimizer step; returns the mean loss of its micro-batches.
    fn train_step(
        &mut self,
        opt: &mut Optimizer,
        trainer: &mut TrainerState,
        step: u64,
    ) -> Result<f64> {
        let p = self.p;
        // Dropout draws from the global generator: hold it for the whole step.
        let rng = crate::rng_lock();
        tch::manual_seed((mix(self.seed, step, 0xD20F, 0) >> 1) as i64);
        let accum = p.accumulate_gradients as u64;
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for micro in 0..accum {
            let batch = self
                .data
                .batch(self.seed, step, micro, p.batch_size, self.device);
            let loss = self.model.loss(&batch, true);
            let scaled = &loss * (trainer.loss_scale / accum as f64);
            scaled.backward();
            total += loss.detach();
        }
        drop(rng);
        let loss = total.double_value(&[]) / accum as f64;
        if !loss.is_finite() && trainer.loss_scale == 1.0 {
            bail!(
                "the loss became {loss} at step {step}; lower learning_rate or set max_grad_norm"
            );
        }
        if trainer.loss_scale != 1.0 {
            opt.scale_grads(1.0 / trainer.loss_scale);
            if !opt.grads_finite() {
                // fp16 overflow: skip this update and halve the scale.
                trainer.loss_scale /= 2.0;
                trainer.good_steps = 0;
                opt.zero_grad();
                return Ok(loss);
            }
            trainer.good_steps += 1;
            if trainer.good_steps.is_multiple_of(2000) {
                trainer.loss_scale *= 2.0;
            }
        }
        if p.max_grad_norm > 0.0 {
            opt.clip_grad_norm(p.max_grad_norm);
        }
        opt.apply(learning_rate(p, step));
        opt.zero_grad();
        Ok(loss)
    }

    fn evaluate(&self) -> f64 {
        validation_loss(self.model, self.data, self.p.batch_size)
    }

    /// `sample_num` texts of `sample_length` tokens (clipped to the context), top-k 40,
    /// from one random dataset token, as gpt-2-simple prints during training.
    fn sample(&self, step: u64) -> String {
        let n_ctx = self.model.config.n_ctx;
        let length = self.p.sample_length.min(n_ctx - 1);
        let n = self.p.sample_num.max(1) as i64;
        let _rng = crate::rng_lock();
        tch::manual_seed((mix(self.seed, step, 0x5A3, 0) >> 1) as i64);
        let start = self.data.random_token(self.seed, step) as i64;
        let mut tokens = vec![vec![start]; n as usize];
        tch::no_grad(|| {
            let mut cache = self.model.new_cache();
            let mut next = Tensor::full([n, 1], start, (Kind::Int64, self.device));
            for _ in 0..length {
                let logits = self
                    .model
                    .forward(&next, Some(&mut cache), false)
                    .select(1, -1)
                    .to_kind(Kind::Float);
                let k = SAMPLE_TOP_K.min(logits.size()[1]);
                let (top, idx) = logits.topk(k, -1, true, true);
                let choice = top.softmax(-1, Kind::Float).multinomial(1, true);
                next = idx.gather(1, &choice, false);
                let ids: Vec<i64> =
                    Vec::try_from(next.reshape([n]).to_device(Device::Cpu)).unwrap_or_default();
                for (row, id) in tokens.iter_mut().zip(ids) {
                    row.push(id);
                }
            }
        });
        let tok = gptpipe_text::Gpt2Tokenizer::new()
            .ok()
            .filter(|t| t.vocab_size() >= self.model.config.vocab_size);
        let texts: Vec<String> = tokens
            .iter()
            .map(|row| match &tok {
                Some(t) => t.decode(&row.iter().map(|&x| x as u32).collect::<Vec<_>>()),
                None => format!("{row:?}"),
            })
            .collect();
        texts.join(&format!("\n{}\n", "=".repeat(20)))
    }
}

/// The output folder: the model in Hugging Face layout (with tokenizer files), metrics,
/// the loss plot and the training state; plus a final checkpoint in the state folder.
fn write_outputs(
    ctx: &StageContext,
    p: &FinetuneParams,
    model: &Gpt2,
    source_dir: Option<&Path>,
    files: &StateFiles,
) -> Result<()> {
    let out = ctx.out_dir;
    let metrics = files.metrics;
    weights::save_folder(model, out)?;
    write_tokenizer(out, source_dir, &model.config)?;
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
    const FILES: [&str; 5] = [
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ];
    if let Some(dir) =
        source_dir.filter(|d| d.join("vocab.json").is_file() && d.join("merges.txt").is_file())
    {
        for f in FILES {
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
