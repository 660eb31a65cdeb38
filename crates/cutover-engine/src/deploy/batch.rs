//! One batch member: switch and lifecycle, health, promote (on the worker,
//! then in the store), or the record of its failure and the switch back.

use super::*;

/// An allocation whose new release is in place and switched to.
pub(super) struct Switched {
    pub(super) release: String,
    /// What `current` pointed at before the switch.
    pub(super) previous: Option<String>,
    /// The first health command attempt, when it ran with the lifecycle.
    pub(super) health: Option<Result<(), String>>,
    /// The worker already wrote its promoted.json (in the same command).
    pub(super) carried: bool,
}

/// Switches `current` to the uploaded release and runs the lifecycle target.
pub(super) async fn activate_one(
    run: &Run,
    job: &Job,
    a: &AllocPlan,
    up: Result<Uploaded, String>,
) -> Result<Switched, RolloutError> {
    let up = up.map_err(|e| (None, e))?;
    let _permit = run.limit.acquire().await;
    let worker = &run.workers[&a.worker];
    let host = run.fleet.host(&a.worker).await.map_err(|e| (None, e))?;
    let job_dir = worker.job_dir(&job.name);
    // With make (not a job_control hook), the switch and the lifecycle
    // target are one remote command; otherwise the switch runs alone.
    let make_target = a
        .action
        .target()
        .filter(|_| job.manifest.hooks.job_control.is_none());
    let env = alloc_env(job, worker, &up.release, a);
    // The health command's first attempt joins them when nothing (an
    // `after_allocation_started` hook) must run between the two.
    let folded = match (&job.manifest.health.command, make_target) {
        (Some(command), Some(_)) if job.manifest.hooks.after_allocation_started.is_none() => {
            Some(remote::FoldedHealth {
                command,
                timeout: job.manifest.health.timeout,
            })
        }
        _ => None,
    };
    // Nothing but the target and that health command decides promotion:
    // the worker records it in the same command.
    let health = &job.manifest.health;
    let carried = (make_target.is_some()
        && job.manifest.hooks.after_allocation_started.is_none()
        && health.http.is_none()
        && health.tcp.is_none()
        && (folded.is_some() || health.command.is_none()))
    .then(|| run.carried(a, &up.release));
    // The worker's fleet view rides along, if it changed and may be
    // written before the deploy ends.
    let view = carried.as_ref().and_then(|_| run.views.take(&a.worker));
    let views = view.as_ref().map(|v| remote::Views {
        root: &worker.root,
        worker_json: &v.worker_json,
        jobs_json: run.views.jobs_json(),
    });
    let cmd = match make_target {
        Some(target) => {
            run.step(&job.name, &a.worker, target);
            let prune = run.prune(job, &a.worker);
            remote::switch_and_run(
                &env,
                target,
                folded.as_ref(),
                &prune,
                carried.as_deref(),
                views.as_ref(),
                run.timeout,
            )
        }
        None => {
            run.step(&job.name, &a.worker, "switch");
            let prune = run.prune(job, &a.worker);
            remote::switch(&job_dir, &up.release, Some(&prune), run.timeout)
        }
    };
    let out = match host.run(&cmd).await {
        Ok(out) => out,
        // Timed out: the switch came first and may well have happened (the
        // target is what hangs). It is treated as switched, so that a
        // revert puts the recorded release back.
        Err(e @ cutover_transport::TransportError::Timeout { .. }) => {
            let switched = Switched {
                release: up.release,
                previous: None,
                health: None,
                carried: false,
            };
            return Err((Some(switched), e.to_string()));
        }
        Err(e) => return Err((None, e.to_string())),
    };
    let switch_ok = match make_target {
        Some(_) => !remote::switch_failed(&out),
        None => out.success(),
    };
    if !switch_ok {
        let e = format!(
            "switching current to {} failed: {}",
            up.release,
            out.tail(3)
        );
        return Err((None, e));
    }
    let mut switched = Switched {
        release: up.release,
        previous: remote::previous_release(&out),
        health: None,
        carried: carried.is_some() && out.success() && !out.stderr.contains(remote::CARRY_FAILED),
    };
    if let Some(view) =
        view.filter(|_| switched.carried && !out.stderr.contains(remote::VIEWS_FAILED))
    {
        view::Carried::written(&run.store, &view).await;
    }
    if let Some(h) = &folded {
        switched.health = remote::folded_health(h.command, &out);
    }
    match (make_target, a.action.target()) {
        // The target ran with the switch; a folded health result means it
        // passed (the health command runs only after it).
        (Some(target), _) if !out.success() && switched.health.is_none() => {
            run.keep_output(&job.name, &a.worker, &out);
            Err((Some(switched), remote::target_failed(target, &out)))
        }
        (Some(_), _) | (None, None) => Ok(switched),
        // A job_control hook runs the target here, after the switch.
        (None, Some(target)) => {
            run.step(&job.name, &a.worker, target);
            match lifecycle(run, job, worker, &host, target, &switched.release, a).await {
                Ok(()) => Ok(switched),
                Err(e) => Err((Some(switched), e)),
            }
        }
    }
}

