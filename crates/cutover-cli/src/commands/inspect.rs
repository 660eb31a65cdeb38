//! Read commands (`check`, `status`, `drift`, `cat`, `lock status`) and
//! the small mutating ones (`job run`, `lock release`).

use cutover_engine::app::{self, Answer};
use cutover_engine::{drift, jobrun};

use super::{command_line, job_set, load_project, project_root, Session};
use crate::args::{CatArgs, CatWhat, Global};
use crate::output::{short, table};
use cutover_engine::EngineError;

pub fn check(g: &Global) -> Result<u8, EngineError> {
    let root = project_root(g)?;
    let loaded = load_project(&root);
    let (books, playbook_diags) = cutover_model::playbook::load(&root);
    let project = match loaded {
        Ok(p) if playbook_diags.is_empty() => p,
        Ok(_) => {
            return Err(cutover_engine::EngineError::Config(
                cutover_model::Diagnostics(playbook_diags),
            ));
        }
        Err(cutover_engine::EngineError::Config(mut d)) => {
            d.0.extend(playbook_diags);
            return Err(cutover_engine::EngineError::Config(d));
        }
        Err(e) => return Err(e),
    };
    // Every job tree as a deploy would read it: what cannot be shipped
    // (a FIFO, a name that is not UTF-8, two files for one path) is bad
    // input here too.
    for job in project.jobs.values() {
        cutover_model::tree::JobSource::scan(job, &project)
            .map_err(cutover_engine::EngineError::Template)?;
    }
    let allocations: usize = project
        .jobs
        .values()
        .map(|j| project.workers_for(j).count())
        .sum();
    if g.json {
        super::print_answer(
            &Answer::ok()
                .with("jobs", project.jobs.len())
                .with("workers", project.workers.len())
                .with("allocations", allocations)
                .with("playbooks", books.len()),
        );
    } else {
        println!(
            "ok: {} job(s), {} worker(s), {} allocation(s), {} wave(s), {} playbook(s)",
            project.jobs.len(),
            project.workers.len(),
            allocations,
            project.waves().len(),
            books.len()
        );
    }
    Ok(0)
}

/// Refuses `--jobs` names that are neither jobs of the project nor jobs
/// the store has records of: a typo must not read as "nothing there".
fn known_jobs(
    s: &Session,
    jobs: &Option<std::collections::BTreeSet<String>>,
    records: &[cutover_state::AllocationRecord],
) -> Result<(), EngineError> {
    for j in jobs.iter().flatten() {
        if !s.ctx.project.jobs.contains_key(j) && !records.iter().any(|r| &r.job == j) {
            let known: Vec<&str> = s.ctx.project.jobs.keys().map(String::as_str).collect();
            return Err(EngineError::usage(
                format!("--jobs names `{j}`, which is not a job of this project"),
                format!("jobs: {}", known.join(", ")),
            ));
        }
    }
    if jobs.as_ref().is_some_and(|j| j.is_empty()) {
        return Err(EngineError::usage(
            "--jobs names no job",
            "name jobs: --jobs a,b",
        ));
    }
    Ok(())
}

