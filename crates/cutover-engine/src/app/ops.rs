//! The operations the CLI and the server both offer: each runs the engine,
//! writes the audit line and the feed, and answers one [`Answer`].

use std::collections::BTreeSet;
use std::sync::Arc;

use super::feed::{FeedWriter, Tee};
use super::{shell_word, Answer, Invocation};
use crate::channel::status::ChannelStatus;
use crate::channel::{self, ChannelOp, ChannelOptions, ChannelReport};
use crate::deploy::{self, DeployOptions, DeployReport};
use crate::{Context, EngineError};

/// What a deploy was asked to do (the flags of `cutover deploy`).
#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    pub jobs: Option<BTreeSet<String>>,
    pub dry_run: bool,
    pub force: bool,
    pub sync_only: bool,
    pub verify: bool,
    pub purge_data: bool,
}

/// `cutover deploy` as the CLI spells it, for the records.
pub fn deploy_command(r: &DeployRequest) -> String {
    let mut c = String::from("cutover deploy");
    if let Some(jobs) = &r.jobs {
        let list: Vec<&str> = jobs.iter().map(String::as_str).collect();
        c.push_str(&format!(" --jobs {}", shell_word(&list.join(","))));
    }
    for (on, flag) in [
        (r.dry_run, "--dry-run"),
        (r.force, "--force"),
        (r.sync_only, "--sync-only"),
        (r.verify, "--verify"),
        (r.purge_data, "--purge-data"),
    ] {
        if on {
            c.push(' ');
            c.push_str(flag);
        }
    }
    c
}

/// The run's context: the front end's reporter, and the feed beside it.
pub(super) fn fed(ctx: &Context, inv: &Invocation) -> (Context, Arc<FeedWriter>) {
    let feed = FeedWriter::begin(&ctx.workspace, inv);
    // A second signal stops the process at once: the run still leaves its
    // audit line and the end of its feed.
    let on_abort = {
        let (feed, workspace, command) = (feed.clone(), ctx.workspace.clone(), inv.command.clone());
        let op = crate::Operator {
            user: inv.actor.clone(),
            ..ctx.operator.clone()
        };
        Box::new(move |rc: u8| {
            let detail = "stopped at once by a second signal; the next run resumes it";
            let _ =
                crate::audit::append(&workspace, &op, &command, "aborted", i32::from(rc), detail);
            feed.finish("aborted", rc);
        })
    };
    feed.hold(ctx.interrupt.on_abort(on_abort));
    let mut ctx = ctx.with_reporter(Arc::new(Tee(ctx.reporter.clone(), feed.clone())));
    ctx.operator.user = inv.actor.clone();
    (ctx, feed)
}

/// The exit code of a run that did not succeed: 1, or 130 / 143 when a
/// signal stopped it.
pub(super) fn failure_rc(ctx: &Context) -> u8 {
    ctx.interrupt.exit_code().unwrap_or(1)
}

/// Refuses a value with control characters (an escape sequence, a
/// newline): it is shown in terminals, pages and the feed, and must not
/// drive a terminal or forge a line there.
fn plain_text(what: &str, text: &str) -> Result<(), EngineError> {
    if text.chars().any(char::is_control) {
        return Err(EngineError::usage(
            format!("{what} holds a control character (a newline or an escape sequence)"),
            "write it on one line, in plain text",
        ));
    }
    Ok(())
}

/// A fleet deploy (or its plan, with `dry_run`).
pub async fn deploy(
    ctx: &Context,
    inv: &Invocation,
    req: &DeployRequest,
) -> Result<(DeployReport, Answer), EngineError> {
    let (head, dirty) = super::git_head(&ctx.project.root);
    let opts = DeployOptions {
        jobs: req.jobs.clone(),
        dry_run: req.dry_run,
        force: req.force,
        sync_only: req.sync_only,
        command: inv.command.clone(),
        head,
        dirty,
        lock_held: false,
        verify: req.verify,
        purge_data: req.purge_data,
    };
    if req.dry_run {
        let report = deploy::deploy(ctx, &opts).await?;
        let answer = Answer::new(report.outcome.as_str(), 0)
            .with("dry_run", true)
            .with("report", &report);
        return Ok((report, answer));
    }
    let (run_ctx, feed) = fed(ctx, inv);
    let report = match deploy::deploy(&run_ctx, &opts).await {
        Ok(r) => r,
        Err(e) => {
            // Refused (bad input, a held lock): audited as such.
            let refused = Answer::error(&e);
            let why = e.to_string();
            inv.audit(
                ctx,
                &refused.outcome,
                refused.exit_code,
                why.lines().next().unwrap_or_default(),
            )
            .await;
            feed.finish(&refused.outcome, refused.exit_code);
            return Err(e);
        }
    };
    let rc = if report.outcome.ok() {
        0
    } else {
        failure_rc(ctx)
    };
    let mut detail = report
        .seq
        .map(|n| format!("deployment {n}"))
        .unwrap_or_default();
    if let Some(h) = &report.took_over_lock {
        detail.push_str(&format!("; took over the lock of {h}"));
    }
    inv.audit(ctx, report.outcome.as_str(), rc, &detail).await;
    feed.finish(report.outcome.as_str(), rc);
    let answer = Answer::new(report.outcome.as_str(), rc)
        .with("dry_run", false)
        .with("report", &report);
    Ok((report, answer))
}

