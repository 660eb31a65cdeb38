//! One job of a wave: the uploads admitted in batch order, then batch by
//! batch the switch, lifecycle, health and promote, then `post_deploy`
//! (alone, when only a failed `post_deploy` is retried). The job's
//! `pre_deploy` ran before the run was planned (`deploy::pre_deploy`).

use super::*;

pub(super) async fn run_job(run: &Arc<Run>, jp: &JobPlan) -> JobResult {
    let job = &run.project.jobs[&jp.job];
    let mut result = JobResult {
        job: jp.job.clone(),
        status: JobStatus::Unchanged,
        message: String::new(),
        allocations: Vec::new(),
    };
    if !jp.needs_run() {
        return result;
    }
    run.reporter.event(&Event::JobStarted {
        job: jp.job.clone(),
        wave: jp.wave,
        batches: jp.batches,
    });
    let all_workers: Vec<String> = jp
        .allocations
        .iter()
        .filter(|a| a.action != Action::Skip)
        .map(|a| a.worker.clone())
        .collect();
    if !jp.has_work() {
        // Only the post_deploy hook that failed last time: the workers
        // it concerns are all of the job's.
        let workers = jp.allocations.iter().map(|a| a.worker.clone()).collect();
        return post_deploy(run, job, result, workers).await;
    }
    // Every release dir is uploaded ahead of the rolling batches; the
    // uploads stop (and are aborted) when this returns.
    let mut uploads = upload::start_uploads(run, jp);
    for batch in 1..=jp.batches {
        if run.interrupt.is_set() {
            return finish(
                run,
                result,
                JobStatus::Interrupted,
                format!(
                    "interrupted before batch {batch}/{}: batches before it are promoted, the rest run next time",
                    jp.batches
                ),
            );
        }
        if let Err(message) = run_batch(run, job, jp, batch, &mut uploads, &mut result).await {
            return finish(run, result, JobStatus::Failed, message);
        }
    }
    post_deploy(run, job, result, all_workers).await
}

/// The job's `post_deploy` hook. A failure is recorded in the store, so
/// that the next deploy runs it again (alone, when nothing else changed);
/// a success clears that record.
async fn post_deploy(run: &Run, job: &Job, result: JobResult, workers: Vec<String>) -> JobResult {
    let hook = &job.manifest.hooks.post_deploy;
    let outcome = run.hook(job, "post_deploy", hook, workers).await;
    let key = post_deploy_key(&job.name);
    // The hook's output is kept for the retry, redacted: the store is no
    // place for a secret it printed.
    let recorded = match &outcome {
        Ok(()) => run.store.meta_put(&key, "").await,
        Err(e) => {
            let kept = crate::redact::cap(&run.redactor.redact(e));
            run.store.meta_put(&key, &kept).await
        }
    };
    match (outcome, recorded) {
        (Ok(()), _) => finish(run, result, JobStatus::Succeeded, String::new()),
        (Err(e), Ok(())) => finish(
            run,
            result,
            JobStatus::Failed,
            format!("{e}; the next deploy runs post_deploy again"),
        ),
        (Err(e), Err(store)) => finish(
            run,
            result,
            JobStatus::Failed,
            format!("{e}; and it could not be recorded for a retry: {store}"),
        ),
    }
}

/// The store's record of a job's failed `post_deploy` (empty: none).
pub(crate) fn post_deploy_key(job: &str) -> String {
    format!("post_deploy_failed/{job}")
}

/// A batch member that failed: where it stands, and why.
type Failure<'a> = (&'a AllocPlan, Option<Switched>, String);

/// One batch: wait for its uploads, switch and start every member at once,
/// the hook, health checks, promotion. On a failure, the batch is
/// recorded and halted or switched back, and the job's message returned.
async fn run_batch(
    run: &Run,
    job: &Job,
    jp: &JobPlan,
    batch: usize,
    uploads: &mut upload::Uploads,
    result: &mut JobResult,
) -> Result<(), String> {
    let members: Vec<&AllocPlan> = jp
        .allocations
        .iter()
        .filter(|a| a.batch == Some(batch))
        .collect();
    run.reporter.event(&Event::BatchStarted {
        job: jp.job.clone(),
        batch,
        batches: jp.batches,
        workers: members.iter().map(|a| a.worker.clone()).collect(),
    });
    let ups = uploads.take(&members).await;
    // A run whose lock was taken over (PostgreSQL) switches nothing more.
    run.store.check_fence().await.map_err(|e| e.to_string())?;
    let outcomes = crate::join::join_all(
        members
            .iter()
            .zip(ups)
            .map(|(a, up)| activate_one(run, job, a, up)),
    )
    .await;
    let mut switched: Vec<(&AllocPlan, Switched)> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    for (a, r) in members.iter().copied().zip(outcomes) {
        match r {
            Ok(s) => switched.push((a, s)),
            Err((s, e)) => failures.push((a, s, e)),
        }
    }
    if !switched.is_empty() && failures.is_empty() {
        let started: Vec<String> = switched.iter().map(|(a, _)| a.worker.clone()).collect();
        let hook = &job.manifest.hooks.after_allocation_started;
        if let Err(e) = run
            .hook(job, "after_allocation_started", hook, started)
            .await
        {
            for (a, s) in switched.drain(..) {
                failures.push((a, Some(s), e.clone()));
            }
        }
    }
    let healthy = check_and_promote(run, job, switched, &mut failures).await;
    if failures.is_empty() {
        for (a, s) in healthy {
            let release = Some(s.release.clone());
            result
                .allocations
                .push(done(run, job, a, true, release, String::new(), false));
        }
        return Ok(());
    }
    Err(fail_batch(run, job, jp, batch, failures, healthy, result).await)
}

