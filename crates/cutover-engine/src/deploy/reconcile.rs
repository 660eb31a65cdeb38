//! Reconcile: stop the allocations that should no longer run (their
//! `shared/` data is kept unless the operator asked), before the waves.

use super::*;

/// Stops allocations that should no longer run, then cleans up after them.
pub(super) async fn reconcile(run: &Arc<Run>, stops: &[StopPlan]) -> Vec<StopResult> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in stops.iter().cloned() {
        let run = run.clone();
        tasks.spawn(async move {
            let r = stop_one(&run, &s).await;
            let ok = r.is_ok();
            let forgotten = matches!(r, Ok(Stopped::Forgotten));
            let orphaned = matches!(r, Ok(Stopped::Orphaned(_)));
            let message = run.redactor.redact(&match r {
                Ok(Stopped::Orphaned(why)) => why,
                Ok(_) => String::new(),
                Err(e) => e,
            });
            if orphaned {
                run.reporter.event(&Event::Message {
                    text: format!("warning: {}@{}: {message}", s.job, s.worker),
                });
            } else if !forgotten {
                run.reporter.event(&Event::StopDone {
                    job: s.job.clone(),
                    worker: s.worker.clone(),
                    why: s.why.clone(),
                    ok,
                    message: message.clone(),
                });
            }
            StopResult {
                job: s.job,
                worker: s.worker,
                why: s.why,
                ok,
                message,
                data_kept: !run.purge_data && !forgotten && !orphaned,
                orphaned,
                forgotten,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(r)) = tasks.join_next().await {
        out.push(r);
    }
    out.sort_by(|a, b| (&a.job, &a.worker).cmp(&(&b.job, &b.worker)));
    if !run.purge_data {
        return out;
    }

    // Asked to purge: forget what is fully gone, KV of removed jobs and
    // addresses of removed workers.
    for r in out.iter().filter(|r| r.ok) {
        let job_left =
            run.project.jobs.contains_key(&r.job) || out.iter().any(|o| o.job == r.job && !o.ok);
        if !job_left {
            if let Err(e) = run.store.kv_delete(&r.job, None).await {
                run.reporter.event(&Event::Message {
                    text: format!("cannot delete the KV of removed job {}: {e}", r.job),
                });
            }
        }
        if run.project.worker(&r.worker).is_none() {
            if let Err(e) = run.store.forget_worker(&r.worker).await {
                run.reporter.event(&Event::Message {
                    text: format!("cannot forget removed worker {}: {e}", r.worker),
                });
            }
        }
    }
    out
}

/// The allocations left running of the jobs reconcile just stopped
/// somewhere (they now carry the job alone), health-checked before any
/// wave starts: (job, `job@worker: why`) for each that is not healthy.
pub(super) async fn check_survivors(run: &Run, stops: &[StopResult]) -> Vec<(String, String)> {
    let stopped: BTreeSet<&str> = stops
        .iter()
        .filter(|s| s.ok && !s.orphaned && !s.forgotten)
        .map(|s| s.job.as_str())
        .collect();
    let survivors: Vec<(&Job, &Worker, &AllocationRecord)> = run
        .records
        .values()
        .filter(|r| stopped.contains(r.job.as_str()) && r.status == AllocStatus::Promoted)
        .filter(|r| !stops.iter().any(|s| s.job == r.job && s.worker == r.worker))
        .filter_map(|r| {
            let job = run.project.jobs.get(&r.job)?;
            let worker = run.project.worker(&r.worker)?;
            (!job.manifest.health.is_empty()).then_some((job, worker, r))
        })
        .collect();
    let empty = BTreeMap::new();
    let checked = crate::join::join_all(survivors.iter().map(|(job, worker, r)| {
        let empty = &empty;
        async move {
            let _permit = run.limit.acquire().await;
            let host = run.fleet.host(&worker.name).await?;
            run.step(&job.name, &worker.name, "health (survivor of reconcile)");
            let version = r.version.clone().unwrap_or_default();
            let release = r.release_id.clone().unwrap_or_default();
            let env = crate::remote::LifecycleEnv {
                job,
                worker,
                release: &release,
                current_version: &version,
                new_version: &version,
            };
            health::check_allocation(
                &host,
                &env,
                run.kv.get(&job.name).unwrap_or(empty),
                &run.env,
                None,
            )
            .await
        }
    }))
    .await;
    survivors
        .iter()
        .zip(checked)
        .filter_map(|((job, worker, _), r)| {
            r.err().map(|e| {
                let why = run
                    .redactor
                    .redact(&format!("{}@{}: {e}", job.name, worker.name));
                (job.name.clone(), why)
            })
        })
        .collect()
}

/// What became of an allocation reconcile stopped.
pub(super) enum Stopped {
    /// Stopped, and cleaned up after.
    Done,
    /// Its worker was renamed: the same root runs the job under the new
    /// name, so only the old record was dropped.
    Forgotten,
    /// Its worker is gone from workers.toml and cannot be reached: it may
    /// still run the job, and nothing here can stop it. It is warned about
    /// (here and in `status`) until the operator deals with the machine
    /// and runs `cutover worker forget`; it fails no deploy.
    Orphaned(String),
}

/// The record of an orphaned allocation says so in its message.
pub const ORPHANED: &str = "orphaned";

pub(super) async fn stop_one(run: &Run, s: &StopPlan) -> Result<Stopped, String> {
    let _permit = run.limit.acquire().await;
    let worker = run
        .workers
        .get(&s.worker)
        .ok_or_else(|| format!("no known address for removed worker {}", s.worker))?;
    // A worker removed from workers.toml whose host and root a worker of
    // the project still has was renamed: its job dir is the other's, live.
    // Only the old record goes, when the worker that has its root runs the
    // job; otherwise the job stops there as it would have.
    let port = run.project.config.ssh.port;
    let job = run.project.jobs.get(&s.job);
    if let Some(now) = run.project.workers.iter().find(|w| {
        s.worker_removed
            && w.same_root_as(worker, port)
            && !w.disabled
            && job.is_some_and(|j| w.matches(&j.manifest.selectors))
    }) {
        run.store
            .delete_allocation(&s.job, &s.worker)
            .await
            .map_err(|e| e.to_string())?;
        run.reporter.event(&Event::Message {
            text: format!(
                "{}@{}: forgotten, not stopped: worker `{}` has the same host and root (renamed?)",
                s.job, s.worker, now.name
            ),
        });
        return Ok(Stopped::Forgotten);
    }
    let host = match run.fleet.host(&s.worker).await {
        Ok(h) => h,
        Err(e) if s.worker_removed => {
            let why = format!(
                "{ORPHANED}: removed from workers.toml and unreachable ({e}), so it could not be stopped and may still run the job; once the machine is dealt with, `cutover worker forget {}` drops it",
                s.worker
            );
            if let Some(r) = run.records.get(&(s.job.clone(), s.worker.clone())) {
                let mut r = r.clone();
                r.message = why.clone();
                r.updated_at = cutover_state::now_rfc3339();
                run.store
                    .put_allocation(&r)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return Ok(Stopped::Orphaned(why));
        }
        Err(e) => return Err(e),
    };
    let job_dir = worker.job_dir(&s.job);
    let rec = run.records.get(&(s.job.clone(), s.worker.clone()));
    let version = rec.and_then(|r| r.version.clone()).unwrap_or_default();
    let env = vec![
        ("CUTOVER_JOB".to_string(), s.job.clone()),
        ("CUTOVER_WORKER".to_string(), s.worker.clone()),
        ("CUTOVER_ROOT".to_string(), worker.root.clone()),
        ("CUTOVER_SHARED".to_string(), format!("{job_dir}/shared")),
        (
            "CUTOVER_RELEASE".to_string(),
            rec.and_then(|r| r.release_id.clone()).unwrap_or_default(),
        ),
        ("CURRENT_VERSION".to_string(), version),
        ("NEW_VERSION".to_string(), String::new()),
    ];
    run.step(&s.job, &s.worker, "stop");
    let out = host
        .run(&remote::stop(&job_dir, env, run.timeout))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("make stop failed: {}", out.tail(5)));
    }
    if let Some(job) = run.project.jobs.get(&s.job) {
        run.hook(
            job,
            "after_allocation_stopped",
            &job.manifest.hooks.after_allocation_stopped,
            vec![s.worker.clone()],
        )
        .await?;
    }
    // A disabled worker is stopped and otherwise left alone. Elsewhere the
    // release dirs go; `shared/` (the job's data) stays unless the
    // operator asked for it to go.
    let disabled = run.project.worker(&s.worker).is_some_and(|w| w.disabled);
    // A disabled worker keeps its release dirs, but no longer claims to
    // run one: its promoted.json goes, so a lost store is not rebuilt
    // with it as running.
    let cleanup = match (run.purge_data, disabled) {
        (true, _) => remote::remove_job(&job_dir, run.timeout),
        (false, false) => remote::remove_releases(&job_dir, run.timeout),
        (false, true) => remote::forget_promoted(&job_dir, run.timeout),
    };
    let out = host.run(&cleanup).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("cleaning up {job_dir} failed: {}", out.tail(3)));
    }
    if run.purge_data {
        run.store
            .delete_allocation(&s.job, &s.worker)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Stopped::Done);
    }
    // Kept as `stopped`: `cutover job purge` finds its data through it.
    let rec = AllocationRecord {
        job: s.job.clone(),
        worker: s.worker.clone(),
        status: AllocStatus::Stopped,
        hash: None,
        version: rec.and_then(|r| r.version.clone()),
        release_id: None,
        previous_release_id: None,
        health: "unknown".into(),
        message: format!("stopped: {}; shared/ data kept", s.why),
        updated_at: cutover_state::now_rfc3339(),
    };
    run.store
        .put_allocation(&rec)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(w) = run.workers.get(&s.worker) {
        if let Ok(json) = serde_json::to_string(w) {
            run.store
                .put_known_worker(&w.name, &json)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Stopped::Done)
}
