//! `cutover job run JOB --target T`: a lifecycle target on a job's
//! allocations, outside a deploy (a reload after `--sync-only`, say).

use cutover_state::AllocStatus;
use serde::Serialize;

use crate::fleet::Fleet;
use crate::remote::{self, LifecycleEnv};
use crate::{Context, EngineError};

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub worker: String,
    pub ok: bool,
    pub output: String,
}

pub async fn run_target(
    ctx: &Context,
    job_name: &str,
    target: &str,
    only: Option<&[String]>,
) -> Result<Vec<TargetResult>, EngineError> {
    let job = ctx.project.jobs.get(job_name).ok_or_else(|| {
        EngineError::usage(
            format!("no job named `{job_name}`"),
            format!(
                "jobs: {}",
                ctx.project
                    .jobs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    if target.is_empty() || target.starts_with('-') {
        return Err(EngineError::usage(
            format!("`{target}` is not a make target"),
            "name a target of the job's Makefile, such as reload",
        ));
    }
    let records = ctx.store.allocations().await?;
    let mut workers = Vec::new();
    for w in ctx.project.workers_for(job) {
        if only.is_some_and(|o| !o.contains(&w.name)) {
            continue;
        }
        let promoted = records.iter().find(|r| {
            r.job == job.name
                && r.worker == w.name
                && r.release_id.is_some()
                && r.status != AllocStatus::Stopped
        });
        if let Some(r) = promoted {
            workers.push((w.clone(), r.clone()));
        }
    }
    if let Some(only) = only {
        for name in only {
            if !workers.iter().any(|(w, _)| &w.name == name) {
                return Err(EngineError::usage(
                    format!("`{job_name}` has no deployed allocation on worker `{name}`"),
                    "see `cutover status` for where the job runs",
                ));
            }
        }
    }
    if workers.is_empty() {
        return Err(EngineError::usage(
            format!("`{job_name}` is not deployed anywhere yet"),
            "run `cutover deploy` first",
        ));
    }
    let fleet = Fleet::connect(ctx, workers.iter().map(|(w, _)| w.clone()).collect()).await?;
    let timeout = ctx.project.config.ssh.command_timeout;
    let mut out = Vec::new();
    for (w, rec) in &workers {
        let version = rec.version.clone().unwrap_or_default();
        let release = rec.release_id.clone().unwrap_or_default();
        let env = LifecycleEnv {
            job,
            worker: w,
            release: &release,
            current_version: &version,
            new_version: &version,
        };
        let r = match fleet.get(&w.name) {
            Err(e) => TargetResult {
                worker: w.name.clone(),
                ok: false,
                output: e,
            },
            Ok(h) => match h.run(&remote::lifecycle(&env, target, timeout)).await {
                Ok(o) => TargetResult {
                    worker: w.name.clone(),
                    ok: o.success(),
                    output: o.tail(10),
                },
                Err(e) => TargetResult {
                    worker: w.name.clone(),
                    ok: false,
                    output: e.to_string(),
                },
            },
        };
        out.push(r);
    }
    fleet.close().await;
    // What a target printed may hold a secret it read.
    let redactor = crate::kv::for_templates(ctx).await?.redactor();
    for r in &mut out {
        r.output = redactor.redact(&r.output);
    }
    Ok(out)
}

/// One allocation whose data `cutover job purge` deleted (or could not).
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub worker: String,
    pub ok: bool,
    pub message: String,
}

/// What `cutover job purge JOB` did.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    pub job: String,
    pub allocations: Vec<Purged>,
    /// The job's KV was deleted (a job no longer in the project).
    pub kv_deleted: bool,
}

/// The stopped allocations of `job` whose data a purge would delete.
pub async fn purgeable(ctx: &Context, job: &str) -> Result<Vec<String>, EngineError> {
    let stopped: Vec<String> = ctx
        .store
        .allocations()
        .await?
        .into_iter()
        .filter(|r| r.job == job && r.status == AllocStatus::Stopped)
        .map(|r| r.worker)
        .collect();
    let in_project = ctx.project.jobs.contains_key(job);
    let has_kv = !ctx.store.kv_list(Some(job)).await?.is_empty();
    if stopped.is_empty() && (in_project || !has_kv) {
        return Err(EngineError::usage(
            format!("job `{job}` has no stopped allocation with data to purge"),
            "a purge deletes what reconcile kept of a stopped job: see `cutover cat allocations`",
        ));
    }
    Ok(stopped)
}

/// Deletes the `shared/` data of every stopped allocation of `job` and,
/// for a job no longer in the project, its KV. Under the project lock.
pub async fn purge(ctx: &Context, job: &str, command: &str) -> Result<PurgeReport, EngineError> {
    let _lock = ctx.store.lock(&ctx.holder(command, None)).await?;
    let workers = purgeable(ctx, job).await?;
    let known: std::collections::BTreeMap<String, cutover_model::Worker> = ctx
        .store
        .known_workers()
        .await?
        .into_iter()
        .filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?)))
        .collect();
    let targets: Vec<cutover_model::Worker> = workers
        .iter()
        .filter_map(|n| ctx.project.worker(n).or(known.get(n)).cloned())
        .collect();
    let fleet = Fleet::lazy(ctx, targets.clone())?;
    let timeout = ctx.project.config.ssh.command_timeout;
    let mut report = PurgeReport {
        job: job.to_string(),
        allocations: Vec::new(),
        kv_deleted: false,
    };
    let records = ctx.store.allocations().await?;
    let port = ctx.project.config.ssh.port;
    for name in &workers {
        let result = async {
            let worker = targets
                .iter()
                .find(|w| &w.name == name)
                .ok_or_else(|| format!("no known address for worker {name}"))?;
            // The same job dir under another name (a renamed worker) that
            // runs the job: its data is live, not left over.
            let live = ctx.project.workers.iter().find(|w| {
                w.name != *name
                    && w.same_root_as(worker, port)
                    && records.iter().any(|r| {
                        r.job == job && r.worker == w.name && r.status != AllocStatus::Stopped
                    })
            });
            if let Some(w) = live {
                ctx.store
                    .delete_allocation(job, name)
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(format!(
                    "not purged: worker `{}` has the same host and root and runs {job}; only the old record was dropped",
                    w.name
                ));
            }
            let host = fleet.host(name).await?;
            let job_dir = worker.job_dir(job);
            let out = host
                .run(&remote::remove_job(&job_dir, timeout))
                .await
                .map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!("removing {job_dir} failed: {}", out.tail(3)));
            }
            ctx.store
                .delete_allocation(job, name)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        report.allocations.push(Purged {
            worker: name.clone(),
            ok: result.is_ok(),
            message: result.err().unwrap_or_default(),
        });
    }
    let all_ok = report.allocations.iter().all(|p| p.ok);
    if all_ok && !ctx.project.jobs.contains_key(job) {
        ctx.store.kv_delete(job, None).await?;
        report.kv_deleted = true;
    }
    fleet.close().await;
    Ok(report)
}

