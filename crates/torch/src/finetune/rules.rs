//! The rules of the training loop over plain numbers (no tensors, no `tch`): the learning
//! rate, the smoothed loss, which steps validate, print, sample and save a checkpoint, when
//! early stopping records an improvement or stops, fp16's dynamic loss scale, which saved
//! state a run resumes from and what it does with the best weights then. The trainer
//! (`super::trainer`) applies them.

use super::state::TrainerState;
use gptpipe_core::config::{Accumulate, FinetuneParams, LrSchedule};

/// The fp16 loss scale doubles after this many updates without an overflow.
const LOSS_SCALE_GROWTH_INTERVAL: u64 = 2000;
/// The fp16 loss scale a run starts with.
const INITIAL_LOSS_SCALE: f64 = 65536.0;

/// The learning rate of step `step` (1, 2, ...): linear warm-up over `warmup_steps`, then
/// `lr_schedule` down to 0 at `steps`. Step N takes `transformers`' rate after N calls of
/// `scheduler.step()` (`get_*_schedule_with_warmup(opt, warmup_steps, steps)`, then
/// `get_last_lr()`): [`schedule_factor`] of N.
pub fn learning_rate(p: &FinetuneParams, step: u64) -> f64 {
    p.learning_rate * schedule_factor(p.lr_schedule, p.warmup_steps, p.steps, step)
}

/// `transformers`' `lr_lambda(current_step)` of its schedulers with warmup (cosine with
/// `num_cycles = 0.5`), in the same floating-point operations.
pub fn schedule_factor(schedule: LrSchedule, warmup: u64, total: u64, current: u64) -> f64 {
    if current < warmup {
        return current as f64 / warmup.max(1) as f64;
    }
    let after = total.saturating_sub(warmup).max(1) as f64;
    match schedule {
        LrSchedule::Constant => 1.0,
        // `num_training_steps - current_step` may be negative there (a resumed run past
        // `steps` never trains, but the rate is still defined): as float, clipped at 0.
        LrSchedule::Linear => (0.0f64).max((total as f64 - current as f64) / after),
        LrSchedule::Cosine => {
            let progress = (current - warmup) as f64 / after;
            (0.0f64).max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
        }
    }
}

/// What each micro-batch's loss is multiplied by before its backward pass: the fp16 loss
/// scale, over `accum` micro-batches for `accumulate = "mean"` (their gradients average)
/// or not for "sum" (gpt-2-simple's: they add up).
pub fn micro_batch_scale(accumulate: Accumulate, loss_scale: f64, accum: u64) -> f64 {
    match accumulate {
        Accumulate::Mean => loss_scale / accum as f64,
        Accumulate::Sum => loss_scale,
    }
}

/// The state of a run that starts from nothing; `half`: fp16 compute, with a loss scale.
pub fn fresh_state(identity: String, half: bool) -> TrainerState {
    TrainerState {
        identity,
        step: 0,
        avg_loss: (0.0, 0.0),
        best_val_loss: None,
        best_step: None,
        evals_without_improvement: 0,
        stopped_early: false,
        loss_scale: if half { INITIAL_LOSS_SCALE } else { 1.0 },
        good_steps: 0,
    }
}

/// gpt-2-simple's smoothed loss: adds `loss` to `(sum, count)`, both decayed by 0.99.
pub fn smooth_loss((sum, count): (f64, f64), loss: f64) -> (f64, f64) {
    (sum * 0.99 + loss, count * 0.99 + 1.0)
}

/// The smoothed loss of `(sum, count)`.
pub fn smoothed((sum, count): (f64, f64)) -> f64 {
    sum / count
}

/// Which steps do what, from the stage's params.
#[derive(Clone, Copy)]
pub struct Schedule<'a> {
    pub p: &'a FinetuneParams,
}

