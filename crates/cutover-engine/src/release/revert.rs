//! `cutover release revert` and `cutover release return-to-main`.

use std::collections::{BTreeMap, BTreeSet};

use cutover_state::{AllocStatus, AllocationRecord};
use serde::Serialize;

use super::files::{ReleaseLog, StateFile};
use super::git::Git;
use super::run::say;
use super::{load_base, BaseAllocation};
use crate::deploy::{self, DeployOptions};
use crate::fleet::Fleet;
use crate::remote::{self, LifecycleEnv};
use crate::{Context, EngineError};

#[derive(Debug, Clone, Default)]
pub struct RevertOptions {
    pub ticket: String,
    pub skip_git: bool,
    pub skip_data: bool,
    /// Keep the revert commit local (by default it is pushed, or the next
    /// release's `pull --ff-only` would fail).
    pub no_push: bool,
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevertReport {
    pub ticket: String,
    pub ok: bool,
    /// The release had been reverted before: nothing was done.
    pub already_reverted: Option<String>,
    pub restored: Vec<String>,
    pub switched_back: Vec<String>,
    pub stopped: Vec<String>,
    /// Allocations the release did not change: left running as they are.
    pub untouched: Vec<String>,
    pub git: Option<String>,
    pub errors: Vec<String>,
}

/// One allocation migrate changed, and what to put back.
struct Changed<'a> {
    job: &'a cutover_model::Job,
    worker: &'a cutover_model::Worker,
    /// What it ran at BASE_SHA; `None` for an allocation the release created.
    base: Option<&'a BaseAllocation>,
    /// What it runs now (the release migrate promoted).
    now: Option<&'a AllocationRecord>,
    backup: Option<&'a String>,
}

impl Changed<'_> {
    fn key(&self) -> String {
        format!("{}@{}", self.job.name, self.worker.name)
    }
}

