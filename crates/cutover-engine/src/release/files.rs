//! The files operators read: the state file `.cutover/releases/<T>.env`
//! (written with write-temp, fsync, rename) and the audit log
//! `.cutover/releases/<T>.log` (appended and synced per line).
//!
//! With a shared store (PostgreSQL) the store holds both, and the files
//! are this clone's copies: every write goes to the store first (a write
//! a stale lock holder tries is refused there), then to the file; a read
//! takes the store's and brings the copy up to date; opening a project
//! brings every copy up to date ([`pull`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Phase;
use crate::{Context, EngineError};

/// The state of one ticket release, as SPEC section 5 lays it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateFile {
    pub ticket: String,
    pub branch: String,
    pub base_sha: String,
    pub merge_sha: String,
    pub services: Vec<String>,
    pub skipped_metadata: String,
    /// `job@worker` -> backup id.
    pub backups: BTreeMap<String, String>,
    /// The phases that completed (or that the operator skipped), in order.
    pub phases_done: Vec<String>,
    /// When the release was reverted, if it was.
    pub reverted: String,
}

pub fn releases_dir(workspace: &Path) -> PathBuf {
    workspace.join("releases")
}

impl StateFile {
    pub fn path(workspace: &Path, ticket: &str) -> PathBuf {
        releases_dir(workspace).join(format!("{ticket}.env"))
    }

