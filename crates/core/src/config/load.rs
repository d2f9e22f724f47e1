//! Layered loading: built-in defaults < pipeline file < `GPTPIPE_*` environment < `--set`.

use super::error::{suggest, ConfigError};
use super::params::SampleFormat;
use super::resources::{resources_error, Resources, RESOURCES_KEY};
use super::source::{Origin, Origins};
use super::{validate, Pipeline, PipelineSection, StageKind, StageParams};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What, besides the file, shapes a pipeline's effective values.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--set KEY=VALUE` arguments, in order; later ones win.
    pub sets: Vec<String>,
    /// Environment variables; only `GPTPIPE_PIPELINE__*` and `GPTPIPE_STAGES__*` are read.
    pub env: Vec<(String, String)>,
}

impl LoadOptions {
    /// Options with the process environment.
    pub fn from_env(sets: Vec<String>) -> Self {
        Self {
            sets,
            env: std::env::vars().collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    pipeline: PipelineSection,
    #[serde(default)]
    stages: BTreeMap<String, Dict>,
}

const ENV_PREFIX: &str = "GPTPIPE_";

/// Loads and validates the pipeline at `path`.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Pipeline, ConfigError> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!("cannot read pipeline file {file_name}: {e}"))
            .with_help("pass the pipeline file as the first argument, or create gptpipe.toml")
    })?;
    let doc = toml_edit::ImDocument::parse(text.clone()).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigError::new(e.message().trim().to_owned()).at(&file_name, &text, span, "here")
    })?;
    let file_stages: Vec<String> = doc
        .get("stages")
        .and_then(|s| s.as_table_like())
        .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default();
    let mut origins = Origins::new(file_name.clone(), text.clone(), doc);

    let mut figment = Figment::new().merge(Toml::string(&text));
    for (var, value) in &options.env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut keys: Vec<String> = rest.split("__").map(|k| k.to_lowercase()).collect();
        if !matches!(keys[0].as_str(), "pipeline" | "stages") || keys.len() < 2 {
            continue;
        }
        if keys[0] == "stages" {
            keys[1] = env_stage_name(&keys[1], &file_stages);
        }
        figment = figment.merge(Serialized::default(&keys.join("."), parse_value(value)));
        origins.record(keys, Origin::Env(var.clone()));
    }
    for arg in &options.sets {
        let (key, value) = arg.split_once('=').ok_or_else(|| {
            ConfigError::new(format!("--set {arg}: expected KEY=VALUE"))
                .with_help("for example --set stages.train.steps=2000")
        })?;
        let keys: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::new(format!("--set {arg}: empty key")));
        }
        figment = figment.merge(Serialized::default(key.trim(), parse_value(value)));
        origins.record(keys, Origin::Set(arg.clone()));
    }

    check_override_stages(&origins, &file_stages)?;
    let raw: RawPipeline = figment
        .extract()
        .map_err(|e| figment_error(e, &[], &["pipeline", "stages"], &origins))?;
    let seed = raw.pipeline.seed;
    let mut raw_stages = raw.stages;
    let written_resources = take_resources(&mut raw_stages, &origins)?;
    let mut expanded = super::matrix::expand(raw_stages, &mut origins)?;
    let mut stages = BTreeMap::new();
    for (name, dict) in &expanded.dicts {
        let written = expanded.base_of(name);
        stages.insert(
            name.clone(),
            stage_params(written, dict.clone(), seed, &origins)?,
        );
    }
    super::matrix::follow(&origins, &mut expanded, &mut stages, |_, written, dict| {
        stage_params(written, dict, seed, &origins)
    })?;
    for (name, written) in &expanded.base {
        origins.expanded_from(name, written);
    }
    let resources = stages
        .keys()
        .filter_map(|name| {
            let r = written_resources.get(expanded.base_of(name))?;
            Some((name.clone(), r.clone()))
        })
        .collect();
    super::curation::fill_defaults(&mut stages);

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let workdir = match &raw.pipeline.workdir {
        // `~/runs` is in the home folder, as in every other path value.
        Some(w) => dir.join(super::UserPath::new(w).path()),
        None => dir.join("runs").join(&raw.pipeline.name),
    };
    let pipeline = Pipeline {
        path: path.to_path_buf(),
        dir,
        name: raw.pipeline.name,
        workdir,
        seed: raw.pipeline.seed,
        stages,
        origins,
        executor: raw.pipeline.executor,
        resources,
    };
    validate::validate(&pipeline)?;
    Ok(pipeline)
}

