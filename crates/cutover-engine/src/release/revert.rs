//! `cutover release revert` and `cutover release return-to-main`.

use std::collections::{BTreeMap, BTreeSet};

use cutover_state::{AllocStatus, AllocationRecord};
use serde::Serialize;

use super::files::{ReleaseLog, StateFile};
use super::git::Git;
use super::run::{health_all, in_current, say};
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
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevertReport {
    pub ticket: String,
    pub ok: bool,
    pub restored: Vec<String>,
    pub switched_back: Vec<String>,
    pub stopped: Vec<String>,
    pub git: Option<String>,
    pub errors: Vec<String>,
}

pub async fn revert(ctx: &Context, opts: &RevertOptions) -> Result<RevertReport, EngineError> {
    super::check_ticket(&opts.ticket)?;
    let state = StateFile::load(&ctx.workspace, &opts.ticket)?.ok_or_else(|| {
        EngineError::usage(
            format!("no state file for ticket {} (.cutover/releases/{}.env): revert has nothing to restore", opts.ticket, opts.ticket),
            "without it, put things back by hand: `cutover deploy` from the commit you want, and restore data from your own backups",
        )
    })?;
    let _lock = ctx
        .store
        .lock(&ctx.holder(&opts.command, Some(&opts.ticket)))
        .await?;
    let log = ReleaseLog::new(&ctx.workspace, &opts.ticket);
    log.event("revert", "start", "")?;
    let mut report = RevertReport {
        ticket: opts.ticket.clone(),
        ok: true,
        restored: Vec::new(),
        switched_back: Vec::new(),
        stopped: Vec::new(),
        git: None,
        errors: Vec::new(),
    };
    let base = load_base(ctx, &opts.ticket).await?;
    let records = ctx.store.allocations().await?;
    let services: BTreeSet<&String> = state.services.iter().collect();

    // Every worker concerned: those with a backup, a base release, or an
    // allocation the release created.
    let mut names: BTreeSet<String> = base.iter().map(|b| b.worker.clone()).collect();
    names.extend(
        state
            .backups
            .keys()
            .filter_map(|k| k.split_once('@').map(|(_, w)| w.to_string())),
    );
    names.extend(
        records
            .iter()
            .filter(|r| services.contains(&r.job))
            .map(|r| r.worker.clone()),
    );
    let workers: Vec<cutover_model::Worker> = names
        .iter()
        .filter_map(|n| ctx.project.worker(n).cloned())
        .collect();
    let fleet = Fleet::connect(ctx, workers).await?;
    let timeout = ctx.project.config.ssh.command_timeout;
    let kv = crate::kv::for_templates(ctx).await?;
    let empty = BTreeMap::new();

    // 1. Data: every recorded backup is restored.
    if opts.skip_data {
        log.event(
            "revert",
            "skipped-by-operator",
            &format!(
                "step=data user={} host={}",
                ctx.operator.user, ctx.operator.host
            ),
        )?;
    } else {
        for (key, id) in &state.backups {
            let Some((job_name, worker_name)) = key.split_once('@') else {
                continue;
            };
            let r = async {
                let job = ctx
                    .project
                    .jobs
                    .get(job_name)
                    .ok_or(format!("job {job_name} is not in the project"))?;
                let worker = ctx
                    .project
                    .worker(worker_name)
                    .ok_or(format!("worker {worker_name} is not in workers.toml"))?;
                let restore = job
                    .manifest
                    .backup
                    .as_ref()
                    .and_then(|b| b.restore.clone())
                    .ok_or(format!("job {job_name} has no [backup] restore command"))?;
                let command = render_restore(
                    &restore,
                    id,
                    job,
                    worker,
                    kv.get(job_name).unwrap_or(&empty),
                    &ctx.template_env(),
                )?;
                let rec = records
                    .iter()
                    .find(|r| r.job == job_name && r.worker == worker_name);
                let version = rec.and_then(|r| r.version.clone()).unwrap_or_default();
                let release = rec.and_then(|r| r.release_id.clone()).unwrap_or_default();
                let env = LifecycleEnv {
                    job,
                    worker,
                    release: &release,
                    current_version: &version,
                    new_version: &version,
                };
                in_current(timeout, &fleet, &env, &command).await
            }
            .await;
            match r {
                Ok(_) => {
                    say(ctx, format!("restored backup {id} on {key}"));
                    report.restored.push(format!("{key}={id}"));
                }
                Err(e) => report.errors.push(format!("restore {key}={id}: {e}")),
            }
        }
    }

    // 2. Code: each allocation goes back to the release it ran at BASE_SHA.
    for b in &base {
        match switch_back(ctx, &fleet, b, &records).await {
            Ok(()) => {
                say(
                    ctx,
                    format!("{}@{}: switched back to {}", b.job, b.worker, b.release_id),
                );
                report
                    .switched_back
                    .push(format!("{}@{}={}", b.job, b.worker, b.release_id));
            }
            Err(e) => report.errors.push(format!("{}@{}: {e}", b.job, b.worker)),
        }
    }
    // Allocations the release created have nothing to go back to: stop them.
    for r in records.iter().filter(|r| services.contains(&r.job)) {
        if base.iter().any(|b| b.job == r.job && b.worker == r.worker) {
            continue;
        }
        let (Some(job), Some(worker)) =
            (ctx.project.jobs.get(&r.job), ctx.project.worker(&r.worker))
        else {
            continue;
        };
        let version = r.version.clone().unwrap_or_default();
        let release = r.release_id.clone().unwrap_or_default();
        let env = LifecycleEnv {
            job,
            worker,
            release: &release,
            current_version: &version,
            new_version: "",
        };
        match fleet.get(&worker.name) {
            Ok(host) => match host.run(&remote::lifecycle(&env, "stop", timeout)).await {
                Ok(o) if o.success() => {
                    let _ = host
                        .run(&remote::remove_job(&worker.job_dir(&job.name), timeout))
                        .await;
                    ctx.store.delete_allocation(&r.job, &r.worker).await?;
                    report.stopped.push(format!("{}@{}", r.job, r.worker));
                }
                Ok(o) => report.errors.push(format!(
                    "{}@{}: make stop failed: {}",
                    r.job,
                    r.worker,
                    o.tail(3)
                )),
                Err(e) => report.errors.push(format!("{}@{}: {e}", r.job, r.worker)),
            },
            Err(e) => report.errors.push(format!("{}@{}: {e}", r.job, r.worker)),
        }
    }
    fleet.close().await;

    // 3. Health of what was switched back.
    let jobs: BTreeSet<String> = base.iter().map(|b| b.job.clone()).collect();
    report.errors.extend(health_all(ctx, &jobs).await?);

    // 4. Git: revert the merge (or the fast-forwarded range). Nothing is pushed.
    if opts.skip_git {
        log.event(
            "revert",
            "skipped-by-operator",
            &format!(
                "step=git user={} host={}",
                ctx.operator.user, ctx.operator.host
            ),
        )?;
    } else if report.errors.is_empty() {
        let git = Git::new(&ctx.project.root);
        let r = revert_git(&git, &state);
        match r {
            Ok(msg) => {
                say(ctx, format!("git: {msg}"));
                report.git = Some(msg);
            }
            Err(e) => report.errors.push(format!("git revert: {e}")),
        }
    }

    report.ok = report.errors.is_empty();
    if report.ok {
        log.event("revert", "done", "rc=0")?;
    } else {
        log.event("revert", "failed", "rc=1")?;
    }
    Ok(report)
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

async fn switch_back(
    ctx: &Context,
    fleet: &Fleet,
    b: &BaseAllocation,
    records: &[AllocationRecord],
) -> Result<(), String> {
    let job = ctx
        .project
        .jobs
        .get(&b.job)
        .ok_or(format!("job {} is not in the project", b.job))?;
    let worker = ctx
        .project
        .worker(&b.worker)
        .ok_or(format!("worker {} is not in workers.toml", b.worker))?;
    let host = fleet.get(&b.worker)?;
    let timeout = ctx.project.config.ssh.command_timeout;
    let job_dir = worker.job_dir(&b.job);
    let now = records
        .iter()
        .find(|r| r.job == b.job && r.worker == b.worker);
    let out = host
        .run(&remote::switch(&job_dir, &b.release_id, None, timeout))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "release {} is no longer on the worker ({}); deploy BASE_SHA instead",
            b.release_id,
            out.tail(2)
        ));
    }
    let current = now.and_then(|r| r.version.clone()).unwrap_or_default();
    let old = b.version.clone().unwrap_or_default();
    let env = LifecycleEnv {
        job,
        worker,
        release: &b.release_id,
        current_version: &current,
        new_version: &old,
    };
    let out = host
        .run(&remote::lifecycle(&env, "restart", timeout))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("make restart failed: {}", out.tail(5)));
    }
    let rec = AllocationRecord {
        job: b.job.clone(),
        worker: b.worker.clone(),
        status: AllocStatus::Promoted,
        hash: b.hash.clone(),
        version: b.version.clone(),
        release_id: Some(b.release_id.clone()),
        previous_release_id: now.and_then(|r| r.release_id.clone()),
        health: "unknown".into(),
        message: String::new(),
        updated_at: cutover_state::now_rfc3339(),
    };
    ctx.store
        .put_allocation(&rec)
        .await
        .map_err(|e| e.to_string())
}

fn revert_git(git: &Git, state: &StateFile) -> Result<String, String> {
    let parents = git.parents(&state.merge_sha).map_err(|e| e.to_string())?;
    if parents.len() > 1 {
        git.run(&["revert", "--no-edit", "-m", "1", &state.merge_sha])
            .map_err(|e| {
                let _ = git.run(&["revert", "--abort"]);
                e.to_string()
            })?;
        Ok(format!(
            "reverted merge {} (git revert -m 1); nothing was pushed",
            &state.merge_sha[..12]
        ))
    } else {
        let range = format!("{}..{}", state.base_sha, state.merge_sha);
        git.run(&["revert", "--no-edit", &range]).map_err(|e| {
            let _ = git.run(&["revert", "--abort"]);
            e.to_string()
        })?;
        Ok(format!(
            "reverted {range} (fast-forwarded commits); nothing was pushed"
        ))
    }
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
