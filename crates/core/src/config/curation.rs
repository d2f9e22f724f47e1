//! Unique samples: where a generate stage's training rows come from when
//! `novelty_against` is not written. The default is filled in once, at load, so the
//! effective params (what the cache key, the lock file and `reads` see) name the rows.

use super::params::{GenerateParams, NoveltyAgainst};
use super::refs::{InputRef, ModelRef};
use super::StageParams;
use std::collections::BTreeMap;

/// Sets `novelty_against` of every generate stage that needs training rows and has none
/// to the dataset of the finetune stage its model comes from (through export stages).
/// Stages where no such dataset exists are left unset: validation names the key.
pub(super) fn fill_defaults(stages: &mut BTreeMap<String, StageParams>) {
    let defaults: Vec<(String, InputRef)> = stages
        .iter()
        .filter_map(|(name, params)| match params {
            StageParams::Generate(g) if wants_default(g) => {
                training_dataset(stages, &g.model).map(|d| (name.clone(), d))
            }
            _ => None,
        })
        .collect();
    for (name, dataset) in defaults {
        if let Some(StageParams::Generate(g)) = stages.get_mut(&name) {
            g.novelty_against = Some(NoveltyAgainst::One(dataset));
        }
    }
}

fn wants_default(g: &GenerateParams) -> bool {
    g.needs_training_rows() && g.novelty_against.is_none()
}

/// The `dataset` of the finetune stage that trained `model`, following export stages;
/// `None` for a model no stage of this pipeline trained (or a cycle, reported elsewhere).
fn training_dataset(stages: &BTreeMap<String, StageParams>, model: &ModelRef) -> Option<InputRef> {
    let mut model = model;
    for _ in 0..=stages.len() {
        let ModelRef::Stage(stage) = model else {
            return None;
        };
        match stages.get(stage.name())? {
            StageParams::Finetune(f) => {
                let empty = matches!(&f.dataset, InputRef::Path(p) if p.as_str().is_empty());
                return (!empty).then(|| f.dataset.clone());
            }
            StageParams::Export(e) => model = &e.model,
            _ => return None,
        }
    }
    None
}
