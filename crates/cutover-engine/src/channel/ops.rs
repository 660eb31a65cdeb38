//! `cutover channel canary | promote | rollback | resign`: a signed index
//! update, then (but for resign) a deploy of the job with the deploy
//! pipeline, under the project lock: batches, health checks, `on_failure`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use super::index;
use crate::deploy::{self, DeployOptions, DeployReport};
use crate::fleet::Fleet;
use crate::keys::Trust;
use crate::relstore::{ReleaseStore, Store};
use crate::{Context, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOp {
    Canary,
    Promote,
    Rollback,
    Resign,
}

impl ChannelOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelOp::Canary => "canary",
            ChannelOp::Promote => "promote",
            ChannelOp::Rollback => "rollback",
            ChannelOp::Resign => "resign",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub job: String,
    /// The version (all but resign).
    pub version: Option<String>,
    pub actor: String,
    pub reason: String,
    pub ticket: String,
    /// `--key` files; else CUTOVER_SIGNING_KEY_FILE, else the dev key.
    pub keys: Vec<PathBuf>,
    /// promote: skip the soak (audited).
    pub force: bool,
    /// resign: what it accepts of the index it renews (audited).
    pub allow: index::Allow,
    /// The command line, for the lock, the deployment and the audit log.
    pub command: String,
}

/// A canary's soak, kept in the state store.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub version: String,
    /// When every canary allocation was first seen promoted and healthy.
    pub started: String,
    /// When promote accepts it.
    pub ends: String,
}

#[derive(Debug, Serialize)]
pub struct ChannelReport {
    pub op: ChannelOp,
    pub job: String,
    pub version: Option<String>,
    pub seq: u64,
    pub expires: String,
    pub channels: std::collections::BTreeMap<String, String>,
    /// The rollout (none for resign).
    pub deploy: Option<DeployReport>,
    /// canary: the soak, once its workers are promoted and healthy.
    pub soak: Option<Soak>,
    /// What `--force` overrode (audited).
    pub forced: Option<String>,
    /// Stable before this update, for the way back.
    pub previous_stable: Option<String>,
    /// What the operator should know (a canary on every worker, say).
    pub warnings: Vec<String>,
}

impl ChannelReport {
    pub fn ok(&self) -> bool {
        self.deploy.as_ref().is_none_or(|d| d.outcome.ok())
    }
}

fn soak_key(job: &str) -> String {
    format!("canary_soak/{job}")
}

/// The soak recorded for a job: `version started`.
async fn recorded_soak(
    ctx: &Context,
    job: &str,
) -> Result<Option<(String, jiff::Timestamp)>, EngineError> {
    let Some(text) = ctx.store.meta_get(&soak_key(job)).await? else {
        return Ok(None);
    };
    let mut parts = text.split_whitespace();
    let (Some(v), Some(t)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    Ok(t.parse().ok().map(|t| (v.to_string(), t)))
}

fn soak_of(version: &str, started: jiff::Timestamp, length: std::time::Duration) -> Soak {
    let ends = started
        .checked_add(jiff::SignedDuration::try_from(length).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MAX);
    Soak {
        version: version.to_string(),
        started: started.to_string(),
        ends: ends.to_string(),
    }
}

fn soak_length(ctx: &Context, job: &str) -> std::time::Duration {
    ctx.project
        .jobs
        .get(job)
        .and_then(|j| j.manifest.canary.as_ref())
        .map_or(std::time::Duration::from_secs(600), |c| c.soak)
}

/// The workers the rollout of `op` upgrades first, in plan order (the
/// job's `rollout_order`, then workers.toml's), as many as a batch takes
/// (at most 8): a canary's canary workers; a promote's other workers (the
/// canaries run the version already); any of a rollback's.
async fn first_batch<'a>(
    ctx: &'a Context,
    job: &'a cutover_model::Job,
    op: ChannelOp,
) -> Vec<&'a cutover_model::Worker> {
    let canaries = super::artifact::canary_workers(ctx, job);
    let size = match job.manifest.max_concurrent_upgrades {
        0 => usize::MAX,
        n => n,
    };
    let mut workers: Vec<&cutover_model::Worker> = ctx
        .project
        .workers_for(job)
        .filter(|w| {
            let canary = canaries.iter().any(|c| c.name == w.name);
            match op {
                ChannelOp::Canary => canary,
                ChannelOp::Promote => !canary,
                ChannelOp::Rollback | ChannelOp::Resign => true,
            }
        })
        .collect();
    let orders = crate::kv::for_templates(ctx)
        .await
        .map(|kv| crate::kv::rollout_order(&kv))
        .unwrap_or_default();
    if let Some(order) = orders.get(&job.name) {
        cutover_model::plan::in_rollout_order(&mut workers, order);
    }
    workers.truncate(size.min(8));
    workers
}

