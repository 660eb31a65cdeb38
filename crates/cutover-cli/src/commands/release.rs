//! `cutover plan` and `cutover release run|revert|state|return-to-main`.

use cutover_engine::app::Answer;
use cutover_engine::release::{
    self, plan::Target, Phase, ReleaseLog, ReleaseOptions, ReleaseOutcome, RevertOptions, StateFile,
};

use super::{command_line, deploy::print_plan, Session};
use crate::args::{PhaseArg, PlanArgs, ReleaseCommand};
use crate::output::table;
use cutover_engine::EngineError;

pub async fn plan(s: &Session, a: PlanArgs) -> Result<u8, EngineError> {
    let target = match a.incoming {
        Some(b) => Target::Incoming(b),
        None => Target::Head,
    };
    let report = release::plan::plan(&s.ctx, a.diff.as_deref(), target).await?;
    let unclassified = report.classification.unclassified();
    let rc = if a.strict && !unclassified.is_empty() {
        1
    } else {
        0
    };
    if s.json {
        super::print_answer(
            &Answer::new(if rc == 0 { "ok" } else { "unclassified" }, rc)
                .with("unclassified", &unclassified)
                .with("report", &report),
        );
        return Ok(rc);
    }
    println!(
        "plan: {} .. {}",
        &report.base[..12.min(report.base.len())],
        report.target
    );
    let c = &report.classification;
    if c.files.is_empty() {
        println!("no files changed");
    } else {
        let rows: Vec<Vec<String>> = c
            .files
            .iter()
            .map(|f| {
                vec![
                    f.status.clone(),
                    f.class.as_str().into(),
                    f.job.clone().unwrap_or_else(|| "-".into()),
                    f.path.clone(),
                ]
            })
            .collect();
        table(&["ST", "CLASS", "JOB", "PATH"], &rows);
    }
    println!(
        "services: {}",
        if c.services.is_empty() {
            "none".to_string()
        } else {
            c.services.join(" ")
        }
    );
    println!();
    print_plan(&report.plan);
    if !unclassified.is_empty() {
        println!(
            "warning: {} unclassified file(s): {}{}",
            unclassified.len(),
            unclassified.join(", "),
            if a.strict { " (--strict: failing)" } else { "" }
        );
        println!("  help: move them under jobs/<job>/, or add them to a job's `watch` globs");
    }
    Ok(rc)
}

fn phase(p: PhaseArg) -> Phase {
    match p {
        PhaseArg::Prepare => Phase::Prepare,
        PhaseArg::Migrate => Phase::Migrate,
        PhaseArg::Ticket => Phase::Ticket,
        PhaseArg::Verify => Phase::Verify,
    }
}

pub async fn run(s: &Session, c: ReleaseCommand) -> Result<u8, EngineError> {
    match c {
        ReleaseCommand::Run {
            ticket,
            branch,
            dry_run,
            from,
            skip_prepare,
            skip_migrate,
            skip_ticket,
            skip_verify,
            force_allow_non_main,
            strict,
        } => {
            let skip = [
                (skip_prepare, Phase::Prepare),
                (skip_migrate, Phase::Migrate),
                (skip_ticket, Phase::Ticket),
                (skip_verify, Phase::Verify),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p)
            .collect();
            let opts = ReleaseOptions {
                ticket: ticket.clone(),
                branch,
                dry_run,
                from: from.map(phase),
                skip,
                force_allow_non_main,
                strict,
                command: command_line(),
            };
            release_run(s, &opts).await
        }
        ReleaseCommand::Revert {
            ticket,
            skip_git,
            skip_data,
            no_push,
        } => {
            let opts = RevertOptions {
                ticket: ticket.clone(),
                skip_git,
                skip_data,
                no_push,
                command: command_line(),
            };
            let inv = s.invocation_of(opts.command.clone());
            let (report, answer) = cutover_engine::app::release_revert(&s.ctx, &inv, &opts).await?;
            let rc = answer.exit_code;
            if s.json {
                super::print_answer(&answer);
            } else if let Some(when) = &report.already_reverted {
                println!(
                    "[release-revert] release {ticket} was already reverted ({when}): nothing was changed"
                );
            } else if report.ok {
                for key in &report.untouched {
                    println!("[release-revert] {key}: not changed by the release; left running");
                }
                println!("[release-revert] release {ticket} reverted");
            } else {
                for e in &report.errors {
                    println!("[release-revert] FAILED: {e}");
                }
                println!("release-revert of {ticket} is incomplete: fix the causes above and run `cutover release revert {ticket}` again");
            }
            Ok(rc)
        }
        ReleaseCommand::State { ticket } => state(s, &ticket).await,
        ReleaseCommand::ReturnToMain => {
            let inv = s.invocation_of(command_line());
            let (_, answer) = cutover_engine::app::admin::return_to_main(&s.ctx, &inv).await?;
            let rc = answer.exit_code;
            if s.json {
                super::print_answer(&answer);
            } else if rc == 0 {
                println!(
                    "[release-return-to-main] back on {}: deployed and clean",
                    s.ctx.project.config.main_branch
                );
            } else {
                println!("[release-return-to-main] failed: see above; fix and run it again");
            }
            Ok(rc)
        }
    }
}

