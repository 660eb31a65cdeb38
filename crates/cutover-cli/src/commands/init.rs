//! `cutover init [DIR] [--example]`.

use cutover_engine::app::Answer;
use std::path::{Path, PathBuf};

use crate::args::{Global, InitArgs};
use crate::example;
use cutover_engine::EngineError;

pub fn run(g: &Global, a: InitArgs) -> Result<u8, EngineError> {
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let files = scaffold(&dir, a.example)?;
    if g.json {
        super::print_answer(
            &Answer::ok()
                .with("project", dir.display().to_string())
                .with(
                    "files",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>(),
                ),
        );
    } else {
        for f in &files {
            println!("created {}", f.display());
        }
        println!(
            "next: cd {} && cutover check && cutover deploy --dry-run",
            dir.display()
        );
    }
    Ok(0)
}

/// Writes a new project into `dir`; refuses to touch an existing one.
pub fn scaffold(dir: &Path, with_example: bool) -> Result<Vec<PathBuf>, EngineError> {
    if dir.join("cutover.toml").exists() {
        return Err(EngineError::usage(
            format!("{} already has a cutover.toml", dir.display()),
            "init only creates new projects; edit the existing files instead",
        ));
    }
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| {
            EngineError::usage(
                format!("cannot write {what}: {e}"),
                "check the directory's permissions",
            )
        }
    };
    std::fs::create_dir_all(dir.join("jobs")).map_err(io(dir))?;
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "project".into());
    let mut files: Vec<(PathBuf, String, u32)> = vec![
        (
            "cutover.toml".into(),
            example::PROJECT.replace("NAME", &name),
            0o644,
        ),
        (
            "workers.toml".into(),
            if with_example {
                example::WORKERS_EXAMPLE
            } else {
                example::WORKERS_EMPTY
            }
            .to_string(),
            0o644,
        ),
    ];
    if with_example {
        for (job, manifest) in [("cache", example::CACHE_JOB), ("hello", example::HELLO_JOB)] {
            files.push((
                format!("jobs/{job}/job.toml").into(),
                manifest.into(),
                0o644,
            ));
            files.push((
                format!("jobs/{job}/Makefile").into(),
                example::MAKEFILE.into(),
                0o644,
            ));
        }
        files.push((
            "jobs/cache/settings.txt".into(),
            example::CACHE_SETTINGS.into(),
            0o644,
        ));
        files.push((
            "jobs/hello/greeting.txt.tpl".into(),
            example::HELLO_TEMPLATE.into(),
            0o644,
        ));
    }
    let mut written = Vec::new();
    for (rel, text, _mode) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(rel);
    }
    // .cutover/ is the local workspace: never committed.
    let gitignore = dir.join(".gitignore");
    let existing = std::fs::read_to_string(&gitignore).unwrap_or_default();
    let missing: String = example::GITIGNORE
        .lines()
        .filter(|l| !existing.lines().any(|e| e.trim() == *l))
        .map(|l| format!("{l}\n"))
        .collect();
    if !missing.is_empty() {
        let sep = if existing.is_empty() || existing.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        std::fs::write(&gitignore, format!("{existing}{sep}{missing}")).map_err(io(&gitignore))?;
        written.push(".gitignore".into());
    }
    Ok(written)
}
