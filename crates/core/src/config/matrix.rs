//! Matrix stages, for sweeps. `[stages.train.matrix]` lists values of the stage's own keys
//! (`learning_rate = [1e-4, 3e-4]`); the stage becomes one stage per combination, named
//! `train[learning_rate=0.0001]`, each cached on its own. A stage that refers to `@train`
//! follows the fan-out: it becomes one stage per combination too, with the same label
//! (`sample[learning_rate=0.0001]` reads `@train[learning_rate=0.0001]`). A stage that
//! names one combination (`"@train[learning_rate=0.0001]"`) reads that one only.
//!
//! Expansion happens on the raw key tables, before a stage is typed, so that every key a
//! matrix sets is checked as if it were written in the stage.

use super::error::ConfigError;
use super::source::Origins;
use super::StageParams;
use figment::value::{Dict, Value};
use std::collections::BTreeMap;

/// At most this many stages come out of one pipeline file's matrices: a typo such as a
/// list of a thousand seeds is an error, not a thousand finetunes.
pub const MAX_EXPANDED: usize = 1024;

/// The key that holds a stage's matrix.
pub const MATRIX_KEY: &str = "matrix";

/// A combination's label: `(key, value as written in the name)`, in key order.
pub type Label = Vec<(String, String)>;

/// The stages a pipeline file's matrices expand into.
#[derive(Debug, Default)]
pub struct Expanded {
    /// Every stage's raw key table, by its final name.
    pub dicts: BTreeMap<String, Dict>,
    /// For each expanded name, the stage of the file it comes from.
    pub base: BTreeMap<String, String>,
    /// For each stage of the file that expanded (by its matrix or by following one), its
    /// stages and their labels.
    pub families: BTreeMap<String, Vec<(String, Label)>>,
}

impl Expanded {
    /// The stage of the file `name` comes from (itself for a stage that did not expand).
    pub fn base_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.base.get(name).map_or(name, String::as_str)
    }
}

/// `base[k=v,...]`.
pub fn name_of(base: &str, label: &Label) -> String {
    if label.is_empty() {
        return base.to_owned();
    }
    let parts: Vec<String> = label.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}[{}]", parts.join(","))
}

/// Expands every stage's own `matrix`.
pub fn expand(
    stages: BTreeMap<String, Dict>,
    origins: &mut Origins,
) -> Result<Expanded, ConfigError> {
    let mut out = Expanded::default();
    for (name, mut dict) in stages {
        let Some(matrix) = dict.remove(MATRIX_KEY) else {
            out.dicts.insert(name, dict);
            continue;
        };
        let at = |key: Option<&str>, e: ConfigError| {
            let mut path = vec!["stages".to_owned(), name.clone(), MATRIX_KEY.to_owned()];
            path.extend(key.map(str::to_owned));
            origins.error_at(&path, e)
        };
        let Value::Dict(_, matrix) = matrix else {
            return Err(at(
                None,
                ConfigError::new(format!("stage `{name}`: `matrix` must be a table"))
                    .with_help("for example [stages.train.matrix] learning_rate = [1e-4, 3e-4]"),
            ));
        };
        if matrix.is_empty() {
            return Err(at(
                None,
                ConfigError::new(format!("stage `{name}`: `matrix` lists no key")),
            ));
        }
        let mut axes: Vec<(String, Vec<(Value, String)>)> = Vec::new();
        for (key, values) in matrix {
            if key == "kind" || key == MATRIX_KEY {
                return Err(at(
                    Some(&key),
                    ConfigError::new(format!("stage `{name}`: `{key}` cannot vary in a matrix")),
                ));
            }
            if dict.contains_key(&key) {
                return Err(at(
                    Some(&key),
                    ConfigError::new(format!(
                        "stage `{name}` sets `{key}` both in the stage and in its matrix"
                    ))
                    .with_help("keep one of them"),
                ));
            }
            let values = match values {
                Value::Array(_, v) if !v.is_empty() => v,
                _ => {
                    return Err(at(
                        Some(&key),
                        ConfigError::new(format!(
                            "stage `{name}`: matrix key `{key}` must be a non-empty list of values"
                        ))
                        .with_help(format!("for example {key} = [1, 2]")),
                    ))
                }
            };
            let texts = value_texts(&values);
            axes.push((key, values.into_iter().zip(texts).collect()));
        }
        let count = axes.iter().map(|(_, v)| v.len()).product::<usize>();

        if count > MAX_EXPANDED {
            return Err(at(
                None,
                ConfigError::new(format!(
                    "stage `{name}`: its matrix makes {count} stages, more than {MAX_EXPANDED}"
                )),
            ));
        }
        for (key, _) in &axes {
            origins.matrix_key(&name, key);
        }
        let mut members = Vec::new();
        for index in 0..count {
            let (mut rest, mut member, mut label) = (index, dict.clone(), Label::new());
            for (key, values) in axes.iter().rev() {
                let (value, text) = &values[rest % values.len()];
                rest /= values.len();
                member.insert(key.clone(), value.clone());
                label.insert(0, (key.clone(), text.clone()));
            }
            let expanded = name_of(&name, &label);
            out.base.insert(expanded.clone(), name.clone());
            out.dicts.insert(expanded.clone(), member);
            members.push((expanded, label));
        }
        out.families.insert(name, members);
    }
    Ok(out)
}