/// Takes each stage's `resources` table out of its keys (it is not a param: it changes
/// where a stage runs, not what it computes) and checks it.
fn take_resources(
    stages: &mut BTreeMap<String, Dict>,
    origins: &Origins,
) -> Result<BTreeMap<String, Resources>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, dict) in stages.iter_mut() {
        let Some(value) = dict.remove(RESOURCES_KEY) else {
            continue;
        };
        let path = vec!["stages".to_owned(), name.clone(), RESOURCES_KEY.to_owned()];
        let resources: Resources = Figment::from(Serialized::defaults(value))
            .extract()
            .map_err(|e| {
                let known = super::schema::property_names::<Resources>();
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                figment_error(e, &path, &known, origins)
            })?;
        if let Err((field, message)) = resources.check() {
            let mut at = path.clone();
            at.push(field.to_owned());
            return Err(origins.error_at(&at, resources_error(name, field, &message)));
        }
        out.insert(name.clone(), resources);
    }
    Ok(out)
}

/// The stage an environment variable's (lowercased) stage part means: variable names are
/// usually upper case and cannot hold `-`, so `TRAIN_GPU` finds a stage `Train-GPU`.
fn env_stage_name(part: &str, file_stages: &[String]) -> String {
    file_stages
        .iter()
        .find(|s| s.to_lowercase().replace('-', "_") == part)
        .cloned()
        .unwrap_or_else(|| part.to_owned())
}

/// An override of a stage the file does not have is a typo, not a new stage (unless it
/// gives the new stage's `kind`): the error names the variable or `--set` argument.
fn check_override_stages(origins: &Origins, file_stages: &[String]) -> Result<(), ConfigError> {
    let overrides = origins.overrides();
    let defines = |stage: &str| {
        overrides.iter().any(|(path, _)| {
            path.len() >= 2 && path[1] == stage && (path.len() == 2 || path[2] == "kind")
        })
    };
    for (path, origin) in overrides {
        if path.len() < 3 || path[0] != "stages" {
            continue;
        }
        let stage = &path[1];
        if file_stages.contains(stage) || defines(stage) {
            continue;
        }
        let help = match suggest(stage, file_stages.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("stages in this pipeline: {}", file_stages.join(", ")),
        };
        return Err(ConfigError::new(format!(
            "{}: the pipeline has no stage `{stage}`",
            origin.describe()
        ))
        .with_help(help));
    }
    Ok(())
}

/// A `--set` or environment value in TOML value syntax; anything else is a plain string,
/// so `--set stages.train.model=gpt2` works without quotes.
fn parse_value(raw: &str) -> Value {
    let raw = raw.trim();
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => {
            let v = table.remove("v").expect("parsed table has the key");
            Value::serialize(v).unwrap_or_else(|_| Value::from(raw.to_owned()))
        }
        Err(_) => Value::from(raw.to_owned()),
    }
}

