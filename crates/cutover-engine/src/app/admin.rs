//! The smaller mutating commands through the application layer: each runs
//! the engine, decides its outcome and exit code, and writes its audit
//! line, so that no front end does.

use super::ops::failure_rc;
use super::{Answer, Invocation};
use crate::jobrun::{self, Forgotten, PurgeReport, TargetResult};
use crate::publish::{PublishOptions, Published};
use crate::rebuild::RebuildReport;
use crate::{Context, EngineError};

fn ok_or(rc: u8, ok: &'static str, not: &'static str) -> &'static str {
    if rc == 0 {
        ok
    } else {
        not
    }
}

/// `cutover publish`. Stopped by a signal, it is audited as interrupted
/// (the error then carries 130 / 143 through the interrupt).
pub async fn publish(
    ctx: &Context,
    inv: &Invocation,
    opts: &PublishOptions,
) -> Result<(Published, Answer), EngineError> {
    let p = match crate::publish::publish(ctx, opts).await {
        Ok(p) => p,
        Err(e) => {
            let (outcome, rc) = match ctx.interrupt.exit_code() {
                Some(rc) => ("interrupted", rc),
                None => ("failed", e.exit_code()),
            };
            inv.audit(ctx, outcome, rc, &format!("job {}: {e}", opts.job))
                .await;
            return Err(e);
        }
    };
    let forced = if opts.force { "; forced" } else { "" };
    inv.audit(
        ctx,
        "published",
        0,
        &format!("job {} version {} seq {}{forced}", p.job, p.version, p.seq),
    )
    .await;
    let answer = Answer::new("published", 0).with("report", &p);
    Ok((p, answer))
}

/// `cutover job run JOB --target T`.
pub async fn job_run(
    ctx: &Context,
    inv: &Invocation,
    job: &str,
    target: &str,
    workers: Option<&[String]>,
) -> Result<(Vec<TargetResult>, Answer), EngineError> {
    let results = jobrun::run_target(ctx, job, target, workers).await?;
    let rc = if results.iter().all(|r| r.ok) { 0 } else { 1 };
    let outcome = ok_or(rc, "success", "failed");
    inv.audit(ctx, outcome, rc, "").await;
    let answer = Answer::new(outcome, rc).with("results", &results);
    Ok((results, answer))
}

/// `cutover job purge JOB` (once the operator confirmed).
pub async fn job_purge(
    ctx: &Context,
    inv: &Invocation,
    job: &str,
) -> Result<(PurgeReport, Answer), EngineError> {
    let report = jobrun::purge(ctx, job, &inv.command).await?;
    let rc = if report.allocations.iter().all(|p| p.ok) {
        0
    } else {
        failure_rc(ctx)
    };
    let outcome = ok_or(rc, "success", "failed");
    inv.audit(ctx, outcome, rc, "").await;
    let answer = Answer::new(outcome, rc).with("report", &report);
    Ok((report, answer))
}

/// `cutover worker forget NAME`.
pub async fn worker_forget(
    ctx: &Context,
    inv: &Invocation,
    name: &str,
) -> Result<(Forgotten, Answer), EngineError> {
    let report = jobrun::forget_worker(ctx, name, &inv.command).await?;
    inv.audit(ctx, "forgotten", 0, &format!("worker {name}"))
        .await;
    let answer = Answer::new("forgotten", 0).with("report", &report);
    Ok((report, answer))
}

/// `cutover state rebuild`, under the project lock.
pub async fn state_rebuild(
    ctx: &Context,
    inv: &Invocation,
) -> Result<(RebuildReport, Answer), EngineError> {
    let _lock = ctx.store.lock(&ctx.holder(&inv.command, None)).await?;
    let report = crate::rebuild::rebuild_store(ctx).await?;
    let rc = if report.unreachable.is_empty() { 0 } else { 1 };
    let outcome = ok_or(rc, "success", "partial");
    inv.audit(
        ctx,
        outcome,
        rc,
        &format!("rebuilt={}", report.rebuilt.len()),
    )
    .await;
    let answer = Answer::new(outcome, rc).with("report", &report);
    Ok((report, answer))
}

/// What `lock release` did.
pub struct Released {
    /// Whose lock record it was.
    pub holder: Option<cutover_state::LockHolder>,
    /// Whether that holder was live and was ended (PostgreSQL).
    pub ended: bool,
}

