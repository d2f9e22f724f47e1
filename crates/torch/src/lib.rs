//! GPT-2 on libtorch: the model ([`model`]), Hugging Face weights in and out
//! ([`weights`]), where models come from ([`source`]) and the finetune stage.

pub mod device;
pub mod finetune;
pub mod generation;
pub mod model;
pub mod source;
pub mod weights;

use gptpipe_core::stage::Registry;

/// Adds the finetune stage (and the tch generation backend).
pub fn register(registry: &mut Registry) {
    finetune::register(registry);
}
