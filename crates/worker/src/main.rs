//! `gptpipe-worker`: gptpipe with libtorch loaded. The `gptpipe` binary runs model stages
//! (`run-stage`, a request on stdin) and `gptpipe generate` through it, so that it never
//! pays libtorch's start-up (about a second and hundreds of MB) itself.

use gptpipe::wiring::Process;
use gptpipe_core::stage::Registry;
use gptpipe_generate::Backends;

fn main() {
    gptpipe_torch::allocator::keep_freed_memory();
    let process = Process {
        registry,
        backends,
        in_worker: true,
    };
    std::process::exit(gptpipe::cli::main_with(process));
}

/// Every stage kind, in this process.
fn registry() -> Registry {
    let mut r = Registry::new();
    gptpipe_text::register(&mut r);
    gptpipe_generate::register(&mut r, backends());
    gptpipe_torch::register(&mut r);
    gptpipe_onnx::register_with_reference(
        &mut r,
        gptpipe_onnx::Runtime::shared(),
        std::sync::Arc::new(torch_logits),
    );
    r
}

fn backends() -> Backends {
    Backends {
        tch: Some(gptpipe_torch::generation::factory()),
        ..gptpipe::wiring::in_process_backends()
    }
}

/// libtorch's fp32 logits of `ids` (one row) for the model folder `dir`: the reference an
/// ONNX export is validated against.
fn torch_logits(dir: &std::path::Path, ids: &[i64]) -> anyhow::Result<Vec<f32>> {
    use tch::{Device, Tensor};
    let model = gptpipe_torch::weights::load_folder(dir, Device::Cpu)?;
    let input = Tensor::from_slice(ids).view([1, ids.len() as i64]);
    let logits = tch::no_grad(|| model.forward(&input, None, false));
    Ok(Vec::<f32>::try_from(
        logits.to_kind(tch::Kind::Float).flatten(0, -1),
    )?)
}
