//! Process wiring: which stage kinds and generation backends run in this process, and
//! which in `gptpipe-worker`.
//!
//! The `gptpipe` binary never loads libtorch: with the `worker` feature, stages that may need
//! it (finetune, generate, export) run in `gptpipe-worker` (crates/worker, see
//! `gptpipe_core::remote`), so `status`, `dag` and a no-op `run` start in milliseconds.
//! `gptpipe-worker` runs the same command line with a [`Process`] that has everything in
//! process.

use gptpipe_core::config::StageKind;
use gptpipe_core::stage::{versions, Registry};
use gptpipe_generate::Backends;

/// What a process can run: `main` passes it to the command it runs.
#[derive(Clone, Copy)]
pub struct Process {
    pub registry: fn() -> Registry,
    pub backends: fn() -> Backends,
    /// True in `gptpipe-worker`.
    pub in_worker: bool,
}

/// What the `gptpipe` binary runs.
pub const RUNNER: Process = Process {
    registry: runner_registry,
    backends: in_process_backends,
    in_worker: false,
};

fn runner_registry() -> Registry {
    let mut r = Registry::new();
    gptpipe_text::register(&mut r);
    if cfg!(feature = "worker") {
        use gptpipe_core::remote::remote_stage;
        let worker = worker_path();
        r.register(
            StageKind::Finetune,
            versions::FINETUNE,
            remote_stage(worker.clone()),
        );
        r.register(
            StageKind::Generate,
            versions::GENERATE,
            remote_stage(worker.clone()),
        );
        r.register(
            StageKind::Export,
            versions::EXPORT,
            remote_stage(worker.clone()),
        );
        gptpipe_generate::register_checks(&mut r);
        r.with_slurm_executor(worker);
    } else {
        r.unavailable(
            StageKind::Finetune,
            "this gptpipe was built without libtorch (feature `worker`)",
        );
        gptpipe_generate::register(&mut r, in_process_backends());
        #[cfg(feature = "onnx")]
        gptpipe_onnx::register(&mut r);
    }
    r
}

/// `gptpipe-worker`, installed beside `gptpipe`.
pub fn worker_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| "gptpipe".into());
    exe.with_file_name("gptpipe-worker")
}

/// The backends that need no libtorch.
pub fn in_process_backends() -> Backends {
    #[allow(unused_mut)]
    let mut b = Backends::default();
    #[cfg(feature = "onnx")]
    {
        b.onnx = Some(gptpipe_onnx::backend::factory(
            gptpipe_onnx::Runtime::shared(),
        ));
    }
    b
}
