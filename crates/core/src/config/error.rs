use miette::{Diagnostic, LabeledSpan, NamedSource};
use std::ops::Range;
use thiserror::Error;

/// An invalid pipeline, config or usage: exit code 2.
///
/// The message starts with where the problem is (`file:line:col`, `--set KEY` or the
/// environment variable), so it reads well even without the source snippet.
#[derive(Debug, Error, Diagnostic)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
    #[source_code]
    src: Option<NamedSource<String>>,
    #[label(collection)]
    labels: Vec<LabeledSpan>,
    #[help]
    pub help: Option<String>,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            src: None,
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Points the error at `span` of the file `name` holding `text`, prefixing the message
    /// with `name:line:col`.
    pub fn at(mut self, name: &str, text: &str, span: Range<usize>, label: &str) -> Self {
        let (line, col) = line_col(text, span.start);
        self.message = format!("{name}:{line}:{col}: {}", self.message);
        self.labels = vec![LabeledSpan::new_with_span(Some(label.to_owned()), span)];
        self.src = Some(NamedSource::new(name, text.to_owned()));
        self
    }

    /// Prefixes the message with a location that is not in a file.
    pub fn from_origin(mut self, origin: &str) -> Self {
        self.message = format!("{origin}: {}", self.message);
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// The closest candidate to a misspelt name, if one is close enough to be a good guess.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
