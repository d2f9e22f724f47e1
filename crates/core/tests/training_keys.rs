//! The finetune stage's training options: at their defaults they stay out of the cache key
//! (stages written before them keep their keys); `gradient_checkpointing` is an alias of
//! `use_memory_saving_gradients`, refused when both say different things; bad values are
//! config errors at their key.

use gptpipe_core::config::{Accumulate, LrSchedule, Pipeline, StageParams};

fn load_in(dir: &std::path::Path, extra: &str) -> Result<Pipeline, String> {
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"t\"\n[stages.t]\nkind = \"finetune\"\ndataset = \"a.txt\"\n\
             model = {{ n_layer = 4, n_head = 2, n_embd = 16 }}\n{extra}"
        ),
    )
    .unwrap();
    crate::load_rendered(&path)
}

fn params(p: &Pipeline) -> &gptpipe_core::config::FinetuneParams {
    match &p.stages["t"] {
        StageParams::Finetune(f) => f,
        _ => unreachable!(),
    }
}

#[test]
fn training_options_at_their_defaults_stay_out_of_the_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let plain = load_in(dir.path(), "").unwrap();
    let defaults = load_in(
        dir.path(),
        "lr_schedule = \"constant\"\nuse_memory_saving_gradients = false\n\
         gradient_checkpointing = false\nnum_layers_freeze = 0\naccumulate = \"mean\"\n",
    )
    .unwrap();
    let key = |p: &Pipeline| p.stages["t"].keyed_json();
    assert_eq!(key(&plain), key(&defaults));
    let json = key(&plain);
    for k in [
        "lr_schedule",
        "use_memory_saving_gradients",
        "gradient_checkpointing",
        "num_layers_freeze",
        "dropout",
        "accumulate",
    ] {
        assert!(
            json.get(k).is_none(),
            "{k} is in the key at its default: {json}"
        );
    }

    let set = load_in(
        dir.path(),
        "lr_schedule = \"cosine\"\ngradient_checkpointing = true\nnum_layers_freeze = 2\n\
         dropout = 0.0\naccumulate = \"sum\"\n",
    )
    .unwrap();
    let p = params(&set);
    assert_eq!(p.lr_schedule, LrSchedule::Cosine);
    assert!(p.gradient_checkpointing());
    assert_eq!((p.num_layers_freeze, p.dropout), (2, Some(0.0)));
    assert_eq!(p.accumulate, Accumulate::Sum);
    let json = key(&set);
    // The alias is folded into gpt-2-simple's name: one key reaches the stage and the key.
    assert_eq!(json["use_memory_saving_gradients"], true, "{json}");
    assert!(json.get("gradient_checkpointing").is_none(), "{json}");
    for (k, v) in [
        ("lr_schedule", serde_json::json!("cosine")),
        ("num_layers_freeze", serde_json::json!(2)),
        ("dropout", serde_json::json!(0.0)),
        ("accumulate", serde_json::json!("sum")),
    ] {
        assert_eq!(json[k], v, "{k}: {json}");
    }
    // The alias and the key mean the same.
    let by_name = load_in(dir.path(), "use_memory_saving_gradients = true\n").unwrap();
    let by_alias = load_in(dir.path(), "gradient_checkpointing = true\n").unwrap();
    assert_eq!(key(&by_name), key(&by_alias));
}

#[test]
fn the_checkpointing_alias_may_repeat_but_not_contradict_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let both = load_in(
        dir.path(),
        "use_memory_saving_gradients = true\ngradient_checkpointing = true\n",
    )
    .unwrap();
    assert!(params(&both).gradient_checkpointing());
    let e = load_in(
        dir.path(),
        "use_memory_saving_gradients = true\ngradient_checkpointing = false\n",
    )
    .unwrap_err();
    assert!(
        e.contains("contradicts `use_memory_saving_gradients"),
        "{e}"
    );
    // At the alias's line.
    assert!(e.contains("p.toml:8:1"), "{e}");
}

#[test]
fn bad_training_options_are_config_errors_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, says) in [
        ("dropout = 1.0\n", "dropout must be in [0, 1), not 1"),
        (
            "num_layers_freeze = 5\n",
            "num_layers_freeze = 5 but the model has 4 blocks",
        ),
        ("lr_schedule = \"cosin\"\n", "did you mean `cosine`?"),
        ("accumulate = \"avg\"\n", "one of: mean, sum"),
    ] {
        let e = load_in(dir.path(), extra).unwrap_err();
        assert!(e.contains(says), "{extra}: {e}");
        assert!(e.contains("p.toml:7:1"), "{extra}: {e}");
    }
}
