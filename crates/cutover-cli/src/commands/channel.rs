//! `cutover channel ...` and `cutover doctor`.

use cutover_engine::app::Answer;
use cutover_engine::channel::{self, ChannelOp, ChannelOptions, ChannelReport};

use super::Session;
use crate::args::{ChannelChange, ChannelCommand, Global};
use crate::output;
use cutover_engine::EngineError;

pub async fn run(s: &Session, c: ChannelCommand) -> Result<u8, EngineError> {
    let (op, opts) = match c {
        ChannelCommand::Status { job, index_url } => {
            return status(s, job.as_deref(), index_url.as_deref()).await
        }
        ChannelCommand::Canary(ch) => (ChannelOp::Canary, options(s, ch, false)),
        ChannelCommand::Promote { change, force } => {
            (ChannelOp::Promote, options(s, change, force))
        }
        ChannelCommand::Rollback(ch) => (ChannelOp::Rollback, options(s, ch, false)),
        ChannelCommand::Resign {
            job,
            keys,
            allow_rollback,
            allow_expired,
        } => (
            ChannelOp::Resign,
            ChannelOptions {
                job,
                version: None,
                actor: s.ctx.operator.user.clone(),
                reason: String::new(),
                ticket: String::new(),
                keys,
                force: false,
                allow: channel::index::Allow {
                    expired: allow_expired,
                    rollback: allow_rollback,
                },
                command: String::new(),
            },
        ),
    };
    if !s.json && op != ChannelOp::Resign {
        println!(
            "[channel] {} {} {}",
            op.as_str(),
            opts.job,
            opts.version.as_deref().unwrap_or("")
        );
    }
    let inv = s.invocation_of(cutover_engine::app::channel_command(op, &opts));
    let (report, answer) = cutover_engine::app::channel(&s.ctx, &inv, op, &opts).await?;
    if s.json {
        super::print_answer(&answer);
        return Ok(answer.exit_code);
    }
    print_report(s, &report);
    Ok(answer.exit_code)
}

fn options(s: &Session, c: ChannelChange, force: bool) -> ChannelOptions {
    ChannelOptions {
        job: c.job,
        version: Some(c.version),
        actor: c.actor.unwrap_or_else(|| s.ctx.operator.user.clone()),
        reason: c.reason,
        ticket: c.ticket,
        keys: c.keys,
        force,
        allow: Default::default(),
        command: String::new(),
    }
}

fn channels_line(r: &ChannelReport) -> String {
    let list: Vec<String> = r
        .channels
        .iter()
        .map(|(c, v)| format!("{c} -> {v}"))
        .collect();
    if list.is_empty() {
        "no channels".into()
    } else {
        list.join(", ")
    }
}

fn print_report(s: &Session, r: &ChannelReport) {
    println!(
        "[channel] {}: index seq {}, {}; expires {}",
        r.job,
        r.seq,
        channels_line(r),
        r.expires
    );
    if let Some(f) = &r.forced {
        println!("[channel] forced: {f} (audited)");
    }
    for w in &r.warnings {
        println!("[channel] warning: {w}");
    }
    if let Some(d) = &r.deploy {
        super::deploy::summarize_in(d, &s.ctx.project);
    }
    if !r.ok() {
        match (r.op, &r.previous_stable) {
            (ChannelOp::Canary, Some(stable)) => println!(
                "[channel] {}: to end the canary, `cutover channel rollback {} --version {stable}` puts its workers back on stable",
                r.job, r.job
            ),
            (ChannelOp::Promote | ChannelOp::Rollback, Some(prev))
                if r.version.as_ref() != Some(prev) =>
            {
                println!(
                    "[channel] {}: stable now points at {}; to go back, `cutover channel rollback {} --version {prev}`",
                    r.job,
                    r.version.as_deref().unwrap_or("?"),
                    r.job
                )
            }
            _ => {}
        }
    }
    match (&r.soak, r.op) {
        (Some(soak), _) => println!(
            "[channel] {}: soak of {} started {}; promote after {}",
            r.job, soak.version, soak.started, soak.ends
        ),
        (None, ChannelOp::Canary) if r.ok() => println!(
            "[channel] {}: the soak has not started: not every canary worker is promoted and healthy",
            r.job
        ),
        _ => {}
    }
}

