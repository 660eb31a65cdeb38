//! `cutover release run`: the four phases, in order, halting on the first
//! failure, each one's start and end in the release's audit log.

use std::collections::{BTreeMap, BTreeSet};

use cutover_model::classify::classify;
use cutover_model::plan::Plan;
use cutover_state::AllocStatus;
use cutover_transport::Command;
use serde::Serialize;

use super::files::{ReleaseLog, StateFile};
use super::git::Git;
use super::{base_key, BaseAllocation, Phase};
use crate::deploy::{self, DeployOptions};
use crate::events::Event;
use crate::fleet::Fleet;
use crate::remote::LifecycleEnv;
use crate::{Context, EngineError};

#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    pub ticket: String,
    /// Release this branch instead of `main_branch` (a hotfix).
    pub branch: Option<String>,
    pub dry_run: bool,
    pub from: Option<Phase>,
    pub skip: BTreeSet<Phase>,
    pub force_allow_non_main: bool,
    /// Refuse a release whose diff has files that belong to no job.
    pub strict: bool,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ReleaseOutcome {
    Complete,
    Failed {
        phase: Phase,
        rc: i32,
        message: String,
    },
    NothingToRelease {
        message: String,
    },
    DryRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub ticket: String,
    pub outcome: ReleaseOutcome,
    pub state: Option<StateFile>,
    /// The migrate plan (what was, or in a dry run would be, deployed).
    pub plan: Option<Plan>,
    /// The ticket script that ran or would run.
    pub script: Option<String>,
    /// Output of the failed step, for playbook matching.
    pub failure_output: String,
    /// The holder of a stale lock (a killed run) this one took over.
    pub took_over_lock: Option<String>,
}

/// A phase's failure: its exit code and what it printed.
struct PhaseError {
    rc: i32,
    message: String,
    /// The failing step's whole output, when the message holds only its
    /// tail: what playbooks match and the release's record keeps.
    detail: Option<String>,
}

impl From<EngineError> for PhaseError {
    fn from(e: EngineError) -> Self {
        PhaseError {
            detail: None,
            rc: 1,
            message: e.to_string(),
        }
    }
}

pub(crate) fn say(ctx: &Context, text: impl Into<String>) {
    ctx.reporter.event(&Event::Message { text: text.into() });
}