/// `cutover lock release [--force]`: clears a lock record, or ends a live
/// lock that is the caller's own (or anyone's, with `force`); audited with
/// whose it was.
pub async fn lock_release(
    ctx: &Context,
    inv: &Invocation,
    force: bool,
) -> Result<(Released, Answer), EngineError> {
    let caller = ctx.holder(&inv.command, None);
    let (holder, ended) = ctx.store.release_lock(&caller, force).await?;
    let detail = match (&holder, ended) {
        (Some(h), true) => format!("ended {h}"),
        (Some(h), false) => format!("cleared {h}"),
        (None, _) => String::new(),
    };
    inv.audit(ctx, "success", 0, &detail).await;
    let answer = Answer::ok().with("cleared", &holder).with("ended", ended);
    Ok((Released { holder, ended }, answer))
}

/// `cutover kv put`: the audit line (the invocation's command) names the
/// key, never the value.
pub async fn kv_put(
    ctx: &Context,
    inv: &Invocation,
    job: &str,
    key: &str,
    value: cutover_state::Secret,
    secret: bool,
) -> Result<Answer, EngineError> {
    crate::kv::put(ctx, job, key, value, secret).await?;
    inv.audit(ctx, "success", 0, "").await;
    Ok(Answer::ok()
        .with("job", job)
        .with("key", key)
        .with("secret", secret))
}

/// `cutover secrets add-operator NAME PUBKEY` (audited).
pub async fn secrets_add_operator(
    ctx: &Context,
    inv: &Invocation,
    name: &str,
    pubkey: &str,
) -> Result<(crate::secrets::Added, Answer), EngineError> {
    let added = audited(
        ctx,
        inv,
        crate::secrets::add_operator(ctx, name, pubkey).await,
    )
    .await?;
    let answer = Answer::ok()
        .with("operator", name)
        .with("first", added.first)
        .with("reencrypted", added.reencrypted)
        .with("replaced", &added.replaced);
    Ok((added, answer))
}

/// `cutover secrets remove-operator NAME` (audited): every secret under a
/// new data key. Returns how many were re-encrypted.
pub async fn secrets_remove_operator(
    ctx: &Context,
    inv: &Invocation,
    name: &str,
) -> Result<(usize, Answer), EngineError> {
    let n = audited(ctx, inv, crate::secrets::remove_operator(ctx, name).await).await?;
    Ok((
        n,
        Answer::ok().with("operator", name).with("reencrypted", n),
    ))
}

/// `cutover secrets rotate-key` (audited). Returns how many secrets were
/// re-encrypted.
pub async fn secrets_rotate_key(
    ctx: &Context,
    inv: &Invocation,
) -> Result<(usize, Answer), EngineError> {
    let n = audited(ctx, inv, crate::secrets::rotate_key(ctx).await).await?;
    Ok((n, Answer::ok().with("reencrypted", n)))
}

/// Writes the audit line of a command that ran (a refusal of bad input,
/// exit 2, changed nothing and is not recorded).
async fn audited<T>(
    ctx: &Context,
    inv: &Invocation,
    result: Result<T, EngineError>,
) -> Result<T, EngineError> {
    match &result {
        Ok(_) => inv.audit(ctx, "success", 0, "").await,
        Err(e) if e.exit_code() != 2 => {
            inv.audit(ctx, "failed", e.exit_code(), &e.to_string())
                .await
        }
        Err(_) => {}
    }
    result
}

/// `cutover kv delete`.
pub async fn kv_delete(
    ctx: &Context,
    inv: &Invocation,
    job: &str,
    key: &str,
) -> Result<Answer, EngineError> {
    crate::kv::delete(ctx, job, key).await?;
    inv.audit(ctx, "success", 0, "").await;
    Ok(Answer::ok())
}

/// `cutover release return-to-main`: back on the main branch, deployed.
pub async fn return_to_main(
    ctx: &Context,
    inv: &Invocation,
) -> Result<(crate::deploy::DeployReport, Answer), EngineError> {
    let (run_ctx, feed) = super::ops::fed(ctx, inv);
    let report = match crate::release::return_to_main(&run_ctx, &inv.command).await {
        Ok(r) => r,
        Err(e) => {
            feed.finish("error", e.exit_code());
            return Err(e);
        }
    };
    let rc = if report.outcome.ok() {
        0
    } else {
        failure_rc(ctx)
    };
    inv.audit(ctx, report.outcome.as_str(), rc, "").await;
    feed.finish(report.outcome.as_str(), rc);
    let answer = Answer::new(report.outcome.as_str(), rc).with("report", &report);
    Ok((report, answer))
}

/// What `state migrate` copied, and where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    pub from: String,
    pub to: String,
    /// Rows per table, as copied and as read back from the copy.
    pub counts: Vec<(String, usize)>,
    pub digest: String,
}

