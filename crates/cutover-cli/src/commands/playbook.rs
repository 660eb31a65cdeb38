//! `cutover playbook list|match|check|new`.

use cutover_engine::app::Answer;

use cutover_engine::app::playbooks::{detect, load_valid, matching};
use cutover_model::playbook;

use super::{project_root, Session};
use crate::args::{Global, PlaybookCommand};
use crate::output::table;
use cutover_engine::EngineError;

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
            let (results, applies) = detect(&root, book);
            if g.json {
                super::print_answer(
                    &Answer::ok()
                        .with("id", &id)
                        .with("applies", applies)
                        .with("detection", &results),
                );
            } else {
                for d in &results {
                    println!(
                        "{} `{}`{}",
                        if d.matched { "✓" } else { "✗" },
                        d.command,
                        if d.expect.is_empty() {
                            String::new()
                        } else {
                            format!(" (expect: {})", d.expect)
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
