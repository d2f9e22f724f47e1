//! Adam, AdamW and SGD, written out so the update is exactly PyTorch's (the single-tensor
//! `torch.optim` code paths) and the moments can be saved for an exact resume. Over a flat
//! buffer, Adam and AdamW update in one kernel instead ([`super::fused`]: torch.optim's
//! `fused=True`, the same update up to rounding), on the CPU as on CUDA: on the CPU the
//! written-out update is ten passes over the buffer with five temporaries the size of the
//! model, and took a step of the tiny CPU model longer than torch.optim's whole AdamW
//! (issue 16).

use super::fused;
use anyhow::{bail, Result};
use gptpipe_core::config::Optimizer as Kind;
use tch::Tensor;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

/// Optimizer state over the trainable parameters (in the order given at creation).
pub struct Optimizer {
    pub kind: Kind,
    pub weight_decay: f64,
    /// Updates applied so far (Adam's `t`).
    pub step: u64,
    names: Vec<String>,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Set when the parameters are views of one buffer ([`Optimizer::new_flat`]): the
    /// buffer and the moments as buffers of the same layout.
    flat: Option<Flat>,
    /// See [`Optimizer::set_fused`].
    fused: Option<bool>,
    /// Whether the last update went through the fused kernel.
    last_fused: bool,
}

struct Flat {
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The step count as the fused kernel reads it: an fp32 scalar on the buffer's device
    /// (torch.optim's `state_step` with `fused=True`), set from [`Optimizer::step`] before
    /// every fused update, so it is not part of the saved state.
    step: Tensor,
    /// Set when the fused kernel refused a call: the written-out update is used from then on.
    fused_failed: bool,
}

/// Elements of the gradient all-reduced at a time (100 MB of fp32, PyTorch DDP's order
/// of magnitude): the collective runs over views of the flat gradient.
const GRAD_BUCKET: i64 = 25 << 20;

/// False when `GPTPIPE_FUSED_ADAM=0` (read once): the flat update is then the written-out
/// one.
fn fused_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GPTPIPE_FUSED_ADAM").map_or(true, |v| v.trim() != "0"))
}

impl Optimizer {
    pub fn new(kind: Kind, weight_decay: f64, params: &[(String, Tensor)]) -> Self {
        let adam = kind != Kind::Sgd;
        let zeros = |t: &Tensor| if adam { t.zeros_like() } else { Tensor::new() };
        Self {
            kind,
            weight_decay,
            step: 0,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            params: params.iter().map(|(_, t)| t.shallow_clone()).collect(),
            exp_avg: params.iter().map(|(_, t)| zeros(t)).collect(),
            exp_avg_sq: params.iter().map(|(_, t)| zeros(t)).collect(),
            flat: None,
            fused: None,
            last_fused: false,
        }
    }

    /// An optimizer over parameters that are consecutive views of `flat` (see
    /// `Gpt2::flatten_parameters`), in the same order: one update for all of them. When
    /// `flat` requires grad and the model reads its weights through it (as `Gpt2` does),
    /// backward leaves one gradient tensor and nothing is gathered per step; otherwise the
    /// parameters' own gradients are.
    pub fn new_flat(
        kind: Kind,
        weight_decay: f64,
        params: &[(String, Tensor)],
        flat: Tensor,
    ) -> Self {
        let mut opt = Self::new(kind, weight_decay, &[]);
        opt.names = params.iter().map(|(n, _)| n.clone()).collect();
        opt.params = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let zeros = flat.zeros_like();
        let (m, v) = (zeros.zeros_like(), zeros);
        let shapes: Vec<Vec<i64>> = params.iter().map(|(_, t)| t.size()).collect();
        opt.exp_avg = crate::model::tile(&m, &shapes);
        opt.exp_avg_sq = crate::model::tile(&v, &shapes);
        let step = Tensor::zeros([], (tch::Kind::Float, flat.device()));
        opt.flat = Some(Flat {
            params: flat,
            exp_avg: m,
            exp_avg_sq: v,
            step,
            fused_failed: false,
        });
        opt
    }

    /// Whether Adam and AdamW over a flat buffer ([`Optimizer::new_flat`]) update in one
    /// fused kernel. `None` (the default): yes unless `GPTPIPE_FUSED_ADAM=0`; `Some(_)`
    /// forces it either way. Without the libtorch shim, or when the kernel refuses a call,
    /// the written-out update runs instead.
    pub fn set_fused(&mut self, fused: Option<bool>) {
        self.fused = fused;
    }

    /// Whether the last [`Optimizer::apply`] went through the fused kernel.
    pub fn last_step_fused(&self) -> bool {
        self.last_fused
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The gradients: the flat buffer's own when it is the leaf that autograd fills (the
    /// model reads its weights through it, see `Gpt2::compute_weights`), else each
    /// parameter's. Undefined ones are left out.
    fn grads(&self) -> Vec<Tensor> {
        if let Some(g) = self.flat_grad() {
            return vec![g];
        }
        self.params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    fn flat_grad(&self) -> Option<Tensor> {
        let flat = self.flat.as_ref()?;
        let g = flat.params.grad();
        g.defined().then_some(g)
    }

    pub fn zero_grad(&mut self) {
        for mut g in self.grads() {
            let _ = g.detach_();
            let _ = g.zero_();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (PyTorch's
    /// `clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads = self.grads();
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            if norms.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let coef = max_norm / (total + 1e-6);
            if coef < 1.0 {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
            total
        })
    }

    /// Whether every gradient is finite (fp16 loss scaling skips the step otherwise).
    pub fn grads_finite(&self) -> bool {
        tch::no_grad(|| {
            self.grads()
                .iter()
                .all(|g| bool::try_from(g.isfinite().all()).unwrap_or(false))
        })
    }

    /// Multiplies every gradient by `factor` (undoes a loss scale).
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for mut g in self.grads() {
                let _ = g.g_mul_scalar_(factor);
            }
        })
    }