/// Reverts a ticket release: for each allocation migrate changed, in the
/// job's batches, stop the new release, restore its backup, switch back
/// to the BASE release, start it and check its health; then revert git
/// and push the revert. Everything that can refuse does so before any
/// worker is touched.
pub async fn revert(ctx: &Context, opts: &RevertOptions) -> Result<RevertReport, EngineError> {
    super::check_ticket(&opts.ticket)?;
    let mut state = StateFile::load(ctx, &opts.ticket).await?.ok_or_else(|| {
        EngineError::usage(
            format!("no state file for ticket {} (.cutover/releases/{}.env): revert has nothing to restore", opts.ticket, opts.ticket),
            "without it, put things back by hand: `cutover deploy` from the commit you want, and restore data from your own backups",
        )
    })?;
    let mut report = RevertReport {
        ticket: opts.ticket.clone(),
        ok: true,
        already_reverted: None,
        restored: Vec::new(),
        switched_back: Vec::new(),
        stopped: Vec::new(),
        untouched: Vec::new(),
        git: None,
        errors: Vec::new(),
    };
    if !state.reverted.is_empty() {
        // A second revert would restore the backup over newer data.
        report.already_reverted = Some(state.reverted.clone());
        return Ok(report);
    }
    let _lock = ctx
        .store
        .lock(&ctx.holder(&opts.command, Some(&opts.ticket)))
        .await?;
    let kv = crate::kv::for_templates(ctx).await?;
    let redactor = kv.redactor();
    let redacted = ctx.with_reporter(redactor.reporter(ctx.reporter.clone()));
    let ctx = &redacted;
    let base = load_base(ctx, &opts.ticket).await?;
    let records = ctx.store.allocations().await?;
    // Jobs the release removed: their allocations were stopped (data
    // kept); they come back with the git revert, which restores jobs/<job>.
    // (A retry after a failed push finds the job dir back, its allocations
    // still stopped.)
    let removed: BTreeSet<String> = base
        .iter()
        .filter(|b| {
            !ctx.project.jobs.contains_key(&b.job)
                || records
                    .iter()
                    .filter(|r| r.job == b.job)
                    .all(|r| r.status == AllocStatus::Stopped)
        })
        .map(|b| b.job.clone())
        .collect();
    let (changed, untouched) = changed_allocations(ctx, &state, &base, &records, &removed);
    report.untouched = untouched;
    if !removed.is_empty() && opts.skip_git {
        return Err(EngineError::usage(
            format!(
                "release {} removed {}: they come back only with the git revert",
                opts.ticket,
                removed.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            "run the revert without --skip-git",
        ));
    }
    refuse_missing_backups(ctx, &changed, opts)?;

    let workers: BTreeMap<String, cutover_model::Worker> = changed
        .iter()
        .map(|c| (c.worker.name.clone(), c.worker.clone()))
        .collect();
    let fleet = Fleet::connect(ctx, workers.into_values().collect()).await?;
    let result = async {
        ensure_base_releases(ctx, &fleet, &state, &changed).await?;
        let log = ReleaseLog::new(ctx, &opts.ticket);
        log.event("revert", "start", "").await?;
        if opts.skip_data {
            log.event(
                "revert",
                "skipped-by-operator",
                &format!(
                    "step=data user={} host={}",
                    ctx.operator.user, ctx.operator.host
                ),
            )
            .await?;
        }
        // Batch by batch within each job, the members of a batch at once.
        for job in ctx.project.jobs.values() {
            let mine: Vec<&Changed> = changed.iter().filter(|c| c.job.name == job.name).collect();
            let size = job.manifest.max_concurrent_upgrades.max(1);
            for batch in mine.chunks(size) {
                let results = crate::join::join_all(
                    batch
                        .iter()
                        .map(|c| revert_one(ctx, &fleet, c, &kv, opts.skip_data)),
                )
                .await;
                for (c, r) in batch.iter().zip(results) {
                    match r {
                        Ok(done) => {
                            if let Some(id) = c.backup.filter(|_| !opts.skip_data) {
                                report.restored.push(format!("{}={id}", c.key()));
                            }
                            match done {
                                Reverted::SwitchedBack(release) => {
                                    say(ctx, format!("{}: switched back to {release}", c.key()));
                                    report.switched_back.push(format!("{}={release}", c.key()));
                                }
                                Reverted::Stopped => {
                                    say(
                                        ctx,
                                        format!("{}: stopped (created by the release)", c.key()),
                                    );
                                    report.stopped.push(c.key());
                                }
                            }
                        }
                        Err(e) => report.errors.push(format!("{}: {e}", c.key())),
                    }
                }
                if !report.errors.is_empty() {
                    break; // halt: the rest stay as they are, and are retried
                }
            }
        }
        Ok::<_, EngineError>(log)
    }
    .await;
    fleet.close().await;
    let log = result?;

    // Git: revert the merge (or the fast-forwarded range), and push it.
    if opts.skip_git {
        log.event(
            "revert",
            "skipped-by-operator",
            &format!(
                "step=git user={} host={}",
                ctx.operator.user, ctx.operator.host
            ),
        )
        .await?;
    } else if report.errors.is_empty() {
        let git = Git::new(&ctx.project.root);
        match revert_git(&git, &state, &ctx.project.config.remote, !opts.no_push) {
            Ok(msg) => {
                say(ctx, format!("git: {msg}"));
                report.git = Some(msg);
                if !opts.no_push {
                    if let Ok(head) = git.head() {
                        super::run::record_released(
                            ctx,
                            &head,
                            &format!("revert of {}", opts.ticket),
                        )
                        .await?;
                    }
                }
                if !removed.is_empty() {
                    redeploy_removed(ctx, &opts.command, &removed, &mut report).await?;
                }
            }
            Err(e) => report.errors.push(format!("git: {e}")),
        }
    }

    report.ok = report.errors.is_empty();
    for e in &mut report.errors {
        *e = redactor.redact(e);
    }
    if report.ok {
        state.reverted = cutover_state::now_rfc3339();
        state.save(ctx).await?;
        log.event("revert", "done", "rc=0").await?;
    } else {
        log.event("revert", "failed", "rc=1").await?;
    }
    Ok(report)
}

/// Jobs the release removed, back in the project after the git revert:
/// deployed again on their kept `shared/` data.
async fn redeploy_removed(
    ctx: &Context,
    command: &str,
    removed: &BTreeSet<String>,
    report: &mut RevertReport,
) -> Result<(), EngineError> {
    let ctx = ctx.reload()?;
    let missing: Vec<&String> = removed
        .iter()
        .filter(|j| !ctx.project.jobs.contains_key(*j))
        .collect();
    if !missing.is_empty() {
        report.errors.push(format!(
            "jobs {missing:?} are still not in the project after the git revert"
        ));
        return Ok(());
    }
    let opts = DeployOptions {
        jobs: Some(removed.clone()),
        command: command.to_string(),
        lock_held: true,
        ..DeployOptions::default()
    };
    let deployed = deploy::deploy(&ctx, &opts).await?;
    for j in &deployed.jobs {
        if j.status == deploy::JobStatus::Succeeded {
            for a in j.allocations.iter().filter(|a| a.ok) {
                report.switched_back.push(format!(
                    "{}@{}={}",
                    j.job,
                    a.worker,
                    a.release.clone().unwrap_or_default()
                ));
            }
        } else if j.status != deploy::JobStatus::Unchanged {
            report.errors.push(format!("{}: {}", j.job, j.message));
        }
    }
    Ok(())
}

/// The allocations migrate changed (its record names another release than
/// the one it ran at BASE_SHA, or it was created), and the keys of those
/// it did not change: those keep running, with the data they took since.
fn changed_allocations<'a>(
    ctx: &'a Context,
    state: &'a StateFile,
    base: &'a [BaseAllocation],
    records: &'a [AllocationRecord],
    removed: &BTreeSet<String>,
) -> (Vec<Changed<'a>>, Vec<String>) {
    let services: BTreeSet<&String> = state
        .services
        .iter()
        .filter(|s| !removed.contains(*s))
        .collect();
    let mut changed = Vec::new();
    let mut untouched = Vec::new();
    for r in records.iter().filter(|r| services.contains(&r.job)) {
        let (Some(job), Some(worker)) =
            (ctx.project.jobs.get(&r.job), ctx.project.worker(&r.worker))
        else {
            continue;
        };
        let b = base.iter().find(|b| b.job == r.job && b.worker == r.worker);
        let key = format!("{}@{}", r.job, r.worker);
        let moved = match b {
            Some(b) => r.release_id.as_deref() != Some(b.release_id.as_str()),
            None => r.status != AllocStatus::Stopped,
        };
        if !moved {
            untouched.push(key);
            continue;
        }
        changed.push(Changed {
            job,
            worker,
            base: b,
            now: Some(r),
            backup: state.backups.get(&key),
        });
    }
    (changed, untouched)
}

