//! prepare's `template` (`"{subreddit} | {title}"`): text with placeholders that name CSV
//! columns or JSONL fields. Parsed here, once, so a malformed template is a config error
//! at the key; the prepare stage fills it in (`gptpipe-text`, `prepare/template.rs`).

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as it is (`{{` and `}}` already unescaped).
    Text(String),
    /// `{name}`: a CSV column (header name, or 0-based index without a header) or a
    /// JSONL field.
    Field(String),
}

/// Splits `template` into text and placeholders. `{{` and `}}` are literal braces; an
/// unclosed `{`, a lone `}`, an empty `{}` or a `{` inside a placeholder is an error.
pub fn parse_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '}' => {
                return Err(format!(
                    "template {template:?}: a lone `}}` at byte {at} (write `}}}}` for a brace)"
                ))
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) => break,
                        Some((_, '{')) | None => {
                            return Err(format!(
                                "template {template:?}: the `{{` at byte {at} is not closed \
                                 (write `{{{{` for a brace)"
                            ))
                        }
                        Some((_, c)) => name.push(c),
                    }
                }
                if name.is_empty() {
                    return Err(format!(
                        "template {template:?}: an empty placeholder `{{}}` at byte {at}; \
                         name a column or field"
                    ));
                }
                if !text.is_empty() {
                    parts.push(TemplatePart::Text(std::mem::take(&mut text)));
                }
                parts.push(TemplatePart::Field(name));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(TemplatePart::Text(text));
    }
    if !parts.iter().any(|p| matches!(p, TemplatePart::Field(_))) {
        return Err(format!(
            "template {template:?} has no placeholder: name a column or field as `{{title}}`"
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TemplatePart::{Field, Text};

    #[test]
    fn placeholders_text_and_escaped_braces() {
        assert_eq!(
            parse_template("{subreddit} | {title}").unwrap(),
            vec![
                Field("subreddit".into()),
                Text(" | ".into()),
                Field("title".into())
            ]
        );
        assert_eq!(
            parse_template("{{x}} {0}}}").unwrap(),
            vec![Text("{x} ".into()), Field("0".into()), Text("}".into())]
        );
        assert_eq!(
            parse_template("é{a b}").unwrap(),
            vec![Text("é".into()), Field("a b".into())]
        );
    }

    #[test]
    fn malformed_templates_say_where() {
        for (bad, says) in [
            ("{title", "is not closed"),
            ("{a{b}", "is not closed"),
            ("a } b {c}", "lone `}`"),
            ("{}", "empty placeholder"),
            ("no fields {{here}}", "no placeholder"),
            ("", "no placeholder"),
        ] {
            let e = parse_template(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