/// A name-safe text for each value: its plain form (`0.0001`, `gpt2`, `true`) with any
/// character a folder name should not hold made `_`; where that makes two values equal
/// (or a value is a table or list), their 1-based positions instead.
fn value_texts(values: &[Value]) -> Vec<String> {
    let plain: Vec<Option<String>> = values
        .iter()
        .map(|v| {
            let text = match v {
                Value::String(_, s) => s.clone(),
                Value::Char(_, c) => c.to_string(),
                Value::Bool(_, b) => b.to_string(),
                Value::Num(_, n) => num_text(n),
                Value::Empty(..) | Value::Dict(..) | Value::Array(..) => return None,
            };
            let safe: String = text
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            (!safe.is_empty() && !safe.starts_with('.') && safe.len() <= 40).then_some(safe)
        })
        .collect();
    let distinct = plain.iter().all(Option::is_some) && {
        let mut seen: Vec<&String> = plain.iter().flatten().collect();
        seen.sort();
        seen.dedup();
        seen.len() == values.len()
    };
    if distinct {
        plain.into_iter().flatten().collect()
    } else {
        (1..=values.len()).map(|i| i.to_string()).collect()
    }
}

fn num_text(n: &figment::value::Num) -> String {
    use figment::value::Num;
    match *n {
        Num::F32(f) => format!("{f}"),
        Num::F64(f) => format!("{f}"),
        other => other
            .to_i128()
            .map(|i| i.to_string())
            .or_else(|| other.to_u128().map(|u| u.to_string()))
            .unwrap_or_default(),
    }
}

