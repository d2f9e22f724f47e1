//! The training head over a vocabulary padded to a multiple of 64 (the default on CUDA)
//! gives the same loss and gradients as the plain one.

use gptpipe_torch::model::{Config, Gpt2};
use tch::{Device, Kind, Tensor};

/// Loss and the gradient of every parameter (by name) after one backward.
fn loss_and_grads(pad: bool) -> (f64, Vec<(String, Tensor)>) {
    let mut c = Config::gpt2();
    // vocab 100 pads to 128; no dropout, so both runs see the same function.
    (
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.n_inner,
        c.n_ctx,
        c.vocab_size,
    ) = (2, 2, 32, 128, 32, 100);
    (c.attn_pdrop, c.resid_pdrop, c.embd_pdrop) = (0.0, 0.0, 0.0);
    let mut model = Gpt2::random(&c, Device::Cpu, 7);
    model.set_pad_vocab(Some(pad));
    assert_eq!(model.pad_vocab(), pad);
    let params: Vec<(String, Tensor)> = model
        .named_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.set_requires_grad(true)))
        .collect();
    let ids = Tensor::from_slice(
        &(0..3 * 9)
            .map(|i| (i * 37 + 11) % 100)
            .collect::<Vec<i64>>(),
    )
    .reshape([3, 9]);
    let loss = model.loss(&ids, true);
    assert_eq!(loss.kind(), Kind::Float);
    loss.backward();
    let grads = params
        .iter()
        .map(|(n, t)| {
            let g = t.grad();
            assert!(g.defined(), "{n} got no gradient");
            assert_eq!(g.size(), t.size(), "{n}: gradient shape");
            (n.clone(), g.copy())
        })
        .collect();
    (loss.double_value(&[]), grads)
}

#[test]
fn padded_vocab_head_matches_plain_loss_and_gradients() {
    let (plain_loss, plain) = loss_and_grads(false);
    let (padded_loss, padded) = loss_and_grads(true);
    assert!(
        (plain_loss - padded_loss).abs() < 1e-5,
        "loss {padded_loss} (padded) vs {plain_loss}"
    );
    assert_eq!(plain.len(), padded.len());
    for ((n, a), (_, b)) in plain.iter().zip(&padded) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{n}: gradients differ by {d}");
    }
    // The comparison means something: wte's gradient is not all zeros.
    let wte = &plain[0].1;
    assert!(wte.abs().max().double_value(&[]) > 1e-6);
}
