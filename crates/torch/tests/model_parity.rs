//! Our GPT-2 against transformers' GPT2LMHeadModel on the same random weights.

use crate::common::*;
use gptpipe_torch::{model::Gpt2, weights};
use tch::{Device, Kind, Tensor};

/// transformers' logits for `ids` from the model in `dir`, saved to `out` (safetensors).
/// With `create` (`[n_layer, n_head, n_embd, n_ctx, vocab, seed]`) the same Python run
/// first makes that random model and saves it into `dir` (one interpreter start, not two).
fn hf_logits(
    dir: &std::path::Path,
    ids: &[Vec<i64>],
    mask: Option<&[Vec<i64>]>,
    out: &std::path::Path,
    create: Option<[usize; 6]>,
) -> Tensor {
    let script = r#"
import sys, json, torch, transformers
from safetensors.torch import save_file
create = json.loads(sys.argv[5])
if create is not None:
    L, H, E, C, V, seed = create
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=E, n_positions=C, vocab_size=V)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(sys.argv[1])
m = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
mask = json.loads(sys.argv[3])
with torch.no_grad():
    if mask is None:
        logits = m(ids).logits
    else:
        mask = torch.tensor(mask)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits = m(ids, attention_mask=mask, position_ids=pos).logits
save_file({"logits": logits.contiguous()}, sys.argv[4])
"#;
    let mask_json = mask.map_or("null".to_string(), ids_json);
    run_python(
        script,
        &[
            dir.to_str().unwrap(),
            &ids_json(ids),
            &mask_json,
            out.to_str().unwrap(),
            &serde_json::to_string(&create).unwrap(),
        ],
    );
    weights::read_safetensors(out).unwrap().remove(0).1
}

fn check_shape(
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_ctx: usize,
    vocab: usize,
    rows: i64,
    cols: i64,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let ids = ids(rows, cols, vocab as i64, 1);
    let create = [n_layer, n_head, n_embd, n_ctx, vocab, 7];
    let theirs = hf_logits(
        &dir,
        &ids,
        None,
        &tmp.path().join("logits.safetensors"),
        Some(create),
    );
    let model = weights::load_folder(&dir, Device::Cpu).unwrap();
    let ours = tch::no_grad(|| model.forward(&ids_tensor(&ids), None, false));
    let d = max_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ from transformers by {d}");

    // The same logits through the KV cache, one prompt then token by token.
    let mut cache = model.new_cache();
    let t = ids_tensor(&ids);
    let split = cols / 2;
    let mut parts = vec![tch::no_grad(|| {
        model.forward(&t.narrow(1, 0, split), Some(&mut cache), false)
    })];
    for i in split..cols {
        parts.push(tch::no_grad(|| {
            model.forward(&t.narrow(1, i, 1), Some(&mut cache), false)
        }));
    }
    let cached = Tensor::cat(&parts, 1);
    let d = max_diff(&cached, &theirs);
    assert!(d < 1e-4, "cached logits differ from transformers by {d}");
}

#[test]
fn logits_match_transformers_small() {
    check_shape(2, 2, 32, 64, 101, 2, 9);
}

#[test]
fn logits_match_transformers_wider() {
    check_shape(3, 4, 64, 48, 503, 3, 48);
}

#[test]
fn left_padded_rows_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let mut ids = ids(2, 8, 97, 2);
    let mask = vec![vec![1i64; 8], vec![0, 0, 0, 1, 1, 1, 1, 1]];
    ids[1][..3].fill(0);
    let create = Some([2, 2, 32, 32, 97, 3]);
    let theirs = hf_logits(
        &dir,
        &ids,
        Some(&mask),
        &tmp.path().join("l.safetensors"),
        create,
    );
    let model = weights::load_folder(&dir, Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let t = ids_tensor(&ids);
    let m = ids_tensor(&mask);
    let first = tch::no_grad(|| {
        model.forward_masked(
            &t.narrow(1, 0, 6),
            Some(&m.narrow(1, 0, 6)),
            Some(&mut cache),
            false,
        )
    });
    let a = tch::no_grad(|| model.forward(&t.narrow(1, 6, 1), Some(&mut cache), false));
    let b = tch::no_grad(|| model.forward(&t.narrow(1, 7, 1), Some(&mut cache), false));
    let ours = Tensor::cat(&[first, a, b], 1);
    // Padding positions are meaningless; compare the real ones.
    let d0 = max_diff(&ours.get(0), &theirs.get(0));
    let d1 = max_diff(&ours.get(1).narrow(0, 3, 5), &theirs.get(1).narrow(0, 3, 5));
    assert!(d0 < 1e-4 && d1 < 1e-4, "padded logits differ: {d0} {d1}");
    // And the padded row equals the row alone.
    let alone = tch::no_grad(|| model.forward(&t.get(1).narrow(0, 3, 5).unsqueeze(0), None, false));
    let d = max_diff(&alone.get(0), &ours.get(1).narrow(0, 3, 5));
    assert!(d < 1e-4, "padded row differs from the row alone by {d}");
    let _ = Kind::Float;
}

#[test]
fn saved_folder_loads_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = gptpipe_torch::model::Config::from_inline(&gptpipe_core::config::InlineModel {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        n_ctx: 40,
        vocab_size: 211,
        dropout: 0.1,
    })
    .unwrap();
    let model = Gpt2::random(&cfg, Device::Cpu, 5);
    let dir = tmp.path().join("ours");
    weights::save_folder(&model, &dir).unwrap();
    let ids = ids(2, 17, 211, 4);
    let ours = tch::no_grad(|| model.forward(&ids_tensor(&ids), None, false));
    let theirs = hf_logits(&dir, &ids, None, &tmp.path().join("l.safetensors"), None);
    let d = max_diff(&ours, &theirs);
    assert!(d < 1e-4, "transformers on our folder differs by {d}");
    // Our init statistics follow transformers': c_proj has the smaller std.
    let p = model.named_parameters();
    let std = |n: &str| {
        p.iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .std(true)
            .double_value(&[])
    };
    let (fc, proj) = (
        std("transformer.h.0.mlp.c_fc.weight"),
        std("transformer.h.0.mlp.c_proj.weight"),
    );
    assert!(
        (fc - 0.02).abs() < 0.003 && (proj - 0.01).abs() < 0.002,
        "init std {fc} {proj}"
    );
}