pub async fn run(ctx: &Context, opts: &ReleaseOptions) -> Result<ReleaseReport, EngineError> {
    super::check_ticket(&opts.ticket)?;
    // Whatever a backup, a ticket script or a health command prints, a
    // secret value never reaches the terminal, the log or the store.
    let redactor = crate::kv::for_templates(ctx).await?.redactor();
    let redacted = ctx.with_reporter(redactor.reporter(ctx.reporter.clone()));
    let ctx = &redacted;
    let git = Git::new(&ctx.project.root);
    if !git.is_repo() {
        return Err(EngineError::usage(
            format!("{} is not a git clone", ctx.project.root.display()),
            "a ticket release runs in a clone of the project that tracks its remote",
        ));
    }
    let existing = StateFile::load(ctx, &opts.ticket).await?;
    // `--from=prepare` with a state file resumes prepare on its recorded
    // range; without one it is a fresh start.
    let resume = opts
        .from
        .filter(|p| *p != Phase::Prepare || existing.is_some());
    if resume.is_some() && existing.is_none() {
        return Err(EngineError::usage(
            format!(
                "no state file for ticket {} (.cutover/releases/{}.env): there is nothing to resume",
                opts.ticket, opts.ticket
            ),
            format!("run `cutover release run {}` without --from", opts.ticket),
        ));
    }
    if opts.dry_run {
        return dry_run(ctx, opts, &git, existing).await;
    }

    if existing.is_none() && !opts.skip.contains(&Phase::Prepare) {
        // Refusals that change nothing come before the lock and the log.
        preflight(ctx, opts, &git)?;
    }
    let lock = ctx
        .store
        .lock(&ctx.holder(&opts.command, Some(&opts.ticket)))
        .await?;
    // Under the lock: a release in progress elsewhere is "locked", not
    // "failed".
    check_resume(opts, existing.as_ref())?;
    // No other run is live: a deployment still "running" died with its process.
    crate::deploy::finish_dead_runs(ctx).await?;
    let log = ReleaseLog::new(ctx, &opts.ticket);
    let mut report = ReleaseReport {
        ticket: opts.ticket.clone(),
        outcome: ReleaseOutcome::Complete,
        state: existing.clone(),
        plan: None,
        script: None,
        failure_output: String::new(),
        took_over_lock: lock.took_over.as_ref().map(|h| h.to_string()),
    };
    if let Some(h) = &report.took_over_lock {
        say(ctx, format!("took over the stale lock of {h}"));
    }
    let mut ctx_now = ctx.with_project((*ctx.project).clone());
    let start = resume.unwrap_or(Phase::Prepare);
    let mut state = existing.unwrap_or_default();

    for phase in Phase::ALL {
        if phase < start {
            continue;
        }
        // A run whose lock was taken over (PostgreSQL) starts no phase.
        ctx.store.check_fence().await?;
        if opts.skip.contains(&phase) {
            let who = format!("user={} host={}", ctx.operator.user, ctx.operator.host);
            log.phase(phase, "skipped-by-operator", &who).await?;
            say(
                ctx,
                format!("{}: skipped by operator ({who})", phase.as_str()),
            );
            if phase != Phase::Prepare || !state.base_sha.is_empty() {
                state.mark_done(phase);
                let entry = format!(
                    "{}:{}@{}",
                    phase.as_str(),
                    ctx.operator.user,
                    ctx.operator.host
                );
                state.skipped_metadata = [state.skipped_metadata.as_str(), entry.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !state.base_sha.is_empty() {
                    state.save(ctx).await?;
                }
            }
            continue;
        }
        if phase == Phase::Ticket && ticket_script(&ctx_now, &opts.ticket)?.is_none() {
            state.mark_done(phase);
            if !state.base_sha.is_empty() {
                state.save(ctx).await?;
            }
            log.phase(phase, "skipped-no-script", "").await?;
            say(
                ctx,
                format!("ticket: no releases/{}-*.sh: skipped", opts.ticket),
            );
            continue;
        }
        if phase != Phase::Prepare && state.base_sha.is_empty() {
            return Err(EngineError::usage(
                "prepare was skipped and there is no state file: later phases have no BASE_SHA or MERGE_SHA",
                "run without --skip-prepare",
            ));
        }
        if let Some(rc) = ctx.interrupt.exit_code() {
            // A signal came during the previous phase: stop here, recorded.
            let e = PhaseError {
                detail: None,
                rc: i32::from(rc),
                message: format!("interrupted before phase {}", phase.as_str()),
            };
            return failed(ctx, &log, opts, phase, e, state, report).await;
        }
        log.phase(phase, "start", "").await?;
        say(ctx, format!("{}: start", phase.as_str()));
        let result = match phase {
            Phase::Prepare => prepare(&ctx_now, opts, &git, resume.map(|_| &state)).await,
            Phase::Migrate => migrate(&ctx_now, &state)
                .await
                .map(|plan| {
                    report.plan = Some(plan);
                    None
                })
                .map_err(Refusal::from),
            Phase::Ticket => ticket(&ctx_now, &state)
                .await
                .map(|script| {
                    report.script = Some(script);
                    None
                })
                .map_err(Refusal::from),
            Phase::Verify => verify(&ctx_now, &state, &git)
                .await
                .map(|_| None)
                .map_err(Refusal::from),
        };
        match result {
            Ok(prepared) => {
                if let Some(s) = prepared {
                    state = s;
                    // The clone moved to MERGE_SHA: plan from the project as it is now.
                    ctx_now = ctx.reload()?;
                }
                state.mark_done(phase);
                state.save(ctx).await?;
                log.phase(phase, "done", "rc=0").await?;
                say(ctx, format!("{}: done", phase.as_str()));
            }
            Err(Refusal::NothingToRelease(message)) => {
                log.phase(phase, "failed", "rc=5").await?;
                report.outcome = ReleaseOutcome::NothingToRelease { message };
                return Ok(report);
            }
            Err(Refusal::Usage(e)) => {
                log.phase(phase, "failed", "rc=2").await?;
                return Err(e);
            }
            Err(Refusal::Failed(e)) => {
                // A run stopped by a signal records the signal's code.
                let e = match ctx.interrupt.exit_code() {
                    Some(rc) => PhaseError {
                        rc: i32::from(rc),
                        message: format!("interrupted: {}", e.message),
                        detail: e.detail,
                    },
                    None => e,
                };
                let e = PhaseError {
                    rc: e.rc,
                    message: redactor.redact(&e.message),
                    detail: e.detail.map(|d| redactor.redact(&d)),
                };
                return failed(ctx, &log, opts, phase, e, state, report).await;
            }
        }
    }
    log.event("orchestrator", "done", "rc=0").await?;
    report.state = Some(state);
    Ok(report)
}

/// Ends a release whose phase failed (or that a signal stopped before it):
/// the log line, the failure kept for `playbook match`, the report.
#[allow(clippy::too_many_arguments)]
async fn failed(
    ctx: &Context,
    log: &ReleaseLog,
    opts: &ReleaseOptions,
    phase: Phase,
    e: PhaseError,
    state: StateFile,
    mut report: ReleaseReport,
) -> Result<ReleaseReport, EngineError> {
    log.phase(phase, "failed", &format!("rc={}", e.rc)).await?;
    // What playbooks match and `release state` shows: the message, then
    // the tail of the failing step's whole output, secrets redacted.
    let output = match &e.detail {
        Some(detail) => format!("{}\n{}", e.message, last_lines(detail, FAILURE_TAIL_LINES)),
        None => e.message.clone(),
    };
    let failure = serde_json::json!({ "phase": phase, "rc": e.rc, "output": output }).to_string();
    ctx.store
        .meta_put(&super::failure_key(&opts.ticket), &failure)
        .await?;
    report.failure_output = output;
    report.outcome = ReleaseOutcome::Failed {
        phase,
        rc: e.rc,
        message: e.message,
    };
    report.state = (!state.base_sha.is_empty()).then_some(state);
    Ok(report)
}

/// How much of a failing step's output the release keeps.
const FAILURE_TAIL_LINES: usize = 200;

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

enum Refusal {
    NothingToRelease(String),
    Usage(EngineError),
    Failed(PhaseError),
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Usage { .. } | EngineError::Config(_) => Refusal::Usage(e),
            other => Refusal::Failed(other.into()),
        }
    }
}

