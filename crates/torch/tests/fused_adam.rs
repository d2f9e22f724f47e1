//! The fused Adam/AdamW update (libtorch's `_fused_adam(w)_`, the default on the CPU and
//! on CUDA where there is one) against the written-out one over the same flat
//! buffer, and saving/resuming its state.

use gptpipe_core::config::Optimizer as Kind;
use gptpipe_torch::finetune::{fused, Optimizer};
use tch::{Device, Tensor};

const SHAPES: &[&[i64]] = &[&[7, 5], &[5], &[3, 4, 2], &[1]];

/// The CPU, and CUDA when there is one.
fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        out.push(Device::Cuda(0));
    }
    out
}

/// Parameters that are views of one flat buffer, with values from `seed`.
fn flat_params(seed: i64, device: Device) -> (Vec<(String, Tensor)>, Tensor) {
    // No random generator: it is shared by the tests running at the same time.
    let total: i64 = SHAPES.iter().map(|s| s.iter().product::<i64>()).sum();
    let flat =
        (Tensor::arange(total, (tch::Kind::Float, device)) * (0.37 + seed as f64)).sin() * 2.0;
    let mut params = Vec::new();
    let mut offset = 0;
    tch::no_grad(|| {
        for (i, shape) in SHAPES.iter().enumerate() {
            let len: i64 = shape.iter().product();
            let view = flat.narrow(0, offset, len).view(*shape);
            params.push((format!("p{i}"), view.set_requires_grad(true)));
            offset += len;
        }
    });
    (params, flat)
}

/// An optimizer over [`flat_params`]; `fused`: forced on or off, or the default.
fn optimizer(
    kind: Kind,
    wd: f64,
    fused: Option<bool>,
    seed: i64,
    device: Device,
) -> (Optimizer, Tensor) {
    let (params, flat) = flat_params(seed, device);
    let mut opt = Optimizer::new_flat(kind, wd, &params, flat.shallow_clone());
    if device == Device::Cpu || fused == Some(false) {
        opt.set_fused(fused);
    }
    (opt, flat)
}

/// Steps `from..to`: gradients of a loss that depends on the parameters and the step,
/// clipped, with a learning rate that changes every step.
fn train(opt: &mut Optimizer, from: usize, to: usize, fused: bool) {
    for s in from..to {
        let loss = opt
            .params()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let c = ((i + 3 * s) as f64 * 0.7).sin();
                ((p * c).sin() + p.square() * 0.1).sum(tch::Kind::Float)
            })
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        opt.clip_grad_norm(5.0);
        opt.apply(1e-2 * (1.0 + s as f64 * 0.5));
        assert_eq!(opt.last_step_fused(), fused, "step {s}");
        opt.zero_grad();
    }
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    a.allclose(b, 1e-5, 1e-6, false)
}

fn check_matches_unfused(kind: Kind, wd: f64) {
    if !fused::BUILT {
        eprintln!("the libtorch shim is not built: nothing to compare");
        return;
    }
    for device in devices() {
        let (mut fused_opt, fused_flat) = optimizer(kind, wd, Some(true), 5, device);
        let (mut plain_opt, plain_flat) = optimizer(kind, wd, Some(false), 5, device);
        let start = plain_flat.copy();
        train(&mut fused_opt, 0, 6, true);
        train(&mut plain_opt, 0, 6, false);
        assert!(
            (&plain_flat - &start).abs().max().double_value(&[]) > 1e-3,
            "{kind:?} on {device:?}: the parameters did not move"
        );
        let diff = (&fused_flat - &plain_flat).abs().max().double_value(&[]);
        eprintln!("{kind:?} on {device:?}: the fused parameters differ by at most {diff:e}");
        assert!(
            close(&fused_flat, &plain_flat),
            "{kind:?} on {device:?}: parameters differ by {diff}"
        );
        let states = fused_opt.state_tensors().into_iter();
        for ((n, a), (_, b)) in states.zip(plain_opt.state_tensors()) {
            let d = (&a - &b).abs().max().double_value(&[]);
            assert!(close(&a, &b), "{kind:?} on {device:?}: {n} differs by {d}");
        }
    }
}

#[test]
fn fused_adam_matches_unfused() {
    check_matches_unfused(Kind::Adam, 0.01);
}

#[test]
fn fused_adamw_with_weight_decay_matches_unfused() {
    check_matches_unfused(Kind::Adamw, 0.1);
}

/// A copy of the saved state of `opt`.
fn saved(opt: &Optimizer) -> Vec<(String, Tensor)> {
    let state = opt.state_tensors().into_iter();
    state.map(|(n, t)| (n, t.copy())).collect()
}

#[test]
fn fused_adamw_resumes_exactly() {
    if !fused::BUILT {
        eprintln!("the libtorch shim is not built: nothing to resume");
        return;
    }
    for device in devices() {
        let (mut straight, straight_flat) = optimizer(Kind::Adamw, 0.1, Some(true), 9, device);
        train(&mut straight, 0, 6, true);

        // Three steps, then the parameters and the saved state into a fresh optimizer.
        let (mut first, first_flat) = optimizer(Kind::Adamw, 0.1, Some(true), 9, device);
        train(&mut first, 0, 3, true);
        let (mut resumed, resumed_flat) = optimizer(Kind::Adamw, 0.1, Some(true), 1, device);
        tch::no_grad(|| resumed_flat.shallow_clone().copy_(&first_flat));
        resumed.load_state(first.step, saved(&first)).unwrap();
        train(&mut resumed, 3, 6, true);

        assert_eq!(resumed.step, straight.step);
        assert!(
            resumed_flat.equal(&straight_flat),
            "{device:?}: parameters differ after resuming"
        );
        let states = resumed.state_tensors().into_iter();
        for ((n, a), (_, b)) in states.zip(straight.state_tensors()) {
            assert!(a.equal(&b), "{device:?}: {n} differs after resuming");
        }

        // The saved state also continues the written-out update (same format).
        let (mut unfused, unfused_flat) = optimizer(Kind::Adamw, 0.1, Some(false), 1, device);
        tch::no_grad(|| unfused_flat.shallow_clone().copy_(&first_flat));
        unfused.load_state(first.step, saved(&first)).unwrap();
        train(&mut unfused, 3, 6, false);
        assert!(close(&unfused_flat, &straight_flat), "{device:?}");
    }
}

/// SGD has no fused update; Adam's is the default on the CPU too (issue 16) wherever the
/// shim is built.
#[test]
fn sgd_stays_unfused_and_adam_fuses_by_default_on_the_cpu() {
    let (mut sgd, _) = optimizer(Kind::Sgd, 0.0, Some(true), 3, Device::Cpu);
    train(&mut sgd, 0, 2, false);
    let (mut adam, _) = optimizer(Kind::Adam, 0.0, None, 3, Device::Cpu);
    train(&mut adam, 0, 2, fused::BUILT);
}
