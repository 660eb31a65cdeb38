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
