//! Optimizer steps against PyTorch's torch.optim on the same model and batches.

use crate::common::*;
use gptpipe_core::config::Optimizer as Kind;
use gptpipe_torch::finetune::Optimizer;
use gptpipe_torch::weights;
use tch::{Device, Tensor};

const REFERENCE: &str = r#"
import sys, json, torch, transformers
from safetensors.torch import save_file
d, kind, wd, lr, clip, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
steps = json.loads(sys.argv[7])  # [step][micro] -> rows of ids
# The model both sides start from (one interpreter start makes it and trains it).
torch.manual_seed(11)
cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=97,
    attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
m = transformers.GPT2LMHeadModel.from_pretrained(d)
m.train()
params = list(m.parameters())
if kind == "adam":
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
elif kind == "adamw":
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
else:
    opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
losses = []
for micro_batches in steps:
    total = 0.0
    for ids in micro_batches:
        ids = torch.tensor(ids)
        loss = m(ids, labels=ids).loss
        (loss / len(micro_batches)).backward()
        total += loss.item()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad()
    losses.append(total / len(micro_batches))
sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
save_file(sd, out)
print(json.dumps(losses))
"#;

fn check(kind: Kind, name: &str, wd: f64, accum: usize, clip: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let lr = if kind == Kind::Sgd { 0.5 } else { 1e-3 };
    let steps: Vec<Vec<Vec<Vec<i64>>>> = (0..2)
        .map(|s| {
            (0..accum)
                .map(|a| ids(2, 16, 97, (s * 10 + a) as i64))
                .collect()
        })
        .collect();

    let train = |flat: bool, fused: bool| {
        let mut model = weights::load_folder(&dir, Device::Cpu).unwrap();
        let names: Vec<String> = model
            .named_parameters()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        // Flat as the finetune stage does it: the buffer is the leaf autograd fills.
        let buffer = flat.then(|| model.flatten_parameters(&names).set_requires_grad(true));
        let params: Vec<(String, Tensor)> = model
            .named_parameters()
            .iter()
            .map(|(n, t)| {
                let t = if flat {
                    t.shallow_clone()
                } else {
                    t.set_requires_grad(true)
                };
                (n.clone(), t)
            })
            .collect();
        let buffer_grad = buffer.as_ref().map(Tensor::shallow_clone);
        let mut opt = match buffer {
            Some(b) => Optimizer::new_flat(kind, wd, &params, b),
            None => Optimizer::new(kind, wd, &params),
        };
        opt.set_fused(Some(fused));
        let mut losses = Vec::new();
        for micro in &steps {
            let mut total = 0.0;
            for ids in micro {
                let loss = model.loss(&ids_tensor(ids), true);
                (&loss / micro.len() as f64).backward();
                total += loss.double_value(&[]);
            }
            if let Some(b) = &buffer_grad {
                assert!(b.grad().defined(), "the gradient should land in the buffer");
            }
            if clip > 0.0 {
                opt.clip_grad_norm(clip);
            }
            opt.apply(lr);
            assert_eq!(opt.last_step_fused(), fused);
            opt.zero_grad();
            losses.push(total / micro.len() as f64);
        }
        (model, losses)
    };

    let out = tmp.path().join("after.safetensors");
    let stdout = run_python(
        REFERENCE,
        &[
            dir.to_str().unwrap(),
            name,
            &wd.to_string(),
            &lr.to_string(),
            &clip.to_string(),
            out.to_str().unwrap(),
            &serde_json::to_string(&steps).unwrap(),
        ],
    );
    let theirs: Vec<f64> = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    // The fused kernel (forced on the CPU) only where it applies: Adam(W) over the buffer.
    let can_fuse = kind != Kind::Sgd && gptpipe_torch::finetune::fused::BUILT;
    for (flat, fused) in [(false, false), (true, false), (true, true)] {
        if fused && !can_fuse {
            continue;
        }
        let (model, ours) = train(flat, fused);
        let name = &format!(
            "{name}{}",
            match (flat, fused) {
                (false, _) => "",
                (true, false) => " (flat buffer)",
                (true, true) => " (flat buffer, fused)",
            }
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{name}: loss {a} vs PyTorch {b}");
        }
        let reference: std::collections::HashMap<String, Tensor> = weights::read_safetensors(&out)
            .unwrap()
            .into_iter()
            .collect();
        let before = weights::load_folder(&dir, Device::Cpu).unwrap();
        for ((n, t), (_, t0)) in model
            .named_parameters()
            .iter()
            .zip(before.named_parameters())
        {
            let r = &reference[n];
            assert!(max_diff(t, t0) > 1e-6, "{name}: {n} did not move");
            // The key bias has a zero gradient in exact arithmetic (softmax ignores a shift
            // shared by all keys), so Adam turns rounding noise into O(lr) steps in both
            // implementations: compare the query and value biases only.
            let (t, r) = if n.ends_with("attn.c_attn.bias") {
                let e = t.size()[0] / 3;
                let pick = |x: &Tensor| Tensor::cat(&[x.narrow(0, 0, e), x.narrow(0, 2 * e, e)], 0);
                (pick(t), pick(r))
            } else {
                (t.shallow_clone(), r.shallow_clone())
            };
            let d = max_diff(&t, &r);
            assert!(d < 1e-5, "{name}: {n} differs from PyTorch by {d}");
        }
    }
}

#[test]
fn adam_matches_pytorch() {
    check(Kind::Adam, "adam", 0.01, 1, 0.0);
}

#[test]
fn adamw_with_accumulation_and_clipping_matches_pytorch() {
    check(Kind::Adamw, "adamw", 0.1, 3, 0.5);
}

#[test]
fn sgd_with_accumulation_matches_pytorch() {
    check(Kind::Sgd, "sgd", 0.0, 2, 0.0);
}
