//! Row cleaning, in the spec's order: line ends, `html_unescape`, `remove_chars`, `replace`,
//! `normalize_whitespace`, then the length filters. Each step borrows when it changes
//! nothing, so clean rows cost no allocation.

use super::report::DropReason;
use anyhow::Context as _;
use gptpipe_core::config::PrepareParams;
use regex::Regex;
use rustc_hash::FxHashSet;
use std::borrow::Cow;

/// The cleaning steps of one prepare stage, compiled.
pub(crate) struct Cleaner {
    html_unescape: bool,
    remove: Option<CharSet>,
    replace: Vec<(Regex, String)>,
    normalize_whitespace: bool,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

/// Characters to remove: a table for ASCII, a set for the rest.
struct CharSet {
    ascii: [bool; 128],
    other: FxHashSet<char>,
}

impl CharSet {
    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii[c as usize]
        } else {
            self.other.contains(&c)
        }
    }
}

impl Cleaner {
    /// Compiles the steps; a bad regex is an error naming its `replace` entry.
    pub(crate) fn new(p: &PrepareParams) -> anyhow::Result<Self> {
        let replace = p
            .replace
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let re = Regex::new(&r.pattern).with_context(|| {
                    format!("replace[{i}].pattern {:?} is not a valid regex", r.pattern)
                })?;
                Ok((re, r.with.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        let chars: Vec<char> = p.remove_chars.iter().flat_map(|s| s.chars()).collect();
        let remove = (!chars.is_empty()).then(|| {
            let mut set = CharSet {
                ascii: [false; 128],
                other: FxHashSet::default(),
            };
            for c in chars {
                if c.is_ascii() {
                    set.ascii[c as usize] = true;
                } else {
                    set.other.insert(c);
                }
            }
            set
        });
        Ok(Self {
            html_unescape: p.html_unescape,
            remove,
            replace,
            normalize_whitespace: p.normalize_whitespace,
            min_length: p.min_length,
            max_length: p.max_length,
        })
    }

    /// The cleaned row, or why it is dropped.
    pub(crate) fn clean<'a>(&self, row: &'a str) -> Result<Cow<'a, str>, DropReason> {
        // Windows (`\r\n`) and old Mac (a lone `\r`) line ends become `\n`, as Python's
        // text mode (gpt-2-simple's `open`) reads them.
        let mut s: Cow<'a, str> = if row.contains('\r') {
            Cow::Owned(row.replace("\r\n", "\n").replace('\r', "\n"))
        } else {
            Cow::Borrowed(row)
        };
        if self.html_unescape && s.contains('&') {
            s = map_cow(s, html_escape::decode_html_entities);
        }
        if let Some(set) = &self.remove {
            if s.chars().any(|c| set.contains(c)) {
                s = Cow::Owned(s.chars().filter(|&c| !set.contains(c)).collect());
            }
        }
        for (re, with) in &self.replace {
            s = map_cow(s, |t| re.replace_all(t, with.as_str()));
        }
        if self.normalize_whitespace && !is_normal_whitespace(&s) {
            let mut out = String::with_capacity(s.len());
            for word in s.split_whitespace() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
            s = Cow::Owned(out);
        }
        if s.is_empty() {
            return Err(DropReason::Empty);
        }
        if self.min_length.is_some() || self.max_length.is_some() {
            let n = s.chars().count();
            if self.min_length.is_some_and(|m| n < m) {
                return Err(DropReason::TooShort);
            }
            if self.max_length.is_some_and(|m| n > m) {
                return Err(DropReason::TooLong);
            }
        }
        Ok(s)
    }
}

/// Applies a borrowing transformation to a `Cow`, keeping it borrowed when possible.
fn map_cow<'a>(s: Cow<'a, str>, f: impl for<'b> Fn(&'b str) -> Cow<'b, str>) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => f(b),
        Cow::Owned(o) => match f(&o) {
            Cow::Borrowed(_) => Cow::Owned(o),
            Cow::Owned(n) => Cow::Owned(n),
        },
    }
}

/// Whether `s` has no leading, trailing or repeated whitespace and no whitespace but ' '.
fn is_normal_whitespace(s: &str) -> bool {
    let mut prev_space = true; // so a leading space counts as repeated
    for c in s.chars() {
        if c == ' ' {
            if prev_space {
                return false;
            }
            prev_space = true;
        } else if c.is_whitespace() {
            return false;
        } else {
            prev_space = false;
        }
    }
    !prev_space || s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptpipe_core::config::Replace;

    fn cleaner(f: impl FnOnce(&mut PrepareParams)) -> Cleaner {
        let mut p = PrepareParams::default();
        f(&mut p);
        Cleaner::new(&p).unwrap()
    }

    #[test]
    fn steps_run_in_order() {
        let c = cleaner(|p| {
            p.html_unescape = true;
            p.remove_chars = vec!["\u{FFFD}".into()];
            // Unescaping runs first and once: `&amp;lt;` -> `&lt;`, which `replace` sees.
            p.replace = vec![
                Replace {
                    pattern: "&lt;".into(),
                    with: "<".into(),
                },
                Replace {
                    pattern: r"(\w+)@(\w+)".into(),
                    with: "$2 at $1".into(),
                },
            ];
            p.normalize_whitespace = true;
        });
        assert_eq!(
            c.clean("  Tom &amp;lt; Jerry\u{FFFD}\t\n me@home ")
                .unwrap(),
            "Tom < Jerry home at me"
        );
    }

    #[test]
    fn whitespace_check() {
        assert!(is_normal_whitespace("a b c"));
        assert!(!is_normal_whitespace(" a"));
        assert!(!is_normal_whitespace("a "));
        assert!(!is_normal_whitespace("a  b"));
        assert!(!is_normal_whitespace("a\tb"));
        assert!(!is_normal_whitespace(" "));
    }

    #[test]
    fn lengths_count_characters() {
        let c = cleaner(|p| {
            p.min_length = Some(3);
            p.max_length = Some(4);
        });
        assert_eq!(c.clean("日本").unwrap_err(), DropReason::TooShort);
        assert_eq!(c.clean("日本語").unwrap(), "日本語");
        assert_eq!(c.clean("日本語です").unwrap_err(), DropReason::TooLong);
        assert_eq!(c.clean("").unwrap_err(), DropReason::Empty);
    }

    #[test]
    fn bad_regex_names_its_entry() {
        let p = PrepareParams {
            replace: vec![Replace {
                pattern: "(".into(),
                with: String::new(),
            }],
            ..PrepareParams::default()
        };
        let e = format!("{:#}", Cleaner::new(&p).err().unwrap());
        assert!(e.contains("replace[0].pattern \"(\""), "{e}");
    }
}