impl From<cutover_state::StateError> for Refusal {
    fn from(e: cutover_state::StateError) -> Self {
        Refusal::from(EngineError::from(e))
    }
}

impl From<PhaseError> for Refusal {
    fn from(e: PhaseError) -> Self {
        Refusal::Failed(e)
    }
}

fn git_failed(e: super::GitError) -> Refusal {
    Refusal::Failed(PhaseError {
        detail: None,
        rc: 1,
        message: e.to_string(),
    })
}

/// Refuses a run that would skip over an incomplete phase: `--from=PHASE`
/// while an earlier phase did not complete, and a plain re-run of a
/// release that failed (which used to answer "nothing to release").
fn check_resume(opts: &ReleaseOptions, existing: Option<&StateFile>) -> Result<(), EngineError> {
    let Some(state) = existing else {
        return Ok(());
    };
    let t = &opts.ticket;
    if !state.reverted.is_empty() {
        return Err(EngineError::usage(
            format!("release {t} was reverted ({}); it is over", state.reverted),
            format!("merge the fix and release it under a new ticket; `cutover release state {t}` shows what happened"),
        ));
    }
    let Some(missing) = state.first_incomplete() else {
        return Ok(());
    };
    let how = format!(
        "resume with `cutover release run {t} --from={m}`, or roll back with `cutover release revert {t}`",
        m = missing.as_str()
    );
    match opts.from {
        None if !opts.dry_run => Err(EngineError::usage(
            format!(
                "release {t} failed in phase {}: it is not finished",
                missing.as_str()
            ),
            how,
        )),
        Some(from) if from > missing => Err(EngineError::usage(
            format!(
                "--from={} would skip phase {} of release {t}, which did not complete{}",
                from.as_str(),
                missing.as_str(),
                if missing == Phase::Prepare {
                    format!(
                        " (backups recorded: {})",
                        if state.backups.is_empty() {
                            "none".to_string()
                        } else {
                            state.backups.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )
                } else {
                    String::new()
                }
            ),
            how,
        )),
        _ => Ok(()),
    }
}

/// Refusals that need no lock and change nothing: dirty tree, wrong branch.
fn preflight(ctx: &Context, opts: &ReleaseOptions, git: &Git) -> Result<String, EngineError> {
    let dirty = git
        .dirty()
        .map_err(|e| EngineError::usage(e.to_string(), "is this a git clone?"))?;
    if !dirty.is_empty() {
        return Err(EngineError::usage(
            format!(
                "the working tree of {} has uncommitted changes:\n  {}",
                ctx.project.root.display(),
                dirty.join("\n  ")
            ),
            "commit, stash or discard them; a release starts from a clean clone",
        ));
    }
    let main = &ctx.project.config.main_branch;
    let branch = opts
        .branch
        .clone()
        .or_else(|| git.branch())
        .ok_or_else(|| EngineError::usage("HEAD is detached", format!("check out {main} first")))?;
    if &branch != main && !opts.force_allow_non_main {
        return Err(EngineError::usage(
            format!("refusing to release branch `{branch}`: releases come from `{main}`"),
            "for a hotfix release, pass --force-allow-non-main (then `cutover release return-to-main`)",
        ));
    }
    Ok(branch)
}

async fn prepare(
    ctx: &Context,
    opts: &ReleaseOptions,
    git: &Git,
    resumed: Option<&StateFile>,
) -> Result<Option<StateFile>, Refusal> {
    if let Some(state) = resumed {
        return prepare_again(ctx, git, state.clone()).await;
    }
    let branch = preflight(ctx, opts, git).map_err(Refusal::Usage)?;
    let started_on = git.branch();
    let remote = &ctx.project.config.remote;
    git.run(&["fetch", "--quiet", remote]).map_err(git_failed)?;
    refuse_local_commits(git, remote, &branch)?;
    let base = git.head().map_err(git_failed)?;
    refuse_a_clone_the_team_moved_past(ctx, &base, remote).await?;
    if git.branch().as_deref() != Some(branch.as_str()) {
        let tracking = format!("{remote}/{branch}");
        let r = git.run(&["checkout", "--quiet", &branch]);
        if r.is_err() {
            git.run(&["checkout", "--quiet", "-b", &branch, "--track", &tracking])
                .map_err(git_failed)?;
        }
    }
    git.run(&["pull", "--quiet", "--ff-only", remote, &branch])
        .map_err(git_failed)?;
    let merge = git.head().map_err(git_failed)?;
    if base == merge {
        return Err(Refusal::NothingToRelease(format!(
            "already up-to-date with {remote}/{branch} — nothing to release. If the clone was pulled by hand before this release, \
             find the commit it was at with `git reflog`, `git reset --hard <pre-pull-sha>`, and run the release again"
        )));
    }
    let ctx = ctx.reload()?;
    let changes = git.changes(&base, &merge).map_err(git_failed)?;
    let classification = classify(&ctx.project, &changes);
    let unclassified = classification.unclassified();
    if !unclassified.is_empty() {
        let files = unclassified.join(", ");
        if opts.strict {
            // Nothing is recorded yet: put the clone back where it was.
            let restored = git
                .run(&["reset", "--quiet", "--hard", "ORIG_HEAD"])
                .and_then(|_| match &started_on {
                    Some(b) if *b != branch => git.run(&["checkout", "--quiet", b]),
                    _ => Ok(String::new()),
                });
            let where_now = match restored {
                Ok(_) => "the clone is back where it was".to_string(),
                Err(e) => {
                    format!("putting the clone back failed ({e}); check it with `git status`")
                }
            };
            return Err(Refusal::Usage(EngineError::usage(
                format!("--strict: {} changed file(s) belong to no job, so no release would roll them out: {files}; {where_now}", unclassified.len()),
                "add them to a job (its dir or its `watch` globs), or release without --strict",
            )));
        }
        say(
            &ctx,
            format!(
                "prepare: warning: {} changed file(s) belong to no job and roll nothing out: {files} (add them to a job's `watch`; --strict refuses such a release)",
                unclassified.len()
            ),
        );
    }
    let state = StateFile {
        ticket: opts.ticket.clone(),
        branch,
        base_sha: base,
        merge_sha: merge,
        services: classification.services.clone(),
        ..StateFile::default()
    };
    // Written before anything else happens: from here, revert knows BASE_SHA.
    state.save(&ctx).await?;
    record_released(&ctx, &state.merge_sha, &format!("release {}", state.ticket)).await?;
    // Several scripts for the ticket: found now, before any backup or
    // service, not after migrate.
    ticket_script(&ctx, &opts.ticket).map_err(Refusal::Usage)?;
    say(
        &ctx,
        format!(
            "prepare: BASE_SHA={} MERGE_SHA={} SERVICES=\"{}\"",
            &state.base_sha[..12],
            &state.merge_sha[..12],
            state.services.join(" ")
        ),
    );

    backups(&ctx, &opts.ticket, state).await
}

/// Refuses a clone whose branch has commits its remote lacks (a revert
/// that was not pushed): `pull --ff-only` would fail, or release them.
/// The meta key of the commit the last release (or revert) left the main
/// line at, in a shared store: `SHA WHAT`.
const LAST_RELEASED: &str = "release:last_commit";

/// Records, in a shared store, the commit a release or revert left the
/// main line at: the next release of any operator starts from it.
pub(crate) async fn record_released(
    ctx: &Context,
    sha: &str,
    what: &str,
) -> Result<(), EngineError> {
    if ctx.store.is_shared() {
        ctx.store
            .meta_put(
                LAST_RELEASED,
                &format!("{sha} {what} by {}", ctx.operator.user),
            )
            .await?;
    }
    Ok(())
}

/// With a shared store, BASE_SHA is the commit the team's last release
/// left the main line at: a clone elsewhere (behind, and a colleague's
/// ticket would fall into this release's range, and its revert) is
/// refused before anything changes.
async fn refuse_a_clone_the_team_moved_past(
    ctx: &Context,
    head: &str,
    remote: &str,
) -> Result<(), Refusal> {
    if !ctx.store.is_shared() {
        return Ok(());
    }
    let Some(last) = ctx
        .store
        .meta_get(LAST_RELEASED)
        .await
        .map_err(EngineError::from)?
    else {
        return Ok(());
    };
    let (sha, what) = last.split_once(' ').unwrap_or((last.as_str(), ""));
    if sha == head {
        return Ok(());
    }
    Err(Refusal::Usage(EngineError::usage(
        format!(
            "this clone is at {}, but the team's last {what} left the main line at {}: a release from here would take the wrong BASE_SHA",
            &head[..head.len().min(12)],
            &sha[..sha.len().min(12)],
        ),
        format!(
            "bring this clone to it with `git fetch {remote} && git merge --ff-only {sha}`, then run the release again"
        ),
    )))
}

fn refuse_local_commits(git: &Git, remote: &str, branch: &str) -> Result<(), Refusal> {
    let range = format!("{remote}/{branch}..HEAD");
    let Ok(count) = git.run(&["rev-list", "--count", &range]) else {
        return Ok(()); // no remote branch yet: nothing to compare
    };
    let n: usize = count.trim().parse().unwrap_or(0);
    if n == 0 {
        return Ok(());
    }
    Err(Refusal::Usage(EngineError::usage(
        format!(
            "{branch} has {n} commit(s) that {remote}/{branch} does not have (a release revert that was not pushed?)"
        ),
        format!(
            "push them with `git push {remote} {branch}`, or drop them with `git reset --hard {remote}/{branch}`, then run the release again"
        ),
    )))
}

/// Prepare, resumed: the range recorded in the state file is reused (a
/// pull now would find nothing and answer "nothing to release"), and only
/// the backups not yet taken are taken.
async fn prepare_again(
    ctx: &Context,
    git: &Git,
    state: StateFile,
) -> Result<Option<StateFile>, Refusal> {
    let head = git.head().map_err(git_failed)?;
    if head != state.merge_sha {
        return Err(Refusal::Usage(EngineError::usage(
            format!(
                "the clone is at {}, but release {} prepared MERGE_SHA={}",
                &head[..12.min(head.len())],
                state.ticket,
                &state.merge_sha[..12]
            ),
            format!(
                "check out {} (`git checkout {}`) and resume, or revert the release",
                state.branch, state.merge_sha
            ),
        )));
    }
    say(
        ctx,
        format!(
            "prepare: resuming BASE_SHA={} MERGE_SHA={} ({} backup(s) already taken)",
            &state.base_sha[..12],
            &state.merge_sha[..12],
            state.backups.len()
        ),
    );
    let ctx = ctx.reload()?;
    let ticket = state.ticket.clone();
    backups(&ctx, &ticket, state).await
}

/// Records what each affected allocation runs (once: a resumed prepare
/// keeps what the first attempt recorded), then takes the backups that
/// the state file does not have yet, saving it after each.
async fn backups(
    ctx: &Context,
    ticket: &str,
    mut state: StateFile,
) -> Result<Option<StateFile>, Refusal> {
    let ctx = ctx.with_project((*ctx.project).clone());
    let recorded = super::load_base(&ctx, ticket).await?;
    let base_allocs = if recorded.is_empty() {
        record_base(&ctx, ticket, &state).await?
    } else {
        recorded
    };
    // Backups, on each affected allocation whose job has one.
    let wanted: Vec<&BaseAllocation> = base_allocs
        .iter()
        .filter(|b| {
            !state
                .backups
                .contains_key(&format!("{}@{}", b.job, b.worker))
        })
        .filter(|b| {
            ctx.project
                .jobs
                .get(&b.job)
                .is_some_and(|j| j.manifest.backup.is_some())
        })
        .filter(|b| ctx.project.worker(&b.worker).is_some())
        .collect();
    if !wanted.is_empty() {
        let workers: BTreeMap<String, cutover_model::Worker> = wanted
            .iter()
            .filter_map(|b| {
                ctx.project
                    .worker(&b.worker)
                    .map(|w| (w.name.clone(), w.clone()))
            })
            .collect();
        let fleet = Fleet::connect(&ctx, workers.into_values().collect()).await?;
        for b in wanted {
            let job = &ctx.project.jobs[&b.job];
            let worker = ctx.project.worker(&b.worker).expect("filtered above");
            let Some(backup) = &job.manifest.backup else {
                continue;
            };
            let version = b.version.clone().unwrap_or_default();
            let env = LifecycleEnv {
                job,
                worker,
                release: &b.release_id,
                current_version: &version,
                new_version: &job.manifest.version,
            };
            let out = in_current(
                ctx.project.config.ssh.command_timeout,
                &fleet,
                &env,
                &backup.command,
            )
            .await;
            let id = match out {
                Ok(stdout) => stdout
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string()),
                Err(e) => {
                    fleet.close().await;
                    return Err(Refusal::Failed(PhaseError {
                        detail: None,
                        rc: 1,
                        message: format!("backup of {}@{} failed: {e}", b.job, b.worker),
                    }));
                }
            };
            let Some(id) = id.filter(|i| super::valid_backup_id(i)) else {
                fleet.close().await;
                return Err(Refusal::Failed(PhaseError {
 detail: None,
                    rc: 1,
                    message: format!(
                        "backup of {}@{}: `{}` printed no usable backup id (its last line must be the id: \
                         up to 128 letters, digits and `._:@+-`)",
                        b.job, b.worker, backup.command
                    ),
                }));
            };
            say(
                &ctx,
                format!("prepare: backup {}@{} = {id}", b.job, b.worker),
            );
            state.backups.insert(format!("{}@{}", b.job, b.worker), id);
            state.save(&ctx).await?;
        }
        fleet.close().await;
    }
    Ok(Some(state))
}

