//! The training loop: steps, validation and early stopping, progress, samples and
//! checkpoints, with the rules of [`super::rules`] deciding when each happens.

use super::data::{mix, Dataset};
use super::optim::Optimizer;
use super::rules::{self, learning_rate, Schedule, Validated};
use super::state::{self, StateFiles, TrainerState};
use super::validation_loss;
use crate::model::Gpt2;
use anyhow::{bail, Result};
use gptpipe_core::config::FinetuneParams;
use gptpipe_core::stage::StageContext;
use serde_json::json;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// gpt-2-simple samples with top-k 40 at temperature 1 during training.
const SAMPLE_TOP_K: i64 = 40;

/// A run's training from its current state to `steps` (or an early stop).
pub(super) struct Trainer<'a> {
    pub p: &'a FinetuneParams,
    pub seed: u64,
    pub model: &'a Gpt2,
    pub data: &'a Dataset,
    pub device: Device,
    pub opt: Optimizer,
    /// The data-parallel ranks, when there are several.
    pub group: Option<&'a crate::dist::Group>,
    pub best: BestWeights,
    pub state: TrainerState,
    /// One JSON object per step trained, resumed ones included.
    pub metrics: Vec<serde_json::Value>,
}

impl Trainer<'_> {
    /// Whether this process reports, samples and saves: the only one, or rank 0.
    fn is_main(&self) -> bool {
        crate::dist::is_main(self.group)
    }

    /// This rank's number, 0 without data parallelism.
    fn rank(&self) -> u64 {
        self.group.map_or(0, |g| g.rank as u64)
    }

    /// Trains until `steps` or an early stop. A cancelled run saves a checkpoint first.
    pub fn train(&mut self, ctx: &StageContext) -> Result<()> {
        let p = self.p;
        let schedule = Schedule { p };
        let tokens_per_step = (p.batch_size * p.accumulate_gradients * self.data.window) as f64;
        let mut window_start = (Instant::now(), self.state.step);
        while schedule.continues(&self.state) {
            if let Err(e) = ctx.check_cancelled() {
                if schedule.saves_on_cancel(&self.state) && self.is_main() {
                    let _ = state::save_checkpoint(
                        ctx.state_dir,
                        self.model,
                        &self.state_files(),
                        p.max_checkpoints,
                    );
                }
                return Err(e);
            }
            let step = self.state.step + 1;
            let loss = self.train_step(step)?;
            let trainer = &mut self.state;
            trainer.step = step;
            let lr = learning_rate(p, step);
            trainer.avg_loss = rules::smooth_loss(trainer.avg_loss, loss);
            let avg_loss = rules::smoothed(trainer.avg_loss);

            let val_loss = if schedule.validates(step) {
                Some(self.evaluate()?)
            } else {
                None
            };
            if let Some(v) = val_loss {
                let patience = p.early_stopping_patience;
                match rules::record_validation(&mut self.state, step, v, patience) {
                    Validated::Improved if patience > 0 => self.best.keep(),
                    Validated::Improved | Validated::NotImproved => {}
                    Validated::Stopped => self.stop_early(ctx, step),
                }
            }
            let elapsed = window_start.0.elapsed().as_secs_f64();
            let tokens_per_s = tokens_per_step * (step - window_start.1) as f64 / elapsed.max(1e-9);
            // Only what the training computed: a timing would make the output (and
            // everything downstream of it) differ between two runs that trained the same
            // weights.
            self.metrics.push(json!({
                "step": step,
                "loss": loss,
                "avg_loss": avg_loss,
                "val_loss": val_loss,
                "lr": lr,
            }));
            if !self.is_main() {
                continue;
            }
            if schedule.prints(step) {
                let mut fields = json!({"loss": loss, "avg_loss": avg_loss, "tokens_per_s": tokens_per_s.round(), "lr": lr});
                if let Some(v) = val_loss {
                    fields["val_loss"] = json!(v);
                }
                ctx.progress(step, p.steps, fields);
                window_start = (Instant::now(), step);
            }
            if schedule.samples(step) {
                let text = self.sample(step);
                ctx.log(format!("sample at step {step}:\n{text}"));
            }
            if schedule.saves(step) {
                state::save_checkpoint(
                    ctx.state_dir,
                    self.model,
                    &self.state_files(),
                    p.max_checkpoints,
                )?;
            }
        }
        Ok(())
    }

    /// After [`Validated::Stopped`] at `step`: puts the best weights back, if known.
    fn stop_early(&self, ctx: &StageContext, step: u64) {
        let t = &self.state;
        let n = t.evals_without_improvement;
        let best_loss = t.best_val_loss.unwrap_or(f64::NAN);
        match t.best_step.filter(|_| self.best.restore()) {
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

    /// What a checkpoint (or the output's training state) holds besides the model, as of
    /// now.
    pub fn state_files(&self) -> StateFiles<'_> {
        StateFiles {
            trainer: &self.state,
            optimizer: self.opt.state_tensors(),
            best: self.best.to_save(self.p, &self.state),
            metrics: &self.metrics,
        }
    }

    /// One optimizer step; returns the mean loss of its micro-batches.
    fn train_step(&mut self, step: u64) -> Result<f64> {
        let p = self.p;
        let (group, rank) = (self.group, self.rank());
        let (opt, trainer) = (&mut self.opt, &mut self.state);
        // Dropout draws from the global generator: hold it for the whole step.
        let rng = crate::rng_lock();
        // Each rank its own dropout; rank 0 (or the only process) draws as it always has.
        tch::manual_seed((mix(self.seed, step, 0xD20F, rank) >> 1) as i64);
        let accum = p.accumulate_gradients as u64;
        let share = (p.batch_size / group.map_or(1, |g| g.world)) as u64;
        let rows = rank * share..(rank + 1) * share;
        let grad_scale = rules::micro_batch_scale(p.accumulate, trainer.loss_scale, accum);
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for micro in 0..accum {
            let batch = self
                .data
                .batch(self.seed, step, micro, rows.clone(), self.device);
            let loss = if p.gradient_checkpointing() {
                let seed = self.seed;
                let mut reseed = |i: usize| {
                    let stream = 0xC4EC ^ (rank << 20);
                    tch::manual_seed((mix(seed, step, stream, micro * 4096 + i as u64) >> 1) as i64)
                };
                self.model
                    .loss_backward_checkpointed(&batch, grad_scale, &mut reseed)
            } else {
                let loss = self.model.loss(&batch, true);
                (&loss * grad_scale).backward();
                loss.detach()
            };
            total += loss;
        }
        drop(rng);
        // The mean over the ranks of gradients and loss: what one process training the
        // whole batch computes.
        if let Some(group) = group {
            opt.all_reduce_grads(group)?;
            group.all_reduce_mean(&total)?;
        }
        let loss = total.double_value(&[]) / accum as f64;
        if !loss.is_finite() && !rules::loss_scaled(trainer) {
            bail!(
                "the loss became {loss} at step {step}; lower learning_rate or set max_grad_norm"
            );
        }
        if rules::loss_scaled(trainer) {
            opt.scale_grads(1.0 / trainer.loss_scale);
            // fp16 overflow: skip this update (the scale is halved).
            if !rules::update_loss_scale(trainer, opt.grads_finite()) {
                opt.zero_grad();
                return Ok(loss);
            }
        }
        if p.max_grad_norm > 0.0 {
            opt.clip_grad_norm(p.max_grad_norm);
        }
        opt.apply(learning_rate(p, step));
        opt.zero_grad();
        Ok(loss)
    }

    /// The validation loss: rank 0's, given to every rank (they must stop early together).
    fn evaluate(&self) -> Result<f64> {
        let loss = if self.is_main() {
            validation_loss(self.model, self.data, self.p.batch_size)
        } else {
            0.0
        };
        match self.group {
            Some(group) => group.broadcast_f64(loss),
            None => Ok(loss),
        }
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

/// Early stopping's copy of the trained weights at the best validation loss so far (the
/// step is `TrainerState::best_step`): a copy of the flat buffer training updates (see
/// `Gpt2::flatten_parameters`), taken at every improvement.
///
/// The copy lives in host memory whatever the device: on a GPU it would be a fifth buffer
/// the size of the trained weights next to the four training holds (weights, gradient, two
/// Adam moments), 6 GB more for GPT-2 XL, while the copy to the host costs one transfer per
/// improvement, rare next to training steps and cheap next to the evaluation that decides
/// it.
pub(super) struct BestWeights {
    /// The buffer training updates (a handle on the optimizer's).
    flat: Tensor,
    /// Its copy, on the CPU; `None` until the first improvement.
    copy: Option<Tensor>,
    /// The names and shapes that tile the buffer, in order.
    names: Vec<String>,
    shapes: Vec<Vec<i64>>,
}

impl BestWeights {
    pub(super) fn new(flat: Tensor, trainable: &[(String, Tensor)]) -> Self {
        Self {
            flat,
            copy: None,
            names: trainable.iter().map(|(n, _)| n.clone()).collect(),
            shapes: trainable.iter().map(|(_, t)| t.size()).collect(),
        }
    }

    /// Copies the current weights (the buffer is allocated once).
    pub(super) fn keep(&mut self) {
        let flat = &self.flat;
        let copy = self
            .copy
            .get_or_insert_with(|| Tensor::empty(flat.size(), (flat.kind(), Device::Cpu)));
        tch::no_grad(|| copy.copy_(flat));
    }

    /// Puts the kept weights back into the buffer; false when there are none.
    pub(super) fn restore(&self) -> bool {
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
            Some(copy) if rules::checkpoint_keeps_best(p.early_stopping_patience, trainer) => {
                self.named(copy)
            }
            _ => Vec::new(),
        }
    }

    /// Takes the kept weights from a checkpoint's [`state::BEST_FILE`].
    pub(super) fn load(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
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
