//! Gradient checkpointing (gpt-2-simple's `use_memory_saving_gradients`): the training loss
//! and its backward pass holding, between forward and backward, only each block's input
//! instead of every activation autograd saves (about 17 activations of width `n_embd` and a
//! row of attention weights per head, per token and block).
//!
//! tch has no `torch.utils.checkpoint`, so the chaining is done here by hand:
//! 1. the weights the forward reads are detached into leaves (their gradients collect
//!    there, and reach the trained weights in one pass at the end);
//! 2. forward without a graph, block by block, keeping each block's input;
//! 3. the final norm, the head and the loss with a graph from the last block's output,
//!    and its backward: the gradient of that output;
//! 4. for each block from the last: run it again from its kept input with a graph, and
//!    backward from its output with the gradient found above (`(y * g).sum()`, whose
//!    gradient in `y` is exactly `g`): the gradient of its input, and its weights'.
//!
//! Every forward op is the one [`Gpt2::loss`] runs, on the same values, and every gradient
//! is summed from the same two contributions (addition of two terms commutes), so without
//! dropout the gradients are those of `loss.backward()` bit for bit.
//!
//! Dropout draws from libtorch's global generator, whose state tch cannot save and restore;
//! so the caller's `reseed(i)` re-seeds it before the embeddings (`i = 0`) and before
//! block `l` (`i = l + 1`), in the forward and again in the recomputation, and each block
//! draws the same masks twice. The masks then differ from those of a run without
//! checkpointing (which seeds once per step): with dropout the trained weights differ as
//! with another seed; with `dropout = 0` they are the same.

use super::gpt2::Attend;
use super::Gpt2;
use tch::{Kind, Tensor};

impl Gpt2 {
    /// [`Gpt2::loss`] of `input_ids` in training (dropout on), with the gradient of
    /// `loss * grad_scale` added to the trained weights' gradients as
    /// `(loss * grad_scale).backward()` would; returns the loss, detached. Recomputes each
    /// block's activations in backward instead of keeping them; `reseed(i)` is called before
    /// the embeddings (0) and block `l` (`l + 1`) are computed, each time they are.
    pub fn loss_backward_checkpointed(
        &self,
        input_ids: &Tensor,
        grad_scale: f64,
        reseed: &mut dyn FnMut(usize),
    ) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids must be [B, T]");
        assert!(t >= 2, "the loss needs at least 2 tokens per row");
        let sources = self.compute_weights();
        let w = sources.map(|s| {
            if s.requires_grad() {
                s.detach().set_requires_grad(true)
            } else {
                s.shallow_clone()
            }
        });
        let positions = Tensor::arange_start(0, t, (Kind::Int64, input_ids.device())).unsqueeze(0);
        reseed(0);
        // Its graph holds only the dropout mask and the ids.
        let x0 = self.embed(&w, input_ids, &positions, true);
        // needs[l]: whether block l's input needs a gradient (something below it trains).
        let trains = |ts: &[&Tensor]| ts.iter().any(|t| t.requires_grad());
        let mut needs = Vec::with_capacity(w.blocks.len());
        let mut below = x0.requires_grad();
        for b in &w.blocks {
            needs.push(below);
            below |= trains(&b.tensors());
        }

        let mut inputs = Vec::with_capacity(w.blocks.len());
        let mut x = x0.detach();
        for (l, block) in w.blocks.iter().enumerate() {
            reseed(l + 1);
            let y = tch::no_grad(|| self.block(&x, block, l, &Attend::Causal, None, true));
            inputs.push(x);
            x = y;
        }
        let top = x.set_requires_grad(true);
        let h = self.layer_norm(&top, &w.ln_f);
        let loss = self.head_loss(&w, &h, input_ids);
        (&loss * grad_scale).backward();
        drop(h);
        let mut grad = top.grad();

        for l in (0..w.blocks.len()).rev() {
            let input = inputs.pop().expect("one input per block");
            let block = &w.blocks[l];
            if !needs[l] && !trains(&block.tensors()) {
                break;
            }
            let input = if needs[l] {
                input.set_requires_grad(true)
            } else {
                input
            };
            reseed(l + 1);
            let y = self.block(&input, block, l, &Attend::Causal, None, true);
            (y * &grad).sum(None).backward();
            if !needs[l] {
                break;
            }
            grad = input.grad();
        }
        if x0.requires_grad() {
            (&x0 * &grad).sum(None).backward();
        }