/// What each affected allocation runs now, for revert to switch back to.
async fn record_base(
    ctx: &Context,
    ticket: &str,
    state: &StateFile,
) -> Result<Vec<BaseAllocation>, EngineError> {
    let records = ctx.store.allocations().await?;
    let base_allocs: Vec<BaseAllocation> = records
        .iter()
        .filter(|r| state.services.contains(&r.job) && r.status != AllocStatus::Stopped)
        .filter_map(|r| {
            Some(BaseAllocation {
                job: r.job.clone(),
                worker: r.worker.clone(),
                release_id: r.release_id.clone()?,
                hash: r.hash.clone(),
                version: r.version.clone(),
            })
        })
        .collect();
    let json = serde_json::to_string(&base_allocs).unwrap_or_default();
    ctx.store.meta_put(&base_key(ticket), &json).await?;
    Ok(base_allocs)
}

/// Runs an operator command in an allocation's `current`, with the
/// lifecycle environment; returns its stdout.
pub(crate) async fn in_current(
    timeout: std::time::Duration,
    fleet: &Fleet,
    env: &LifecycleEnv<'_>,
    command: &str,
) -> Result<String, String> {
    let host = fleet.get(&env.worker.name)?;
    let dir = format!("{}/current", env.worker.job_dir(&env.job.name));
    let cmd = env
        .apply(Command::shell(command))
        .cwd(dir)
        .timeout(timeout)
        .label(command.to_string())
        .kill_on_timeout();
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`{command}` exited {}: {}",
            out.code.map_or("by signal".into(), |c| c.to_string()),
            out.tail(5)
        ))
    }
}

