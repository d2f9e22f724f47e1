//! A stage's cache key and the explanation of why a stage is stale.

use crate::cache::lock::json_to_toml;
use crate::cache::LockEntry;
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything that determines a stage's output. Its blake3 hash is the cache key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyMaterial {
    pub kind: String,
    pub version: u32,
    /// Effective params without the volatile keys.
    pub params: serde_json::Value,
    /// Input file -> content hash.
    pub inputs: BTreeMap<String, String>,
    /// Upstream stage -> output hash.
    pub upstream: BTreeMap<String, String>,
}

impl KeyMaterial {
    pub fn key(&self) -> String {
        crate::cache::hash::hash_bytes(&serde_json::to_vec(self).expect("key material serializes"))
    }

    /// The hash of the inputs alone (files and upstream outputs), for stages that check
    /// whether an earlier output of theirs was made from the same data.
    pub fn inputs_hash(&self) -> String {
        inputs_hash(&self.inputs, &self.upstream)
    }
}

/// [`KeyMaterial::inputs_hash`] of these inputs and upstream output hashes (a detached
/// job computes it once its upstream's output exists; see [`crate::remote::DeferredInputsHash`]).
pub fn inputs_hash(
    inputs: &BTreeMap<String, String>,
    upstream: &BTreeMap<String, String>,
) -> String {
    crate::cache::hash::hash_bytes(&serde_json::to_vec(&(inputs, upstream)).expect("serializes"))
}

/// Why `entry` (what the lock file recorded) does not match `now`; empty when it does.
pub fn stale_reasons(entry: &LockEntry, now: &KeyMaterial) -> Vec<String> {
    let mut reasons = Vec::new();
    if entry.kind != now.kind {
        reasons.push(format!("kind changed: {} -> {}", entry.kind, now.kind));
    } else if entry.version != now.version {
        reasons.push(format!(
            "{} implementation changed: version {} -> {}",
            now.kind, entry.version, now.version
        ));
    }
    let current = json_to_toml(&now.params);
    let mut keys: Vec<&String> = current.keys().collect();
    keys.sort();
    for k in keys {
        let new = &current[k];
        match entry.params.get(k) {
            Some(old) if old == new => {}
            Some(old) => reasons.push(format!("param {k} changed: {} -> {}", show(old), show(new))),
            None => reasons.push(format!("param {k} set: {}", show(new))),
        }
    }
    for (k, old) in &entry.params {
        // Volatile keys are absent from the key material but present in the lock file.
        if !current.contains_key(k) && now.params.get(k).is_some() {
            reasons.push(format!("param {k} changed: {} -> (unset)", show(old)));
        }
    }
    diff_hashes("input", &entry.inputs, &now.inputs, &mut reasons);
    diff_hashes("upstream", &entry.upstream, &now.upstream, &mut reasons);
    if reasons.is_empty() && entry.key != now.key() {
        reasons.push("cache key changed".into());
    }
    reasons
}

fn diff_hashes(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    reasons: &mut Vec<String>,
) {
    for (name, h) in new {
        match old.get(name) {
            Some(o) if o == h => {}
            Some(o) => reasons.push(format!(
                "{what} {name} changed: {} -> {}",
                short(o),
                short(h)
            )),
            None => reasons.push(format!("{what} {name} added")),
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        reasons.push(format!("{what} {name} removed"));
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}