/// Makes every stage that refers to a stage that expanded (`@train`) follow it: one copy
/// per combination, reading that combination. Repeats until no reference names an
/// expanded stage, so a chain (`prepare` -> `train` matrix -> `sample` -> `export`) fans out
/// all the way. `typed` holds every stage typed by `type_stage(final name, raw keys)`.
pub fn follow(
    origins: &Origins,
    expanded: &mut Expanded,
    typed: &mut BTreeMap<String, StageParams>,
    mut type_stage: impl FnMut(&str, &str, Dict) -> Result<StageParams, ConfigError>,
) -> Result<(), ConfigError> {
    loop {
        let following = |params: &StageParams| -> Vec<(&'static str, String)> {
            params
                .references()
                .into_iter()
                .filter(|(_, target)| expanded.families.contains_key(target))
                .collect()
        };
        // Upstream first: a stage fans out once the stages it reads are final, so that
        // it sees every matrix it reads at once.
        let candidates: Vec<(&String, Vec<(&'static str, String)>)> = typed
            .iter()
            .map(|(name, params)| (name, following(params)))
            .filter(|(_, refs)| !refs.is_empty())
            .collect();
        let settled = |name: &String| {
            typed[name].references().iter().all(|(_, t)| {
                expanded.families.contains_key(t)
                    || !will_expand(t, typed, expanded, &mut Vec::new())
            })
        };
        let next = candidates
            .iter()
            .find(|(name, _)| settled(name))
            .or(candidates.first())
            .map(|(name, refs)| ((*name).clone(), refs.clone()));
        let Some((name, refs)) = next else {
            return Ok(());
        };
        let base = expanded.base_of(&name).to_owned();
        let mut targets: Vec<&str> = refs.iter().map(|(_, t)| t.as_str()).collect();
        targets.sort();
        targets.dedup();
        if targets.len() > 1 {
            let e = ConfigError::new(format!(
                "stage `{base}` refers to {} matrix stages ({}): it can follow only one",
                targets.len(),
                targets
                    .iter()
                    .map(|t| format!("@{t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_help("name one combination of the others, as \"@train[learning_rate=0.0001]\"");
            return Err(origins.error_at(&["stages".to_owned(), base, refs[1].0.to_owned()], e));
        }
        let family = targets[0].to_owned();
        let members = expanded.families[&family].clone();
        let dict = expanded
            .dicts
            .remove(&name)
            .expect("every typed stage has its keys");
        typed.remove(&name);
        let own_label = expanded
            .families
            .get(&base)
            .and_then(|m| m.iter().find(|(n, _)| *n == name))
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        let mut copies = Vec::new();
        for (member, label) in &members {
            let mut copy = dict.clone();
            for (key, _) in &refs {
                if let Some(v) = copy.get_mut(*key) {
                    retarget(v, &family, member);
                }
            }
            let mut full = own_label.clone();
            full.extend(label.iter().cloned());
            let copy_name = name_of(&base, &full);
            typed.insert(
                copy_name.clone(),
                type_stage(&copy_name, &base, copy.clone())?,
            );
            expanded.dicts.insert(copy_name.clone(), copy);
            expanded.base.insert(copy_name.clone(), base.clone());
            copies.push((copy_name, full));
        }
        if typed.len() > MAX_EXPANDED {
            return Err(ConfigError::new(format!(
                "the pipeline's matrices make more than {MAX_EXPANDED} stages"
            )));
        }
        let own = expanded.families.entry(base).or_default();
        own.retain(|(n, _)| *n != name);
        own.extend(copies);
    }
}

/// Whether stage `name` still has to fan out: it reads, directly or through others, a
/// stage that expanded. (`seen` guards against cycles, which validation reports.)
fn will_expand(
    name: &str,
    typed: &BTreeMap<String, StageParams>,
    expanded: &Expanded,
    seen: &mut Vec<String>,
) -> bool {
    let Some(params) = typed.get(name) else {
        return false;
    };
    if seen.iter().any(|s| s == name) {
        return false;
    }
    seen.push(name.to_owned());
    params
        .references()
        .iter()
        .any(|(_, t)| expanded.families.contains_key(t) || will_expand(t, typed, expanded, seen))
}

/// Replaces `"@family"` with `"@member"` wherever it appears in `v`.
fn retarget(v: &mut Value, family: &str, member: &str) {
    match v {
        Value::String(_, s) if s.strip_prefix('@') == Some(family) => *s = format!("@{member}"),
        Value::Array(_, items) => items.iter_mut().for_each(|i| retarget(i, family, member)),
        Value::Dict(_, d) => d.values_mut().for_each(|i| retarget(i, family, member)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(values: Vec<Value>) -> Vec<String> {
        value_texts(&values)
    }

    #[test]
    fn values_become_name_safe_texts_or_positions() {
        assert_eq!(
            texts(vec![Value::from(1e-4), Value::from(3e-4)]),
            ["0.0001", "0.0003"]
        );
        assert_eq!(
            texts(vec![Value::from("gpt2"), Value::from("distilgpt2")]),
            ["gpt2", "distilgpt2"]
        );
        assert_eq!(
            texts(vec![Value::from(1u64), Value::from(2u64)]),
            ["1", "2"]
        );
        // a path has a `/`; two that differ only there would collide: positions instead.
        assert_eq!(
            texts(vec![Value::from("a/b"), Value::from("a_b")]),
            ["1", "2"]
        );
        assert_eq!(texts(vec![Value::from("m/x")]), ["m_x"]);
        assert_eq!(texts(vec![Value::from("../up")]), ["1"]);
    }

    #[test]
    fn names_list_the_keys_in_order() {
        let label = vec![("a".into(), "1".into()), ("b".into(), "x".into())];
        assert_eq!(name_of("train", &label), "train[a=1,b=x]");
        assert_eq!(name_of("train", &Label::new()), "train");
    }
}