async fn migrate(ctx: &Context, state: &StateFile) -> Result<Plan, PhaseError> {
    let services = super::plan::services_in_scope(ctx, &state.services).await?;
    if services.is_empty() {
        say(ctx, "migrate: no service to deploy");
        return Ok(Plan {
            stops: Vec::new(),
            waves: Vec::new(),
        });
    }
    let opts = DeployOptions {
        jobs: Some(services),
        command: format!("release {} migrate", state.ticket),
        head: Some(state.merge_sha.clone()),
        lock_held: true,
        ..DeployOptions::default()
    };
    let report = deploy::deploy(ctx, &opts).await?;
    if report.outcome.ok() {
        let idle = idle_services(&report.plan, opts.jobs.iter().flatten());
        if !idle.is_empty() {
            return Err(PhaseError {
 detail: None,
                rc: 1,
                message: format!(
                    "SERVICES names {}, but the deploy planned no action for it: its workers already run what MERGE_SHA has (deployed before this release?), or the change is in a file it does not ship. Check with `cutover plan --diff {}`; if it is already deployed, go on with `cutover release run {} --from=migrate --skip-migrate`",
                    idle.join(", "),
                    &state.base_sha[..12.min(state.base_sha.len())],
                    state.ticket
                ),
            });
        }
        return Ok(report.plan);
    }
    let failures: Vec<String> = report
        .jobs
        .iter()
        .filter(|j| {
            !matches!(
                j.status,
                deploy::JobStatus::Succeeded | deploy::JobStatus::Unchanged
            )
        })
        .map(|j| format!("{}: {}", j.job, j.message))
        .chain(
            report
                .stops
                .iter()
                .filter(|s| !s.ok)
                .map(|s| format!("stop {}@{}: {}", s.job, s.worker, s.message)),
        )
        .collect();
    // What playbooks match: each failed step's own output, not only the
    // tail in its message.
    let outputs: Vec<String> = report
        .jobs
        .iter()
        .flat_map(|j| j.allocations.iter().map(move |a| (j, a)))
        .filter(|(_, a)| !a.output.is_empty())
        .map(|(j, a)| format!("{}@{}:\n{}", j.job, a.worker, a.output))
        .collect();
    Err(PhaseError {
        detail: (!outputs.is_empty()).then(|| outputs.join("\n")),
        rc: 1,
        message: format!("the deploy of SERVICES failed: {}", failures.join("; ")),
    })
}

