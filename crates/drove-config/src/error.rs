//! Configuration errors with positions, rendered like rustc diagnostics.

use std::fmt;
use std::ops::Range;

/// One problem in a config file, with a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given to [`crate::parse`] / [`crate::load`].
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column in characters; 0 together with `line`.
    pub col: usize,
    /// What is wrong, and how to fix it when that is known.
    pub message: String,
    /// The offending source line (without newline), for the snippet.
    source_line: String,
    /// Width of the caret underline in characters (>= 1).
    width: usize,
}

impl ConfigError {
    /// An error about the whole file, without a position.
    pub(crate) fn whole_file(file: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: 0,
            col: 0,
            message,
            source_line: String::new(),
            width: 0,
        }
    }

    /// An error at byte range `span` of `src`.
    pub(crate) fn at(file: &str, src: &str, span: Range<usize>, message: String) -> ConfigError {
        let start = floor_char_boundary(src, span.start.min(src.len()));
        let end = floor_char_boundary(src, span.end.clamp(start, src.len()));
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line = src[..start].matches('\n').count() + 1;
        let col = src[line_start..start].chars().count() + 1;
        let source_line = src[line_start..line_end].trim_end_matches('\r').to_string();
        let width = src[start..end.min(line_end).max(start)]
            .chars()
            .count()
            .max(1);
        ConfigError {
            file: file.to_string(),
            line,
            col,
            message,
            source_line,
            width,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        writeln!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )?;
        let gutter = " ".repeat(self.line.to_string().len());
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        // Tabs keep their width so the caret lines up under the source.
        let pad: String = self
            .source_line
            .chars()
            .take(self.col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{gutter} | {pad}{}", "^".repeat(self.width))
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in a config file, sorted by position. Displayed as one rustc-style
/// diagnostic per error, separated by blank lines, then a count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.errors))]
pub struct ConfigErrors {
    /// The errors, at least one, in file order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Exit status for a bad config (`EX_USAGE` from sysexits.h).
    pub const EXIT_CODE: i32 = 64;

    /// The errors, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false for errors returned by this crate.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

fn render(errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&e.to_string());
    }
    if errors.len() > 1 {
        out.push_str(&format!("\n\n{} errors", errors.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc() {
        let src = "[services.web]\ninstancs = 3\n";
        let e = ConfigError::at("drove.toml", src, 15..23, "unknown key".into());
        assert_eq!((e.line, e.col), (2, 1));
        assert_eq!(
            e.to_string(),
            "drove.toml:2:1: unknown key\n  |\n2 | instancs = 3\n  | ^^^^^^^^"
        );
    }

    #[test]
    fn columns_count_characters() {
        let src = "a = \"é\" x";
        let e = ConfigError::at("f", src, 9..10, "m".into());
        assert_eq!(e.col, 9);
    }
}
