//! The stage kinds and generation backends this build has, by cargo feature.

use gptpipe_core::stage::Registry;
use gptpipe_generate::Backends;

/// Every stage kind this build can run; the others are registered as unavailable with
/// the reason.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    gptpipe_text::register(&mut r);
    gptpipe_generate::register(&mut r, backends());
    #[cfg(feature = "torch")]
    gptpipe_torch::register(&mut r);
    #[cfg(not(feature = "torch"))]
    r.unavailable(
        gptpipe_core::config::StageKind::Finetune,
        "this gptpipe was built without libtorch (feature `torch`)",
    );
    #[cfg(all(feature = "onnx", feature = "torch"))]
    gptpipe_onnx::register_with_reference(&mut r, Some(std::sync::Arc::new(torch_logits)));
    #[cfg(all(feature = "onnx", not(feature = "torch")))]
    gptpipe_onnx::register(&mut r);
    r
}

/// The generation backends compiled into this build.
pub fn backends() -> Backends {
    #[allow(unused_mut)]
    let mut b = Backends::default();
    #[cfg(feature = "torch")]
    {
        b.tch = Some(gptpipe_torch::generation::factory());
    }
    b
}

/// libtorch's fp32 logits of `ids` (one row) for the model folder `dir`: the reference an
/// ONNX export is validated against.
#[cfg(all(feature = "onnx", feature = "torch"))]
fn torch_logits(dir: &std::path::Path, ids: &[i64]) -> anyhow::Result<Vec<f32>> {
    use tch::{Device, Tensor};
    let model = gptpipe_torch::weights::load_folder(dir, Device::Cpu)?;
    let input = Tensor::from_slice(ids).view([1, ids.len() as i64]);
    let logits = tch::no_grad(|| model.forward(&input, None, false));
    Ok(Vec::<f32>::try_from(logits.to_kind(tch::Kind::Float).flatten(0, -1))?)
}