/// Allocations of `services` that do not run the job version that
/// MERGE_SHA's job.toml declares (or are not promoted at all).
async fn version_mismatches(
    ctx: &Context,
    state: &StateFile,
    git: &Git,
    services: &BTreeSet<String>,
) -> Result<Vec<String>, PhaseError> {
    let records = ctx.store.allocations().await.map_err(EngineError::from)?;
    let mut out = Vec::new();
    for name in services {
        let Some(job) = ctx.project.jobs.get(name) else {
            continue;
        };
        let path = format!("{}:jobs/{name}/job.toml", state.merge_sha);
        let want = git
            .run(&["show", &path])
            .ok()
            .and_then(|text| cutover_model::project::manifest_version(&text))
            .ok_or_else(|| PhaseError {
                detail: None,
                rc: 1,
                message: format!("cannot read the version of {name} at MERGE_SHA ({path})"),
            })?;
        for w in ctx.project.workers_for(job) {
            let rec = records
                .iter()
                .find(|r| &r.job == name && r.worker == w.name);
            let runs = match rec {
                Some(r) if r.status == cutover_state::AllocStatus::Promoted => {
                    r.version.clone().unwrap_or_default()
                }
                Some(r) => format!("nothing promoted ({})", r.status.as_str()),
                None => "nothing".to_string(),
            };
            if runs != want {
                out.push(format!(
                    "{name}@{} runs {runs}, MERGE_SHA has {want}",
                    w.name
                ));
            }
        }
    }
    Ok(out)
}

/// The services a migrate plan does nothing for: no allocation to roll
/// out, no stop, no hook to run again.
fn idle_services<'a>(plan: &Plan, services: impl Iterator<Item = &'a String>) -> Vec<String> {
    services
        .filter(|s| {
            !plan.stops.iter().any(|x| &x.job == *s)
                && !plan.jobs().any(|j| &j.job == *s && j.needs_run())
        })
        .cloned()
        .collect()
}

fn ticket_script(ctx: &Context, ticket: &str) -> Result<Option<String>, EngineError> {
    let dir = ctx.project.root.join("releases");
    let prefix = format!("{ticket}-");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix) && n.ends_with(".sh"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(format!("releases/{}", found[0]))),
        _ => Err(EngineError::usage(
            format!(
                "ticket {ticket} has {} scripts: {}",
                found.len(),
                found.join(", ")
            ),
            format!("keep exactly one releases/{ticket}-*.sh"),
        )),
    }
}

