//! The stage kinds this build can run, by cargo feature.

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::Registry;

pub fn registry() -> Registry {
    let mut r = Registry::new();
    gptpipe_text::register(&mut r);
    #[cfg(feature = "torch")]
    gptpipe_torch::register(&mut r);
    #[cfg(not(feature = "torch"))]
    r.unavailable(
        StageKind::Finetune,
        "this gptpipe was built without libtorch (feature `torch`)",
    );
    #[cfg(feature = "onnx")]
    gptpipe_onnx::register(&mut r);
    let _ = StageKind::Export;
    r
}
