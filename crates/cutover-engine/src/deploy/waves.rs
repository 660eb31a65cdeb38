//! The waves: jobs in `depends_on` order, the jobs of a wave at once; a
//! job whose dependency failed is not started, and after a signal no job is.

use super::*;

pub(super) async fn run_waves(
    run: &Arc<Run>,
    plan: &Plan,
    report: &mut DeployReport,
) -> Result<(), EngineError> {
    let mut failed_jobs: BTreeSet<String> = BTreeSet::new();
    for wave in &plan.waves {
        let mut tasks = tokio::task::JoinSet::new();
        for jp in &wave.jobs {
            if run.interrupt.is_set() && jp.needs_run() {
                report.jobs.push(JobResult {
                    job: jp.job.clone(),
                    status: JobStatus::Interrupted,
                    message: "not started: interrupted".into(),
                    allocations: Vec::new(),
                });
                continue;
            }
            let job = &run.project.jobs[&jp.job];
            let failed_dep = job
                .manifest
                .depends_on
                .iter()
                .find(|d| failed_jobs.contains(*d))
                .cloned();
            if let Some(dep) = failed_dep {
                let because = format!("job `{dep}` it depends on failed");
                run.reporter.event(&Event::JobBlocked {
                    job: jp.job.clone(),
                    because: because.clone(),
                });
                report.jobs.push(JobResult {
                    job: jp.job.clone(),
                    status: JobStatus::Blocked,
                    message: because,
                    allocations: Vec::new(),
                });
                continue;
            }
            let run = run.clone();
            let jp = jp.clone();
            tasks.spawn(async move { run_job(&run, &jp).await });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => return Err(EngineError::Internal(format!("a job task panicked: {e}"))),
            }
        }
        results.sort_by(|a, b| a.job.cmp(&b.job));
        for r in results {
            if matches!(r.status, JobStatus::Failed) {
                failed_jobs.insert(r.job.clone());
            }
            report.jobs.push(r);
        }
        // Blocked jobs block their own dependents too.
        for r in &report.jobs {
            if r.status == JobStatus::Blocked {
                failed_jobs.insert(r.job.clone());
            }
        }
    }
    Ok(())
}

/// What a run came to, from what its stops and jobs did.
pub(super) fn outcome(report: &DeployReport, interrupted: bool) -> Outcome {
    let any_failed = report.stops.iter().any(|s| !s.ok)
        || report.jobs.iter().any(|j| {
            matches!(
                j.status,
                JobStatus::Failed | JobStatus::Blocked | JobStatus::Interrupted
            )
        });
    let any_done = report.stops.iter().any(|s| s.ok)
        || report.jobs.iter().any(|j| j.status == JobStatus::Succeeded);
    match (any_failed, any_done) {
        _ if interrupted => Outcome::Interrupted,
        (false, _) => Outcome::Success,
        (true, true) => Outcome::Partial,
        (true, false) => Outcome::Failed,
    }
}