    /// One update with learning rate `lr`.
    pub fn apply(&mut self, lr: f64) {
        self.step += 1;
        self.last_fused = false;
        let flat_grad = self.flat_grad();
        if let Some(flat) = &mut self.flat {
            // The buffer's own gradient, or the parameters' gathered into one.
            let g = flat_grad.unwrap_or_else(|| {
                let grads: Vec<Tensor> = self
                    .params
                    .iter()
                    .map(|p| {
                        let g = p.grad();
                        if g.defined() {
                            g.reshape([-1])
                        } else {
                            p.zeros_like().reshape([-1])
                        }
                    })
                    .collect();
                Tensor::cat(&grads, 0)
            });
            let fused = self.kind != Kind::Sgd
                && !flat.fused_failed
                && self.fused.unwrap_or_else(fused_env);
            if fused {
                let result = tch::no_grad(|| {
                    // torch.optim increments `state_step` before the kernel, which reads the
                    // new count for the bias corrections.
                    let _ = flat.step.fill_(self.step as f64);
                    fused::adam_step(
                        &flat.params,
                        &g,
                        &flat.exp_avg,
                        &flat.exp_avg_sq,
                        &flat.step,
                        lr,
                        (BETA1, BETA2),
                        self.weight_decay,
                        EPS,
                        self.kind == Kind::Adamw,
                    )
                });
                match result {
                    Ok(()) => {
                        self.last_fused = true;
                        return;
                    }
                    Err(e) => {
                        if fused::BUILT {
                            eprintln!("fused Adam update unavailable, using the unfused one: {e}");
                        }
                        flat.fused_failed = true;
                    }
                }
            }
            let (mut p, mut m, mut v) = (
                flat.params.shallow_clone(),
                flat.exp_avg.shallow_clone(),
                flat.exp_avg_sq.shallow_clone(),
            );
            tch::no_grad(|| {
                update(
                    self.kind,
                    self.weight_decay,
                    self.step,
                    lr,
                    &mut p,
                    g,
                    &mut m,
                    &mut v,
                )
            });
            return;
        }
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let mut p = self.params[i].shallow_clone();
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
                update(self.kind, self.weight_decay, self.step, lr, &mut p, g, m, v);
            }
        });
    }

    /// The moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        if self.kind == Kind::Sgd {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("exp_avg.{n}"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("exp_avg_sq.{n}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out
    }

    /// Gives every rank rank 0's trained weights, moments and step count (a resume is rank
    /// 0's to find: the others start from anything of the same shapes), and the mean of the
    /// ranks' gradients is taken by [`Optimizer::all_reduce_grads`].
    pub fn broadcast_state(&mut self, group: &crate::dist::Group) -> Result<()> {
        let flat = self
            .flat
            .as_ref()
            .expect("data-parallel training uses a flat buffer");
        for t in [&flat.params, &flat.exp_avg, &flat.exp_avg_sq] {
            group.broadcast(&t.detach())?;
        }
        self.step = group.broadcast_f64(self.step as f64)? as u64;
        Ok(())
    }

    /// Replaces this rank's gradient with the mean of every rank's (one all-reduce of the
    /// flat gradient, done in buckets so no extra buffer the size of the model is needed).
    pub fn all_reduce_grads(&self, group: &crate::dist::Group) -> Result<()> {
        let Some(g) = self.flat_grad() else {
            return Ok(());
        };
        let n = g.numel() as i64;
        let mut start = 0;
        while start < n {
            let len = GRAD_BUCKET.min(n - start);
            group.all_reduce_mean(&g.narrow(0, start, len))?;
            start += len;
        }
        Ok(())
    }

    /// Restores moments saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, step: u64, tensors: Vec<(String, Tensor)>) -> Result<()> {
        self.step = step;
        if self.kind == Kind::Sgd {
            return Ok(());
        }
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        tch::no_grad(|| {
            for (i, n) in self.names.iter().enumerate() {
                for (prefix, dst) in [
                    ("exp_avg", &mut self.exp_avg[i]),
                    ("exp_avg_sq", &mut self.exp_avg_sq[i]),
                ] {
                    let key = format!("{prefix}.{n}");
                    let Some(src) = map.get(&key) else {
                        bail!("the optimizer state has no {key}");
                    };
                    if src.size() != dst.size() {
                        bail!(
                            "optimizer state {key} has shape {:?}, expected {:?}",
                            src.size(),
                            dst.size()
                        );
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })
    }
}

/// One PyTorch-exact update of `p` with gradient `g` (single-tensor code path).
#[allow(clippy::too_many_arguments)]
fn update(
    kind: Kind,
    wd: f64,
    step: u64,
    lr: f64,
    p: &mut Tensor,
    g: Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) {
    match kind {
        Kind::Sgd => {
            let g = if wd != 0.0 { &g + &*p * wd } else { g };
            let _ = p.g_add_(&(g * -lr));
        }
        Kind::Adam | Kind::Adamw => {
            let g = if kind == Kind::Adam && wd != 0.0 {
                &g + &*p * wd
            } else {
                g
            };
            if kind == Kind::Adamw && wd != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
            }
            let t = step as i32;
            let _ = m.lerp_(&g, 1.0 - BETA1);
            let _ = v.g_mul_scalar_(BETA2);
            let _ = v.addcmul_(&(&g * (1.0 - BETA2)), &g);
            let bc1 = 1.0 - BETA1.powi(t);
            let bc2 = 1.0 - BETA2.powi(t);
            let denom = (v.sqrt() / bc2.sqrt()) + EPS;
            let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
        }
    }
}