    pub fn render(&self) -> String {
        let backups: Vec<String> = self
            .backups
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "TICKET={}\nBRANCH={}\nBASE_SHA={}\nMERGE_SHA={}\nSERVICES=\"{}\"\nSKIPPED_METADATA=\"{}\"\nBACKUPS=\"{}\"\nPHASES_DONE=\"{}\"\nREVERTED=\"{}\"\n",
            self.ticket,
            self.branch,
            self.base_sha,
            self.merge_sha,
            self.services.join(" "),
            self.skipped_metadata,
            backups.join(" "),
            self.phases_done.join(" "),
            self.reverted,
        )
    }

    pub fn parse(text: &str) -> Result<StateFile, String> {
        let mut s = StateFile::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "TICKET" => s.ticket = v,
                "BRANCH" => s.branch = v,
                "BASE_SHA" => s.base_sha = v,
                "MERGE_SHA" => s.merge_sha = v,
                "SERVICES" => s.services = v.split_whitespace().map(str::to_string).collect(),
                "SKIPPED_METADATA" => s.skipped_metadata = v,
                "PHASES_DONE" => {
                    s.phases_done = v.split_whitespace().map(str::to_string).collect();
                }
                "REVERTED" => s.reverted = v,
                "BACKUPS" => {
                    for item in v.split_whitespace() {
                        let (k, id) = item.rsplit_once('=').ok_or_else(|| {
                            format!("line {}: backup `{item}` is not job@worker=id", n + 1)
                        })?;
                        s.backups.insert(k.to_string(), id.to_string());
                    }
                }
                _ => {}
            }
        }
        if s.base_sha.is_empty() || s.merge_sha.is_empty() {
            return Err("BASE_SHA and MERGE_SHA must be set".into());
        }
        Ok(s)
    }

    pub fn done(&self, phase: super::Phase) -> bool {
        self.phases_done.iter().any(|p| p == phase.as_str())
    }

    /// The first phase that did not complete, if any.
    pub fn first_incomplete(&self) -> Option<super::Phase> {
        super::Phase::ALL.into_iter().find(|p| !self.done(*p))
    }

    pub fn mark_done(&mut self, phase: super::Phase) {
        if !self.done(phase) {
            self.phases_done.push(phase.as_str().to_string());
        }
    }

    pub async fn load(ctx: &Context, ticket: &str) -> Result<Option<StateFile>, EngineError> {
        let path = StateFile::path(&ctx.workspace, ticket);
        if ctx.store.is_shared() {
            if let Some(text) = ctx.store.release_file(ticket, "env").await? {
                refresh(&path, &text)?;
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => StateFile::parse(&text).map(Some).map_err(|e| {
                EngineError::usage(
                    format!("{}: {e}", path.display()),
                    "the state file is damaged; restore it from the audit log (.cutover/releases/<ticket>.log) or start over",
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Write-temp, fsync, rename: a reader sees the old file or the new
    /// one. A shared store gets it first.
    pub async fn save(&self, ctx: &Context) -> Result<(), EngineError> {
        let text = self.render();
        if ctx.store.is_shared() {
            ctx.store
                .put_release_file(&self.ticket, "env", &text, false)
                .await?;
        }
        write_atomic(
            &StateFile::path(&ctx.workspace, &self.ticket),
            text.as_bytes(),
        )
    }
}

/// Makes the file at `path` hold `text`, unless it already does.
fn refresh(path: &Path, text: &str) -> Result<(), EngineError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    write_atomic(path, text.as_bytes())
}

/// Brings this clone's copies of every release file up to date with a
/// shared store: what the listings (open releases, the UI) read.
pub async fn pull(ctx: &Context) -> Result<(), EngineError> {
    if !ctx.store.is_shared() {
        return Ok(());
    }
    for (ticket, kind, text) in ctx.store.release_files().await? {
        // A row names a file here: only a valid ticket does.
        if super::check_ticket(&ticket).is_err() || !matches!(kind.as_str(), "env" | "log") {
            continue;
        }
        refresh(
            &releases_dir(&ctx.workspace).join(format!("{ticket}.{kind}")),
            &text,
        )?;
    }
    Ok(())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let io = |what: &str| EngineError::io(format!("{what} {}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("writing"))?;
    tmp.write_all(bytes).map_err(io("writing"))?;
    tmp.as_file().sync_all().map_err(io("syncing"))?;
    tmp.persist(path)
        .map_err(|e| io("renaming into")(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `.cutover/releases/<T>.log`.
pub struct ReleaseLog {
    path: PathBuf,
    ticket: String,
    /// A shared store, which gets each line first.
    store: Option<std::sync::Arc<cutover_state::Store>>,
}

impl ReleaseLog {
    pub fn path(workspace: &Path, ticket: &str) -> PathBuf {
        releases_dir(workspace).join(format!("{ticket}.log"))
    }

    pub fn new(ctx: &Context, ticket: &str) -> ReleaseLog {
        ReleaseLog {
            path: ReleaseLog::path(&ctx.workspace, ticket),
            ticket: ticket.to_string(),
            store: ctx.store.is_shared().then(|| ctx.store.clone()),
        }
    }

    /// Appends `<time> ticket=T phase=P event=E[ extra]` and syncs it.
    pub async fn event(&self, phase: &str, event: &str, extra: &str) -> Result<(), EngineError> {
        let mut line = format!(
            "{} ticket={} phase={phase} event={event}",
            cutover_state::now_rfc3339(),
            self.ticket
        );
        if !extra.is_empty() {
            line.push(' ');
            line.push_str(extra);
        }
        line.push('\n');
        if let Some(store) = &self.store {
            store
                .put_release_file(&self.ticket, "log", &line, true)
                .await?;
        }
        let io = EngineError::io(format!("appending to {}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(EngineError::io(format!("creating {}", dir.display())))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| EngineError::io(format!("opening {}", self.path.display()))(e))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(io)
    }

    pub async fn phase(&self, phase: Phase, event: &str, extra: &str) -> Result<(), EngineError> {
        self.event(phase.as_str(), event, extra).await
    }

    /// The log's lines (this clone's copy; see [`pull`]).
    pub fn lines(workspace: &Path, ticket: &str) -> Vec<String> {
        std::fs::read_to_string(ReleaseLog::path(workspace, ticket))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_in_spec_format() {
        let mut s = StateFile {
            ticket: "1234".into(),
            branch: "main".into(),
            base_sha: "a1b2".into(),
            merge_sha: "e5f6".into(),
            services: vec!["redmine".into(), "wikijs".into()],
            ..StateFile::default()
        };
        s.backups
            .insert("redmine@web-1".into(), "20260518_153012".into());
        let text = s.render();
        assert_eq!(
            text,
            "TICKET=1234\nBRANCH=main\nBASE_SHA=a1b2\nMERGE_SHA=e5f6\nSERVICES=\"redmine wikijs\"\nSKIPPED_METADATA=\"\"\nBACKUPS=\"redmine@web-1=20260518_153012\"\nPHASES_DONE=\"\"\nREVERTED=\"\"\n"
        );
        s.phases_done = vec!["prepare".into(), "migrate".into()];
        let text = s.render();
        assert!(text.contains("PHASES_DONE=\"prepare migrate\"\n"));
        assert_eq!(StateFile::parse(&text), Ok(s.clone()));
        assert_eq!(s.first_incomplete(), Some(crate::release::Phase::Ticket));
        assert_eq!(StateFile::parse(&text), Ok(s));
    }
}