/// What an allocation's lifecycle target and health command see.
pub(super) fn alloc_env<'a>(
    job: &'a Job,
    worker: &'a Worker,
    release: &'a str,
    a: &'a AllocPlan,
) -> LifecycleEnv<'a> {
    LifecycleEnv {
        job,
        worker,
        release,
        current_version: a.current_version.as_deref().unwrap_or_default(),
        new_version: &a.new_version,
    }
}

pub(super) async fn lifecycle(
    run: &Run,
    job: &Job,
    worker: &Worker,
    host: &cutover_transport::Host,
    target: &str,
    release: &str,
    a: &AllocPlan,
) -> Result<(), String> {
    if let Some(control) = &job.manifest.hooks.job_control {
        let current = a.current_version.as_deref().unwrap_or_default();
        let env = run.hook_env(job, target, vec![worker.name.clone()], current);
        return hooks::run(control, &env, run.timeout).await;
    }
    let env = alloc_env(job, worker, release, a);
    let out = host
        .run(&remote::lifecycle(&env, target, run.timeout))
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        run.keep_output(&job.name, &a.worker, &out);
        Err(remote::target_failed(target, &out))
    }
}

pub(super) async fn check_one(
    run: &Run,
    job: &Job,
    a: &AllocPlan,
    s: &Switched,
) -> Result<(), String> {
    if job.manifest.health.is_empty() || a.action == Action::Sync {
        return Ok(());
    }
    let _permit = run.limit.acquire().await;
    let worker = &run.workers[&a.worker];
    let host = run.fleet.host(&a.worker).await?;
    run.step(&job.name, &a.worker, "health");
    let env = alloc_env(job, worker, &s.release, a);
    let empty = BTreeMap::new();
    health::check_allocation(
        &host,
        &env,
        run.kv.get(&job.name).unwrap_or(&empty),
        &run.env,
        s.health.clone(),
    )
    .await
}

/// A healthy allocation, carried on its worker: `promoted.json` names its
/// release (unless the activation command wrote it already). A worker
/// that cannot write it is warned about, not failed: the store is what
/// decides, the file is what a lost store is rebuilt from.
pub(super) async fn carry_on_worker(run: &Run, job: &Job, a: &AllocPlan, s: &Switched) {
    if s.carried {
        return;
    }
    let Ok(host) = run.fleet.host(&a.worker).await else {
        return;
    };
    let json = run.carried(a, &s.release);
    let job_dir = run.workers[&a.worker].job_dir(&job.name);
    let written = host
        .run(&remote::record_promoted(&job_dir, &json, run.timeout))
        .await
        .map_err(|e| e.to_string())
        .and_then(|out| out.success().then_some(()).ok_or_else(|| out.tail(2)));
    if let Err(e) = written {
        run.reporter.event(&Event::Message {
            text: format!(
                "warning: {}@{}: cannot write {}: {e}",
                job.name,
                a.worker,
                remote::PROMOTED_FILE
            ),
        });
    }
}

/// Records a batch's healthy allocations as promoted, in one store
/// transaction: either the whole batch is promoted or none of it is, and a
/// store that cannot be written fails them (the next run must not take
/// them for promoted, nor this one go on as if they were).
pub(super) async fn promote_batch(
    run: &Run,
    job: &Job,
    healthy: &[(&AllocPlan, Switched)],
) -> Result<(), String> {
    let now = cutover_state::now_rfc3339();
    let mut p = cutover_state::Promotions::default();
    for (a, s) in healthy {
        if let Some(json) = run.manifests.get(&(job.name.clone(), a.hash.clone())) {
            p.trees
                .push((job.name.clone(), a.hash.clone(), json.clone()));
        }
        p.allocations.push(AllocationRecord {
            job: job.name.clone(),
            worker: a.worker.clone(),
            status: AllocStatus::Promoted,
            hash: Some(a.hash.clone()),
            version: Some(a.new_version.clone()),
            release_id: Some(s.release.clone()),
            previous_release_id: s.previous.clone(),
            health: if job.manifest.health.is_empty() || a.action == Action::Sync {
                "unknown".into()
            } else {
                "healthy".into()
            },
            message: String::new(),
            updated_at: now.clone(),
        });
        if let Some(w) = run.workers.get(&a.worker) {
            if let Ok(json) = serde_json::to_string(w) {
                p.workers.push((w.name.clone(), json));
            }
        }
    }
    run.store
        .record_promotions(&p)
        .await
        .map_err(|e| format!("recording the promotion failed: {e}"))
}

