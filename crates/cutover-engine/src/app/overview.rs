//! The fleet at a glance, for the admin UI and `/api/overview`: every job
//! with its channels and versions, every allocation with what it runs and
//! its health, the lock, and the last deployments. Read from the state
//! store and the release store; with `live`, health and drift are checked
//! on the workers now (what `cutover status` does).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::channel::status::JobChannels;
use crate::{Context, EngineError};

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub project: String,
    pub store: Option<String>,
    /// Why the release store could not be read, when it could not.
    pub store_error: Option<String>,
    pub jobs: Vec<JobView>,
    pub workers: Vec<WorkerView>,
    pub lock: Option<cutover_state::LockHolder>,
    pub deployments: Vec<serde_json::Value>,
    /// Whether health and drift were checked on the workers now.
    pub live: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job: String,
    pub wave: usize,
    /// Has a release index in the store.
    pub published: bool,
    pub seq: Option<u64>,
    pub expires: Option<String>,
    /// Why the index was refused (shown as INVALID).
    pub refused: Option<String>,
    pub channels: BTreeMap<String, String>,
    pub versions: Vec<String>,
    pub allocations: Vec<AllocView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocView {
    pub worker: String,
    /// canary | stable, for a published job.
    pub channel: Option<String>,
    /// The version its channel points at.
    pub wants: Option<String>,
    /// The version (or the tree hash, short) it runs.
    pub runs: Option<String>,
    /// promoted | failed | stopped | not deployed
    pub status: String,
    /// As recorded at the last deploy, or checked now with `live`.
    pub health: String,
    pub drift: Option<String>,
    pub message: String,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub worker: String,
    pub host: String,
    pub jobs: Vec<String>,
}

pub async fn overview(ctx: &Context, live: bool) -> Result<Overview, EngineError> {
    let project = &ctx.project;
    let records = ctx.store.allocations().await?;
    let (channels, store_error) = match &project.config.store_url {
        None => (Vec::new(), None),
        Some(_) => match crate::channel::status::status(ctx, None, None).await {
            Ok(st) => (st.jobs, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
    };
    let checked = if live {
        Some(crate::status::live(ctx, None, true).await?)
    } else {
        None
    };
    let waves = project.waves();
    let wave_of = |job: &str| {
        waves
            .iter()
            .position(|w| w.iter().any(|j| j == job))
            .map_or(0, |i| i + 1)
    };
    let mut jobs = Vec::new();
    for j in project.jobs.values() {
        let ch: Option<&JobChannels> = channels.iter().find(|c| c.job == j.name);
        let allocations = project
            .workers_for(j)
            .map(|w| {
                let rec = records
                    .iter()
                    .find(|r| r.job == j.name && r.worker == w.name);
                let wc = ch.and_then(|c| c.workers.iter().find(|x| x.worker == w.name));
                let now = checked
                    .as_ref()
                    .and_then(|c| c.get(&(j.name.clone(), w.name.clone())));
                AllocView {
                    worker: w.name.clone(),
                    channel: wc.map(|x| x.channel.clone()),
                    wants: wc.and_then(|x| x.wants.clone()),
                    runs: rec.and_then(|r| {
                        r.version
                            .clone()
                            .or_else(|| r.hash.as_ref().map(|h| h[..12.min(h.len())].to_string()))
                    }),
                    status: rec.map_or("not deployed".into(), |r| r.status.as_str().to_string()),
                    health: now.map_or_else(
                        || rec.map_or("unknown".into(), |r| r.health.clone()),
                        |l| l.health.clone(),
                    ),
                    drift: now.map(|l| l.drift.clone()),
                    message: rec.map(|r| r.message.clone()).unwrap_or_default(),
                    updated_at: rec.map(|r| r.updated_at.clone()),
                }
            })
            .collect();
        jobs.push(JobView {
            job: j.name.clone(),
            wave: wave_of(&j.name),
            published: ch.is_some(),
            seq: ch.and_then(|c| c.seq),
            expires: ch.and_then(|c| c.expires.clone()),
            refused: ch.and_then(|c| c.refused.clone()),
            channels: ch.map(|c| c.channels.clone()).unwrap_or_default(),
            versions: ch
                .map(|c| c.versions.iter().map(|v| v.version.clone()).collect())
                .unwrap_or_default(),
            allocations,
        });
    }
    let workers = project
        .workers
        .iter()
        .map(|w| WorkerView {
            worker: w.name.clone(),
            host: w.host.clone(),
            jobs: project
                .jobs
                .values()
                .filter(|j| project.workers_for(j).any(|x| x.name == w.name))
                .map(|j| j.name.clone())
                .collect(),
        })
        .collect();
    Ok(Overview {
        project: project.config.name.clone(),
        store: project.config.store_url.clone(),
        store_error,
        jobs,
        workers,
        lock: ctx.store.lock_status().await?,
        deployments: deployments(ctx, 20).await?,
        live,
    })
}

/// The last `limit` deployments, newest first, each with its summary as
/// a document.
pub async fn deployments(ctx: &Context, limit: i64) -> Result<Vec<serde_json::Value>, EngineError> {
    Ok(crate::deploy::deployments(ctx, limit)
        .await?
        .into_iter()
        .map(|d| {
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            v["summary"] = serde_json::from_str(&d.summary).unwrap_or_default();
            v
        })
        .collect())
}

/// One ticket release as its files under `.cutover/releases/` have it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    pub ticket: String,
    /// The state file, parsed; `None` when it does not parse.
    pub state: Option<crate::release::StateFile>,
    /// Why the state file does not parse.
    pub state_error: Option<String>,
    /// `complete`, `failed in <phase>`, ... (as `cutover release state` says).
    pub standing: String,
    pub log: Vec<String>,
}

/// Every ticket release with a state file, newest change first; with
/// `ticket`, that one only (none when it has no state file). A shared
/// store's files are brought up to date first (`cutover serve` stays up
/// while other operators release).
pub async fn releases(ctx: &Context, ticket: Option<&str>) -> Vec<ReleaseView> {
    if let Err(e) = crate::release::pull_files(ctx).await {
        eprintln!("warning: cannot read the store's release files: {e}");
    }
    let dir = ctx.workspace.join("releases");
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let t = name.strip_suffix(".env")?.to_string();
            let when = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((when, t))
        })
        .filter(|(_, t)| ticket.is_none_or(|want| want == t))
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    found
        .into_iter()
        .map(|(_, t)| {
            let text = std::fs::read_to_string(crate::release::StateFile::path(&ctx.workspace, &t))
                .unwrap_or_default();
            let (state, state_error) = match crate::release::StateFile::parse(&text) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            let log = crate::release::ReleaseLog::lines(&ctx.workspace, &t);
            ReleaseView {
                standing: crate::release::standing(&log),
                ticket: t,
                state,
                state_error,
                log,
            }
        })
        .collect()
}

