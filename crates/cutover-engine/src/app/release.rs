//! Ticket releases through the application layer: the run and its revert,
//! with their exit codes, audit lines, feed and matching playbooks.

use super::ops::{failure_rc, fed};
use super::playbooks::{matching, Match};
use super::{Answer, Invocation};
use crate::release::{self, Phase, ReleaseOptions, ReleaseOutcome, ReleaseReport, RevertOptions};
use crate::{Context, EngineError};

/// `cutover release run`: 0 complete (or a dry run), 5 nothing to release,
/// 4 drift found in verify, 130/143 when a signal stopped it, else 1 (a
/// ticket script's own exit status is in the release's log only). A
/// failed run comes with the recovery playbooks that fit its failure.
pub async fn release_run(
    ctx: &Context,
    inv: &Invocation,
    opts: &ReleaseOptions,
) -> Result<(ReleaseReport, Vec<Match>, Answer), EngineError> {
    let opts = &ReleaseOptions {
        command: inv.command.clone(),
        ..opts.clone()
    };
    // A dry run writes nothing: not even the feed.
    let (run_ctx, feed) = if opts.dry_run {
        (ctx.with_reporter(ctx.reporter.clone()), None)
    } else {
        let (c, f) = fed(ctx, inv);
        (c, Some(f))
    };
    let report = match release::run(&run_ctx, opts).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(f) = &feed {
                f.finish("error", e.exit_code());
            }
            return Err(e);
        }
    };
    let (rc, outcome) = match &report.outcome {
        ReleaseOutcome::Complete => (0, "complete"),
        ReleaseOutcome::DryRun => (0, "dry-run"),
        ReleaseOutcome::NothingToRelease { .. } => (5, "nothing-to-release"),
        ReleaseOutcome::Failed { phase, rc, .. } => (
            match (phase, rc) {
                _ if ctx.interrupt.is_set() => failure_rc(ctx),
                (Phase::Verify, 4) => 4,
                _ => 1,
            },
            "failed",
        ),
    };
    if !opts.dry_run {
        let mut detail = format!("ticket {}", opts.ticket);
        if let Some(h) = &report.took_over_lock {
            detail.push_str(&format!("; took over the stale lock of {h}"));
        }
        inv.audit(ctx, outcome, rc, &detail).await;
    }
    if let Some(f) = &feed {
        f.finish(outcome, rc);
    }
    let playbooks = match &report.outcome {
        ReleaseOutcome::Failed { phase, .. } => {
            matching(&ctx.project.root, phase.as_str(), &report.failure_output)
        }
        _ => Vec::new(),
    };
    let answer = Answer::new(outcome, rc)
        .with("report", &report)
        .with("playbooks", &playbooks);
    Ok((report, playbooks, answer))
}

/// `cutover release revert`.
pub async fn release_revert(
    ctx: &Context,
    inv: &Invocation,
    opts: &RevertOptions,
) -> Result<(release::RevertReport, Answer), EngineError> {
    let opts = &RevertOptions {
        command: inv.command.clone(),
        ..opts.clone()
    };
    let (run_ctx, feed) = fed(ctx, inv);
    let report = match release::revert(&run_ctx, opts).await {
        Ok(r) => r,
        Err(e) => {
            feed.finish("error", e.exit_code());
            return Err(e);
        }
    };
    let rc = if report.ok { 0 } else { failure_rc(ctx) };
    let outcome = if report.ok { "reverted" } else { "failed" };
    inv.audit(ctx, outcome, rc, &format!("ticket {}", opts.ticket))
        .await;
    feed.finish(outcome, rc);
    let answer = Answer::new(outcome, rc).with("report", &report);
    Ok((report, answer))
}