async fn status(s: &Session, job: Option<&str>, url: Option<&str>) -> Result<u8, EngineError> {
    let (st, answer) = cutover_engine::app::channel_status(&s.ctx, job, url).await?;
    let rc = answer.exit_code;
    if s.json {
        super::print_answer(&answer);
        return Ok(rc);
    }
    if st.jobs.is_empty() {
        println!("no published jobs in {}", st.store);
        return Ok(0);
    }
    for j in &st.jobs {
        let channels: Vec<String> = j
            .channels
            .iter()
            .map(|(c, v)| format!("{c} -> {v}"))
            .collect();
        let validity = match &j.refused {
            None => format!("signature valid ({} trusted key(s))", j.signed_by.len()),
            Some(why) => format!("INVALID: {why}"),
        };
        println!(
            "{}: seq {}, expires {}; {}; {}",
            j.job,
            j.seq.map_or("?".into(), |n| n.to_string()),
            j.expires.as_deref().unwrap_or("?"),
            if channels.is_empty() {
                "no channels".into()
            } else {
                channels.join(", ")
            },
            validity
        );
        if let Some(w) = &j.expiry_warning {
            println!("  warning: {w}");
        }
        let versions: Vec<&str> = j.versions.iter().map(|v| v.version.as_str()).collect();
        println!("  versions: {}", versions.join(", "));
        let rows: Vec<Vec<String>> = j
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.worker.clone(),
                    w.channel.clone(),
                    w.wants.clone().unwrap_or_else(|| "-".into()),
                    w.runs.clone().unwrap_or_else(|| "-".into()),
                    w.status.clone(),
                    if w.drift { "DRIFT".into() } else { "ok".into() },
                ]
            })
            .collect();
        if !rows.is_empty() {
            output::table(
                &["WORKER", "CHANNEL", "WANTS", "RUNS", "STATUS", "DRIFT"],
                &rows,
            );
        }
    }
    Ok(rc)
}

/// `cutover doctor`: what needs no project first, then the project's
/// items (or one failing item when it does not load).
pub async fn doctor(g: &Global) -> Result<u8, EngineError> {
    let env = super::environment();
    let mut admin = env.admin_env();
    // The same check `cutover serve` makes at its start.
    admin.token_problem = cutover_serve::check_tokens(env)
        .err()
        .map(|e| (e.to_string(), e.help().unwrap_or_default()));
    let mut items = cutover_engine::doctor::environment(&env.trust_env(), &admin);
    match Session::open(g, "doctor").await {
        Ok(s) => {
            items.push(cutover_engine::doctor::Item::pass(
                "check passes",
                "cutover.toml, workers.toml and every job.toml are valid",
            ));
            items.extend(cutover_engine::doctor::project(&s.ctx).await);
        }
        Err(e @ EngineError::State(_)) => items.push(cutover_engine::doctor::Item::fail(
            "state backend reachable, at this cutover's schema",
            e.to_string(),
            e.help().unwrap_or_else(|| {
                "check [state] in cutover.toml and that .cutover/ is writable".into()
            }),
        )),
        Err(e) => items.push(cutover_engine::doctor::Item::fail(
            "check passes",
            e.to_string().lines().next().unwrap_or_default().to_string(),
            "run `cutover check` and fix what it reports",
        )),
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    let rc = u8::from(failed > 0);
    if g.json {
        super::print_answer(
            &Answer::new(if rc == 0 { "ok" } else { "failed" }, rc).with("items", &items),
        );
        return Ok(rc);
    }
    for i in &items {
        let mark = match (i.ok, i.warning) {
            (false, _) => "✗",
            (true, true) => "!",
            (true, false) => "✓",
        };
        println!("{mark} {}: {}", i.item, i.detail);
        if !i.ok || i.warning {
            println!("    fix: {}", i.fix);
        }
    }
    if failed == 0 {
        println!("doctor: every item passes");
    } else {
        println!("doctor: {failed} item(s) to fix");
    }
    Ok(rc)
}
