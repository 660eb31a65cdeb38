//! Recovery playbooks as commands use them: the ones that fit a failure,
//! and whether a playbook's detection commands say it applies now.

use std::path::Path;

use cutover_model::playbook::{self, Playbook};
use serde::Serialize;

use crate::EngineError;

#[derive(Debug, Clone, Serialize)]
pub struct Match {
    pub id: String,
    pub file: String,
    pub symptom: String,
    pub adhoc: String,
}

/// Playbooks that fit a failure; invalid playbook files are skipped here
/// (`cutover check` reports them).
pub fn matching(root: &Path, phase: &str, output: &str) -> Vec<Match> {
    playbook::load(root)
        .0
        .into_iter()
        .filter(|p| p.matches(phase, output))
        .map(|p| Match {
            id: p.id,
            file: p.file,
            symptom: p.symptom,
            adhoc: p.fix.adhoc,
        })
        .collect()
}

/// Every playbook of the project; any invalid one is bad input.
pub fn load_valid(root: &Path) -> Result<Vec<Playbook>, EngineError> {
    let (books, diags) = playbook::load(root);
    if diags.is_empty() {
        Ok(books)
    } else {
        Err(EngineError::Config(cutover_model::Diagnostics(diags)))
    }
}

/// One detection command of a playbook, run now.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub command: String,
    pub expect: String,
    pub matched: bool,
    #[serde(skip)]
    pub output: String,
}

/// Runs `book`'s detection commands in the project (`sh -c`, as the
/// playbook's author wrote them); it applies when every one matches.
pub fn detect(root: &Path, book: &Playbook) -> (Vec<Detection>, bool) {
    let results: Vec<Detection> = book
        .detection
        .iter()
        .map(|d| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&d.command)
                .current_dir(root)
                .output();
            let (output, matched) = match out {
                Ok(o) => {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let ok = if d.expect.is_empty() {
                        o.status.success()
                    } else {
                        text.contains(&d.expect)
                    };
                    (text, ok)
                }
                Err(e) => (e.to_string(), false),
            };
            Detection {
                command: d.command.clone(),
                expect: d.expect.clone(),
                matched,
                output,
            }
        })
        .collect();
    let applies = !results.is_empty() && results.iter().all(|r| r.matched);
    (results, applies)
}
