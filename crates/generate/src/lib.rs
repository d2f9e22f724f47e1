//! Backend-independent text generation: the [`Backend`] trait a model runtime implements,
//! sampling ([`Sampling`]), the batched decoding loop with per-row `truncate` and a sliding
//! window ([`driver`]), sample files with incremental reuse ([`output`]), and the generate
//! stage ([`register`]).
//!
//! Sample `i` depends on (seed, i) and the model only: not on `batch_size`, not on which
//! other samples share its batch.

pub mod backend;
pub mod codec;
pub mod controls;
pub mod curation;
pub mod draw;
pub mod driver;
pub mod kept;
pub mod novelty;
pub mod output;
pub mod prompts;
pub mod provenance;
pub mod rng;
pub mod row;
pub mod sampling;
pub mod score;
pub mod stage;

pub use backend::{Backend, BackendFactory, Backends, Logits};
pub use codec::Codec;
pub use controls::Controls;
pub use driver::{generate_batch, generate_range, Job, Sample};
pub use row::SampleRow;
pub use sampling::Sampling;
pub use score::Score;

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::Registry;

/// Adds the generate stage, running models through `backends`, and its checks.
pub fn register(registry: &mut Registry, backends: Backends) {
    registry.register(StageKind::Generate, stage::VERSION, move |ctx| {
        let codec = codec::gpt2()?;
        stage::run_stage(ctx, &backends, codec.as_ref())
    });
    register_checks(registry);
}

/// Adds only the generate stage's checks before a run (for a runner that delegates the
/// stage itself to another process).
pub fn register_checks(registry: &mut Registry) {
    registry.check(StageKind::Generate, stage::check_prefix_fits);
}
