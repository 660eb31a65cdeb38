//! `cutover deploy`.

use cutover_engine::app;
use cutover_engine::deploy::{self, DeployReport, Outcome};
use cutover_engine::EngineError;
use cutover_model::plan::{Action, Plan};

use super::{job_set, Session};
use crate::args::DeployArgs;
use crate::output;

pub async fn run(s: &Session, a: DeployArgs) -> Result<u8, EngineError> {
    let req = app::DeployRequest {
        jobs: job_set(a.jobs),
        dry_run: a.dry_run,
        force: a.force,
        sync_only: a.sync_only,
        verify: a.verify,
        purge_data: a.purge_data,
    };
    if !s.json && !req.dry_run {
        // The plan is computed inside the engine; announce the start only.
        println!("[deploy] planning {}", s.ctx.project.config.name);
    }
    let inv = s.invocation_of(app::deploy_command(&req));
    let (report, answer) = app::deploy(&s.ctx, &inv, &req).await?;
    if s.json {
        super::print_answer(&answer);
    } else if req.dry_run {
        print_plan(&report.plan);
        println!("dry run: nothing was changed");
    } else {
        summarize_in(&report, &s.ctx.project);
    }
    Ok(answer.exit_code)
}

pub fn print_plan(plan: &Plan) {
    let mut rows = Vec::new();
    for s in &plan.stops {
        rows.push(vec![
            "-".into(),
            s.job.clone(),
            s.worker.clone(),
            "stop".into(),
            "-".into(),
            s.why.clone(),
        ]);
    }
    for j in plan.jobs() {
        for al in &j.allocations {
            rows.push(vec![
                j.wave.to_string(),
                j.job.clone(),
                al.worker.clone(),
                al.action.as_str().into(),
                al.batch
                    .map_or("-".into(), |b| format!("{b}/{}", j.batches)),
                al.why.clone(),
            ]);
        }
        if let Some(why) = &j.deferred {
            rows.push(vec![
                j.wave.to_string(),
                j.job.clone(),
                "-".into(),
                "?".into(),
                "-".into(),
                format!(
                    "not planned: a real run runs pre_deploy first, and the templates need what it writes ({})",
                    first_line(why)
                ),
            ]);
        }
        if let Some(why) = &j.retry_post_deploy {
            rows.push(vec![
                j.wave.to_string(),
                j.job.clone(),
                "-".into(),
                "post_deploy".into(),
                "-".into(),
                format!("retry: the last post_deploy failed ({})", first_line(why)),
            ]);
        }
    }
    if rows.is_empty() {
        println!("plan: no jobs and no allocations");
        return;
    }
    output::table(&["WAVE", "JOB", "WORKER", "ACTION", "BATCH", "WHY"], &rows);
    println!("plan: {}", counts(plan));
    for j in plan.jobs() {
        match &j.source {
            Some(src) => println!("source: {}: {src}", j.job),
            None => println!("source: {}: working tree", j.job),
        }
    }
    for j in plan.jobs().filter(|j| j.pre_deploy) {
        println!(
            "note: {} has a pre_deploy hook, which only a real run runs (first, before it plans): its plan may differ from this one",
            j.job
        );
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn counts(plan: &Plan) -> String {
    let c = plan.counts();
    let retries = plan
        .jobs()
        .filter(|j| j.retry_post_deploy.is_some())
        .count();
    if c.is_empty() && retries == 0 {
        return "nothing".into();
    }
    c.iter()
        .map(|(a, n)| match a {
            Action::Skip => format!("{n} unchanged"),
            other => format!("{n} {}", other.as_str()),
        })
        .chain((retries > 0).then(|| format!("{retries} post_deploy retry")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a run did (not what it planned): each action that completed, what
/// failed, what was planned but not run, what was unchanged.
fn done(r: &DeployReport) -> String {
    let mut by_action: std::collections::BTreeMap<Action, usize> = Default::default();
    let mut failed = 0;
    for a in r.jobs.iter().flat_map(|j| &j.allocations) {
        if a.ok && !a.reverted {
            *by_action.entry(a.action).or_default() += 1;
        } else {
            failed += 1;
        }
    }
    let stopped = r
        .stops
        .iter()
        .filter(|s| s.ok && !s.orphaned && !s.forgotten)
        .count();
    let failed_stops = r.stops.iter().filter(|s| !s.ok).count();
    let orphaned = r.stops.iter().filter(|s| s.orphaned).count();
    let all = r.plan.jobs().flat_map(|j| &j.allocations);
    let (planned, unchanged) = all.fold((0, 0), |(p, u), a| {
        if a.action == Action::Skip {
            (p, u + 1)
        } else {
            (p + 1, u)
        }
    });
    let ran: usize = by_action.values().sum::<usize>() + failed;
    let mut parts: Vec<String> = by_action
        .iter()
        .map(|(a, n)| format!("{n} {}", a.as_str()))
        .collect();
    if stopped > 0 {
        parts.push(format!("{stopped} stop"));
    }
    if failed + failed_stops > 0 {
        parts.push(format!("{} failed", failed + failed_stops));
    }
    if orphaned > 0 {
        parts.push(format!("{orphaned} orphaned"));
    }
    if planned > ran {
        parts.push(format!("{} not run", planned - ran));
    }
    if unchanged > 0 {
        parts.push(format!("{unchanged} unchanged"));
    }
    let retried = r
        .plan
        .jobs()
        .filter(|j| j.retry_post_deploy.is_some() && !j.has_work())
        .count();
    if retried > 0 {
        parts.push(format!("{retried} post_deploy retry"));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// `in_project` says whether a job is still in the project: a removed
/// job's KV is kept too, a present one's is not in question.
pub fn summarize_in(r: &DeployReport, project: &cutover_model::Project) {
    summarize_with(r, |job| project.jobs.contains_key(job))
}

fn summarize_with(r: &DeployReport, in_project: impl Fn(&str) -> bool) {
    if let Some(h) = &r.took_over_lock {
        println!("[deploy] took over a stale lock left by {h}");
    }
    for u in &r.unverified {
        println!("[deploy] NOT verified (unreachable): {u}");
    }
    if r.seq.is_none() && !r.unverified.is_empty() {
        println!(
            "[deploy] verify failed: {} allocation(s) could not be compared; nothing else to do",
            r.unverified.len()
        );
        return;
    }
    match r.outcome {
        Outcome::Unchanged => println!(
            "[deploy] nothing to do: every allocation is up to date ({})",
            counts(&r.plan)
        ),
        _ => {
            let failed: Vec<String> = r
                .jobs
                .iter()
                .filter(|j| {
                    !matches!(
                        j.status,
                        deploy::JobStatus::Succeeded | deploy::JobStatus::Unchanged
                    )
                })
                .map(|j| j.job.clone())
                .collect();
            println!(
                "[deploy] deployment {}: {} ({})",
                r.seq.unwrap_or_default(),
                r.outcome.as_str(),
                done(r)
            );
            let mut kept: Vec<&str> = r
                .stops
                .iter()
                .filter(|s| s.ok && s.data_kept)
                .map(|s| s.job.as_str())
                .collect();
            kept.dedup();
            for job in kept {
                let at: Vec<&str> = r
                    .stops
                    .iter()
                    .filter(|s| s.ok && s.data_kept && s.job == job)
                    .map(|s| s.worker.as_str())
                    .collect();
                let kv = if in_project(job) { "" } else { " (and its KV)" };
                println!(
                    "[deploy] kept the shared/ data of {job} on {}{kv}; delete it with `cutover job purge {job}`",
                    at.join(", ")
                );
            }
            if r.outcome == Outcome::Interrupted {
                println!(
                    "[deploy] interrupted: what was promoted stays promoted; run `cutover deploy` to finish the rest"
                );
            } else if !failed.is_empty() {
                println!(
                    "[deploy] failed: {}; fix the cause and run `cutover deploy` again: only what failed is retried",
                    failed.join(", ")
                );
            }
        }
    }
}
