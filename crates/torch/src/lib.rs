//! GPT-2 on libtorch: the model ([`model`]), Hugging Face weights in and out
//! ([`weights`]), where models come from ([`source`]) and the finetune stage.

pub mod allocator;
pub mod device;
pub mod dist;
mod ffi;
pub mod finetune;
pub mod generation;
pub mod gpt2_simple;
pub mod memory;
pub mod model;
pub mod source;
pub mod weights;

use gptpipe_core::stage::Registry;

/// Serialises use of libtorch's global random generator. Stages run on several threads at
/// once; whoever seeds it (`tch::manual_seed`) and then draws from it (dropout, `normal_`,
/// `multinomial`) holds this lock in between, so the draws depend on its own seed only.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds the finetune stage (and the tch generation backend).
pub fn register(registry: &mut Registry) {
    finetune::register(registry);
}