async fn release_run(s: &Session, opts: &ReleaseOptions) -> Result<u8, EngineError> {
    let t = &opts.ticket;
    let inv = s.invocation_of(opts.command.clone());
    let (report, playbooks, answer) = cutover_engine::app::release_run(&s.ctx, &inv, opts).await?;
    let rc = answer.exit_code;
    if s.json {
        super::print_answer(&answer);
        return Ok(rc);
    }
    match &report.outcome {
        ReleaseOutcome::Complete => println!("[release-run] release {t} complete"),
        ReleaseOutcome::DryRun => {
            if let Some(p) = &report.plan {
                print_plan(p);
            }
            println!("dry run: nothing was changed");
        }
        ReleaseOutcome::NothingToRelease { message } => {
            eprintln!("error: {message}");
        }
        ReleaseOutcome::Failed { phase, rc, message } => {
            println!(
                "[release-run] {}: failed (rc={rc}): {message}",
                phase.as_str()
            );
            println!(
                "release-run failed in phase {}. To roll back:",
                phase.as_str()
            );
            println!("  cutover release revert {t}");
            println!(
                "Or fix the cause and resume: cutover release run {t} --from={}",
                phase.as_str()
            );
            for pb in &playbooks {
                println!();
                println!("recovery playbook {} ({}):", pb.id, pb.file);
                for l in pb.symptom.trim().lines() {
                    println!("  symptom: {l}");
                }
                for l in pb.adhoc.trim().lines() {
                    println!("  fix: {l}");
                }
            }
        }
    }
    Ok(rc)
}

async fn state(s: &Session, ticket: &str) -> Result<u8, EngineError> {
    release::check_ticket(ticket)?;
    let file = StateFile::load(&s.ctx, ticket).await?;
    let lines = ReleaseLog::lines(&s.ctx.workspace, ticket);
    if file.is_none() && lines.is_empty() {
        return Err(EngineError::usage(
            format!("no release recorded for ticket {ticket}"),
            "releases are recorded in .cutover/releases/<ticket>.env and .log",
        ));
    }
    let standing = release::standing(&lines);
    let last: Vec<&String> = lines
        .iter()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let failure = release::last_failure(&s.ctx, ticket).await?;
    if s.json {
        super::print_answer(
            &Answer::ok()
                .with("ticket", ticket)
                .with("standing", &standing)
                .with("state", &file)
                .with("events", &last)
                .with(
                    "last_failure",
                    failure.as_ref().map(|(phase, output)| {
                        serde_json::json!({
                            "phase": phase, "output": output,
                        })
                    }),
                ),
        );
        return Ok(0);
    }
    println!("release {ticket}: {standing}");
    match &file {
        Some(f) => {
            println!();
            print!("{}", f.render());
        }
        None => println!("(no state file)"),
    }
    println!();
    println!("last events:");
    for l in last {
        println!("  {l}");
    }
    if let Some((phase, output)) = failure {
        println!();
        println!(
            "last failure, in phase {} (what `playbook match {ticket}` reads; secrets redacted):",
            phase.as_str()
        );
        let lines: Vec<&str> = output.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            println!("  | {l}");
        }
    }
    Ok(0)
}
