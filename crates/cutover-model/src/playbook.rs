//! Recovery playbooks (`recovery/playbooks/*.yaml`): what operators learned
//! about failed releases, matched against a failure's output.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diag::Diagnostic;

pub const DIR: &str = "recovery/playbooks";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub id: String,
    #[serde(default)]
    pub symptom: String,
    /// Regexes tried against the failure output; any one matching is enough.
    #[serde(default, rename = "match")]
    pub patterns: Vec<String>,
    /// Phases this applies to; empty = any.
    #[serde(default)]
    pub phases: Vec<String>,
    #[serde(default)]
    pub detection: Vec<Detection>,
    #[serde(default)]
    pub root_cause: String,
    #[serde(default)]
    pub fix: Fix,
    #[serde(default)]
    pub verify: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The file it came from, relative to the project.
    #[serde(skip_deserializing)]
    pub file: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fix {
    #[serde(default)]
    pub bootstrap_script: String,
    #[serde(default)]
    pub bootstrap_change: String,
    #[serde(default)]
    pub adhoc: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub command: String,
    /// A substring the command's output must contain for the playbook to apply.
    #[serde(default)]
    pub expect: String,
}

const PHASES: [&str; 4] = ["prepare", "migrate", "ticket", "verify"];

/// Loads and validates every playbook of the project.
pub fn load(root: &Path) -> (Vec<Playbook>, Vec<Diagnostic>) {
    let mut books = Vec::new();
    let mut diags = Vec::new();
    let dir = root.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (books, diags);
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for path in files {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::file(&rel, format!("cannot read: {e}")));
                continue;
            }
        };
        let parsed: Vec<Playbook> = match serde_norway::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                diags.push(Diagnostic {
                    file: rel.clone(),
                    line,
                    column,
                    message: e.to_string(),
                    help: Some("a playbook file is a list of entries with id, symptom, match, phases, detection, root_cause, fix, verify, services, tags".into()),
                    snippet: text.lines().nth(line.saturating_sub(1)).map(str::to_string),
                });
                continue;
            }
        };
        for mut p in parsed {
            let line = text
                .lines()
                .position(|l| l.contains(&format!("id: {}", p.id)))
                .map_or(1, |i| i + 1);
            let at = |message: String, help: &str| Diagnostic {
                file: rel.clone(),
                line,
                column: 1,
                message,
                help: Some(help.to_string()),
                snippet: text.lines().nth(line - 1).map(str::to_string),
            };
            for m in &p.patterns {
                if let Err(e) = regex::Regex::new(m) {
                    diags.push(at(
                        format!("playbook `{}`: bad regex `{m}`: {}", p.id, e.to_string().lines().last().unwrap_or_default()),
                        "match entries are regular expressions (escape literal `(`, `[`, `.` with `\\`)",
                    ));
                }
            }
            for ph in &p.phases {
                if !PHASES.contains(&ph.as_str()) {
                    diags.push(at(
                        format!("playbook `{}`: unknown phase `{ph}`", p.id),
                        "phases are prepare, migrate, ticket and verify",
                    ));
                }
            }
            if books.iter().any(|b: &Playbook| b.id == p.id) {
                diags.push(at(
                    format!("duplicate playbook id `{}`", p.id),
                    "give each playbook a unique id",
                ));
            }
            p.file = rel.display().to_string();
            books.push(p);
        }
    }
    (books, diags)
}

impl Playbook {
    /// Whether this playbook fits a failure in `phase` with this output.
    pub fn matches(&self, phase: &str, output: &str) -> bool {
        let phase_ok = self.phases.is_empty() || self.phases.iter().any(|p| p == phase);
        let text_ok = self.patterns.is_empty()
            || self
                .patterns
                .iter()
                // Line by line: `^` and `$` are a line's ends, as a reader
                // of the output would expect.
                .filter_map(|m| regex::RegexBuilder::new(m).multi_line(true).build().ok())
                .any(|r| r.is_match(output));
        phase_ok && text_ok
    }
}

/// The template `cutover playbook new ID` writes.
pub fn template(id: &str) -> String {
    format!(
        r#"- id: {id}
  symptom: |
    What the operator sees: the phase that fails and the message it prints.
  match: ["regex matched against the failure output"]
  phases: [verify]
  detection:
    - command: cutover status
      expect: unhealthy
  root_cause: |
    Why it happens.
  fix:
    bootstrap_script: ""
    bootstrap_change: ""
    adhoc: |
      cutover release run TICKET --from=verify
  verify:
    - cutover release state TICKET
  services: []
  tags: [release]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_matches_by_phase_and_regex() {
        let books: Vec<Playbook> = serde_norway::from_str(&template("x")).expect("template parses");
        let b = &books[0];
        assert!(b.matches("verify", "xx regex matched against the failure output"));
        assert!(!b.matches("migrate", "regex matched against the failure output"));
        assert!(!b.matches("verify", "something else"));
    }
}
