//! A generate stage's training rows: what `novelty_against` names (load.rs fills in the
//! finetune's dataset when the key is not written), as the finetune saw them, without the
//! `start_token`/`end_token` wrapping.
//!
//! Rows of a text (a prepare stage's `dataset.txt`, or a file): the text is cut at each
//! end token (and the newline after it). A piece starting with the start token is one
//! wrapped row (newlines inside it included, as a CSV field may hold them); any other
//! piece is one row per line. Rows are numbered in that order, files in the sorted order
//! their entry names them; empty rows keep their number (they never match anything).

use anyhow::{bail, Context, Result};
use gptpipe_core::config::{GenerateParams, InputRef, StageParams};
use gptpipe_core::inputs::{expand, FileSet};
use gptpipe_core::stage::StageContext;

/// The file of a prepare stage's output that holds its rows.
pub const DATASET_FILE: &str = "dataset.txt";
const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";

/// The training rows of `p`'s `novelty_against`, or `None` when it is not set.
pub fn training_rows(ctx: &StageContext, p: &GenerateParams) -> Result<Option<Vec<String>>> {
    let Some(against) = &p.novelty_against else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    let mut seen = FileSet::default();
    for input in against.refs() {
        match input {
            InputRef::Stage(stage) => {
                let name = stage.name();
                let (Some(up), Some(StageParams::Prepare(prep))) =
                    (ctx.upstream.get(name), ctx.pipeline.stages.get(name))
                else {
                    bail!("novelty_against: {input:?} is not a prepare stage upstream of this one");
                };
                let path = up.dir.join(DATASET_FILE);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("novelty_against: reading {}", path.display()))?;
                rows.extend(split_rows(&text, &prep.start_token, &prep.end_token));
            }
            InputRef::Path(path) => {
                for file in expand(ctx.pipeline, path, &mut seen)
                    .with_context(|| format!("novelty_against: {input:?}"))?
                {
                    let text = std::fs::read_to_string(&file).with_context(|| {
                        format!("novelty_against: reading {} (UTF-8 text)", file.display())
                    })?;
                    rows.extend(split_rows(&text, START, END));
                }
            }
        }
    }
    Ok(Some(rows))
}

/// The rows of `text` wrapped (or not) in `start`/`end` (module docs).
pub fn split_rows(text: &str, start: &str, end: &str) -> Vec<String> {
    let pieces: Vec<&str> = if end.is_empty() {
        vec![text]
    } else {
        text.split(end).collect()
    };
    let mut rows = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let piece = if i > 0 {
            piece.strip_prefix('\n').unwrap_or(piece)
        } else {
            piece
        };
        let last = i + 1 == pieces.len();
        match piece.strip_prefix(start).filter(|_| !start.is_empty()) {
            // Text after the last end token belongs to no wrapped row.
            Some(row) if !last => rows.push(row.to_owned()),
            _ => rows.extend(
                piece
                    .strip_suffix('\n')
                    .unwrap_or(piece)
                    .split('\n')
                    .filter(|_| !piece.is_empty())
                    .map(|line| line.strip_prefix(start).unwrap_or(line).to_owned()),
            ),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unwrapped_as_the_prepare_stage_wrapped_them() {
        let wrapped = "<|startoftext|>one<|endoftext|>\n<|startoftext|>two\nlines<|endoftext|>\n\
                       <|startoftext|><|endoftext|>\n";
        assert_eq!(split_rows(wrapped, START, END), ["one", "two\nlines", ""]);
        // Unwrapped csv rows, and text files joined by the end token.
        assert_eq!(split_rows("a\nb\n", START, END), ["a", "b"]);
        assert_eq!(
            split_rows("x\ny<|endoftext|>z\n", START, END),
            ["x", "y", "z"]
        );
        // Custom tokens, and no trailing newline.
        assert_eq!(split_rows("[s]a[e]\n[s]b[e]", "[s]", "[e]"), ["a", "b"]);
        assert!(split_rows("", START, END).is_empty());
    }
}