pub async fn status(s: &Session, a: crate::args::StatusArgs) -> Result<u8, EngineError> {
    let jobs = job_set(a.jobs);
    let p = &s.ctx.project;
    let records = s.ctx.store.allocations().await?;
    known_jobs(s, &jobs, &records)?;
    let live = cutover_engine::status::live(&s.ctx, jobs.as_ref(), !a.no_health).await?;
    let in_scope = |j: &str| jobs.as_ref().is_none_or(|s| s.contains(j));
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for job in p.jobs.values().filter(|j| in_scope(&j.name)) {
        for w in p.workers_for(job) {
            let rec = records
                .iter()
                .find(|r| r.job == job.name && r.worker == w.name);
            let status = rec.map_or("not deployed", |r| r.status.as_str());
            let pending = rec.and_then(|r| r.version.clone()).as_deref()
                != Some(job.manifest.version.as_str());
            let now = live.get(&(job.name.clone(), w.name.clone()));
            rows.push(vec![
                job.name.clone(),
                w.name.clone(),
                status.to_string(),
                rec.and_then(|r| r.version.clone())
                    .unwrap_or_else(|| "-".into()),
                short(&rec.and_then(|r| r.hash.clone())),
                now.map_or("-".into(), |l| l.health.clone()),
                now.map_or("-".into(), |l| l.drift.clone()),
                rec.and_then(|r| r.release_id.clone())
                    .unwrap_or_else(|| "-".into()),
                rec.map_or(String::new(), |r| r.message.clone()),
            ]);
            docs.push(serde_json::json!({
                "job": job.name, "worker": w.name, "status": status,
                "version": rec.and_then(|r| r.version.clone()),
                "manifest_version": job.manifest.version,
                "version_pending": pending,
                "hash": rec.and_then(|r| r.hash.clone()),
                "health": now.map(|l| l.health.clone()),
                "recorded_health": rec.map(|r| r.health.clone()),
                "drift": now.map(|l| l.drift.clone()),
                "release": rec.and_then(|r| r.release_id.clone()),
                "updated_at": rec.map(|r| r.updated_at.clone()),
                "message": rec.map(|r| r.message.clone()),
            }));
        }
    }
    // Allocations the store knows but the project no longer wants.
    for r in records.iter().filter(|r| in_scope(&r.job)) {
        let wanted = p
            .jobs
            .get(&r.job)
            .is_some_and(|j| p.workers_for(j).any(|w| w.name == r.worker));
        if !wanted {
            let stopped = r.status == cutover_state::AllocStatus::Stopped;
            let orphaned = p.worker(&r.worker).is_none()
                && r.message.starts_with(cutover_engine::deploy::ORPHANED);
            let (status, note) = if orphaned {
                ("orphaned", r.message.clone())
            } else if stopped {
                (
                    "stopped",
                    format!(
                        "shared/ data kept; `cutover job purge {}` deletes it",
                        r.job
                    ),
                )
            } else {
                (
                    "to stop",
                    "no longer in the project; the next deploy stops it".to_string(),
                )
            };
            rows.push(vec![
                r.job.clone(),
                r.worker.clone(),
                status.into(),
                r.version.clone().unwrap_or_else(|| "-".into()),
                short(&r.hash),
                "-".into(),
                "-".into(),
                r.release_id.clone().unwrap_or_else(|| "-".into()),
                note,
            ]);
            docs.push(serde_json::json!({"job": r.job, "worker": r.worker, "status": status}));
        }
    }
    // The last deployment, as it stands: one whose process died shows as
    // interrupted.
    let last = cutover_engine::deploy::deployments(&s.ctx, 1)
        .await?
        .into_iter()
        .next();
    if s.json {
        super::print_answer(&Answer::ok().with("allocations", &docs).with(
            "last_deployment",
            last.as_ref().map(|d| {
                serde_json::json!({
                    "seq": d.seq, "outcome": d.outcome, "started_at": d.started_at,
                })
            }),
        ));
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no allocations: add jobs under jobs/ and workers to workers.toml");
    } else {
        table(
            &[
                "JOB", "WORKER", "STATUS", "VERSION", "HASH", "HEALTH", "DRIFT", "RELEASE", "NOTE",
            ],
            &rows,
        );
    }
    if let Some(d) = last {
        println!(
            "last deployment: {} {} ({}, {})",
            d.seq, d.outcome, d.started_at, d.command
        );
    }
    Ok(0)
}