/// The trust items `doctor` checks, which promote and rollback need under
/// CUTOVER_ENV=production: trusted keys configured, no insecure dev keys.
pub fn production_trust_problems(ctx: &Context) -> Vec<String> {
    let env = &ctx.trust_env;
    let mut out = Vec::new();
    if !crate::keys::trust_configured(ctx) {
        out.push("no trusted keys are configured ([trust] public_keys)".to_string());
    }
    if env.insecure_dev_keys {
        out.push("CUTOVER_ALLOW_INSECURE_DEV_KEYS is set".to_string());
    }
    out
}

/// The canary workers of `job` that do not run `version` promoted, or are
/// not healthy now: (worker, why), asked over `fleet`'s connections. Those
/// in `checked` passed their health checks a moment ago, in this run's
/// rollout, and are not asked again.
async fn canary_problems(
    ctx: &Context,
    fleet: &Fleet,
    job: &cutover_model::Job,
    version: &str,
    checked: &BTreeSet<String>,
) -> Result<Vec<(String, String)>, EngineError> {
    let workers: Vec<String> = super::artifact::canary_workers(ctx, job)
        .into_iter()
        .map(|w| w.name.clone())
        .collect();
    let records = ctx.store.allocations().await?;
    let mut out = Vec::new();
    for w in &workers {
        let r = records.iter().find(|r| r.job == job.name && &r.worker == w);
        match r {
            Some(r)
                if r.status == cutover_state::AllocStatus::Promoted
                    && r.version.as_deref() == Some(version) => {}
            Some(r) => out.push((
                w.clone(),
                format!(
                    "runs {} ({})",
                    r.version.as_deref().unwrap_or("nothing"),
                    r.status.as_str()
                ),
            )),
            None => out.push((w.clone(), "runs nothing".to_string())),
        }
    }
    if !out.is_empty() || workers.is_empty() {
        return Ok(out);
    }
    let only: BTreeSet<String> = workers
        .iter()
        .filter(|w| !checked.contains(*w))
        .cloned()
        .collect();
    if only.is_empty() {
        return Ok(out);
    }
    let health = crate::status::health_now(ctx, fleet, &job.name, &only).await?;
    for w in &only {
        let health = health.get(w).map_or("not checked", String::as_str);
        if health != "healthy" && health != "no checks" {
            out.push((w.clone(), health.to_string()));
        }
    }
    Ok(out)
}

