//! GPT-2's pre-tokenizer, hand-written.
//!
//! GPT-2 splits text into pieces with the regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, then runs BPE
//! on each piece. Its lookahead needs a backtracking engine (onig in `tokenizers`,
//! fancy-regex in tiktoken), which is most of their cost. This scanner gives the same pieces
//! in one forward pass. The character classes come from `regex-syntax`, the tables the
//! regex crates use, so `\p{L}`, `\p{N}` and `\s` mean exactly what they mean to tiktoken.

use std::sync::OnceLock;

/// What GPT-2's pattern sees in a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Class {
    Letter = 0,
    Number = 1,
    Space = 2,
    Other = 3,
}

const CLASSES: [Class; 4] = [Class::Letter, Class::Number, Class::Space, Class::Other];

/// Class lookup: a flat table for the Basic Multilingual Plane, sorted ranges above it.
struct ClassTable {
    bmp: Box<[u8]>,
    astral: Vec<(u32, u32, Class)>,
}

fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a valid Unicode class");
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

fn table() -> &'static ClassTable {
    static TABLE: OnceLock<ClassTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut bmp = vec![Class::Other as u8; 0x10000].into_boxed_slice();
        let mut astral = Vec::new();
        // Later classes win; the three are disjoint in Unicode anyway.
        for (pattern, class) in [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ] {
            for (start, end) in unicode_ranges(pattern) {
                for c in start..=end.min(0xFFFF) {
                    bmp[c as usize] = class as u8;
                }
                if end > 0xFFFF {
                    astral.push((start.max(0x10000), end, class));
                }
            }
        }
        astral.sort_unstable_by_key(|r| r.0);
        ClassTable { bmp, astral }
    })
}

impl ClassTable {
    #[inline]
    fn class(&self, c: char) -> Class {
        let c = c as u32;
        if c < 0x10000 {
            return CLASSES[self.bmp[c as usize] as usize];
        }
        match self.astral.binary_search_by(|r| {
            if r.1 < c {
                std::cmp::Ordering::Less
            } else if r.0 > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.astral[i].2,
            Err(_) => Class::Other,
        }
    }
}

/// The class of one character (used by the boundary search too).
#[inline]
pub(crate) fn class_of(c: char) -> Class {
    table().class(c)
}

/// The pieces of `text`, in order; they concatenate back to `text`.
pub(crate) fn pieces(text: &str) -> Pieces<'_> {
    Pieces {
        text,
        pos: 0,
        table: table(),
    }
}

pub(crate) struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    table: &'static ClassTable,
}

impl<'a> Pieces<'a> {
    /// The character at byte `i` and its length; `i` is on a char boundary.
    #[inline]
    fn char_at(&self, i: usize) -> (char, usize) {
        let b = self.text.as_bytes()[i];
        if b < 0x80 {
            return (b as char, 1);
        }
        let c = self.text[i..].chars().next().expect("not at the end");
        (c, c.len_utf8())
    }

    #[inline]
    fn class_at(&self, i: usize) -> (Class, usize) {
        let (c, len) = self.char_at(i);
        (self.table.class(c), len)
    }

    /// The end of the run of `class` characters starting at byte `i`.
    #[inline]
    fn run_end(&self, mut i: usize, class: Class) -> usize {
        let bytes = self.text.as_bytes();
        while i < bytes.len() {
            let b = bytes[i];
            // ASCII fast path: no table or UTF-8 decoding.
            let (c, len) = if b < 0x80 {
                (ascii_class(b), 1)
            } else {
                self.class_at(i)
            };
            if c != class {
                break;
            }
            i += len;
        }
        i
    }
}

#[inline]
fn ascii_class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' => Class::Space,
        _ => Class::Other,
    }
}

/// The length after the apostrophe of a contraction (`'s 't 're 've 'm 'll 'd`).
#[inline]
fn contraction(rest: &[u8]) -> Option<usize> {
    match rest {
        [b's' | b't' | b'm' | b'd', ..] => Some(1),
        [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        _ => None,
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        if start >= bytes.len() {
            return None;
        }
        let (c, len) = self.char_at(start);
        let end = 'end: {
            if c == '\'' {
                if let Some(n) = contraction(&bytes[start + 1..]) {
                    break 'end start + 1 + n;
                }
            }
            let class = if c.is_ascii() {
                ascii_class(c as u8)
            } else {
                self.table.class(c)
            };
            if class != Class::Space {
                break 'end self.run_end(start + len, class);
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space glued to what follows.
            if c == ' ' && start + 1 < bytes.len() {
                let (next, next_len) = self.class_at(start + 1);
                if next != Class::Space {
                    break 'end self.run_end(start + 1 + next_len, next);
                }
            }
            // `\s+(?!\S)|\s+`: a whitespace run, less its last character when something
            // follows, so that character can glue to the next piece.
            let mut i = start;
            let mut last = start;
            while i < bytes.len() {
                let (class, len) = self.class_at(i);
                if class != Class::Space {
                    break;
                }
                last = i;
                i += len;
            }
            if i == bytes.len() || last == start {
                i
            } else {
                last
            }
        };
        self.pos = end;
        Some(&self.text[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        pieces(s).collect()
    }

    #[test]
    fn splits_like_gpt2() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("don't  stop\n"), ["don", "'t", " ", " stop", "\n"]);
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(split("x \n y"), ["x", " \n", " y"]);
        assert_eq!(split("It's 2024!!"), ["It", "'s", " 2024", "!!"]);
        assert_eq!(split(" 'S'sx"), [" '", "S", "'s", "x"]);
        assert_eq!(split("日本語 テキスト"), ["日本語", " テキスト"]);
        assert_eq!(split("tail  "), ["tail", "  "]);
    }

    #[test]
    fn classes_come_from_unicode_tables() {
        assert_eq!(class_of('é'), Class::Letter);
        assert_eq!(class_of('٣'), Class::Number);
        assert_eq!(class_of('\u{3000}'), Class::Space);
        assert_eq!(class_of('\u{85}'), Class::Space);
        assert_eq!(class_of('😀'), Class::Other);
        assert_eq!(class_of('𝔸'), Class::Letter);
    }
}