/// The last `limit` lines of the audit log, newest first: a shared
/// store's (every operator's), else `.cutover/audit.log`'s.
pub async fn audit_lines(ctx: &Context, limit: usize) -> Vec<String> {
    if ctx.store.is_shared() {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        return match ctx.store.audit_tail(limit).await {
            Ok(mut lines) => {
                lines.reverse();
                lines
            }
            Err(e) => vec![format!("(cannot read the store's audit log: {e})")],
        };
    }
    file_audit_lines(ctx, limit)
}

/// The last `limit` lines of `.cutover/audit.log`, newest first, read
/// from the end of the log (at most its last 4 MiB): a long history costs
/// a page nothing.
fn file_audit_lines(ctx: &Context, limit: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4 << 20;
    let Ok(mut f) = std::fs::File::open(ctx.workspace.join("audit.log")) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is cut.
        lines.remove(0);
    }
    lines
        .iter()
        .rev()
        .take(limit)
        .map(|l| l.to_string())
        .collect()
}

/// One job's view (as in the overview) and its lines of the audit log.
pub async fn job_view(ctx: &Context, job: &str) -> Result<(JobView, Vec<String>), EngineError> {
    if !ctx.project.jobs.contains_key(job) {
        let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
        return Err(EngineError::usage(
            format!("no job named `{job}`"),
            format!("jobs: {}", known.join(", ")),
        ));
    }
    let ov = overview(ctx, false).await?;
    let view = ov
        .jobs
        .into_iter()
        .find(|j| j.job == job)
        .ok_or_else(|| EngineError::Internal(format!("job {job} missing from the overview")))?;
    let word = |l: &str| {
        l.split(|c: char| c.is_whitespace() || c == '"' || c == '=')
            .any(|w| w == job)
    };
    let history = audit_lines(ctx, 5000)
        .await
        .into_iter()
        .filter(|l| word(l))
        .take(100)
        .collect();
    Ok((view, history))
}
