//! Sample files: `samples.txt` (gpt-2-simple's layout: text, newline, `sample_delim`) or
//! `samples.jsonl`, plus `generate.json`, the record that lets a later run with a larger
//! `nsamples` keep these samples byte for byte.

use crate::driver::Sample;
use anyhow::Result;
use gptpipe_core::config::{GenerateParams, SampleFormat};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file beside the samples that records how they were made.
pub const META_FILE: &str = "generate.json";

/// One sample as it appears in the output file.
pub fn render(sample: &Sample, format: SampleFormat, sample_delim: &str, seed: u64) -> String {
    match format {
        SampleFormat::Text => format!("{}\n{}", sample.text, sample_delim),
        SampleFormat::Jsonl => {
            let line = serde_json::json!({
                "index": sample.index,
                "seed": seed,
                "text": sample.text,
                "tokens": sample.tokens,
                "truncated": sample.truncated,
            });
            format!("{line}\n")
        }
    }
}

/// What `generate.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The stage implementation version that wrote the samples.
    pub version: u32,
    /// The stage's inputs (the model) when the samples were made.
    pub inputs_hash: String,
    /// The effective seed.
    pub seed: u64,
    /// Every parameter but `nsamples` and `batch_size`, which do not change a sample.
    pub params: serde_json::Value,
    /// Byte length of each sample in the output file, in order.
    pub sample_bytes: Vec<usize>,
}

impl Meta {
    pub fn new(version: u32, inputs_hash: &str, seed: u64, params: &GenerateParams) -> Self {
        let mut params = serde_json::to_value(params).expect("params serialize");
        if let Some(map) = params.as_object_mut() {
            map.remove("nsamples");
            map.remove("batch_size");
            map.remove("seed");
        }
        Self {
            version,
            inputs_hash: inputs_hash.to_owned(),
            seed,
            params,
            sample_bytes: Vec::new(),
        }
    }

    fn same_recipe(&self, other: &Meta) -> bool {
        self.version == other.version
            && self.inputs_hash == other.inputs_hash
            && self.seed == other.seed
            && self.params == other.params
    }
}

/// The rendered samples of an earlier output made with the same recipe, if there is one
/// (its `generate.json` matches and its sample file has the recorded size).
pub fn previous_samples(dir: &Path, now: &Meta, output: &str) -> Option<Vec<String>> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
    if !meta.same_recipe(now) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(output)).ok()?;
    if meta.sample_bytes.iter().sum::<usize>() != text.len() {
        return None;
    }
    let mut out = Vec::with_capacity(meta.sample_bytes.len());
    let mut at = 0;
    for &n in &meta.sample_bytes {
        out.push(text.get(at..at + n)?.to_owned());
        at += n;
    }
    Some(out)
}

pub use gptpipe_core::fsutil::write_atomic;

/// Writes the samples file and `generate.json` into `dir`.
pub fn write_outputs(dir: &Path, output: &str, rendered: &[String], mut meta: Meta) -> Result<()> {
    meta.sample_bytes = rendered.iter().map(String::len).collect();
    write_atomic(&dir.join(output), rendered.concat().as_bytes())?;
    let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
    write_atomic(&dir.join(META_FILE), &json)
}
