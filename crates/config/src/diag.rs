//! Diagnostics: `FILE:LINE:COL: error: …` messages with positions computed from byte
//! offsets, so every parser and check can point at the exact token it rejects.

use std::fmt;
use std::ops::Range;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// The file is accepted, but something deserves the operator's attention.
    Warning,
}

/// One message about one place in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A warning is a [`Diagnostic`] with [`Severity::Warning`].
pub type Warning = Diagnostic;

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, kind, self.message
        )
    }
}

/// One or more errors (and possibly warnings) that made a file unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Diagnostics {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// Whether any error is present.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// A source text with its name, mapping byte offsets to line and column.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// File name used in messages.
    pub name: &'a str,
    /// The whole text.
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    /// Wraps `text` read from the file called `name`.
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            name,
            text,
            line_starts,
        }
    }

    /// 1-based (line, column) of byte `offset` (clamped to the text).
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        // Columns count characters, not bytes; clamp to a char boundary first.
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let col = self.text[start..end].chars().count() + 1;
        (line + 1, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn diag(&self, span: Range<usize>, severity: Severity, message: String) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic {
            file: self.name.to_string(),
            line,
            col,
            severity,
            message,
        }
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diag(span, Severity::Error, message.into())
    }

    /// A warning at the start of `span`.
    pub fn warning(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diag(span, Severity::Warning, message.into())
    }
}

/// Collects errors and warnings while a file is checked, so one run reports all of them.
#[derive(Debug, Default)]
pub struct Sink {
    /// Everything reported so far.
    pub items: Vec<Diagnostic>,
}

impl Sink {
    /// Records a diagnostic.
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// Whether an error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// Splits into `Err(errors)` if any error was recorded, else `Ok(warnings)`.
    /// Files keep the order in which they were first reported on (the order they were
    /// read); within a file, messages are sorted by position so output reads top to
    /// bottom.
    pub fn finish(mut self) -> Result<Vec<Warning>, Diagnostics> {
        let mut files: Vec<String> = Vec::new();
        for d in &self.items {
            if !files.contains(&d.file) {
                files.push(d.file.clone());
            }
        }
        let rank = |f: &str| files.iter().position(|x| x == f).unwrap_or(usize::MAX);
        self.items.sort_by_key(|d| (rank(&d.file), d.line, d.col));
        if self.has_errors() {
            Err(Diagnostics(
                self.items
                    .into_iter()
                    .filter(|d| d.severity == Severity::Error)
                    .collect(),
            ))
        } else {
            Ok(self.items)
        }
    }
}

/// `" (did you mean `x`?)"` when `word` is a likely typo of one of `candidates`
/// (edit distance at most 2, and less than half the word), else an empty string.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d > 0 && d <= 2 && d * 2 < word.chars().count().max(2) => {
            format!(" (did you mean `{c}`?)")
        }
        _ => String::new(),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(
            did_you_mean("keepalve", &["keepalive", "deadtime"]),
            " (did you mean `keepalive`?)"
        );
        assert_eq!(
            did_you_mean("al-extent", &["rate", "group", "al-extents"]),
            " (did you mean `al-extents`?)"
        );
        assert_eq!(did_you_mean("heartbeat_port", &["udpport", "node"]), "");
        assert_eq!(did_you_mean("x", &["y"]), "");
    }

    #[test]
    fn positions_count_characters() {
        let s = Source::new("f", "ä = 1\nab\n");
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(2), (1, 2));
        assert_eq!(s.position(7), (2, 1));
        assert_eq!(s.position(1000), (3, 1));
    }
}