pub async fn drift(s: &Session, jobs: Option<Vec<String>>) -> Result<u8, EngineError> {
    let jobs = job_set(jobs);
    let report = drift::drift(&s.ctx, jobs.as_ref()).await?;
    let rc = if report.any_drift() { 4 } else { 0 };
    if s.json {
        super::print_answer(
            &Answer::new(if rc == 0 { "clean" } else { "drift" }, rc)
                .with("allocations", &report.allocations),
        );
        return Ok(rc);
    }
    if report.allocations.is_empty() {
        println!("nothing promoted yet: no drift to check");
        return Ok(0);
    }
    for a in &report.allocations {
        match a.state.as_str() {
            "clean" => println!("{}@{}: clean", a.job, a.worker),
            "drifted" => {
                println!(
                    "{}@{}: DRIFT in {} file(s):",
                    a.job,
                    a.worker,
                    a.files.len()
                );
                for f in &a.files {
                    println!("  {:<8} {}", format!("{:?}", f.kind).to_lowercase(), f.path);
                }
                if a.outdated {
                    println!("  and the project has changed since the promote: `cutover deploy` rolls it out");
                }
            }
            other => println!("{}@{}: {other}: {}", a.job, a.worker, a.message),
        }
    }
    let drifted = |outdated: bool| {
        report
            .allocations
            .iter()
            .any(|a| a.state == "drifted" && a.outdated == outdated)
    };
    if drifted(false) {
        println!("drift found: `cutover deploy --force --jobs JOB` puts the promoted content back");
    }
    if drifted(true) {
        println!("drift found where the project also changed: `cutover deploy` rolls out the new content over the edited files");
    }
    Ok(rc)
}