async fn ticket(ctx: &Context, state: &StateFile) -> Result<String, PhaseError> {
    let script = ticket_script(ctx, &state.ticket)?.ok_or_else(|| PhaseError {
        detail: None,
        rc: 1,
        message: "the ticket script disappeared".into(),
    })?;
    say(ctx, format!("ticket: bash {script} --yes"));
    let cmd = Command::new(["bash", script.as_str(), "--yes"])
        .cwd(ctx.project.root.display().to_string())
        .env("TICKET", &state.ticket)
        .env("BASE_SHA", &state.base_sha)
        .env("MERGE_SHA", &state.merge_sha)
        .env("SERVICES", state.services.join(" "))
        .timeout(ctx.project.config.ssh.command_timeout);
    let local = cutover_transport::Host::Local {
        name: "this machine".into(),
        fence: None,
    };
    let out = local.run(&cmd).await.map_err(|e| PhaseError {
        detail: None,
        rc: 1,
        message: e.to_string(),
    })?;
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        say(ctx, format!("ticket: | {line}"));
    }
    if out.success() {
        Ok(script)
    } else {
        Err(PhaseError {
            rc: out.code.unwrap_or(1),
            message: format!(
                "{script} exited {}: {}",
                out.code.unwrap_or(-1),
                out.tail(10)
            ),
            detail: Some(format!("{}{}", out.stdout, out.stderr)),
        })
    }
}

async fn verify(ctx: &Context, state: &StateFile, git: &Git) -> Result<(), PhaseError> {
    let head = git.head().map_err(|e| PhaseError {
        detail: None,
        rc: 1,
        message: e.to_string(),
    })?;
    if head != state.merge_sha {
        return Err(PhaseError {
            detail: None,
            rc: 1,
            message: format!(
                "HEAD is {head}, not MERGE_SHA {}: the clone moved during the release",
                state.merge_sha
            ),
        });
    }
    let services: BTreeSet<String> = state
        .services
        .iter()
        .filter(|s| ctx.project.jobs.contains_key(*s))
        .cloned()
        .collect();
    if services.is_empty() {
        return Ok(());
    }
    let mismatched = version_mismatches(ctx, state, git, &services).await?;
    if !mismatched.is_empty() {
        return Err(PhaseError {
            detail: None,
            rc: 4,
            message: format!(
                "not running the version of MERGE_SHA: {}",
                mismatched.join("; ")
            ),
        });
    }
    let drift = crate::drift::drift(ctx, Some(&services)).await?;
    let dirty: Vec<String> = drift
        .allocations
        .iter()
        .filter(|a| a.state != "clean")
        .map(|a| {
            let files: Vec<&str> = a.files.iter().map(|f| f.path.as_str()).collect();
            format!(
                "{}@{}: {} {}{}",
                a.job,
                a.worker,
                a.state,
                files.join(", "),
                a.message
            )
        })
        .collect();
    if !dirty.is_empty() {
        return Err(PhaseError {
            detail: None,
            rc: 4,
            message: format!("drift after migrate: {}", dirty.join("; ")),
        });
    }
    let unhealthy = health_all(ctx, &services).await?;
    if !unhealthy.is_empty() {
        return Err(PhaseError {
            detail: None,
            rc: 1,
            message: format!("unhealthy: {}", unhealthy.join("; ")),
        });
    }
    say(
        ctx,
        format!(
            "verify: HEAD == MERGE_SHA, no drift, healthy: {}",
            services.into_iter().collect::<Vec<_>>().join(" ")
        ),
    );
    Ok(())
}

