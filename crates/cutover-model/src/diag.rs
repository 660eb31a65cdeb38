//! Diagnostics: one problem in a project file, with where it is and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem found in a project file. `file` is relative to the project root
/// so that messages read the same on every machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
    /// The offending source line, shown under the message with a caret.
    pub snippet: Option<String>,
}

impl Diagnostic {
    /// A problem that concerns a whole file (missing, unreadable).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: 1,
            column: 1,
            message: message.into(),
            help: None,
            snippet: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(snippet) = &self.snippet {
            let caret = " ".repeat(self.column.saturating_sub(1));
            write!(f, "\n   | {snippet}\n   | {caret}^")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n   = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a project, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
}

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

impl std::error::Error for Diagnostics {}

/// A project file's text, kept to turn byte spans into line and column.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative to the project root.
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Self {
        SourceFile {
            path: path.to_path_buf(),
            text,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    pub fn diag(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.location(span.start);
        let snippet = self.text.lines().nth(line - 1).map(str::to_string);
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
            help: None,
            snippet,
        }
    }
}

/// The number of single-character edits between two words.
pub fn edit_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}

/// The closest candidate to `word`, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_one_based() {
        let src = SourceFile::new(Path::new("a.toml"), "x = 1\nyy = 2\n".into());
        assert_eq!(src.location(0), (1, 1));
        assert_eq!(src.location(6), (2, 1));
        assert_eq!(src.location(9), (2, 4));
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(
            suggest("verison", ["version", "selectors"]),
            Some("version")
        );
        assert_eq!(suggest("zzz", ["version", "selectors"]), None);
    }
}