fn stage_params(
    name: &str,
    mut dict: Dict,
    pipeline_seed: u64,
    origins: &Origins,
) -> Result<StageParams, ConfigError> {
    let path = vec!["stages".to_owned(), name.to_owned()];
    let kinds = StageKind::ALL.map(StageKind::name);
    let kind_name = match dict.remove("kind") {
        Some(Value::String(_, s)) => s,
        Some(_) => {
            let mut p = path.clone();
            p.push("kind".into());
            return Err(origins.error_at(
                &p,
                ConfigError::new(format!("stage `{name}`: `kind` must be a string"))
                    .with_help(format!("one of: {}", kinds.join(", "))),
            ));
        }
        None => {
            return Err(origins.error_at(
                &path,
                ConfigError::new(format!("stage `{name}` has no `kind`"))
                    .with_help(format!("add kind = \"...\", one of: {}", kinds.join(", "))),
            ))
        }
    };
    let Some(kind) = StageKind::from_name(&kind_name) else {
        let mut p = path.clone();
        p.push("kind".into());
        let help = match suggest(&kind_name, kinds) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("one of: {}", kinds.join(", ")),
        };
        return Err(origins.error_at(
            &p,
            ConfigError::new(format!("stage `{name}`: unknown kind `{kind_name}`")).with_help(help),
        ));
    };
    let mut params = match kind {
        StageKind::Prepare => StageParams::Prepare(extract(dict, &path, origins)?),
        StageKind::Finetune => StageParams::Finetune(extract(dict, &path, origins)?),
        StageKind::Export => StageParams::Export(extract(dict, &path, origins)?),
        StageKind::Generate => StageParams::Generate(extract(dict, &path, origins)?),
    };
    match &mut params {
        StageParams::Finetune(p) => {
            p.seed.get_or_insert(pipeline_seed);
            if let Err((alias, message)) = p.resolve_aliases() {
                let mut at = path.clone();
                at.push(alias.into());
                return Err(
                    origins.error_at(&at, ConfigError::new(format!("stage `{name}`: {message}")))
                );
            }
        }
        StageParams::Generate(p) => {
            p.seed.get_or_insert(pipeline_seed);
            // The default file name follows the format.
            if p.format == SampleFormat::Jsonl && p.output == "samples.txt" {
                p.output = "samples.jsonl".into();
            }
        }
        _ => {}
    }
    Ok(params)
}

fn extract<T: DeserializeOwned + schemars::JsonSchema>(
    dict: Dict,
    path: &[String],
    origins: &Origins,
) -> Result<T, ConfigError> {
    let keys = super::schema::property_names::<T>();
    Figment::from(Serialized::defaults(dict))
        .extract()
        .map_err(|e| {
            let known: Vec<&str> = keys.iter().map(String::as_str).collect();
            figment_error(e, path, &known, origins)
        })
}

/// Turns figment's error into one that names the key, where it was written, and a fix.
fn figment_error(
    error: figment::Error,
    prefix: &[String],
    known: &[&str],
    origins: &Origins,
) -> ConfigError {
    use figment::error::Kind;
    let mut path: Vec<String> = prefix.to_vec();
    path.extend(error.path.iter().cloned());
    let stage = (path.len() >= 2 && path[0] == "stages").then(|| path[1].clone());
    let in_stage = stage
        .map(|s| format!(" in stage `{s}`"))
        .unwrap_or_default();
    let key = path.join(".");
    let (message, help) = match &error.kind {
        Kind::UnknownField(field, expected) => {
            path.push(field.clone());
            let candidates: Vec<&str> = if expected.is_empty() {
                known.to_vec()
            } else {
                expected.to_vec()
            };
            let help = match suggest(field, candidates.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys: {}", candidates.join(", ")),
            };
            (format!("unknown key `{field}`{in_stage}"), Some(help))
        }
        Kind::MissingField(field) => {
            path.push(field.to_string());
            (format!("missing key `{field}`{in_stage}"), None)
        }
        Kind::InvalidType(actual, expected) => (
            format!("`{key}` has the wrong type: found {actual}, expected {expected}"),
            None,
        ),
        Kind::InvalidValue(actual, expected) => (
            format!("`{key}` has an invalid value: found {actual}, expected {expected}"),
            None,
        ),
        Kind::UnknownVariant(actual, expected) => (
            format!("`{key}`: unknown value `{actual}`"),
            Some(match suggest(actual, expected.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("one of: {}", expected.join(", ")),
            }),
        ),
        Kind::Message(msg) if msg.contains("did not match any variant") => (
            format!("`{key}` has an invalid value"),
            Some(if key.ends_with("model") {
                "a hub id, a folder, \"@stage\", or a table like { n_layer = 2, n_head = 2, n_embd = 64 }"
                    .to_owned()
            } else {
                "see `gptpipe schema` for the accepted forms".to_owned()
            }),
        ),
        // A value a params type refuses while parsing it (a device): said as the checks
        // of validate.rs say theirs.
        Kind::Message(msg) if path.len() == 3 && path[0] == "stages" => {
            (format!("stage `{}`: {msg}", path[1]), None)
        }
        other => (format!("`{key}`: {other}"), None),
    };
    let mut e = ConfigError::new(message);
    if let Some(h) = help {
        e = e.with_help(h);
    }
    origins.error_at(&path, e)
}
