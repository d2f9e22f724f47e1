//! The integration tests of gptpipe-core, one test binary (`--test integration`): each file
//! of this folder is a module of it. `cargo test -p gptpipe-core --test integration NAME`
//! runs the tests whose path contains NAME (e.g. `fuzz_config::`).

mod config_values;
mod curation_keys;
mod fuzz_config;
mod known_answers;
mod matrix;
mod memo_race;
mod runner_safety;
mod stage_keys;
mod state_folder;
mod training_keys;

use gptpipe_core::config::{load, LoadOptions, Pipeline};
use std::path::Path;

/// Loads the pipeline file at `path` with the defaults; an error as the user would read it
/// (miette's report, without colours).
fn load_rendered(path: &Path) -> Result<Pipeline, String> {
    load(path, &LoadOptions::default()).map_err(|e| {
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut out, &e)
            .unwrap();
        out
    })
}

/// Writes `[pipeline] name = "t"` and `stages` to `dir/p.toml` and loads it as
/// [`load_rendered`] does.
fn load_in(dir: &Path, stages: &str) -> Result<Pipeline, String> {
    let path = dir.join("p.toml");
    std::fs::write(&path, format!("[pipeline]\nname = \"t\"\n{stages}")).unwrap();
    load_rendered(&path)
}
