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
    let fleet = Fleet::connect(
        &ctx.project.config.ssh,
        workers.iter().map(|(w, _)| w.clone()).collect(),
        &ctx.reporter,
    )
    .await?;
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
    Ok(out)
}