/// Health checks (with their retries) of every allocation of `jobs`.
pub(crate) async fn health_all(
    ctx: &Context,
    jobs: &BTreeSet<String>,
) -> Result<Vec<String>, EngineError> {
    let records = ctx.store.allocations().await?;
    let kv = crate::kv::for_templates(ctx).await?;
    let mut targets = Vec::new();
    for r in &records {
        let (Some(job), Some(worker)) =
            (ctx.project.jobs.get(&r.job), ctx.project.worker(&r.worker))
        else {
            continue;
        };
        if jobs.contains(&r.job)
            && !job.manifest.health.is_empty()
            && r.status != AllocStatus::Stopped
        {
            targets.push((job, worker, r));
        }
    }
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let workers: BTreeMap<String, cutover_model::Worker> = targets
        .iter()
        .map(|(_, w, _)| (w.name.clone(), (*w).clone()))
        .collect();
    let fleet = Fleet::connect(ctx, workers.into_values().collect()).await?;
    let empty = BTreeMap::new();
    let mut bad = Vec::new();
    for (job, worker, r) in targets {
        let version = r.version.clone().unwrap_or_default();
        let release = r.release_id.clone().unwrap_or_default();
        let env = LifecycleEnv {
            job,
            worker,
            release: &release,
            current_version: &version,
            new_version: &version,
        };
        let result = match fleet.get(&worker.name) {
            Ok(host) => {
                crate::health::check_allocation(
                    &host,
                    &env,
                    kv.get(&job.name).unwrap_or(&empty),
                    &ctx.template_env(),
                    None,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            bad.push(format!("{}@{}: {e}", job.name, worker.name));
        }
    }
    fleet.close().await;
    Ok(bad)
}

/// Every phase in preview: what MERGE_SHA would be, the plan, the backups
/// and the ticket script. Nothing is pulled, written, backed up or deployed.
async fn dry_run(
    ctx: &Context,
    opts: &ReleaseOptions,
    git: &Git,
    existing: Option<StateFile>,
) -> Result<ReleaseReport, EngineError> {
    let log_dry = |phase: &str, text: String| say(ctx, format!("{phase}: (dry run) {text}"));
    let (state, plan_ctx, _tmp) = match (opts.from.filter(|p| *p != Phase::Prepare), existing) {
        (Some(_), Some(state)) => (state, ctx.with_project((*ctx.project).clone()), None),
        _ => {
            let branch = preflight(ctx, opts, git)?;
            let remote = &ctx.project.config.remote;
            git.run(&["fetch", "--quiet", remote])
                .map_err(|e| EngineError::usage(e.to_string(), "check the remote"))?;
            let base = git
                .head()
                .map_err(|e| EngineError::usage(e.to_string(), "is this a git clone?"))?;
            let merge = git.rev_parse(&format!("{remote}/{branch}")).map_err(|e| {
                EngineError::usage(
                    e.to_string(),
                    format!("does {remote} have a branch {branch}?"),
                )
            })?;
            let ff = git
                .run(&["merge-base", "--is-ancestor", &base, &merge])
                .is_ok();
            if base == merge {
                let report = ReleaseReport {
                    ticket: opts.ticket.clone(),
                    outcome: ReleaseOutcome::NothingToRelease {
                        message: format!(
                            "already up-to-date with {remote}/{branch} — nothing to release"
                        ),
                    },
                    state: None,
                    plan: None,
                    script: None,
                    failure_output: String::new(),
                    took_over_lock: None,
                };
                return Ok(report);
            }
            log_dry(
                "prepare",
                format!(
                    "git pull --ff-only {remote} {branch}: {} -> {}{}",
                    &base[..12],
                    &merge[..12],
                    if ff {
                        ""
                    } else {
                        " (NOT a fast-forward: the real run would fail)"
                    }
                ),
            );
            let tmp = tempfile::Builder::new()
                .prefix("cutover-release-")
                .tempdir()
                .map_err(EngineError::io("creating a temporary directory"))?;
            git.export(&merge, tmp.path())
                .map_err(|e| EngineError::usage(e.to_string(), "check the remote branch"))?;
            let project =
                cutover_model::Project::load(tmp.path(), &ctx.load).map_err(EngineError::Config)?;
            let changes = git
                .changes(&base, &merge)
                .map_err(|e| EngineError::usage(e.to_string(), "check the revisions"))?;
            let classification = classify(&project, &changes);
            let unclassified = classification.unclassified();
            if !unclassified.is_empty() {
                let files = unclassified.join(", ");
                if opts.strict {
                    return Err(EngineError::usage(
                        format!("--strict: {} changed file(s) belong to no job, so no release would roll them out: {files}", unclassified.len()),
                        "add them to a job (its dir or its `watch` globs), or release without --strict",
                    ));
                }
                log_dry(
                    "prepare",
                    format!("warning: {} changed file(s) belong to no job and roll nothing out: {files}", unclassified.len()),
                );
            }
            let state = StateFile {
                ticket: opts.ticket.clone(),
                branch,
                base_sha: base,
                merge_sha: merge,
                services: classification.services,
                ..StateFile::default()
            };
            (state, ctx.with_project(project), Some(tmp))
        }
    };
    log_dry(
        "prepare",
        format!("SERVICES=\"{}\"", state.services.join(" ")),
    );
    let records = ctx.store.allocations().await?;
    for r in records.iter().filter(|r| state.services.contains(&r.job)) {
        if let Some(b) = plan_ctx
            .project
            .jobs
            .get(&r.job)
            .and_then(|j| j.manifest.backup.as_ref())
        {
            log_dry(
                "prepare",
                format!("would back up {}@{} with `{}`", r.job, r.worker, b.command),
            );
        }
    }
    let plan = super::plan::plan_services(&plan_ctx, &state.services).await?;
    log_dry(
        "migrate",
        format!(
            "would deploy {} job(s)",
            plan.jobs().filter(|j| j.has_work()).count()
        ),
    );
    let script = ticket_script(&plan_ctx, &opts.ticket)?;
    match &script {
        Some(s) => log_dry("ticket", format!("would run bash {s} --yes")),
        None => log_dry("ticket", "no script: would be skipped".into()),
    }
    log_dry(
        "verify",
        "would check HEAD == MERGE_SHA, drift and health of SERVICES".into(),
    );
    Ok(ReleaseReport {
        ticket: opts.ticket.clone(),
        outcome: ReleaseOutcome::DryRun,
        state: Some(state),
        plan: Some(plan),
        script,
        failure_output: String::new(),
        took_over_lock: None,
    })
}