pub async fn run(
    ctx: &Context,
    op: ChannelOp,
    opts: &ChannelOptions,
) -> Result<ChannelReport, EngineError> {
    let job = ctx.project.jobs.get(&opts.job).ok_or_else(|| {
        let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
        EngineError::usage(
            format!("no job named `{}`", opts.job),
            format!("jobs: {}", known.join(", ")),
        )
    })?;
    let version = match (op, &opts.version) {
        (ChannelOp::Resign, _) => None,
        (_, Some(v)) => Some(v.clone()),
        (_, None) => {
            return Err(EngineError::usage(
                format!("channel {} needs --version V", op.as_str()),
                "name a published version (see `cutover channel status`)",
            ))
        }
    };
    if ctx.trust_env.production && matches!(op, ChannelOp::Promote | ChannelOp::Rollback) {
        let problems = production_trust_problems(ctx);
        if !problems.is_empty() {
            return Err(EngineError::usage(
                format!(
                    "CUTOVER_ENV=production: {} refuses while {}",
                    op.as_str(),
                    problems.join(" and ")
                ),
                "run `cutover doctor` and fix its trust items",
            ));
        }
    }
    let keys = crate::keys::signing_keys(ctx, &opts.keys)?;
    let trust = crate::keys::trust(ctx)?;
    index::check_signers(&trust, &keys)?;
    let store = Store::of_project(ctx)?;
    if op == ChannelOp::Resign {
        return resign(ctx, &store, &trust, &keys, &opts.job, opts.allow).await;
    }
    let version = version.unwrap_or_default();
    let lock = ctx.store.lock(&ctx.holder(&opts.command, None)).await?;
    // The rollout's connections: a promote checks its canary workers over
    // them first.
    let connections = deploy::Connections::of(ctx).await?;

    let current = index::load(ctx, &store, &trust, &job.name, false)
        .await
        .map_err(index::explain_expired(&job.name))?
        .ok_or_else(|| {
            EngineError::usage(
                format!(
                    "{} is not published: the store has no index of it",
                    job.name
                ),
                format!("publish it first: `cutover publish {}`", job.name),
            )
        })?
        .index
        .signed;
    let mut forced = None;
    // What the operator asked for, checked against the index as read; the
    // update checks it again on the index it swaps.
    let admit = |s: &cutover_index::Signed| -> Result<(), EngineError> {
        if s.version(&version).is_none() {
            let listed: Vec<&str> = s.versions.iter().map(|v| v.version.as_str()).collect();
            return Err(EngineError::usage(
                format!("{} {version} is not published", job.name),
                format!("published versions: {}", listed.join(", ")),
            ));
        }
        let stable = s.channels.get("stable");
        let canary = s.channels.get("canary");
        match op {
            ChannelOp::Canary if stable == Some(&version) => Err(EngineError::usage(
                format!("{} {version} is already stable", job.name),
                "a canary tries a version that is not stable yet",
            )),
            ChannelOp::Promote if canary != Some(&version) => Err(EngineError::usage(
                format!(
                    "{} {version} is not the canary (the canary is {})",
                    job.name,
                    canary.map_or("none", String::as_str)
                ),
                format!(
                    "start it with `cutover channel canary {} --version {version}`",
                    job.name
                ),
            )),
            ChannelOp::Rollback => {
                let pos = |v: &str| s.versions.iter().position(|x| x.version == v);
                match stable.and_then(|st| pos(st)) {
                    None => Err(EngineError::usage(
                        format!("{} has no stable version to roll back from", job.name),
                        "a rollback points stable at an earlier version",
                    )),
                    // Back to the stable version itself: ends a canary
                    // (its workers return to stable).
                    Some(st) if pos(&version) == Some(st) && canary.is_some() => Ok(()),
                    Some(st) if pos(&version).is_some_and(|p| p >= st) => Err(EngineError::usage(
                        format!(
                            "{} {version} is not earlier than stable {}",
                            job.name, s.versions[st].version
                        ),
                        "roll back to a version published before the stable one (or, while a canary runs, to the stable one: that ends the canary)",
                    )),
                    Some(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    };
    admit(&current)?;
    if matches!(op, ChannelOp::Canary | ChannelOp::Promote)
        && super::artifact::canary_workers(ctx, job).is_empty()
    {
        return Err(EngineError::usage(
            format!("{} has no canary worker: no worker of the job matches [canary] selectors", job.name),
            "check [canary] selectors (or count) in its job.toml against the labels in workers.toml",
        ));
    }
    // V's artifact is fetched, checked and unpacked before the index
    // points at it: a missing or damaged one would otherwise stop every
    // later deploy. The rollout then uses the unpacked tree.
    //
    // Meanwhile (once the artifact is at hand) a promote checks its canary
    // workers, and the workers the rollout starts with are connected to (a
    // handshake is mostly the ssh process's work, on the other core), so
    // that it starts on open connections: only connected to, nothing runs
    // on them before the index is updated. Not when a `pre_deploy` hook
    // runs first: a connection left idle for a minute closes.
    let v = current
        .version(&version)
        .cloned()
        .ok_or_else(|| EngineError::Internal(format!("{version} vanished from the index")))?;
    let fleet = connections.fleet();
    let checks = async {
        if op == ChannelOp::Promote {
            canary_problems(ctx, fleet, job, &version, &BTreeSet::new()).await
        } else {
            Ok(Vec::new())
        }
    };
    let first = match job.manifest.hooks.pre_deploy {
        None => first_batch(ctx, job, op).await,
        Some(_) => Vec::new(),
    };
    let warm = async {
        crate::join::join_all(first.iter().map(|w| fleet.host(&w.name))).await;
    };
    let (_, (problems, ())) = super::artifact::unpacked_alongside(ctx, &store, job, &v, async {
        tokio::join!(checks, warm)
    })
    .await?;
    let problems = problems?;
    if ctx.interrupt.is_set() {
        return Err(EngineError::Failed(format!(
            "interrupted: the index of {} is unchanged and nothing was rolled out",
            job.name
        )));
    }

    if op == ChannelOp::Promote {
        if !problems.is_empty() {
            let list: Vec<String> = problems
                .iter()
                .map(|(w, why)| format!("{w}: {why}"))
                .collect();
            return Err(EngineError::Refused(format!(
                "{} {version}: not every canary worker runs it promoted and healthy now: {}",
                job.name,
                list.join("; ")
            )));
        }
        let length = soak_length(ctx, &job.name);
        let now = jiff::Timestamp::now();
        let soak = match recorded_soak(ctx, &job.name).await? {
            Some((v, started)) if v == version => soak_of(&version, started, length),
            _ => {
                // Healthy now, with no soak on record (its canary deploy
                // was finished by a plain deploy): the soak starts now.
                ctx.store
                    .meta_put(&soak_key(&job.name), &format!("{version} {now}"))
                    .await?;
                soak_of(&version, now, length)
            }
        };
        let ends: jiff::Timestamp = soak.ends.parse().unwrap_or(jiff::Timestamp::MAX);
        if ends > now {
            if !opts.force {
                return Err(EngineError::usage(
                    format!(
                        "the soak of {} {version} ends at {} (started {})",
                        job.name, soak.ends, soak.started
                    ),
                    "promote after it ends, or pass --force to promote now (audited)",
                ));
            }
            forced = Some(format!("soak skipped (it ends at {})", soak.ends));
        }
    }

    let updated = index::update(ctx, &store, &trust, &keys, &job.name, |s| {
        admit(s)?;
        match op {
            ChannelOp::Canary => {
                s.channels.insert("canary".into(), version.clone());
            }
            ChannelOp::Promote | ChannelOp::Rollback => {
                s.channels.insert("stable".into(), version.clone());
                s.channels.remove("canary");
            }
            ChannelOp::Resign => {}
        }
        Ok(())
    })
    .await?;
    // On record before the rollout: a forced promote is audited whatever
    // happens next.
    crate::audit::record(
        ctx,
        &ctx.operator,
        &opts.command,
        "index-updated",
        0,
        &format!(
            "job {} {} {version} seq {}{}",
            job.name,
            op.as_str(),
            updated.signed.seq,
            forced
                .as_deref()
                .map(|f| format!("; forced: {f}"))
                .unwrap_or_default()
        ),
    )
    .await;
    // A soak belongs to one canary run: a new canary version (or a
    // promote or rollback) starts from none.
    let same_canary = op == ChannelOp::Canary && current.channels.get("canary") == Some(&version);
    if !same_canary {
        ctx.store.meta_put(&soak_key(&job.name), "").await?;
    }

    let report = deploy::deploy_over(
        ctx,
        &DeployOptions {
            jobs: Some([job.name.clone()].into()),
            dry_run: false,
            force: false,
            sync_only: false,
            command: opts.command.clone(),
            head: None,
            dirty: false,
            lock_held: true,
            verify: false,
            purge_data: false,
        },
        Some(connections),
    )
    .await?;
    let mut soak = None;
    let soaking = op == ChannelOp::Canary && report.outcome.ok() && !ctx.interrupt.is_set() && {
        let fleet = Fleet::lazy(
            ctx,
            super::artifact::canary_workers(ctx, job)
                .into_iter()
                .cloned()
                .collect(),
        )?;
        let problems = canary_problems(
            ctx,
            &fleet,
            job,
            &version,
            &health_checked(&report, &job.name),
        )
        .await;
        fleet.close().await;
        problems?.is_empty()
    };
    if soaking {
        let length = soak_length(ctx, &job.name);
        let started = match recorded_soak(ctx, &job.name).await? {
            Some((v, t)) if v == version => t,
            _ => {
                let now = jiff::Timestamp::now();
                ctx.store
                    .meta_put(&soak_key(&job.name), &format!("{version} {now}"))
                    .await?;
                now
            }
        };
        soak = Some(soak_of(&version, started, length));
    }
    drop(lock);
    Ok(ChannelReport {
        op,
        job: job.name.clone(),
        version: Some(version),
        seq: updated.signed.seq,
        expires: updated.signed.expires.clone(),
        channels: updated.signed.channels.clone(),
        deploy: Some(report),
        soak,
        forced,
        previous_stable: current.channels.get("stable").cloned(),
        warnings: canary_warnings(ctx, job, op),
    })
}

/// The workers of `job` whose allocation this rollout started, restarted
/// or reloaded, and which then passed their health checks.
fn health_checked(report: &DeployReport, job: &str) -> BTreeSet<String> {
    report
        .jobs
        .iter()
        .filter(|j| j.job == job)
        .flat_map(|j| &j.allocations)
        .filter(|a| {
            a.ok && matches!(
                a.action,
                cutover_model::plan::Action::Start
                    | cutover_model::plan::Action::Restart
                    | cutover_model::plan::Action::Reload
            )
        })
        .map(|a| a.worker.clone())
        .collect()
}

/// `channel resign`: the same index, seq + 1, a new expiry.
async fn resign(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    keys: &[ed25519_dalek::SigningKey],
    job: &str,
    allow: index::Allow,
) -> Result<ChannelReport, EngineError> {
    if store.read_index(job).await?.is_none() {
        return Err(EngineError::usage(
            format!("{job} is not published: the store has no index of it"),
            format!("publish it first: `cutover publish {job}`"),
        ));
    }
    let updated = index::update_with(ctx, store, trust, keys, job, allow, |_| Ok(())).await?;
    let mut accepted = Vec::new();
    if allow.expired {
        accepted.push("an expired index");
    }
    if allow.rollback {
        accepted.push("an index older than the highest seq seen");
    }
    Ok(ChannelReport {
        op: ChannelOp::Resign,
        job: job.to_string(),
        version: None,
        seq: updated.signed.seq,
        expires: updated.signed.expires.clone(),
        channels: updated.signed.channels.clone(),
        deploy: None,
        soak: None,
        forced: (!accepted.is_empty()).then(|| format!("{} accepted", accepted.join(" or "))),
        previous_stable: None,
        warnings: Vec::new(),
    })
}

/// A canary that covers every worker of the job leaves none on stable to
/// compare with, or to fall back on while it soaks: said, not refused (a
/// one-worker job has no other choice).
fn canary_warnings(ctx: &Context, job: &cutover_model::Job, op: ChannelOp) -> Vec<String> {
    let all = ctx.project.workers_for(job).count();
    let canaries = super::artifact::canary_workers(ctx, job).len();
    if op != ChannelOp::Canary || all < 2 || canaries < all {
        return Vec::new();
    }
    let why = match job.manifest.canary.as_ref().and_then(|c| c.count) {
        Some(n) if n as usize >= all => {
            format!("[canary] count = {n} and the job runs on {all} workers")
        }
        _ => format!("every one of its {all} workers matches [canary] selectors"),
    };
    vec![format!(
        "every worker of {} is a canary ({why}): none stays on stable while it soaks; lower [canary] count or narrow its selectors",
        job.name
    )]
}