pub(super) async fn record_failure(run: &Run, job: &Job, a: &AllocPlan, message: &str) {
    let key = (job.name.clone(), a.worker.clone());
    let old = run.records.get(&key);
    let rec = AllocationRecord {
        job: job.name.clone(),
        worker: a.worker.clone(),
        status: AllocStatus::Failed,
        hash: old.and_then(|o| o.hash.clone()),
        version: old.and_then(|o| o.version.clone()),
        release_id: old.and_then(|o| o.release_id.clone()),
        previous_release_id: old.and_then(|o| o.previous_release_id.clone()),
        health: "unhealthy".into(),
        message: crate::redact::cap(&run.redactor.redact(message)),
        updated_at: cutover_state::now_rfc3339(),
    };
    if let Err(e) = run.store.put_allocation(&rec).await {
        run.reporter.event(&Event::Message {
            text: format!(
                "warning: {}@{}: cannot record the failure: {e}",
                job.name, a.worker
            ),
        });
    }
}

/// What switching one member of a failed batch back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Back {
    /// Never switched, or the switch back failed: it runs what it ran.
    Untouched,
    /// Back on the release it ran before, restarted.
    Restored,
    /// Back on the release it ran before, but its restart failed.
    RestartFailed,
    /// A new allocation: stopped.
    Stopped,
}

impl Back {
    pub(super) fn reverted(self) -> bool {
        matches!(self, Back::Restored | Back::Stopped)
    }
}

/// Switches one allocation of a failed batch back to the release the store
/// last recorded for it (or, without a record, the one `current` pointed
/// at) and restarts it; a new allocation is stopped instead. What the
/// worker carries follows: the restored release, or nothing.
pub(super) async fn revert_one(run: &Run, job: &Job, a: &AllocPlan, s: Option<&Switched>) -> Back {
    let Some(s) = s else {
        return Back::Untouched; // never switched: the old release still runs
    };
    let worker = &run.workers[&a.worker];
    let Ok(host) = run.fleet.host(&a.worker).await else {
        return Back::Untouched;
    };
    let job_dir = worker.job_dir(&job.name);
    let rec = run.records.get(&(job.name.clone(), a.worker.clone()));
    let target = rec
        .and_then(|r| r.release_id.clone())
        .or_else(|| s.previous.clone());
    let (back, message) = match &target {
        Some(prev) => {
            let switched = host
                .run(&remote::switch(&job_dir, prev, None, run.timeout))
                .await
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    out.success()
                        .then_some(())
                        .ok_or_else(|| format!("switch back failed: {}", out.tail(3)))
                });
            match switched {
                Err(e) => (Back::Untouched, e),
                Ok(()) => {
                    carry(run, &host, &job_dir, rec, prev).await;
                    let again = AllocPlan {
                        current_version: Some(a.new_version.clone()),
                        new_version: a.current_version.clone().unwrap_or_default(),
                        ..a.clone()
                    };
                    match lifecycle(run, job, worker, &host, "restart", prev, &again).await {
                        Ok(()) => (Back::Restored, String::new()),
                        Err(e) => (Back::RestartFailed, e),
                    }
                }
            }
        }
        None => {
            let _ = host
                .run(&remote::forget_promoted(&job_dir, run.timeout))
                .await;
            let again = AllocPlan {
                current_version: Some(a.new_version.clone()),
                ..a.clone()
            };
            match lifecycle(run, job, worker, &host, "stop", &s.release, &again).await {
                Ok(()) => (Back::Stopped, String::new()),
                Err(e) => (Back::RestartFailed, e),
            }
        }
    };
    run.reporter.event(&Event::Reverted {
        job: job.name.clone(),
        worker: a.worker.clone(),
        ok: back.reverted(),
        message,
    });
    back
}

/// After a switch back: the worker carries the release it runs again, as
/// the store recorded it, or nothing when the store has no such record.
async fn carry(
    run: &Run,
    host: &cutover_transport::Host,
    job_dir: &str,
    rec: Option<&AllocationRecord>,
    release: &str,
) {
    let carried = rec
        .filter(|r| r.release_id.as_deref() == Some(release))
        .and_then(|r| {
            serde_json::to_string(&crate::rebuild::Carried {
                release: release.to_string(),
                version: r.version.clone()?,
                hash: r.hash.clone()?,
                seq: run.seq,
                promoted_at: r.updated_at.clone(),
            })
            .ok()
        });
    let cmd = match carried {
        Some(json) => remote::record_promoted(job_dir, &json, run.timeout),
        None => remote::forget_promoted(job_dir, run.timeout),
    };
    let _ = host.run(&cmd).await;
}