/// A job with a `[backup]` whose changed allocation has no backup (a
/// prepare that died before taking it): restoring nothing would look like
/// success. Refused unless the operator says `--skip-data`.
fn refuse_missing_backups(
    ctx: &Context,
    changed: &[Changed<'_>],
    opts: &RevertOptions,
) -> Result<(), EngineError> {
    if opts.skip_data {
        return Ok(());
    }
    let missing: Vec<String> = changed
        .iter()
        .filter(|c| c.base.is_some() && c.job.manifest.backup.is_some() && c.backup.is_none())
        .map(Changed::key)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let _ = ctx;
    Err(EngineError::usage(
        format!(
            "no backup was recorded for {} (their job declares [backup]): a revert would restore nothing",
            missing.join(", ")
        ),
        format!(
            "restore their data yourself and run `cutover release revert {} --skip-data`",
            opts.ticket
        ),
    ))
}

enum Reverted {
    SwitchedBack(String),
    Stopped,
}

/// One allocation: stop the release migrate put there, restore the
/// backup, switch back to the BASE release, start it, check its health.
/// An allocation the release created is stopped (its data is kept).
async fn revert_one(
    ctx: &Context,
    fleet: &Fleet,
    c: &Changed<'_>,
    kv: &crate::kv::TemplateKv,
    skip_data: bool,
) -> Result<Reverted, String> {
    let host = fleet.get(&c.worker.name)?;
    let timeout = ctx.project.config.ssh.command_timeout;
    let job_dir = c.worker.job_dir(&c.job.name);
    let now_release = c.now.and_then(|r| r.release_id.clone()).unwrap_or_default();
    let now_version = c.now.and_then(|r| r.version.clone()).unwrap_or_default();
    let base_version = c.base.and_then(|b| b.version.clone()).unwrap_or_default();
    let lifecycle = |release: &str, target: &str, current: &str, new: &str| {
        let env = LifecycleEnv {
            job: c.job,
            worker: c.worker,
            release,
            current_version: current,
            new_version: new,
        };
        remote::lifecycle(&env, target, timeout)
    };
    let run = |cmd: cutover_transport::Command, what: String| {
        let host = host.clone();
        async move {
            let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
            if out.success() {
                Ok(out.stdout)
            } else {
                Err(format!("{what} failed: {}", out.tail(5)))
            }
        }
    };

    // 1. The broken release stops writing (if a release runs there).
    let now_env = LifecycleEnv {
        job: c.job,
        worker: c.worker,
        release: &now_release,
        current_version: &now_version,
        new_version: &base_version,
    };
    run(
        now_env.apply(remote::stop(&job_dir, Vec::new(), timeout)),
        "make stop".into(),
    )
    .await?;
    let Some(base) = c.base else {
        run(
            remote::remove_releases(&job_dir, timeout),
            "removing its releases".into(),
        )
        .await?;
        record(ctx, c, None).await?;
        return Ok(Reverted::Stopped);
    };
    // 2. Its data goes back to the backup.
    if let Some(id) = c.backup.filter(|_| !skip_data) {
        restore(ctx, c, id, kv, &now_release, &host).await?;
    }
    // 3. `current` goes back to the BASE release, which starts.
    run(
        remote::switch(&job_dir, &base.release_id, None, timeout),
        format!("switching back to {}", base.release_id),
    )
    .await?;
    run(
        lifecycle(&base.release_id, "start", &now_version, &base_version),
        "make start".into(),
    )
    .await?;
    record(ctx, c, Some(base)).await?;
    // 4. And must be healthy.
    let env = LifecycleEnv {
        job: c.job,
        worker: c.worker,
        release: &base.release_id,
        current_version: &base_version,
        new_version: &base_version,
    };
    let empty = BTreeMap::new();
    crate::health::check_allocation(
        &host,
        &env,
        kv.get(&c.job.name).unwrap_or(&empty),
        &ctx.template_env(),
        None,
    )
    .await?;
    Ok(Reverted::SwitchedBack(base.release_id.clone()))
}

/// Runs the job's restore command for backup `id` in `current`. The id is
/// checked (safe characters, bounded) and also given as `BACKUP_ID`, so a
/// restore command can use it without any interpolation.
async fn restore(
    ctx: &Context,
    c: &Changed<'_>,
    id: &str,
    kv: &crate::kv::TemplateKv,
    release: &str,
    host: &cutover_transport::Host,
) -> Result<(), String> {
    if !super::valid_backup_id(id) {
        return Err(format!(
            "backup id {id:?} in the state file is not a valid id; restore it by hand"
        ));
    }
    let template = c
        .job
        .manifest
        .backup
        .as_ref()
        .and_then(|b| b.restore.clone())
        .ok_or(format!(
            "job {} has no [backup] restore command",
            c.job.name
        ))?;
    let empty = BTreeMap::new();
    let command = render_restore(
        &template,
        id,
        c.job,
        c.worker,
        kv.get(&c.job.name).unwrap_or(&empty),
        &ctx.template_env(),
    )?;
    let version = c.now.and_then(|r| r.version.clone()).unwrap_or_default();
    let env = LifecycleEnv {
        job: c.job,
        worker: c.worker,
        release,
        current_version: &version,
        new_version: &version,
    };
    let dir = format!("{}/current", c.worker.job_dir(&c.job.name));
    let cmd = env
        .apply(cutover_transport::Command::shell(&command))
        .env("BACKUP_ID", id)
        .cwd(dir)
        .timeout(ctx.project.config.ssh.command_timeout)
        .label("restore")
        .kill_on_timeout();
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        say(ctx, format!("restored backup {id} on {}", c.key()));
        Ok(())
    } else {
        Err(format!("restore of backup {id} failed: {}", out.tail(5)))
    }
}