/// What `cutover worker forget` dropped.
#[derive(Debug, Clone, Serialize)]
pub struct Forgotten {
    pub worker: String,
    /// The jobs whose allocation records on it were dropped.
    pub jobs: Vec<String>,
}

/// Drops every record of a worker that is no longer in workers.toml (an
/// orphan the operator has dealt with): its allocation records and its
/// last known address. Nothing on the machine is touched. Under the lock.
pub async fn forget_worker(
    ctx: &Context,
    name: &str,
    command: &str,
) -> Result<Forgotten, EngineError> {
    if ctx.project.worker(name).is_some() {
        return Err(EngineError::usage(
            format!("worker `{name}` is in workers.toml"),
            "remove it from workers.toml and deploy (its allocations are stopped); `worker forget` is for a removed worker that cannot be reached",
        ));
    }
    let _lock = ctx.store.lock(&ctx.holder(command, None)).await?;
    let records: Vec<_> = ctx
        .store
        .allocations()
        .await?
        .into_iter()
        .filter(|r| r.worker == name)
        .collect();
    let known = ctx
        .store
        .known_workers()
        .await?
        .into_iter()
        .any(|(n, _)| n == name);
    if records.is_empty() && !known {
        return Err(EngineError::usage(
            format!("the store knows no worker named `{name}`"),
            "see `cutover status` for orphaned workers",
        ));
    }
    for r in &records {
        ctx.store.delete_allocation(&r.job, &r.worker).await?;
    }
    ctx.store.forget_worker(name).await?;
    Ok(Forgotten {
        worker: name.to_string(),
        jobs: records.into_iter().map(|r| r.job).collect(),
    })
}