/// `cutover state migrate --to URL`: copies this project's store into an
/// empty one (PostgreSQL, or `sqlite:PATH`) under the project lock, then
/// reads the copy back and compares every row. It switches nothing: the
/// project keeps its store until the operator changes `[state]`.
pub async fn state_migrate(
    ctx: &Context,
    inv: &Invocation,
    to: &str,
) -> Result<(Migrated, Answer), EngineError> {
    let target = open_target(ctx, to).await?;
    let from = ctx.store.location();
    if target.location() == from {
        return Err(EngineError::usage(
            format!("--to names the store this project already uses ({from})"),
            "name another store: an empty PostgreSQL database, or sqlite:PATH",
        ));
    }
    let _lock = ctx.store.lock(&ctx.holder(&inv.command, None)).await?;
    if !target.is_empty().await? {
        return Err(EngineError::usage(
            format!("the store at {} already holds state", target.location()),
            "cutover copies only into an empty store: give it a new database (or file), or drop what is there if it is not needed",
        ));
    }
    let mut snapshot = ctx.store.export().await?;
    if !ctx.store.is_shared() {
        with_local_files(ctx, &mut snapshot)?;
    }
    target.import(&snapshot).await?;
    let copy = target.export().await?;
    target.close().await;
    let digest = snapshot.digest();
    let counts: Vec<(String, usize)> = snapshot
        .counts()
        .into_iter()
        .map(|(t, n)| (t.to_string(), n))
        .collect();
    if copy.digest() != digest {
        let differ: Vec<String> = snapshot
            .counts()
            .into_iter()
            .zip(copy.counts())
            .map(|((t, a), (_, b))| format!("{t} {a}/{b}"))
            .collect();
        return Err(EngineError::Failed(format!(
            "the copy at {} does not read back the same as {from} (rows copied/read per table: {}); nothing was switched: drop the copy and run the migration again",
            target.location(),
            differ.join(", ")
        )));
    }
    let report = Migrated {
        from,
        to: target.location(),
        counts,
        digest,
    };
    inv.audit(ctx, "success", 0, &format!("copied to {}", report.to))
        .await;
    let answer = Answer::ok().with("report", &report);
    Ok((report, answer))
}

/// The store `--to` names: `postgres://...`, or `sqlite:PATH` (a state.db
/// file, made if missing).
async fn open_target(ctx: &Context, to: &str) -> Result<cutover_state::Store, EngineError> {
    use cutover_state::{PgStore, SqliteStore, Store};
    if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        let lease = match &ctx.project.config.state {
            cutover_model::StateBackend::Postgres { lease, .. } => *lease,
            cutover_model::StateBackend::Sqlite => std::time::Duration::from_secs(30),
        };
        return Ok(Store::Postgres(Box::new(PgStore::open(to, lease).await?)));
    }
    if let Some(path) = to.strip_prefix("sqlite://").or(to.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(EngineError::usage(
                "--to sqlite: names no file",
                "write it as sqlite:PATH, e.g. sqlite:.cutover/state.db",
            ));
        }
        let path = ctx.project.root.join(path);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0 || !m.is_file()) {
            return Err(EngineError::usage(
                format!("{} already exists", path.display()),
                "cutover copies only into a new file: name one that does not exist",
            ));
        }
        return Ok(Store::Sqlite(SqliteStore::open_file(&path).await?));
    }
    Err(EngineError::usage(
        format!(
            "--to `{}` is not a store URL",
            cutover_state::redact_url(to)
        ),
        "write postgres://USER:PASSWORD@HOST:PORT/DB, or sqlite:PATH",
    ))
}

/// The embedded store keeps release files and the audit log as files:
/// a copy takes them too.
fn with_local_files(
    ctx: &Context,
    snapshot: &mut cutover_state::Snapshot,
) -> Result<(), EngineError> {
    let dir = ctx.workspace.join("releases");
    let mut files: Vec<(String, String, String)> = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((ticket, kind)) = name.rsplit_once('.') else {
            continue;
        };
        if !matches!(kind, "env" | "log") || crate::release::check_ticket(ticket).is_err() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(EngineError::io(format!(
            "reading {}",
            entry.path().display()
        )))?;
        files.push((ticket.to_string(), kind.to_string(), text));
    }
    files.sort();
    snapshot.release_files = files;
    if snapshot.audit.is_empty() {
        let log = ctx.workspace.join("audit.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            snapshot.audit = text.lines().map(str::to_string).collect();
        }
    }
    Ok(())
}