/// `cutover channel canary|promote|rollback|resign` as the CLI spells it.
pub fn channel_command(op: ChannelOp, o: &ChannelOptions) -> String {
    let mut c = format!("cutover channel {} {}", op.as_str(), shell_word(&o.job));
    if let Some(v) = &o.version {
        c.push_str(&format!(" --version {}", shell_word(v)));
    }
    if !o.reason.is_empty() {
        c.push_str(&format!(" --reason {}", shell_word(&o.reason)));
    }
    if !o.ticket.is_empty() {
        c.push_str(&format!(" --ticket {}", shell_word(&o.ticket)));
    }
    for (on, flag) in [
        (o.force, "--force"),
        (o.allow.expired, "--allow-expired"),
        (o.allow.rollback, "--allow-rollback"),
    ] {
        if on {
            c.push(' ');
            c.push_str(flag);
        }
    }
    c
}

/// A channel change: canary, promote, rollback or resign. A refusal is
/// audited too. The lock and the records name `inv.command`.
pub async fn channel(
    ctx: &Context,
    inv: &Invocation,
    op: ChannelOp,
    opts: &ChannelOptions,
) -> Result<(ChannelReport, Answer), EngineError> {
    for (what, text) in [
        ("--reason", &opts.reason),
        ("--ticket", &opts.ticket),
        ("--actor", &opts.actor),
    ] {
        plain_text(what, text)?;
    }
    let opts = &ChannelOptions {
        command: inv.command.clone(),
        ..opts.clone()
    };
    let detail = |extra: &str| {
        let mut d = format!("job {}", opts.job);
        if let Some(v) = &opts.version {
            d.push_str(&format!(" version {v}"));
        }
        d.push_str(&format!(" actor {}", opts.actor));
        if !opts.reason.is_empty() {
            d.push_str(&format!(" reason {:?}", opts.reason));
        }
        if !opts.ticket.is_empty() {
            d.push_str(&format!(" ticket {}", opts.ticket));
        }
        d.push_str(extra);
        d
    };
    let (run_ctx, feed) = fed(ctx, inv);
    let report = match channel::run(&run_ctx, op, opts).await {
        Ok(r) => r,
        Err(e) => {
            let rc = e.exit_code();
            inv.audit(ctx, "refused", rc, &detail(&format!(": {e}")))
                .await;
            feed.finish("refused", rc);
            return Err(e);
        }
    };
    let rc = if report.ok() { 0 } else { failure_rc(ctx) };
    let outcome = report
        .deploy
        .as_ref()
        .map_or("succeeded", |d| d.outcome.as_str());
    let mut extra = format!(" seq {}", report.seq);
    if let Some(f) = &report.forced {
        extra.push_str(&format!("; forced: {f}"));
    }
    if let Some(d) = report.deploy.as_ref().and_then(|d| d.seq) {
        extra.push_str(&format!("; deployment {d}"));
    }
    inv.audit(ctx, outcome, rc, &detail(&extra)).await;
    feed.finish(outcome, rc);
    let answer = Answer::new(outcome, rc).with("report", &report);
    Ok((report, answer))
}

/// The channels of every published job (or one), as the store and the
/// fleet have them; exit 4 when an index is refused.
pub async fn channel_status(
    ctx: &Context,
    job: Option<&str>,
    index_url: Option<&str>,
) -> Result<(ChannelStatus, Answer), EngineError> {
    let st = channel::status::status(ctx, job, index_url).await?;
    let rc = if st.any_refused() { 4 } else { 0 };
    let answer = Answer::new(if rc == 0 { "ok" } else { "refused" }, rc).with("report", &st);
    Ok((st, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_spelled_as_typed_and_quoted() {
        let r = DeployRequest {
            jobs: Some(["api".to_string(), "web".to_string()].into()),
            force: true,
            ..Default::default()
        };
        assert_eq!(deploy_command(&r), "cutover deploy --jobs api,web --force");
        let o = ChannelOptions {
            job: "web".into(),
            version: Some("1.2.0".into()),
            actor: "ana".into(),
            reason: "it's fine; $(rm -rf /)".into(),
            ticket: String::new(),
            keys: Vec::new(),
            force: false,
            allow: Default::default(),
            command: String::new(),
        };
        assert_eq!(
            channel_command(ChannelOp::Promote, &o),
            r"cutover channel promote web --version 1.2.0 --reason 'it'\''s fine; $(rm -rf /)'"
        );
    }
}