        // The leaves' gradients into the weights (through the cast and split of the flat
        // buffer, once): the gradient of `sum(source * g)` in `source` is exactly `g`.
        let mut total: Option<Tensor> = None;
        for (source, leaf) in sources.tensors().into_iter().zip(w.tensors()) {
            if !source.requires_grad() {
                continue;
            }
            let g = leaf.grad();
            if !g.defined() {
                continue;
            }
            let term = (source * g).sum(Kind::Float);
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
        if let Some(total) = total {
            total.backward();
        }
        loss.detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;
    use tch::Device;

    fn model(dropout: f64) -> Gpt2 {
        let mut c = Config::gpt2();
        (
            c.n_layer,
            c.n_head,
            c.n_embd,
            c.n_inner,
            c.n_ctx,
            c.vocab_size,
        ) = (3, 2, 16, 64, 16, 97);
        (c.attn_pdrop, c.resid_pdrop, c.embd_pdrop) = (dropout, dropout, dropout);
        Gpt2::random(&c, Device::Cpu, 7)
    }

    fn ids() -> Tensor {
        Tensor::from_slice(&(0..24).map(|i| (i * 7 + 3) % 97).collect::<Vec<i64>>())
            .reshape([2, 12])
    }

    /// The flat buffer's gradient after `run`, from zero.
    fn flat_grad(m: &mut Gpt2, names: &[String], run: impl Fn(&Gpt2)) -> Tensor {
        let flat = m.flatten_parameters(names).set_requires_grad(true);
        run(m);
        flat.grad().copy()
    }

    fn seed_of(i: usize) -> i64 {
        1000 + i as i64
    }

    #[test]
    fn without_dropout_the_gradient_is_loss_backward_s() {
        let names: Vec<String> = model(0.0)
            .named_parameters()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let (mut a, mut b) = (model(0.0), model(0.0));
        // Gpt2::random takes the lock: the models are made first.
        let _rng = crate::rng_lock();
        let plain = flat_grad(&mut a, &names, |m| {
            (m.loss(&ids(), true) * 0.5).backward();
        });
        let ckpt = flat_grad(&mut b, &names, |m| {
            let _ = m.loss_backward_checkpointed(&ids(), 0.5, &mut |_| {});
        });
        let diff = (&plain - &ckpt).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "gradients differ by {diff}");
        assert!(plain.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn dropout_replays_the_same_masks_in_the_recomputation() {
        // Reference: a straight forward with a graph, re-seeded as the checkpointed one
        // seeds it; the recomputation must draw the same masks for the gradients to match.
        let names: Vec<String> = model(0.3)
            .named_parameters()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let (mut a, mut b, mut c) = (model(0.3), model(0.3), model(0.3));
        let _rng = crate::rng_lock();
        let straight = flat_grad(&mut a, &names, |m| {
            let w = m.compute_weights();
            let pos = Tensor::arange(12, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            tch::manual_seed(seed_of(0));
            let mut x = m.embed(&w, &ids(), &pos, true);
            for (l, b) in w.blocks.iter().enumerate() {
                tch::manual_seed(seed_of(l + 1));
                x = m.block(&x, b, l, &Attend::Causal, None, true);
            }
            let h = m.layer_norm(&x, &w.ln_f);
            m.head_loss(&w, &h, &ids()).backward();
        });
        let ckpt = flat_grad(&mut b, &names, |m| {
            let _ =
                m.loss_backward_checkpointed(&ids(), 1.0, &mut |i| tch::manual_seed(seed_of(i)));
        });
        let diff = (&straight - &ckpt).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "gradients differ by {diff}");
        // Dropout did draw: without re-seeding, the masks (and gradients) differ.
        let unseeded = flat_grad(&mut c, &names, |m| {
            tch::manual_seed(seed_of(0));
            let _ = m.loss_backward_checkpointed(&ids(), 1.0, &mut |_| {});
        });
        assert!((&straight - &unseeded).abs().max().double_value(&[]) > 0.0);
    }

    #[test]
    fn frozen_blocks_get_no_gradient_and_stop_the_backward() {
        let m0 = model(0.0);
        // Only the last block trains: its gradient is the plain one, nothing else has one.
        let names: Vec<String> = m0
            .named_parameters()
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.starts_with("transformer.h.2."))
            .collect();
        let (mut a, mut b) = (model(0.0), model(0.0));
        let _rng = crate::rng_lock();
        let plain = flat_grad(&mut a, &names, |m| m.loss(&ids(), true).backward());
        let ckpt = flat_grad(&mut b, &names, |m| {
            let _ = m.loss_backward_checkpointed(&ids(), 1.0, &mut |_| {});
        });
        assert_eq!((&plain - &ckpt).abs().max().double_value(&[]), 0.0);
    }
}
