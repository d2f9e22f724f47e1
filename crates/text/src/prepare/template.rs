//! `template`: each row built from several CSV columns or JSONL fields, before cleaning.
//! The syntax is parsed by the config (`gptpipe_core::config::parse_template`); this fills
//! it in.

use anyhow::bail;
use gptpipe_core::config::{parse_template, PrepareParams, TemplatePart};

/// A parsed `template`.
#[derive(Debug)]
pub(crate) struct Template {
    parts: Vec<TemplatePart>,
}

impl Template {
    /// The stage's template, if it has one.
    pub(crate) fn of(p: &PrepareParams) -> anyhow::Result<Option<Self>> {
        let Some(text) = &p.template else {
            return Ok(None);
        };
        // The config checked it already; a stage run from a request is checked again.
        let parts = parse_template(text).map_err(anyhow::Error::msg)?;
        Ok(Some(Self { parts }))
    }

    /// The placeholders' names, in order (a name used twice appears twice).
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Field(f) => Some(f.as_str()),
            TemplatePart::Text(_) => None,
        })
    }

    /// Each placeholder's CSV column: by header name, or by 0-based index without a
    /// header. A placeholder the file lacks is an error naming it, before any row is read.
    pub(crate) fn csv_columns(
        &self,
        columns: &[String],
        header: bool,
        file: &str,
    ) -> anyhow::Result<Vec<usize>> {
        self.fields()
            .map(|f| {
                if header {
                    match columns.iter().position(|c| c == f) {
                        Some(i) => Ok(i),
                        None => bail!(
                            "{file}: the template's {{{f}}} names no column; the columns are: {}",
                            columns.join(", ")
                        ),
                    }
                } else {
                    match f.parse::<usize>() {
                        Ok(i) if i < columns.len() => Ok(i),
                        Ok(i) => bail!(
                            "{file}: the template's {{{f}}}: column {i} does not exist ({} \
                             columns; the first record holds: {})",
                            columns.len(),
                            columns.join(", ")
                        ),
                        Err(_) => bail!(
                            "{file}: the template's {{{f}}} is a name, but header = false; \
                             use 0-based indices such as {{0}}"
                        ),
                    }
                }
            })
            .collect()
    }

    /// Appends the row to `out`: `values` are the placeholders' values, in the order of
    /// [`Self::fields`].
    pub(crate) fn fill(&self, values: &[&str], out: &mut String) {
        let mut values = values.iter();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Field(_) => {
                    out.push_str(values.next().expect("one value per placeholder"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Template {
        let p = PrepareParams {
            template: Some(text.into()),
            ..PrepareParams::default()
        };
        Template::of(&p).unwrap().unwrap()
    }

    #[test]
    fn fills_placeholders_in_order_with_literal_braces() {
        let t = template("{{{b}}} {a}: {b}");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["b", "a", "b"]);
        let mut out = String::from("x");
        t.fill(&["B", "A", "B"], &mut out);
        assert_eq!(out, "x{B} A: B");
    }

    #[test]
    fn csv_columns_by_name_or_index() {
        let cols: Vec<String> = ["id", "title", "sub"].map(String::from).into();
        let t = template("{sub} | {title}");
        assert_eq!(t.csv_columns(&cols, true, "f.csv").unwrap(), [2, 1]);
        let e = template("{sub} | {body}")
            .csv_columns(&cols, true, "f.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.csv") && e.contains("{body}") && e.contains("id, title, sub"),
            "{e}"
        );
        assert_eq!(
            template("{2}{0}").csv_columns(&cols, false, "f").unwrap(),
            [2, 0]
        );
        let e = template("{3}")
            .csv_columns(&cols, false, "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 3 does not exist"), "{e}");
        let e = template("{sub}")
            .csv_columns(&cols, false, "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("header = false"), "{e}");
    }
}