impl Schedule<'_> {
    /// Whether another step runs after `t`.
    pub fn continues(&self, t: &TrainerState) -> bool {
        t.step < self.p.steps && !t.stopped_early
    }

    /// Every `val_every` steps, or only at the end when it is 0 (a fixed schedule keeps
    /// resumed runs identical to straight ones, early stopping included); never without a
    /// validation set.
    pub fn validates(&self, step: u64) -> bool {
        let p = self.p;
        p.val_split > 0.0
            && if p.val_every > 0 {
                step.is_multiple_of(p.val_every)
            } else {
                step == p.steps
            }
    }

    /// Whether `step` reports progress: every `print_every` steps and at the last.
    pub fn prints(&self, step: u64) -> bool {
        let p = self.p;
        p.print_every > 0 && (step.is_multiple_of(p.print_every) || step == p.steps)
    }

    /// Whether `step` logs sample texts.
    pub fn samples(&self, step: u64) -> bool {
        self.p.sample_every > 0 && step.is_multiple_of(self.p.sample_every)
    }

    /// Whether `step` saves a checkpoint: every `save_every` steps, except the last (the
    /// output's own checkpoint follows it).
    pub fn saves(&self, step: u64) -> bool {
        let p = self.p;
        p.save_every > 0 && step.is_multiple_of(p.save_every) && step < p.steps
    }

    /// Whether a cancelled run saves a checkpoint first: when it trained a step.
    pub fn saves_on_cancel(&self, t: &TrainerState) -> bool {
        t.step > 0
    }

    /// `val_every` without a validation set (worth a warning).
    pub fn validates_nothing(&self) -> bool {
        self.p.val_every > 0 && self.p.val_split == 0.0
    }
}

/// What a validation loss did to early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validated {
    /// A new best (or the first): the weights of this step are the ones to keep.
    Improved,
    /// No better than the best, and patience is not used up.
    NotImproved,
    /// No better for `early_stopping_patience` evaluations: training stops, marked
    /// `stopped_early`.
    Stopped,
}

/// Records validation loss `v` of step `step` in `t`. `patience`: early stopping's
/// `early_stopping_patience` (0: off, it never stops).
pub fn record_validation(t: &mut TrainerState, step: u64, v: f64, patience: u64) -> Validated {
    if t.best_val_loss.is_none_or(|b| v < b) {
        t.best_val_loss = Some(v);
        t.best_step = Some(step);
        t.evals_without_improvement = 0;
        return Validated::Improved;
    }
    t.evals_without_improvement += 1;
    if patience > 0 && t.evals_without_improvement >= patience {
        // The stop is final: the output (and the final checkpoint) hold the best step's
        // weights with the stopping step's counters, metrics and optimizer moments, marked
        // `stopped_early`, so a resume from either (a raised `steps`, a killed publish)
        // trains no further and writes the same weights. Moments that match the restored
        // weights would need a second copy of them, for a state that never trains again.
        t.stopped_early = true;
        return Validated::Stopped;
    }
    Validated::NotImproved
}

/// Whether a checkpoint must hold the best weights besides its own for an exact resume:
/// while early stopping may still restore them and they are not the current ones.
pub fn checkpoint_keeps_best(patience: u64, t: &TrainerState) -> bool {
    patience > 0 && !t.stopped_early && t.best_step.is_some_and(|b| b < t.step)
}

/// Where early stopping's best weights come from when a run resumes from state `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BestOnResume {
    /// None needed (early stopping off, already stopped, or no validation yet).
    None,
    /// The resumed weights are the best ones.
    Current,
    /// The checkpoint's saved best weights, those of this step.
    Saved(u64),
}

pub fn best_on_resume(patience: u64, t: &TrainerState) -> BestOnResume {
    match t.best_step {
        _ if patience == 0 || t.stopped_early => BestOnResume::None,
        None => BestOnResume::None,
        Some(b) if b == t.step => BestOnResume::Current,
        Some(b) => BestOnResume::Saved(b),
    }
}

/// fp16's dynamic loss scale: whether the loss is scaled at all (1.0: not).
pub fn loss_scaled(t: &TrainerState) -> bool {
    t.loss_scale != 1.0
}

/// After a scaled backward pass whose gradients were `finite` or not: halves the scale on
/// an overflow, doubles it after [`LOSS_SCALE_GROWTH_INTERVAL`] good updates in a row.
/// Returns whether the update is applied (not on an overflow).
pub fn update_loss_scale(t: &mut TrainerState, finite: bool) -> bool {
    if !finite {
        t.loss_scale /= 2.0;
        t.good_steps = 0;
        return false;
    }
    t.good_steps += 1;
    if t.good_steps.is_multiple_of(LOSS_SCALE_GROWTH_INTERVAL) {
        t.loss_scale *= 2.0;
    }
    true
}