/// The jobs a deployment acted on (rolled out, failed or stopped), from
/// its recorded summary.
fn touched_jobs(summary: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
    let mut out: Vec<String> = v["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["status"] != "unchanged")
        .chain(v["stops"].as_array().into_iter().flatten())
        .filter_map(|j| j["job"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

pub async fn cat(s: &Session, a: CatArgs) -> Result<u8, EngineError> {
    let p = &s.ctx.project;
    let jobs = job_set(a.jobs);
    known_jobs(s, &jobs, &s.ctx.store.allocations().await?)?;
    let in_scope = |j: &str| jobs.as_ref().is_none_or(|s| s.contains(j));
    let (header, rows, doc): (Vec<&str>, Vec<Vec<String>>, serde_json::Value) =
        match a.what {
            CatWhat::Workers => (
                vec![
                    "NAME",
                    "HOST",
                    "PORT",
                    "USER",
                    "LABELS",
                    "ROOT",
                    "TRANSPORT",
                    "DISABLED",
                ],
                p.workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            w.host.clone(),
                            w.port.unwrap_or(p.config.ssh.port).to_string(),
                            w.user
                                .clone()
                                .or(p.config.ssh.user.clone())
                                .unwrap_or_else(|| "-".into()),
                            w.labels.join(","),
                            w.root.clone(),
                            format!("{:?}", w.transport).to_lowercase(),
                            w.disabled.to_string(),
                        ]
                    })
                    .collect(),
                serde_json::to_value(&p.workers).unwrap_or_default(),
            ),
            CatWhat::Jobs => {
                let waves = p.waves();
                let wave_of = |j: &str| {
                    waves
                        .iter()
                        .position(|w| w.iter().any(|n| n == j))
                        .map_or(0, |i| i + 1)
                };
                let list: Vec<_> = p.jobs.values().filter(|j| in_scope(&j.name)).collect();
                (
                vec!["NAME", "VERSION", "WAVE", "SELECTORS", "DEPENDS_ON", "POLICY", "WORKERS"],
                list.iter()
                    .map(|j| {
                        let m = &j.manifest;
                        vec![
                            j.name.clone(),
                            m.version.clone(),
                            wave_of(&j.name).to_string(),
                            m.selectors.join(","),
                            m.depends_on.join(","),
                            format!("{:?}", m.restart_policy).to_lowercase(),
                            p.workers_for(j).map(|w| w.name.clone()).collect::<Vec<_>>().join(","),
                        ]
                    })
                    .collect(),
                list.iter()
                    .map(|j| {
                        serde_json::json!({
                            "name": j.name, "version": j.manifest.version, "wave": wave_of(&j.name),
                            "selectors": j.manifest.selectors, "depends_on": j.manifest.depends_on,
                            "restart_policy": j.manifest.restart_policy,
                            "workers": p.workers_for(j).map(|w| w.name.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            )
            }
            CatWhat::Allocations => {
                let recs: Vec<_> = s
                    .ctx
                    .store
                    .allocations()
                    .await?
                    .into_iter()
                    .filter(|r| in_scope(&r.job))
                    .collect();
                (
                    vec![
                        "JOB", "WORKER", "STATUS", "VERSION", "HASH", "RELEASE", "PREVIOUS",
                        "HEALTH", "UPDATED",
                    ],
                    recs.iter()
                        .map(|r| {
                            vec![
                                r.job.clone(),
                                r.worker.clone(),
                                r.status.as_str().into(),
                                r.version.clone().unwrap_or_else(|| "-".into()),
                                short(&r.hash),
                                r.release_id.clone().unwrap_or_else(|| "-".into()),
                                r.previous_release_id.clone().unwrap_or_else(|| "-".into()),
                                r.health.clone(),
                                r.updated_at.clone(),
                            ]
                        })
                        .collect(),
                    serde_json::to_value(&recs).unwrap_or_default(),
                )
            }
            CatWhat::Deployments => {
                let deps: Vec<_> = cutover_engine::deploy::deployments(&s.ctx, 50)
                    .await?
                    .into_iter()
                    .filter(|d| {
                        jobs.is_none() || touched_jobs(&d.summary).iter().any(|j| in_scope(j))
                    })
                    .collect();
                (
                    vec![
                        "SEQ", "STARTED", "FINISHED", "OUTCOME", "HEAD", "USER", "JOBS", "COMMAND",
                    ],
                    deps.iter()
                        .map(|d| {
                            vec![
                                d.seq.to_string(),
                                d.started_at.clone(),
                                d.finished_at.clone().unwrap_or_else(|| "-".into()),
                                d.outcome.clone(),
                                format!(
                                    "{}{}",
                                    short(&d.head),
                                    if d.dirty { "+dirty" } else { "" }
                                ),
                                d.user.clone(),
                                touched_jobs(&d.summary).join(","),
                                d.command.clone(),
                            ]
                        })
                        .collect(),
                    deps.iter()
                        .map(|d| {
                            let mut v = serde_json::to_value(d).unwrap_or_default();
                            v["summary"] = serde_json::from_str(&d.summary).unwrap_or_default();
                            v
                        })
                        .collect(),
                )
            }
            CatWhat::Kv => {
                let all = cutover_engine::kv::list(&s.ctx, None, false).await?;
                let list: Vec<_> = all.into_iter().filter(|k| in_scope(&k.job)).collect();
                (
                    vec!["JOB", "KEY", "VALUE", "UPDATED"],
                    list.iter()
                        .map(|k| {
                            vec![
                                k.job.clone(),
                                k.key.clone(),
                                k.value.clone().unwrap_or_else(|| "<secret>".into()),
                                k.updated_at.clone(),
                            ]
                        })
                        .collect(),
                    serde_json::to_value(&list).unwrap_or_default(),
                )
            }
        };
    if s.json {
        super::print_answer(&Answer::ok().with("items", &doc));
    } else {
        table(&header, &rows);
    }
    Ok(0)
}

pub async fn job_run(
    s: &Session,
    job: &str,
    target: &str,
    workers: Option<Vec<String>>,
) -> Result<u8, EngineError> {
    let inv = s.invocation_of(command_line());
    let (results, answer) =
        app::admin::job_run(&s.ctx, &inv, job, target, workers.as_deref()).await?;
    let rc = answer.exit_code;
    if s.json {
        super::print_answer(&answer);
    } else {
        for r in &results {
            let state = if r.ok { "ok" } else { "FAILED" };
            println!("[job] {job}@{}: make {target}: {state}", r.worker);
            if !r.ok || !r.output.is_empty() {
                for line in r.output.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(rc)
}

/// `cutover job purge JOB [--yes]`: asks first unless `--yes`.
pub async fn job_purge(s: &Session, job: &str, yes: bool) -> Result<u8, EngineError> {
    let workers = jobrun::purgeable(&s.ctx, job).await?;
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            return Err(EngineError::usage(
                format!("`cutover job purge {job}` deletes data and asks first, but stdin is not a terminal"),
                format!("run it again with --yes to delete the shared/ data of {job} on: {}", workers.join(", ")),
            ));
        }
        print!(
            "delete the shared/ data of {job} on {} for good{}? type the job name to confirm: ",
            if workers.is_empty() {
                "no worker".to_string()
            } else {
                workers.join(", ")
            },
            if s.ctx.project.jobs.contains_key(job) {
                ""
            } else {
                ", and its KV"
            },
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim() != job {
            println!("[job] purge of {job} cancelled: nothing was deleted");
            return Ok(0);
        }
    }
    let inv = s.invocation_of(command_line());
    let (report, answer) = app::admin::job_purge(&s.ctx, &inv, job).await?;
    let rc = answer.exit_code;
    if s.json {
        super::print_answer(&answer);
        return Ok(rc);
    }
    for p in &report.allocations {
        if p.ok {
            println!("[job] {job}@{}: data deleted", p.worker);
        } else {
            println!("[job] {job}@{}: purge FAILED: {}", p.worker, p.message);
        }
    }
    if report.kv_deleted {
        println!("[job] {job}: KV deleted");
    }
    Ok(rc)
}

/// `cutover state rebuild`.
pub async fn publish(s: &Session, a: crate::args::PublishArgs) -> Result<u8, EngineError> {
    let keys = cutover_engine::keys::signing_keys(&s.ctx, &a.keys)?;
    let opts = cutover_engine::publish::PublishOptions {
        job: a.job.clone(),
        channel: a.channel.clone(),
        keys,
        force: a.force,
        actor: s.ctx.operator.user.clone(),
        reason: a.reason.clone(),
        ticket: a.ticket.clone(),
    };
    // Stopped by a signal, the error exits 130 or 143 (the run audited
    // as interrupted).
    let inv = s.invocation_of(command_line());
    let (p, answer) = app::admin::publish(&s.ctx, &inv, &opts).await?;
    if s.json {
        super::print_answer(&answer);
        return Ok(0);
    }
    let channels: Vec<String> = p
        .channels
        .iter()
        .map(|(c, v)| format!("{c} -> {v}"))
        .collect();
    println!(
        "[publish] {} {}{}: sha256 {}, {} bytes; index seq {}; {}",
        p.job,
        p.version,
        if p.unchanged {
            " (already published with this content)"
        } else {
            ""
        },
        p.sha256,
        p.size,
        p.seq,
        channels.join(", ")
    );
    Ok(0)
}

pub fn keys_generate(g: &crate::args::Global, out: &std::path::Path) -> Result<u8, EngineError> {
    // A private key inside the project is one `git add` away from the
    // repository: refused.
    if let Ok(root) = super::project_root(g) {
        let abs = std::env::current_dir()
            .map(|d| d.join(out))
            .unwrap_or_else(|_| out.to_path_buf());
        let (root, abs) = (root.canonicalize().unwrap_or(root), normalize(&abs));
        if abs.starts_with(&root) {
            return Err(EngineError::usage(
                format!(
                    "{} is inside the project ({}): a private key there is one `git add` away from the repository",
                    out.display(),
                    root.display()
                ),
                "generate it outside the project, e.g. --out ~/.cutover-keys, and copy only the .pub in",
            ));
        }
    }
    let key = cutover_engine::keys::generate(out)?;
    if g.json {
        super::print_answer(&Answer::ok().with("key", &key));
        return Ok(0);
    }
    println!(
        "wrote {} (private, 0600) and {}",
        out.join(cutover_engine::keys::PRIVATE_FILE).display(),
        out.join(cutover_engine::keys::PUBLIC_FILE).display()
    );
    println!("key id {}", key.keyid);
    println!(
        "trust it: add the .pub file to [trust] public_keys in cutover.toml; sign with --key {} (or CUTOVER_SIGNING_KEY_FILE)",
        out.join(cutover_engine::keys::PRIVATE_FILE).display()
    );
    Ok(0)
}

pub async fn keys_list(s: &Session) -> Result<u8, EngineError> {
    let trust = cutover_engine::keys::trust(&s.ctx)?;
    // Which keys signed each published job's current index.
    let signed: Vec<(String, Vec<String>, Option<String>)> =
        if s.ctx.project.config.store_url.is_some() {
            cutover_engine::channel::status::status(&s.ctx, None, None)
                .await?
                .jobs
                .into_iter()
                .map(|j| (j.job, j.signed_by, j.refused))
                .collect()
        } else {
            Vec::new()
        };
    if s.json {
        let indexes: Vec<serde_json::Value> = signed
            .iter()
            .map(|(job, by, refused)| {
                serde_json::json!({ "job": job, "signed_by": by, "refused": refused })
            })
            .collect();
        super::print_answer(&Answer::ok().with("trust", &trust).with("indexes", &indexes));
        return Ok(0);
    }
    if trust.keys.is_empty() {
        println!("no trusted keys: add public key files to [trust] public_keys in cutover.toml (`cutover keys generate --out DIR` makes a pair)");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = trust
        .keys
        .iter()
        .map(|k| vec![k.keyid.clone(), k.source.clone()])
        .collect();
    table(&["KEY ID", "FROM"], &rows);
    println!(
        "threshold: {} of {} distinct key(s) must sign a release index",
        trust.threshold,
        trust.keys.len()
    );
    for (job, by, refused) in &signed {
        let short: Vec<&str> = by.iter().map(|k| &k[..16.min(k.len())]).collect();
        match refused {
            None => println!("{job}: current index signed by {}", short.join(", ")),
            Some(why) => println!(
                "{job}: current index signed by {} trusted key(s); REFUSED: {why}",
                short.len()
            ),
        }
    }
    Ok(0)
}

pub async fn certs_list(s: &Session) -> Result<u8, EngineError> {
    let certs = cutover_engine::certs::list(&s.ctx).await?;
    if s.json {
        super::print_answer(&Answer::ok().with("certificates", &certs));
        return Ok(0);
    }
    if certs.is_empty() {
        println!("no certificates yet: a job with [certs] gets them at its next deploy");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                c.job.clone(),
                c.worker.clone(),
                c.not_after.clone(),
                c.days_left.to_string(),
                c.sans.join(","),
                if c.renew {
                    "renewed at the next deploy".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(&["JOB", "WORKER", "EXPIRES", "DAYS", "SANS", "NOTE"], &rows);
    Ok(0)
}

pub async fn logs(s: &Session, a: crate::args::LogsArgs) -> Result<u8, EngineError> {
    if job_set(a.workers.clone()).is_some_and(|w| w.is_empty()) {
        return Err(EngineError::usage(
            "--workers names no worker",
            "name workers: --workers w1,w2 (or leave it out for all)",
        ));
    }
    let opts = cutover_engine::logs::LogsOptions {
        job: a.job,
        workers: job_set(a.workers),
        lines: a.lines,
        follow: a.follow,
    };
    let json = s.json;
    let width = s
        .ctx
        .project
        .workers
        .iter()
        .map(|w| w.name.len())
        .max()
        .unwrap_or(0);
    let failed = cutover_engine::logs::logs(&s.ctx, &opts, |worker, line| {
        if json {
            println!("{}", serde_json::json!({ "worker": worker, "line": line }));
        } else {
            println!("{worker:<width$} | {line}");
        }
    })
    .await?;
    let rc = if failed.is_empty() { 0 } else { 1 };
    if json {
        // JSON lines: one object per log line, then this summary.
        let failed: Vec<_> = failed
            .iter()
            .map(|(w, e)| serde_json::json!({ "worker": w, "error": e }))
            .collect();
        // One line, like the log lines before it.
        let summary = Answer::new(if rc == 0 { "ok" } else { "failed" }, rc).with("failed", failed);
        println!("{}", summary.to_json());
        return Ok(rc);
    }
    for (w, e) in &failed {
        eprintln!("cutover logs: {w}: {e}");
    }
    Ok(rc)
}

pub async fn worker_forget(s: &Session, name: &str) -> Result<u8, EngineError> {
    let inv = s.invocation_of(command_line());
    let (report, answer) = app::admin::worker_forget(&s.ctx, &inv, name).await?;
    if s.json {
        super::print_answer(&answer);
        return Ok(0);
    }
    println!(
        "[worker] forgot {name}{}; nothing on the machine was touched",
        if report.jobs.is_empty() {
            String::new()
        } else {
            format!(" and its allocation records ({})", report.jobs.join(", "))
        }
    );
    Ok(0)
}

pub async fn state_migrate(s: &Session, to: &str) -> Result<u8, EngineError> {
    let inv = s.invocation_of(command_line());
    let (report, answer) = app::admin::state_migrate(&s.ctx, &inv, to).await?;
    if s.json {
        super::print_answer(&answer);
        return Ok(0);
    }
    println!("[state] copied {} to {}", report.from, report.to);
    for (table, n) in &report.counts {
        println!("[state]   {table}: {n} row(s)");
    }
    println!(
        "[state] verified: the copy reads back row for row (blake3 {}); nothing was switched",
        &report.digest[..16]
    );
    if report.to.starts_with("postgres") {
        println!(
            "[state] to switch: set `backend = \"postgres\"` under [state] in cutover.toml, and CUTOVER_STATE_URL (or [state] url) to the URL you gave"
        );
    } else {
        println!(
            "[state] to switch: remove `backend = \"postgres\"` from [state] in cutover.toml (the embedded store is .cutover/state.db)"
        );
    }
    Ok(0)
}

pub async fn state_rebuild(s: &Session) -> Result<u8, EngineError> {
    let inv = s.invocation_of(command_line());
    let (report, answer) = app::admin::state_rebuild(&s.ctx, &inv).await?;
    let rc = answer.exit_code;
    if s.json {
        super::print_answer(&answer);
        return Ok(rc);
    }
    for r in &report.rebuilt {
        let note = if r.current_differs {
            " (current points elsewhere: the next deploy rolls it out again)"
        } else {
            ""
        };
        println!(
            "[state] {}@{}: {} version {}{note}",
            r.job, r.worker, r.release, r.version
        );
    }
    for (w, e) in &report.unreachable {
        println!("[state] {w}: cannot read: {e}");
    }
    println!(
        "[state] rebuilt {} allocation record(s) from the workers{}",
        report.rebuilt.len(),
        if rc == 0 {
            ""
        } else {
            "; run it again once every worker is reachable"
        }
    );
    Ok(rc)
}

pub async fn lock_status(s: &Session) -> Result<u8, EngineError> {
    let holder = s.ctx.store.lock_status().await?;
    if s.json {
        super::print_answer(
            &Answer::ok()
                .with("locked", holder.is_some())
                .with("holder", &holder),
        );
    } else {
        match holder {
            Some(h) => println!("locked by {h}"),
            None => println!("unlocked"),
        }
    }
    Ok(0)
}

pub async fn lock_release(s: &Session, force: bool) -> Result<u8, EngineError> {
    let inv = s.invocation_of(command_line());
    let (released, answer) = app::admin::lock_release(&s.ctx, &inv, force).await?;
    if s.json {
        super::print_answer(&answer);
    } else {
        match (released.holder, released.ended) {
            (Some(h), true) => {
                println!("released the lock held by {h}; its run can change nothing more")
            }
            (Some(h), false) => println!("cleared the lock record left by {h}"),
            (None, _) => println!("the lock was free"),
        }
    }
    Ok(0)
}

/// `path` with `.` and `..` resolved by name (it may not exist yet), and
/// its existing part resolved for real.
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(n) => rest.push(n.to_os_string()),
            None => break,
        }
        if !existing.pop() {
            break;
        }
    }
    let mut real = existing.canonicalize().unwrap_or(existing);
    for n in rest.into_iter().rev() {
        real.push(n);
    }
    real
}
