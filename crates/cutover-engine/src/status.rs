//! `cutover status`, live: each promoted allocation's health checked now
//! (one attempt), and its drift by the cheap listing comparison with the
//! promoted tree. One connection per worker, all at once.

use std::collections::{BTreeMap, BTreeSet};

use cutover_state::AllocStatus;
use serde::Serialize;

use crate::drift::{against_promoted, Found};
use crate::fleet::Fleet;
use crate::remote::LifecycleEnv;
use crate::{kv, render, Context, EngineError};

/// What was found on a worker for one allocation.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    /// healthy | unhealthy: why | no checks | unreachable | not checked
    pub health: String,
    /// clean | N file(s): paths | unreachable | unknown: why
    pub drift: String,
}

/// Checks every promoted allocation of `jobs` (`None`: all) that the
/// project still wants. With `health` false, no health check runs.
pub async fn live(
    ctx: &Context,
    jobs: Option<&BTreeSet<String>>,
    health: bool,
) -> Result<BTreeMap<(String, String), Live>, EngineError> {
    live_on(ctx, jobs, None, health).await
}

/// [`live`], on `workers` only (`None`: all): one connection per worker
/// checked, none to the others.
pub async fn live_on(
    ctx: &Context,
    jobs: Option<&BTreeSet<String>>,
    workers: Option<&BTreeSet<String>>,
    health: bool,
) -> Result<BTreeMap<(String, String), Live>, EngineError> {
    let (recorded, records) = render::recorded(ctx).await?;
    let mut items = Vec::new();
    for r in &records {
        // A failed allocation still runs its last promoted release.
        if r.status == AllocStatus::Stopped
            || r.release_id.is_none()
            || jobs.is_some_and(|j| !j.contains(&r.job))
            || workers.is_some_and(|w| !w.contains(&r.worker))
        {
            continue;
        }
        let (Some(job), Some(_)) = (ctx.project.jobs.get(&r.job), ctx.project.worker(&r.worker))
        else {
            continue;
        };
        if !ctx.project.workers_for(job).any(|w| w.name == r.worker) {
            continue;
        }
        let key = (r.job.clone(), r.worker.clone());
        let manifest = recorded.get(&key).and_then(|x| x.promoted_manifest.clone());
        items.push((key, manifest, r.clone()));
    }
    let mut out = BTreeMap::new();
    if items.is_empty() {
        return Ok(out);
    }
    let workers: BTreeMap<String, cutover_model::Worker> = items
        .iter()
        .filter_map(|((_, w), _, _)| ctx.project.worker(w).map(|w| (w.name.clone(), w.clone())))
        .collect();
    let fleet = Fleet::connect(ctx, workers.into_values().collect()).await?;

    let with_manifest: Vec<_> = items
        .iter()
        .filter_map(|(k, m, _)| Some((k.clone(), m.clone()?)))
        .collect();
    let mut drift: BTreeMap<_, _> = against_promoted(ctx, &fleet, &with_manifest)
        .await
        .into_iter()
        .collect();

    let kv = kv::for_templates(ctx).await?;
    let operator_env = ctx.template_env();
    let empty = BTreeMap::new();
    let checks = crate::join::join_all(items.iter().map(|((job, worker), _, r)| {
        let (kv, operator_env, empty, fleet) = (&kv, &operator_env, &empty, &fleet);
        async move {
            let host = match fleet.get(worker) {
                Ok(h) => h,
                Err(_) => return "unreachable".to_string(),
            };
            let (Some(job), Some(w)) = (ctx.project.jobs.get(job), ctx.project.worker(worker))
            else {
                return "not checked".to_string();
            };
            if !health {
                return format!("not checked (last recorded: {})", r.health);
            }
            if job.manifest.health.is_empty() {
                return "no checks".to_string();
            }
            // One attempt: status reports the health now, it does not wait
            // for it.
            let mut once = job.clone();
            once.manifest.health.attempts = 1;
            let version = r.version.clone().unwrap_or_default();
            let release = r.release_id.clone().unwrap_or_default();
            let env = LifecycleEnv {
                job: &once,
                worker: w,
                release: &release,
                current_version: &version,
                new_version: &version,
            };
            let kv = kv.get(&job.name).unwrap_or(empty);
            match crate::health::check_allocation(&host, &env, kv, operator_env, None).await {
                Ok(()) => "healthy".to_string(),
                Err(e) if e.starts_with("unhealthy") => first_line(&e).to_string(),
                Err(e) => format!("unhealthy: {}", first_line(&e)),
            }
        }
    }))
    .await;
    let redactor = kv.redactor();
    for ((key, manifest, _), health) in items.into_iter().zip(checks) {
        let drift = match (manifest, drift.remove(&key)) {
            (None, _) => "unknown: the store has no manifest of the promoted tree".to_string(),
            (_, Some(Found::Files(f))) if f.is_empty() => "clean".to_string(),
            (_, Some(Found::Files(f))) => format!(
                "{} file(s): {}",
                f.len(),
                f.iter()
                    .take(3)
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, Some(Found::Unreachable(_))) => "unreachable".to_string(),
            (_, Some(Found::Error(e))) => format!("unknown: {}", first_line(&e)),
            (_, None) => "unknown".to_string(),
        };
        out.insert(
            key,
            Live {
                health: redactor.redact(&health),
                drift,
            },
        );
    }
    fleet.close().await;
    Ok(out)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
