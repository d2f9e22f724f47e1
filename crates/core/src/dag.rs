//! The stage graph: edges from `@stage` references, execution order, selection of a stage
//! and its upstream, and drawings of the graph. Pure: no files, no cache.

use crate::config::{ConfigError, Pipeline};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

#[derive(Debug, Clone)]
pub struct Dag {
    /// Stages in a topological order (dependencies first, ties by name).
    pub order: Vec<String>,
    /// For each stage, the stages it references.
    pub deps: BTreeMap<String, BTreeSet<String>>,
    kinds: BTreeMap<String, String>,
}

/// How `gptpipe dag` draws the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

impl Dag {
    /// Builds the graph of a validated (hence acyclic) pipeline.
    pub fn new(pipeline: &Pipeline) -> Self {
        let deps: BTreeMap<String, BTreeSet<String>> = pipeline
            .stages
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    p.references().into_iter().map(|(_, s)| s).collect(),
                )
            })
            .collect();
        let kinds = pipeline
            .stages
            .iter()
            .map(|(n, p)| (n.clone(), p.kind().to_string()))
            .collect();
        // Kahn's algorithm over a sorted ready set, so the order is stable.
        let mut remaining: BTreeMap<&str, usize> =
            deps.iter().map(|(n, d)| (n.as_str(), d.len())).collect();
        let mut ready: BTreeSet<&str> = remaining
            .iter()
            .filter(|(_, &c)| c == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::new();
        while let Some(next) = ready.pop_first() {
            remaining.remove(next);
            order.push(next.to_owned());
            for (name, d) in &deps {
                if d.contains(next) {
                    if let Some(c) = remaining.get_mut(name.as_str()) {
                        *c -= 1;
                        if *c == 0 {
                            ready.insert(name);
                        }
                    }
                }
            }
        }
        Self { order, deps, kinds }
    }

    /// The given stages and everything upstream of them, in execution order; all stages
    /// when `targets` is empty.
    pub fn select(&self, targets: &[String]) -> Result<Vec<String>, ConfigError> {
        if targets.is_empty() {
            return Ok(self.order.clone());
        }
        let mut wanted = BTreeSet::new();
        let mut todo: Vec<&str> = Vec::new();
        for t in targets {
            // A matrix stage's name as written selects all its combinations.
            let family: Vec<&String> = self
                .order
                .iter()
                .filter(|s| {
                    s.strip_prefix(t.as_str())
                        .is_some_and(|l| l.starts_with('['))
                })
                .collect();
            if !self.deps.contains_key(t) && !family.is_empty() {
                todo.extend(family.into_iter().map(String::as_str));
                continue;
            }
            if !self.deps.contains_key(t) {
                let mut e = ConfigError::new(format!("no stage named `{t}`"));
                e = match crate::config::suggest_name(t, self.order.iter().map(String::as_str)) {
                    Some(s) => e.with_help(format!("did you mean `{s}`?")),
                    None => e.with_help(format!("stages: {}", self.order.join(", "))),
                };
                return Err(e);
            }
            todo.push(t);
        }
        while let Some(s) = todo.pop() {
            if wanted.insert(s.to_owned()) {
                todo.extend(self.deps[s].iter().map(String::as_str));
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|s| wanted.contains(*s))
            .cloned()
            .collect())
    }

    /// Every stage downstream of `stage` (not including it).
    pub fn downstream(&self, stage: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for name in &self.order {
            let d = &self.deps[name];
            if d.contains(stage) || d.iter().any(|x| out.contains(x)) {
                out.insert(name.clone());
            }
        }
        out
    }

    pub fn render(&self, format: DagFormat) -> String {
        let mut s = String::new();
        match format {
            DagFormat::Text => {
                for name in &self.order {
                    let d = &self.deps[name];
                    let kind = &self.kinds[name];
                    if d.is_empty() {
                        let _ = writeln!(s, "{name} ({kind})");
                    } else {
                        let from: Vec<&str> = d.iter().map(String::as_str).collect();
                        let _ = writeln!(s, "{name} ({kind}) <- {}", from.join(", "));
                    }
                }
            }
            DagFormat::Dot => {
                s.push_str("digraph pipeline {\n  rankdir=LR;\n");
                for name in &self.order {
                    let _ = writeln!(s, "  \"{name}\" [label=\"{name}\\n{}\"];", self.kinds[name]);
                }
                for (name, d) in &self.deps {
                    for from in d {
                        let _ = writeln!(s, "  \"{from}\" -> \"{name}\";");
                    }
                }
                s.push_str("}\n");
            }
            DagFormat::Mermaid => {
                // Ids by position: names may hold `-` (not allowed in ids), differ only in
                // `-` and `_`, or be Mermaid keywords such as `end`; the label keeps the name.
                let id: BTreeMap<&str, String> = self
                    .order
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.as_str(), format!("s{i}")))
                    .collect();
                s.push_str("graph LR\n");
                for name in &self.order {
                    let _ = writeln!(
                        s,
                        "  {}[\"{name} ({})\"]",
                        id[name.as_str()],
                        self.kinds[name]
                    );
                }
                for (name, d) in &self.deps {
                    for from in d {
                        let _ = writeln!(s, "  {} --> {}", id[from.as_str()], id[name.as_str()]);
                    }
                }
            }
        }
        s
    }
}
