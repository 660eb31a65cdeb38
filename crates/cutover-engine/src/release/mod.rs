//! Ticket releases (SPEC section 5): four phases, each persisted before the
//! next side effect, halting on the first failure.
//!
//! - prepare: git (fetch, BASE_SHA, pull --ff-only, MERGE_SHA), the services
//!   the diff touched, the releases they run now, backups, the state file;
//! - migrate: the diff's plan, run as a fleet deploy of SERVICES;
//! - ticket: `releases/<TICKET>-*.sh --yes`;
//! - verify: HEAD == MERGE_SHA, zero drift, health.
//!
//! `revert` puts back what prepare recorded; `--from` resumes from the
//! state file.

mod files;
mod git;
pub mod plan;
mod rebuild_base;
mod revert;
mod run;

pub use files::{pull as pull_files, ReleaseLog, StateFile};
pub use git::{Git, GitError};
pub use revert::{return_to_main, revert, RevertOptions, RevertReport};
pub use run::{run, ReleaseOptions, ReleaseOutcome, ReleaseReport};

use serde::{Deserialize, Serialize};

use crate::{Context, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prepare,
    Migrate,
    Ticket,
    Verify,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Prepare, Phase::Migrate, Phase::Ticket, Phase::Verify];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Migrate => "migrate",
            Phase::Ticket => "ticket",
            Phase::Verify => "verify",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What an allocation ran when the release started, so revert can switch back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseAllocation {
    pub job: String,
    pub worker: String,
    pub release_id: String,
    pub hash: Option<String>,
    pub version: Option<String>,
}

pub(crate) fn failure_key(ticket: &str) -> String {
    format!("release:{ticket}:failure")
}

/// The last failure of a release: its phase and output (for playbooks).
pub async fn last_failure(
    ctx: &Context,
    ticket: &str,
) -> Result<Option<(Phase, String)>, EngineError> {
    let Some(json) = ctx.store.meta_get(&failure_key(ticket)).await? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let phase = v["phase"].as_str().and_then(Phase::parse);
    Ok(phase.map(|p| (p, v["output"].as_str().unwrap_or_default().to_string())))
}

/// A backup id as a backup command may print it: what `restore` gets.
/// Bounded and of safe characters, whatever the worker printed.
pub(crate) fn valid_backup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@+-".contains(c))
        && !id.starts_with('-')
}

fn base_key(ticket: &str) -> String {
    format!("release:{ticket}:base")
}

pub(crate) async fn load_base(
    ctx: &Context,
    ticket: &str,
) -> Result<Vec<BaseAllocation>, EngineError> {
    Ok(ctx
        .store
        .meta_get(&base_key(ticket))
        .await?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

/// Ticket ids name files: letters, digits, `.`, `_` and `-` only.
pub fn check_ticket(ticket: &str) -> Result<(), EngineError> {
    let ok = !ticket.is_empty()
        && !ticket.starts_with('.')
        && ticket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(EngineError::usage(
            format!("`{ticket}` is not a valid ticket id"),
            "use letters, digits, `.`, `_` and `-`, e.g. 1234 or PROJ-1234",
        ))
    }
}

/// Where a release stands, from its audit log.
pub fn standing(lines: &[String]) -> String {
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
    };
    let mut standing = "not started".to_string();
    for l in lines {
        let (Some(phase), Some(event)) = (field(l, "phase"), field(l, "event")) else {
            continue;
        };
        standing = match (phase.as_str(), event.as_str()) {
            ("orchestrator", "done") => "complete".into(),
            ("revert", "done") => "reverted".into(),
            ("revert", "failed") => "revert failed".into(),
            ("revert", "start") => "revert in progress".into(),
            (p, "failed") => format!("failed in {p}"),
            (p, "start") => format!("in progress ({p})"),
            _ => standing,
        };
    }
    standing
}

/// The BASE releases of every ticket release that is neither complete nor
/// reverted: a revert of it switches back to them, so pruning keeps them.
pub(crate) async fn open_bases(ctx: &Context) -> Result<Vec<BaseAllocation>, EngineError> {
    let dir = files::releases_dir(&ctx.workspace);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ticket) = name.strip_suffix(".env") else {
            continue;
        };
        let Ok(Some(state)) = StateFile::load(ctx, ticket).await else {
            continue;
        };
        if state.reverted.is_empty() && state.first_incomplete().is_some() {
            out.extend(load_base(ctx, ticket).await?);
        }
    }
    Ok(out)
}