/// The order in which saved states are tried for `restore_from = "latest"`: those of the
/// same training `identity` and at most `steps` steps, newest first; at the same step an
/// unchecked one (the previous output, `checked` false) before a checkpoint. `state` gives
/// a candidate's identity and step.
pub fn resume_order<T>(
    mut candidates: Vec<(T, bool)>,
    identity: &str,
    steps: u64,
    state: impl Fn(&T) -> (&str, u64),
) -> Vec<(T, bool)> {
    candidates.retain(|(c, _)| {
        let (id, step) = state(c);
        id == identity && step <= steps
    });
    candidates.sort_by_key(|(c, checked)| (std::cmp::Reverse(state(c).1), *checked));
    candidates
}

/// The metrics a resumed run keeps: those up to its step (a checkpoint of a later step may
/// have written more before it was lost).
pub fn metrics_up_to(metrics: Vec<serde_json::Value>, step: u64) -> Vec<serde_json::Value> {
    metrics
        .into_iter()
        .filter(|m| m["step"].as_u64().is_some_and(|s| s <= step))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> FinetuneParams {
        FinetuneParams {
            steps: 10,
            val_split: 0.1,
            val_every: 0,
            print_every: 0,
            sample_every: 0,
            save_every: 0,
            ..FinetuneParams::default()
        }
    }

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            ..fresh_state("id".into(), false)
        }
    }

    #[test]
    fn learning_rate_warms_up_linearly() {
        let mut p = params();
        p.learning_rate = 1.0;
        p.warmup_steps = 4;
        let lrs: Vec<f64> = (1..=6).map(|s| learning_rate(&p, s)).collect();
        assert_eq!(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        p.warmup_steps = 0;
        assert_eq!(learning_rate(&p, 1), 1.0);
    }

    #[test]
    fn schedules_decay_after_warmup_and_constant_is_the_old_rule() {
        // The default (constant) is the rule of every earlier run: lr * min(1, step / warmup).
        for (w, t) in [(0, 10), (4, 10), (3, 3), (7, 5)] {
            for s in 0..=t + 2 {
                let old = if w > 0 {
                    (s as f64 / w as f64).min(1.0)
                } else {
                    1.0
                };
                assert_eq!(schedule_factor(LrSchedule::Constant, w, t, s), old);
            }
        }
        let lin: Vec<f64> = (1..=4)
            .map(|s| schedule_factor(LrSchedule::Linear, 0, 4, s))
            .collect();
        assert_eq!(lin, [0.75, 0.5, 0.25, 0.0]);
        let cos: Vec<f64> = (0..=4)
            .map(|s| schedule_factor(LrSchedule::Cosine, 2, 4, s))
            .collect();
        assert_eq!(cos[..3], [0.0, 0.5, 1.0]);
        assert!((cos[3] - 0.5).abs() < 1e-15 && cos[4] < 1e-15, "{cos:?}");
    }

    #[test]
    fn fresh_state_scales_the_loss_in_fp16_only() {
        assert_eq!(fresh_state("a".into(), true).loss_scale, 65536.0);
        let t = fresh_state("a".into(), false);
        assert_eq!((t.loss_scale, t.step, t.best_step), (1.0, 0, None));
        assert!(!loss_scaled(&t));
    }

    #[test]
    fn smoothed_loss_decays_by_099() {
        let avg = smooth_loss((0.0, 0.0), 2.0);
        assert_eq!(avg, (2.0, 1.0));
        let avg = smooth_loss(avg, 4.0);
        assert_eq!(avg, (2.0 * 0.99 + 4.0, 0.99 + 1.0));
        assert_eq!(smoothed(avg), (1.98 + 4.0) / 1.99);
    }

    #[test]
    fn validation_every_n_steps_or_only_at_the_end() {
        let mut p = params();
        let at = |p: &FinetuneParams| -> Vec<u64> {
            (1..=p.steps)
                .filter(|&s| Schedule { p }.validates(s))
                .collect()
        };
        assert_eq!(at(&p), [10]);
        p.val_every = 3;
        assert_eq!(at(&p), [3, 6, 9]);
        p.val_split = 0.0;
        assert!(at(&p).is_empty());
        assert!(Schedule { p: &p }.validates_nothing());
    }

    #[test]
    fn print_sample_and_save_steps() {
        let mut p = params();
        p.print_every = 4;
        p.sample_every = 5;
        p.save_every = 5;
        let s = Schedule { p: &p };
        let steps = |f: &dyn Fn(u64) -> bool| -> Vec<u64> { (1..=10).filter(|&x| f(x)).collect() };
        assert_eq!(steps(&|x| s.prints(x)), [4, 8, 10]);
        assert_eq!(steps(&|x| s.samples(x)), [5, 10]);
        // Not at the last step: the output's checkpoint is written then.
        assert_eq!(steps(&|x| s.saves(x)), [5]);
        let p = params();
        let s = Schedule { p: &p };
        assert!(steps(&|x| s.prints(x) || s.samples(x) || s.saves(x)).is_empty());
    }

    #[test]
    fn the_loop_runs_to_steps_unless_stopped() {
        let p = params();
        let s = Schedule { p: &p };
        assert!(s.continues(&state(9)));
        assert!(!s.continues(&state(10)));
        let mut t = state(3);
        t.stopped_early = true;
        assert!(!s.continues(&t));
        assert!(!s.saves_on_cancel(&state(0)));
        assert!(s.saves_on_cancel(&state(1)));
    }

    #[test]
    fn early_stopping_stops_after_patience_evaluations_without_improvement() {
        let mut t = state(0);
        let losses = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.0];
        let mut outcomes = Vec::new();
        for (i, v) in losses.into_iter().enumerate() {
            if t.stopped_early {
                break;
            }
            outcomes.push(record_validation(&mut t, i as u64 + 1, v, 2));
        }
        use Validated::*;
        assert_eq!(
            outcomes,
            [
                Improved,
                Improved,
                NotImproved,
                Improved,
                NotImproved,
                Stopped
            ]
        );
        assert!(t.stopped_early);
        assert_eq!((t.best_val_loss, t.best_step), (Some(1.5), Some(4)));
        assert_eq!(t.evals_without_improvement, 2);
    }

    #[test]
    fn without_patience_validation_only_tracks_the_best() {
        let mut t = state(0);
        for (i, v) in [1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
            record_validation(&mut t, i as u64 + 1, v, 0);
        }
        assert!(!t.stopped_early);
        assert_eq!((t.best_step, t.evals_without_improvement), (Some(1), 3));
    }

    #[test]
    fn checkpoints_keep_best_weights_only_when_they_may_still_be_restored() {
        let mut t = state(8);
        assert!(!checkpoint_keeps_best(2, &t), "no best yet");
        t.best_step = Some(8);
        assert!(
            !checkpoint_keeps_best(2, &t),
            "the best are the current weights"
        );
        t.best_step = Some(5);
        assert!(checkpoint_keeps_best(2, &t));
        assert!(!checkpoint_keeps_best(0, &t), "early stopping off");
        t.stopped_early = true;
        assert!(!checkpoint_keeps_best(2, &t), "already restored");
    }

    #[test]
    fn best_weights_on_resume() {
        let mut t = state(8);
        assert_eq!(best_on_resume(2, &t), BestOnResume::None);
        t.best_step = Some(8);
        assert_eq!(best_on_resume(2, &t), BestOnResume::Current);
        t.best_step = Some(4);
        assert_eq!(best_on_resume(2, &t), BestOnResume::Saved(4));
        assert_eq!(best_on_resume(0, &t), BestOnResume::None);
        t.stopped_early = true;
        assert_eq!(best_on_resume(2, &t), BestOnResume::None);
    }

    #[test]
    fn loss_scale_halves_on_overflow_and_doubles_after_2000_good_updates() {
        let mut t = fresh_state("a".into(), true);
        assert!(loss_scaled(&t));
        assert!(!update_loss_scale(&mut t, false));
        assert_eq!((t.loss_scale, t.good_steps), (32768.0, 0));
        for _ in 0..1999 {
            assert!(update_loss_scale(&mut t, true));
        }
        assert_eq!(t.loss_scale, 32768.0);
        assert!(update_loss_scale(&mut t, true));
        assert_eq!((t.loss_scale, t.good_steps), (65536.0, 2000));
    }

    #[test]
    fn resume_takes_the_newest_matching_state_output_first_at_a_tie() {
        let candidates = vec![
            (("id", 4), true),
            (("other", 9), true),
            (("id", 8), true),
            (("id", 12), true),
            (("id", 8), false),
            (("id", 2), false),
        ];
        let order = resume_order(candidates, "id", 10, |c| *c);
        assert_eq!(
            order,
            [
                (("id", 8), false),
                (("id", 8), true),
                (("id", 4), true),
                (("id", 2), false),
            ]
        );
    }

    #[test]
    fn a_resume_keeps_metrics_up_to_its_step() {
        let metrics = (1..=5)
            .map(|s| serde_json::json!({"step": s}))
            .chain([serde_json::json!({"no step": 1})])
            .collect();
        let kept = metrics_up_to(metrics, 3);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[2]["step"], 3);
    }
}
