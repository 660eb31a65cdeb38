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

/// One promoted allocation to look at: (job, worker), the manifest of its
/// promoted tree (if the store has it), its record.
type Item = (
    (String, String),
    Option<cutover_model::tree::Manifest>,
    cutover_state::AllocationRecord,
);

/// Checks every promoted allocation of `jobs` (`None`: all) that the
/// project still wants. With `health` false, no health check runs. One
/// connection per worker checked, none to the others.
pub async fn live(
    ctx: &Context,
    jobs: Option<&BTreeSet<String>>,
    health: bool,
) -> Result<BTreeMap<(String, String), Live>, EngineError> {
    let items = promoted(ctx, jobs, None).await?;
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
    let checks = health_checks(ctx, &fleet, &items, health).await;
    fleet.close().await;
    for ((key, manifest, _), health) in items.into_iter().zip(checks?) {
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
        out.insert(key, Live { health, drift });
    }
    Ok(out)
}

/// The health now (as [`Live::health`]) of `job` on those of `workers` where
/// it is promoted, over `fleet`'s connections (opened if need be): what a
/// promote asks of the canary workers, on the connections its rollout
/// then uses.
pub(crate) async fn health_now(
    ctx: &Context,
    fleet: &Fleet,
    job: &str,
    workers: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>, EngineError> {
    let scope: BTreeSet<String> = [job.to_string()].into();
    let items = promoted(ctx, Some(&scope), Some(workers)).await?;
    let checks = health_checks(ctx, fleet, &items, true).await?;
    Ok(items
        .into_iter()
        .zip(checks)
        .map(|(((_, w), _, _), health)| (w, health))
        .collect())
}

/// The promoted allocations of `jobs` on `workers` (`None`: all) that the
/// project still wants.
async fn promoted(
    ctx: &Context,
    jobs: Option<&BTreeSet<String>>,
    workers: Option<&BTreeSet<String>>,
) -> Result<Vec<Item>, EngineError> {
    let (recorded, records) = render::recorded(ctx).await?;
    let mut items = Vec::new();
    for r in records {
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
        items.push((key, manifest, r));
    }
    Ok(items)
}

/// Each item's health now, one attempt each, all at once (secrets
/// redacted); with `health` false, the last recorded one.
async fn health_checks(
    ctx: &Context,
    fleet: &Fleet,
    items: &[Item],
    health: bool,
) -> Result<Vec<String>, EngineError> {
    let kv = kv::for_templates(ctx).await?;
    let operator_env = ctx.template_env();
    let empty = BTreeMap::new();
    let checks = crate::join::join_all(items.iter().map(|((job, worker), _, r)| {
        let (kv, operator_env, empty) = (&kv, &operator_env, &empty);
        async move {
            let Ok(host) = fleet.host(worker).await else {
                return "unreachable".to_string();
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
    Ok(checks.iter().map(|h| redactor.redact(h)).collect())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