/// Health checks of the switched members, then promotion of the healthy;
/// what fails either joins `failures`.
async fn check_and_promote<'a>(
    run: &Run,
    job: &Job,
    switched: Vec<(&'a AllocPlan, Switched)>,
    failures: &mut Vec<Failure<'a>>,
) -> Vec<(&'a AllocPlan, Switched)> {
    let checked =
        crate::join::join_all(switched.iter().map(|(a, s)| check_one(run, job, a, s))).await;
    let mut healthy = Vec::new();
    for ((a, s), r) in switched.into_iter().zip(checked) {
        match r {
            Ok(()) => healthy.push((a, s)),
            Err(e) => failures.push((a, Some(s), e)),
        }
    }
    if healthy.is_empty() {
        return healthy;
    }
    crate::join::join_all(healthy.iter().map(|(a, s)| carry_on_worker(run, job, a, s))).await;
    match promote_batch(run, job, &healthy).await {
        Ok(()) => healthy,
        Err(e) => {
            for (a, s) in healthy {
                failures.push((a, Some(s), e.clone()));
            }
            Vec::new()
        }
    }
}

/// A failed batch: each failure recorded, then the batch halted or (with
/// `on_failure = "revert"`) switched back, healthy members included.
/// Returns the job's message.
async fn fail_batch(
    run: &Run,
    job: &Job,
    jp: &JobPlan,
    batch: usize,
    failures: Vec<Failure<'_>>,
    healthy: Vec<(&AllocPlan, Switched)>,
    result: &mut JobResult,
) -> String {
    let revert = job.manifest.on_failure == OnFailure::Revert;
    let first_error = format!("{}: {}", failures[0].0.worker, failures[0].2);
    for (a, s, e) in &failures {
        record_failure(run, job, a, e).await;
        let reverted = revert && revert_one(run, job, a, s.as_ref()).await.reverted();
        let release = s.as_ref().map(|s| s.release.clone());
        result
            .allocations
            .push(done(run, job, a, false, release, e.clone(), reverted));
    }
    for (a, s) in healthy {
        let back = if revert {
            revert_one(run, job, a, Some(&s)).await
        } else {
            Back::Untouched
        };
        // Switched back, it no longer runs what was promoted.
        let why = match back {
            Back::Untouched => None,
            Back::Restored | Back::Stopped => Some("reverted with its failed batch"),
            Back::RestartFailed => Some("switched back with its failed batch; its restart failed"),
        };
        if let Some(why) = why {
            record_failure(run, job, a, why).await;
        }
        let message = why.unwrap_or_default().to_string();
        result.allocations.push(done(
            run,
            job,
            a,
            why.is_none(),
            Some(s.release),
            message,
            back.reverted(),
        ));
    }
    let verb = if revert { "reverted" } else { "halted" };
    format!(
        "batch {batch}/{} failed and was {verb}: {first_error}",
        jp.batches
    )
}

pub(super) fn finish(run: &Run, mut r: JobResult, status: JobStatus, message: String) -> JobResult {
    let message = crate::redact::cap(&run.redactor.redact(&message));
    run.reporter.event(&Event::JobDone {
        job: r.job.clone(),
        status: format!("{status:?}").to_lowercase(),
        message: message.clone(),
    });
    r.status = status;
    r.message = message;
    r
}

pub(super) fn done(
    run: &Run,
    job: &Job,
    a: &AllocPlan,
    ok: bool,
    release: Option<String>,
    message: String,
    reverted: bool,
) -> AllocResult {
    let message = crate::redact::cap(&run.redactor.redact(&message));
    run.reporter.event(&Event::AllocDone {
        job: job.name.clone(),
        worker: a.worker.clone(),
        action: a.action.as_str().into(),
        ok,
        message: if reverted {
            format!("{message} (reverted to the previous release)")
        } else {
            message.clone()
        },
    });
    AllocResult {
        output: if ok {
            String::new()
        } else {
            crate::redact::cap(&run.take_output(&job.name, &a.worker))
        },
        worker: a.worker.clone(),
        action: a.action,
        ok,
        release,
        message,
        reverted,
    }
}
