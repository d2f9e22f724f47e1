//! Checks that need the whole pipeline or mean "impossible value": references, cycles,
//! names, ranges. Every error points at the key that causes it.

use super::error::{suggest, ConfigError};
use super::params::*;
use super::{Pipeline, Read, StageKind, StageParams};
use std::collections::BTreeMap;

pub fn validate(p: &Pipeline) -> Result<(), ConfigError> {
    let at = |path: &[&str], e: ConfigError| {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        p.origins.error_at(&path, e)
    };
    if p.name.trim().is_empty() {
        return Err(at(
            &["pipeline", "name"],
            ConfigError::new("`pipeline.name` is empty"),
        ));
    }
    if !is_folder_name(&p.name) {
        return Err(at(
            &["pipeline", "name"],
            ConfigError::new(format!("invalid pipeline name {:?}", p.name)).with_help(format!(
                "the name becomes the default workdir runs/<name>: one folder name of at most \
                 {MAX_NAME} characters, without / or a leading dot"
            )),
        ));
    }
    for (name, params) in &p.stages {
        if !is_stage_name(name) {
            return Err(at(
                &["stages", name],
                ConfigError::new(format!("invalid stage name `{name}`")).with_help(format!(
                    "stage names become folder names: use letters, digits, - and _, at most \
                     {MAX_NAME} of them (a matrix stage's name includes its values: fewer or \
                     shorter values shorten it)"
                )),
            ));
        }
        if let Some(message) = unshared_batch(p, name, params) {
            return Err(at(
                &["stages", name, "resources", "nodes"],
                ConfigError::new(message),
            ));
        }
        for (key, target) in params.references() {
            if !p.stages.contains_key(&target) {
                let help = match suggest(&target, p.stages.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `@{s}`?"),
                    None => format!(
                        "stages in this pipeline: {}",
                        p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(at(
                    &["stages", name, key],
                    ConfigError::new(format!(
                        "stage `{name}` refers to unknown stage `@{target}` in `{key}`"
                    ))
                    .with_help(help),
                ));
            }
            let found = p.stages[&target].kind();
            let accepted = accepted_kinds(params, key);
            if !accepted.contains(&found) {
                let names: Vec<String> = accepted.iter().map(|k| a_stage(*k)).collect();
                return Err(at(
                    &["stages", name, key],
                    ConfigError::new(format!(
                        "stage `{name}`: `{key}` refers to `@{target}`, {}",
                        a_stage(found)
                    ))
                    .with_help(format!(
                        "`{key}` of a {} stage takes {}",
                        params.kind(),
                        names.join(" or ")
                    )),
                ));
            }
        }
        if let Err((key, message)) = check_values(params) {
            return Err(at(
                &["stages", name, key],
                ConfigError::new(format!("stage `{name}`: {message}")),
            ));
        }
    }
    check_inputs_outside_owned(p)?;
    if let Some(cycle) = find_cycle(&p.stages) {
        let first = &cycle[0];
        let key = p.stages[first]
            .references()
            .into_iter()
            .find(|(_, t)| *t == cycle[1])
            .map_or("kind", |(k, _)| k);
        return Err(at(
            &["stages", first, key],
            ConfigError::new(format!("stages form a cycle: {}", cycle.join(" -> ")))
                .with_help("a stage cannot use its own output, directly or through others"),
        ));
    }
    Ok(())
}

/// Letters, digits, `-` and `_`, then for a stage of a matrix its label (`[lr=0.1,m=gpt2]`).
fn is_stage_name(name: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let label = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+=,".contains(c))
    };
    name.len() <= MAX_NAME
        && match name.split_once('[') {
            None => plain(name),
            Some((written, rest)) => {
                plain(written)
                    && rest
                        .strip_suffix(']')
                        .is_some_and(|l| !l.is_empty() && label(l))
            }
        }
}

/// The longest pipeline or stage name: it becomes a folder name, with suffixes added to
/// it for build folders, well under the usual 255-byte limit.
const MAX_NAME: usize = 128;

/// A name that can be one folder's name: no separator, not `.`/`..` or hidden.
fn is_folder_name(name: &str) -> bool {
    name.len() <= MAX_NAME && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

/// Refuses a path input that lies in what gptpipe owns in the workdir: a stage's output
/// folder (publishing it would replace the input, and with it the user's files when the
/// folder was theirs) or `.gptpipe/`. Folders and globs that merely contain the workdir
/// are fine: their walk skips it.
fn check_inputs_outside_owned(p: &Pipeline) -> Result<(), ConfigError> {
    let owned = crate::inputs::Owned::of(p);
    for (name, params) in &p.stages {
        for read in params.reads() {
            let (key, value, path) = match read {
                Read::Stage { .. } => continue,
                Read::Pattern { key, path }
                | Read::FileOrTree { key, path }
                | Read::Checkpoint { key, path } => {
                    // A glob is judged by the folder its matches lie in.
                    let (root, _) = crate::inputs::split_glob(&path.path().to_string_lossy());
                    (key, path.as_str().to_owned(), p.dir.join(root))
                }
                Read::Model { key, model } => match (p.model_folder(model), model.as_written()) {
                    (Some(dir), Some(written)) => (key, written.into_owned(), dir),
                    _ => continue,
                },
            };
            let path = crate::inputs::normalize(&path);
            let Some(root) = owned.root_of(&path) else {
                continue;
            };
            let whose = match root.file_name().and_then(|n| n.to_str()) {
                Some(stage) if p.stages.contains_key(stage) => {
                    format!("stage `{stage}`'s output folder")
                }
                _ if root == crate::inputs::normalize(&p.lock_path()) => {
                    "the pipeline's lock file, which every run rewrites".to_owned()
                }
                _ => "gptpipe's cache folder".to_owned(),
            };
            let path: Vec<String> = vec!["stages".into(), name.clone(), key.into()];
            return Err(p.origins.error_at(
                &path,
                ConfigError::new(format!(
                    "stage `{name}`: `{key}` {value:?} is inside {} ({whose})",
                    root.display()
                ))
                .with_help(
                    "gptpipe replaces a stage's output folder each time it publishes it: to \
                     read another stage's output use \"@stage\"; for your own files, rename \
                     the stage or choose another `workdir`",
                ),
            ));
        }
    }
    Ok(())
}

/// "a prepare stage", "an export stage".
fn a_stage(kind: StageKind) -> String {
    let article = if kind == StageKind::Export { "an" } else { "a" };
    format!("{article} {kind} stage")
}

/// The kinds of stage that `key` of `params` may refer to with `@stage`.
fn accepted_kinds(params: &StageParams, key: &str) -> &'static [StageKind] {
    use StageKind::*;
    match (params, key) {
        // Text in: a prepare stage's dataset or a generate stage's samples.
        (StageParams::Prepare(_), _) => &[Prepare, Generate],
        (StageParams::Finetune(_), "dataset") => &[Prepare],
        // Training rows are a prepare stage's dataset.
        (StageParams::Generate(_), "novelty_against") => &[Prepare],
        (StageParams::Generate(g), _) if g.backend != Backend::Tch => &[Finetune, Export],
        // Weights in: libtorch reads a finetune stage's safetensors folder.
        _ => &[Finetune],
    }
}

/// A cycle through `@` references, as names with the first repeated at the end.
fn find_cycle(stages: &BTreeMap<String, StageParams>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        name: &str,
        stages: &BTreeMap<String, StageParams>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(name).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Open => {
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            Mark::New => {}
        }
        marks.insert(name.to_owned(), Mark::Open);
        stack.push(name.to_owned());
        for (_, next) in stages.get(name)?.references() {
            if let Some(c) = visit(&next, stages, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(name.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for name in stages.keys() {
        if let Some(c) = visit(name, stages, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

type Invalid = (&'static str, String);

/// Checks one stage's values on their own, outside a pipeline (for one-off commands such as
/// `gptpipe generate`): `Err((key, message))` names the offending key.
pub fn check_stage_values(params: &StageParams) -> Result<(), (&'static str, String)> {
    check_values(params)
}

fn check_values(params: &StageParams) -> Result<(), Invalid> {
    match params {
        StageParams::Prepare(p) => check_prepare(p),
        StageParams::Finetune(p) => check_finetune(p),
        StageParams::Export(p) => {
            check_model(&p.model)?;
            ensure(
                p.opset >= 17,
                "opset",
                format!("opset must be 17 or later, not {}", p.opset),
            )
        }
        StageParams::Generate(p) => check_generate(p),
    }
}

/// Why a finetune's Slurm job over several nodes cannot share its batch among its ranks
/// (`devices` on each of `nodes`), when both are known here.
fn unshared_batch(p: &Pipeline, name: &str, params: &StageParams) -> Option<String> {
    let StageParams::Finetune(f) = params else {
        return None;
    };
    let Devices::Count(n) = f.devices else {
        return None;
    };
    let nodes = p.resources.get(name)?.nodes.filter(|&m| m > 1)?;
    let world = n.get() * nodes as usize;
    let slurm = p.executor == super::Executor::Slurm;
    (slurm && !f.batch_size.is_multiple_of(world)).then(|| {
        format!(
            "stage `{name}`: batch_size = {} cannot be shared by its {world} ranks (devices on \
             each of its {nodes} nodes): batch_size must be a multiple of devices x nodes",
            f.batch_size
        )
    })
}

fn ensure(ok: bool, key: &'static str, message: String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key, message))
    }
}

fn check_model(m: &ModelRef) -> Result<(), Invalid> {
    match m {
        ModelRef::Name(s) => ensure(!s.trim().is_empty(), "model", "`model` is empty".into()),
        ModelRef::Stage(r) => ensure(!r.name().is_empty(), "model", "`model` is empty".into()),
        ModelRef::Folder(_) => Ok(()),
        ModelRef::Inline(m) => {
            ensure(
                m.n_layer > 0 && m.n_head > 0 && m.n_embd > 0 && m.n_ctx > 0,
                "model",
                "n_layer, n_head, n_embd and n_ctx must be positive".into(),
            )?;
            check_inline_shape(m)?;
            ensure(
                m.n_ctx >= 2,
                "model",
                format!(
                    "n_ctx must be at least 2 (a token and the next one to learn), not {}",
                    m.n_ctx
                ),
            )?;
            ensure(
                m.n_embd % m.n_head == 0,
                "model",
                format!(
                    "n_embd ({}) must be divisible by n_head ({})",
                    m.n_embd, m.n_head
                ),
            )?;
            ensure(
                (0.0..1.0).contains(&m.dropout),
                "model",
                format!("dropout must be in [0, 1), not {}", m.dropout),
            )?;
            ensure(
                m.vocab_size >= gptpipe_hf::config::gpt2::VOCAB_SIZE,
                "model",
                format!(
                    "vocab_size must be at least GPT-2's {}, not {}",
                    gptpipe_hf::config::gpt2::VOCAB_SIZE,
                    m.vocab_size
                ),
            )
        }
    }
}

/// An inline model's shape within [`gptpipe_hf::limits::SHAPE_LIMITS`]: larger ones
/// cannot be allocated anywhere, and their sizes would overflow before the worker's memory
/// estimate could refuse them.
fn check_inline_shape(m: &InlineModel) -> Result<(), Invalid> {
    gptpipe_hf::limits::check_shape(m.n_layer, m.n_head, m.n_embd, m.n_ctx, m.vocab_size)
        .map_err(|(_, message)| ("model", format!("model.{message}")))
}

fn check_prepare(p: &PrepareParams) -> Result<(), Invalid> {
    ensure(
        !p.inputs.is_empty(),
        "inputs",
        "`inputs` is empty: list the files to read".into(),
    )?;
    ensure(
        p.delimiter.chars().count() == 1 && p.delimiter.is_ascii(),
        "delimiter",
        format!(
            "delimiter must be one ASCII character, not {:?}",
            p.delimiter
        ),
    )?;
    if let (false, ColumnRef::Name(column)) = (p.header, &p.column) {
        return Err((
            "column",
            format!("column {column:?} is a name, but header = false: use a 0-based index"),
        ));
    }
    if let (Some(min), Some(max)) = (p.min_length, p.max_length) {
        ensure(
            min <= max,
            "min_length",
            format!("min_length ({min}) is greater than max_length ({max})"),
        )?;
    }
    for r in &p.replace {
        if let Err(e) = regex::Regex::new(&r.pattern) {
            return Err(("replace", format!("invalid regex {:?}: {e}", r.pattern)));
        }
    }
    check_sources(p)?;
    check_template(p)
}

/// `separator` only for record files, `query` only for databases (a format set to another
/// one would ignore them), neither empty.
fn check_sources(p: &PrepareParams) -> Result<(), Invalid> {
    let format = p.format;
    if let Some(sep) = &p.separator {
        ensure(!sep.is_empty(), "separator", "separator is empty".into())?;
        ensure(
            format == Some(InputFormat::Records),
            "separator",
            "separator splits record files: set format = \"records\" beside it".into(),
        )?;
    }
    if let Some(query) = &p.query {
        ensure(!query.trim().is_empty(), "query", "query is empty".into())?;
        ensure(
            format.is_none() || format == Some(InputFormat::Sqlite),
            "query",
            format!(
                "query reads SQLite databases, but format = {:?}",
                format
                    .map(|f| format!("{f:?}").to_lowercase())
                    .unwrap_or_default()
            ),
        )?;
    } else {
        ensure(
            format != Some(InputFormat::Sqlite),
            "query",
            "format = \"sqlite\" needs a query, e.g. query = \"SELECT title FROM posts\"".into(),
        )?;
    }
    Ok(())
}

/// Conditioned rows: a template that parses, and not beside
/// `column`/`field`, which it replaces.
fn check_template(p: &PrepareParams) -> Result<(), Invalid> {
    let Some(template) = &p.template else {
        return Ok(());
    };
    let defaults = PrepareParams::default();
    for (key, set) in [
        ("column", p.column != defaults.column),
        ("field", p.field != defaults.field),
    ] {
        ensure(
            !set,
            "template",
            format!(
                "`template` and `{key}` are both set: the template names the columns or \
                 fields itself; remove `{key}`"
            ),
        )?;
    }
    if let Err(e) = super::parse_template(template) {
        return Err(("template", e));
    }
    Ok(())
}

fn check_finetune(p: &FinetuneParams) -> Result<(), Invalid> {
    ensure(
        !p.dataset.as_written().trim().is_empty(),
        "dataset",
        "`dataset` is not set: use \"@prepare-stage\" or a text file".into(),
    )?;
    check_model(&p.model)?;
    ensure(p.steps > 0, "steps", "steps must be at least 1".into())?;
    ensure(
        p.batch_size > 0,
        "batch_size",
        "batch_size must be at least 1".into(),
    )?;
    if let super::params::Devices::Count(n) = p.devices {
        ensure(
            p.batch_size.is_multiple_of(n.get()),
            "devices",
            format!(
                "batch_size = {} cannot be shared by devices = {n}: each device trains an \
                 equal share of the batch, so batch_size must be a multiple of devices",
                p.batch_size
            ),
        )?;
    }
    ensure(
        p.accumulate_gradients > 0,
        "accumulate_gradients",
        "accumulate_gradients must be at least 1".into(),
    )?;
    ensure(
        p.learning_rate > 0.0 && p.learning_rate.is_finite(),
        "learning_rate",
        format!("learning_rate must be positive, not {}", p.learning_rate),
    )?;
    ensure(
        p.weight_decay >= 0.0,
        "weight_decay",
        "weight_decay must not be negative".into(),
    )?;
    ensure(
        p.max_grad_norm >= 0.0,
        "max_grad_norm",
        "max_grad_norm must not be negative".into(),
    )?;
    ensure(
        (0.0..1.0).contains(&p.val_split),
        "val_split",
        format!("val_split must be in [0, 1), not {}", p.val_split),
    )?;
    ensure(
        p.early_stopping_patience == 0 || p.val_split > 0.0,
        "early_stopping_patience",
        "early_stopping_patience needs a validation set: set val_split (for example 0.1)".into(),
    )?;
    ensure(
        p.combine > 0,
        "combine",
        "combine must be at least 1".into(),
    )?;
    ensure(
        p.max_checkpoints > 0,
        "max_checkpoints",
        "max_checkpoints must be at least 1".into(),
    )?;
    if let Some(d) = p.dropout {
        ensure(
            (0.0..1.0).contains(&d),
            "dropout",
            format!("dropout must be in [0, 1), not {d}"),
        )?;
    }
    // The model's depth is known only when it is loaded (the stage checks it then); an
    // inline model's is known now.
    if let ModelRef::Inline(m) = &p.model {
        ensure(
            p.num_layers_freeze <= m.n_layer,
            "num_layers_freeze",
            format!(
                "num_layers_freeze = {} but the model has {} blocks (n_layer)",
                p.num_layers_freeze, m.n_layer
            ),
        )?;
    }
    Ok(())
}

fn check_generate(p: &GenerateParams) -> Result<(), Invalid> {
    check_model(&p.model)?;
    check_curation(p)?;
    ensure(
        p.temperature >= 0.0 && p.temperature.is_finite(),
        "temperature",
        format!("temperature must not be negative, not {}", p.temperature),
    )?;
    ensure(
        (0.0..=1.0).contains(&p.top_p),
        "top_p",
        format!("top_p must be in [0, 1], not {}", p.top_p),
    )?;
    ensure(
        p.batch_size > 0,
        "batch_size",
        "batch_size must be at least 1".into(),
    )?;
    ensure(
        p.nsamples > 0,
        "nsamples",
        "nsamples must be at least 1".into(),
    )?;
    ensure(p.length > 0, "length", "length must be at least 1".into())?;
    check_generate_sizes(p)?;
    check_prefixes(p)?;
    ensure(
        p.repetition_penalty > 0.0,
        "repetition_penalty",
        format!(
            "repetition_penalty must be positive, not {}",
            p.repetition_penalty
        ),
    )?;
    let out = std::path::Path::new(&p.output);
    ensure(
        !p.output.is_empty()
            && out
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
        "output",
        format!(
            "output {:?} must be a relative path inside the stage folder",
            p.output
        ),
    )?;
    // The stage writes its own files beside the samples: an output of the same name (or
    // below it) would be overwritten by them, or make them fail.
    let first = out.components().next().map(|c| c.as_os_str());
    if let Some(name) = GenerateParams::RESERVED_OUTPUTS
        .iter()
        .find(|r| first == Some(std::ffi::OsStr::new(r)))
    {
        return Err((
            "output",
            format!(
                "output {:?} is reserved: the generate stage writes {name} itself; choose \
                 another name (such as \"samples.txt\" or \"samples.jsonl\")",
                p.output
            ),
        ));
    }
    check_generate_controls(p)
}

/// Stop and shape controls: `truncate`'s list, `min_length`,
/// `bad_words`.
fn check_generate_controls(p: &GenerateParams) -> Result<(), Invalid> {
    if let crate::config::Truncate::Many(list) = &p.truncate {
        ensure(
            list.iter().all(|s| !s.is_empty()),
            "truncate",
            "truncate: a list of stop strings may not hold an empty string".into(),
        )?;
    }
    ensure(
        p.min_length <= p.length,
        "min_length",
        format!(
            "min_length = {} is more than length = {}: no sample could reach it",
            p.min_length, p.length
        ),
    )?;
    for word in &p.bad_words {
        ensure(
            !word.is_empty(),
            "bad_words",
            "bad_words: an empty string cannot be banned".into(),
        )?;
        if let Some(stop) = p.truncate.stops().into_iter().find(|s| s.contains(word)) {
            return Err((
                "bad_words",
                format!(
                    "bad_words: banning {word:?} would keep the stop string {stop:?} \
                     (truncate) from ever being generated"
                ),
            ));
        }
    }
    // The ban table is built before the first token (also per `gptpipe serve` request):
    // its size grows with the words' bytes.
    ensure(
        p.bad_words.len() <= MAX_BAD_WORDS,
        "bad_words",
        format!(
            "bad_words: {} words are more than the limit of {MAX_BAD_WORDS}",
            p.bad_words.len()
        ),
    )?;
    if let Some(word) = p.bad_words.iter().find(|w| w.len() > MAX_BAD_WORD_BYTES) {
        let head: String = word.chars().take(20).collect();
        return Err((
            "bad_words",
            format!(
                "bad_words: the word starting {head:?} is {} bytes, more than the limit of \
                 {MAX_BAD_WORD_BYTES}",
                word.len()
            ),
        ));
    }
    Ok(())
}

/// `prefix`, `prefixes` and `prefix_file` name the prompts in three ways: one of them.
fn check_prefixes(p: &GenerateParams) -> Result<(), Invalid> {
    if p.prefix_file.is_some() {
        for (key, set) in [
            ("prefix", !p.prefix.is_empty()),
            ("prefixes", !p.prefixes.is_empty()),
        ] {
            ensure(
                !set,
                key,
                format!("{key} and prefix_file both name the prefixes: keep one of them"),
            )?;
        }
    }
    ensure(
        p.prefix.is_empty() || p.prefixes.is_empty(),
        "prefixes",
        "prefix and prefixes both name the prefixes: put the prefix into the list".into(),
    )?;
    let mut seen = std::collections::HashMap::new();
    for (i, prefix) in p.prefixes.iter().enumerate() {
        if let Some(first) = seen.insert(prefix.as_str(), i) {
            return Err((
                "prefixes",
                format!(
                    "prefixes[{i}] {prefix:?} is prefixes[{first}] again: each prefix \
                     already gets nsamples samples"
                ),
            ));
        }
    }
    ensure(
        p.nsamples.saturating_mul(p.prefixes.len().max(1)) <= MAX_NSAMPLES,
        "prefixes",
        format!(
            "{} prefixes of {} samples are more than the limit of {MAX_NSAMPLES} samples: the \
             samples are held in memory until they are written",
            p.prefixes.len(),
            p.nsamples
        ),
    )
}

// Unique samples (curation).
fn check_curation(p: &GenerateParams) -> Result<(), Invalid> {
    if let Some(x) = p.max_overlap {
        ensure(
            x > 0.0 && x <= 1.0,
            "max_overlap",
            format!("max_overlap must be in (0, 1] (a fraction of a sample's tokens), not {x}"),
        )?;
    }
    ensure(
        p.max_attempts != Some(0),
        "max_attempts",
        "max_attempts must be at least 1".into(),
    )?;
    ensure(
        p.max_attempts.is_none() || p.curates(),
        "max_attempts",
        "max_attempts limits the samples drawn when a rule drops some (drop_copies, \
         max_overlap, dedupe, drop_unfinished), and none is set"
            .into(),
    )?;
    ensure(
        !p.drop_unfinished || !p.truncate.stops().is_empty(),
        "drop_unfinished",
        "drop_unfinished drops samples that never reached the stop string, but `truncate` \
         is not set"
            .into(),
    )?;
    if let Some(n) = &p.novelty_against {
        ensure(
            !n.refs().is_empty() && n.refs().iter().all(|r| !r.as_written().trim().is_empty()),
            "novelty_against",
            "novelty_against must name a prepare stage (\"@stage\") or files".into(),
        )?;
    } else if p.needs_training_rows() {
        let key = if p.drop_copies {
            "drop_copies"
        } else {
            "max_overlap"
        };
        return Err((
            key,
            format!(
                "{key} compares samples with the training rows, but they are unknown: the \
                 model is not a finetune stage of this pipeline whose dataset is a prepare \
                 stage or a file; set novelty_against = \"@prepare-stage\" or files"
            ),
        ));
    }
    Ok(())
}

/// Words of `bad_words` at most (the config check and `gptpipe serve`'s parser).
pub const MAX_BAD_WORDS: usize = 1_000;
/// Bytes of one word of `bad_words` at most.
pub const MAX_BAD_WORD_BYTES: usize = 64;

/// Rows of one generation batch at most: each row holds a KV cache of the whole context.
const MAX_GENERATE_BATCH: usize = 1 << 16;
/// Samples of one generate stage at most: they are held in memory until written.
pub const MAX_NSAMPLES: usize = 10_000_000;
/// New tokens per sample at most (longer than the context slides the window).
const MAX_LENGTH: usize = 1 << 20;

/// Counts of a generate stage that no run could hold in memory (and whose products, such
/// as nsamples * length tokens, would overflow): config errors before any work. Sizes
/// within these bounds are checked against the machine's memory once the model's shape
/// is known.
fn check_generate_sizes(p: &GenerateParams) -> Result<(), Invalid> {
    for (key, value, max, why) in [
        (
            "batch_size",
            p.batch_size,
            MAX_GENERATE_BATCH,
            "each row of a batch holds a KV cache of the model's whole context",
        ),
        (
            "nsamples",
            p.nsamples,
            MAX_NSAMPLES,
            "the samples are held in memory until they are written",
        ),
        (
            "length",
            p.length,
            MAX_LENGTH,
            "each sample keeps every token it generates",
        ),
    ] {
        ensure(
            value <= max,
            key,
            format!("{key} = {value} is more than the limit of {max}: {why}"),
        )?;
    }
    Ok(())
}