/// The store after one allocation was reverted.
async fn record(
    ctx: &Context,
    c: &Changed<'_>,
    base: Option<&BaseAllocation>,
) -> Result<(), String> {
    let rec = match base {
        Some(b) => AllocationRecord {
            job: b.job.clone(),
            worker: b.worker.clone(),
            status: AllocStatus::Promoted,
            hash: b.hash.clone(),
            version: b.version.clone(),
            release_id: Some(b.release_id.clone()),
            previous_release_id: c.now.and_then(|r| r.release_id.clone()),
            health: "unknown".into(),
            message: String::new(),
            updated_at: cutover_state::now_rfc3339(),
        },
        None => AllocationRecord {
            job: c.job.name.clone(),
            worker: c.worker.name.clone(),
            status: AllocStatus::Stopped,
            hash: None,
            version: c.now.and_then(|r| r.version.clone()),
            release_id: None,
            previous_release_id: None,
            health: "unknown".into(),
            message: "stopped by a release revert; shared/ data kept".into(),
            updated_at: cutover_state::now_rfc3339(),
        },
    };
    ctx.store
        .put_allocation(&rec)
        .await
        .map_err(|e| format!("recording it in the state store: {e}"))
}

/// Before any data is touched: each BASE release must still be on its
/// worker (keep_releases may have pruned it). One that is gone is rebuilt
/// from git at BASE_SHA; if the rebuilt tree is not the one recorded, the
/// revert is refused with nothing changed.
async fn ensure_base_releases(
    ctx: &Context,
    fleet: &Fleet,
    state: &StateFile,
    changed: &[Changed<'_>],
) -> Result<(), EngineError> {
    let timeout = ctx.project.config.ssh.command_timeout;
    let mut missing = Vec::new();
    for c in changed {
        let Some(b) = c.base else { continue };
        let host = fleet.get(&c.worker.name).map_err(|e| {
            EngineError::usage(
                e,
                "every worker of the release must be reachable for a revert",
            )
        })?;
        let dir = format!(
            "{}/releases/{}",
            c.worker.job_dir(&c.job.name),
            b.release_id
        );
        let cmd = cutover_transport::Command::new(["test", "-d", dir.as_str()]).timeout(timeout);
        let there = host
            .run(&cmd)
            .await
            .map_err(|e| {
                EngineError::usage(e.to_string(), "check the worker and run the revert again")
            })?
            .success();
        if !there {
            missing.push(c);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    super::rebuild_base::rebuild(ctx, fleet, state, &missing_refs(&missing)).await
}

fn missing_refs<'a>(missing: &[&'a Changed<'a>]) -> Vec<(String, String, BaseAllocation)> {
    missing
        .iter()
        .filter_map(|c| Some((c.job.name.clone(), c.worker.name.clone(), c.base?.clone())))
        .collect()
}

fn render_restore(
    template: &str,
    id: &str,
    job: &cutover_model::Job,
    worker: &cutover_model::Worker,
    kv: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut env_ctx = minijinja::Environment::new();
    env_ctx.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env_ctx
        .render_str(
            template,
            minijinja::context! {
                backup => minijinja::context! { id => id },
                worker => minijinja::context! { name => &worker.name, host => &worker.host },
                job => minijinja::context! { name => &job.name, version => &job.manifest.version },
                kv => kv,
                env => env,
            },
        )
        .map_err(|e| format!("restore command: {e}"))
}

fn revert_git(git: &Git, state: &StateFile, remote: &str, push: bool) -> Result<String, String> {
    // A revert whose push failed is retried: the revert commit is already
    // there, and only the push is left.
    let recent = git
        .run(&["log", "-n", "50", "--format=%B"])
        .unwrap_or_default();
    let already = recent.contains(&format!("This reverts commit {}", state.merge_sha));
    let what = if already {
        format!("reverted {}", &state.merge_sha[..12])
    } else {
        revert_range(git, state).inspect_err(|_| {
            let _ = git.run(&["revert", "--abort"]);
            let _ = git.run(&["reset", "--quiet", "--merge"]);
        })?
    };
    if !push {
        return Ok(format!(
            "{what}; not pushed (--no-push): push it before the next release, which refuses while {} is ahead of {remote}",
            state.branch
        ));
    }
    let refspec = format!("HEAD:{}", state.branch);
    git.run(&["push", "--quiet", remote, &refspec])
        .map_err(|e| {
            format!("{what}, but the push failed: {e}; push it with `git push {remote} {refspec}`")
        })?;
    Ok(format!("{what}; pushed to {remote}/{}", state.branch))
}

/// Reverts what BASE_SHA..MERGE_SHA brought. A merge alone: `git revert
/// -m 1`. A range of plain commits: `git revert` of the range, a commit
/// each. A range that holds merges (a merge, then a commit made on the
/// branch itself): each commit of the branch's own line (`--first-parent`:
/// a merged branch's commits are undone by reverting its merge), newest
/// first, merges with `-m 1`, all in one revert commit.
fn revert_range(git: &Git, state: &StateFile) -> Result<String, String> {
    let (base, merge) = (&state.base_sha, &state.merge_sha);
    let range = format!("{base}..{merge}");
    let parents = git.parents(merge).map_err(|e| e.to_string())?;
    let merges = git
        .run(&["rev-list", "--merges", &range])
        .map_err(|e| e.to_string())?;
    let line = git
        .run(&["rev-list", "--first-parent", &range])
        .map_err(|e| e.to_string())?;
    let line: Vec<&str> = line.split_whitespace().collect();
    if parents.len() > 1 && line.len() == 1 {
        git.run(&["revert", "--no-edit", "-m", "1", merge])
            .map_err(|e| e.to_string())?;
        return Ok(format!("reverted merge {} (git revert -m 1)", &merge[..12]));
    }
    if merges.trim().is_empty() {
        git.run(&["revert", "--no-edit", &range])
            .map_err(|e| e.to_string())?;
        return Ok(format!("reverted {range} (fast-forwarded commits)"));
    }
    for c in &line {
        let is_merge = git.parents(c).map_err(|e| e.to_string())?.len() > 1;
        let mut args = vec!["revert", "--no-edit", "--no-commit"];
        if is_merge {
            args.extend(["-m", "1"]);
        }
        args.push(c);
        git.run(&args).map_err(|e| e.to_string())?;
    }
    let message = format!(
        "Revert release {}: {}..{}\n\nThis reverts commit {merge}, and the {} commit(s) of {range}.",
        state.ticket,
        &base[..12],
        &merge[..12],
        line.len()
    );
    git.run(&["commit", "--quiet", "-m", &message])
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "reverted {range} ({} commits, merges with -m 1) in one commit",
        line.len()
    ))
}

