//! `cutover playbook list|match|check|new`.

use cutover_engine::app::Answer;
use std::path::Path;

use cutover_model::playbook::{self, Playbook};
use serde::Serialize;

use super::{project_root, Session};
use crate::args::{Global, PlaybookCommand};
use crate::output::table;
use cutover_engine::EngineError;

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

fn load_valid(root: &Path) -> Result<Vec<Playbook>, EngineError> {
    let (books, diags) = playbook::load(root);
    if diags.is_empty() {
        Ok(books)
    } else {
        Err(cutover_engine::EngineError::Config(
            cutover_model::Diagnostics(diags),
        ))
    }
}

pub async fn run(g: &Global, c: PlaybookCommand) -> Result<u8, EngineError> {
    let root = project_root(g)?;
    match c {
        PlaybookCommand::List => {
            let books = load_valid(&root)?;
            if g.json {
                super::print_answer(&Answer::ok().with("playbooks", &books));
            } else if books.is_empty() {
                println!("no playbooks: create one with `cutover playbook new ID`");
            } else {
                let rows: Vec<Vec<String>> = books
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.clone(),
                            b.phases.join(","),
                            b.file.clone(),
                            b.symptom.lines().next().unwrap_or("").to_string(),
                        ]
                    })
                    .collect();
                table(&["ID", "PHASES", "FILE", "SYMPTOM"], &rows);
            }
            Ok(0)
        }
        PlaybookCommand::New { id } => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(EngineError::usage(
                    format!("`{id}` is not a valid playbook id"),
                    "use letters, digits, `-`, `_` and `.`",
                ));
            }
            let path = root.join(playbook::DIR).join(format!("{id}.yaml"));
            if path.exists() {
                return Err(EngineError::usage(
                    format!("{} already exists", path.display()),
                    "edit it, or choose another id",
                ));
            }
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(root.join(playbook::DIR))?;
                std::fs::write(&path, playbook::template(&id))
            };
            write().map_err(|e| {
                EngineError::usage(
                    format!("cannot write {}: {e}", path.display()),
                    "check permissions",
                )
            })?;
            if g.json {
                super::print_answer(&Answer::ok().with("file", path.display().to_string()));
            } else {
                println!(
                    "created {}/{id}.yaml: fill in symptom, match, detection and fix",
                    playbook::DIR
                );
            }
            Ok(0)
        }
        PlaybookCommand::Match { ticket } => {
            let s = Session::open(g, "playbook").await?;
            cutover_engine::release::check_ticket(&ticket)?;
            let Some((phase, output)) =
                cutover_engine::release::last_failure(&s.ctx, &ticket).await?
            else {
                return Err(EngineError::usage(
                    format!("no failure recorded for ticket {ticket}"),
                    format!("see `cutover release state {ticket}`"),
                ));
            };
            let found = matching(&root, phase.as_str(), &output);
            if g.json {
                super::print_answer(&Answer::ok().with("phase", phase).with("matches", &found));
            } else {
                println!(
                    "release {ticket} failed in {}: {}",
                    phase.as_str(),
                    output.lines().next().unwrap_or("")
                );
                if found.is_empty() {
                    println!("no playbook matches; once you know the fix, record it: cutover playbook new ID");
                }
                for m in &found {
                    println!();
                    println!("{} ({})", m.id, m.file);
                    for l in m.adhoc.trim().lines() {
                        println!("  fix: {l}");
                    }
                }
            }
            Ok(0)
        }
        PlaybookCommand::Check { id } => {
            let books = load_valid(&root)?;
            let book = books.iter().find(|b| b.id == id).ok_or_else(|| {
                EngineError::usage(
                    format!("no playbook `{id}`"),
                    format!(
                        "playbooks: {}",
                        books
                            .iter()
                            .map(|b| b.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            let mut results = Vec::new();
            for d in &book.detection {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&d.command)
                    .current_dir(&root)
                    .output();
                let (text, ok) = match out {
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
                results.push((d.command.clone(), d.expect.clone(), ok, text));
            }
            let applies = !results.is_empty() && results.iter().all(|r| r.2);
            if g.json {
                let items: Vec<_> = results
                    .iter()
                    .map(|(c, e, ok, _)| serde_json::json!({"command": c, "expect": e, "matched": ok}))
                    .collect();
                super::print_answer(
                    &Answer::ok()
                        .with("id", &id)
                        .with("applies", applies)
                        .with("detection", &items),
                );
            } else {
                for (c, e, ok, _) in &results {
                    println!(
                        "{} `{c}`{}",
                        if *ok { "✓" } else { "✗" },
                        if e.is_empty() {
                            String::new()
                        } else {
                            format!(" (expect: {e})")
                        }
                    );
                }
                if results.is_empty() {
                    println!("playbook {id} has no detection commands: cannot tell");
                } else if applies {
                    println!("playbook {id} applies: {}", book.fix.adhoc.trim());
                } else {
                    println!("playbook {id} does not apply now");
                }
            }
            Ok(0)
        }
    }
}