/// After a hotfix-branch release: main checked out, fast-forwarded,
/// deployed, verified clean.
pub async fn return_to_main(
    ctx: &Context,
    command: &str,
) -> Result<deploy::DeployReport, EngineError> {
    let git = Git::new(&ctx.project.root);
    let main = ctx.project.config.main_branch.clone();
    let remote = ctx.project.config.remote.clone();
    let dirty = git
        .dirty()
        .map_err(|e| EngineError::usage(e.to_string(), "is this a git clone?"))?;
    if !dirty.is_empty() {
        return Err(EngineError::usage(
            format!(
                "the working tree has uncommitted changes:\n  {}",
                dirty.join("\n  ")
            ),
            "commit, stash or discard them first",
        ));
    }
    let _lock = ctx.store.lock(&ctx.holder(command, None)).await?;
    let fail = |e: super::GitError| {
        EngineError::usage(
            e.to_string(),
            "resolve it in the clone, then run return-to-main again",
        )
    };
    git.run(&["fetch", "--quiet", &remote]).map_err(fail)?;
    git.run(&["checkout", "--quiet", &main]).map_err(fail)?;
    git.run(&["pull", "--quiet", "--ff-only", &remote, &main])
        .map_err(fail)?;
    say(
        ctx,
        format!("checked out {main} at {}", git.head().map_err(fail)?),
    );
    let ctx = ctx.reload()?;
    let opts = DeployOptions {
        command: command.to_string(),
        head: git.head().ok(),
        lock_held: true,
        ..DeployOptions::default()
    };
    let report = deploy::deploy(&ctx, &opts).await?;
    if report.outcome.ok() {
        let drift = crate::drift::drift(&ctx, None).await?;
        if drift.any_drift() {
            let names: Vec<String> = drift
                .allocations
                .iter()
                .filter(|a| a.state != "clean")
                .map(|a| format!("{}@{} ({})", a.job, a.worker, a.state))
                .collect();
            say(
                &ctx,
                format!("NOT clean after the deploy: {}", names.join(", ")),
            );
            return Ok(deploy::DeployReport {
                outcome: deploy::Outcome::Failed,
                ..report
            });
        }
        say(
            &ctx,
            format!("{main} deployed; every allocation matches it"),
        );
    }
    Ok(report)
}
