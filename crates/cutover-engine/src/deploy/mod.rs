//! `cutover deploy`: plan, reconcile, then roll each wave out in batches.
//!
//! Every allocation moves through explicit steps (prepare, upload, switch,
//! lifecycle, health, promote), and its state is written to the store after
//! each batch, before the next batch starts: a crash leaves a store that
//! the next run plans from, retrying only what did not finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cutover_model::plan::{
    self, Action, AllocPlan, JobPlan, Plan, PlanInput, PlanOptions, StopPlan,
};
use cutover_model::{Job, OnFailure, Project, Worker};
use cutover_state::{AllocStatus, AllocationRecord, NewDeployment, Store};
use cutover_transport::LocalTree;
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::events::{Event, Reporter};
use crate::fleet::Fleet;
use crate::health;
use crate::hooks::{self, HookEnv};
use crate::remote::{self, LifecycleEnv};
use crate::render::{self, Key};
use crate::{kv, Context, EngineError};

mod batch;
mod job;
mod reconcile;
pub use reconcile::ORPHANED;
mod run;
mod upload;
mod view;
mod waves;

use batch::{
    activate_one, carry_on_worker, check_one, promote_batch, record_failure, revert_one, Back,
    Switched,
};
use job::run_job;
use reconcile::reconcile;
use run::{DeltaBase, Run, DELTA_MAX_FILES};
use upload::{RolloutError, Uploaded};

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub jobs: Option<BTreeSet<String>>,
    pub dry_run: bool,
    pub force: bool,
    pub sync_only: bool,
    /// The command line, for the deployment record and the lock.
    pub command: String,
    /// The project's git HEAD and whether the tree was dirty.
    pub head: Option<String>,
    pub dirty: bool,
    /// The caller (a ticket release) already holds the project lock.
    pub lock_held: bool,
    /// Check allocations the store calls unchanged against their workers,
    /// and roll out those that differ.
    pub verify: bool,
    /// Also delete the `shared/` data and KV of what reconcile stops.
    pub purge_data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything planned was done.
    Success,
    /// Nothing to do.
    Unchanged,
    /// Some jobs succeeded, some failed: the next run retries the failures.
    Partial,
    Failed,
    /// A dry run: the plan only.
    Planned,
    /// A signal stopped the run: in-flight steps finished, nothing new
    /// started; the next run retries what is not promoted.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Unchanged => "unchanged",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Planned => "planned",
            Outcome::Interrupted => "interrupted",
        }
    }
    pub fn ok(self) -> bool {
        !matches!(
            self,
            Outcome::Partial | Outcome::Failed | Outcome::Interrupted
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocResult {
    pub worker: String,
    pub action: Action,
    pub ok: bool,
    pub release: Option<String>,
    pub message: String,
    /// Switched back to the previous release after its batch failed.
    pub reverted: bool,
    /// A failed lifecycle target's output (its last 200 lines, secrets
    /// redacted): what recovery playbooks match.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Succeeded,
    Unchanged,
    Failed,
    /// Not started: a job it depends on failed.
    Blocked,
    /// Stopped by a signal before its last batch.
    Interrupted,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub job: String,
    pub status: JobStatus,
    pub message: String,
    pub allocations: Vec<AllocResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopResult {
    pub job: String,
    pub worker: String,
    pub why: String,
    pub ok: bool,
    pub message: String,
    /// The allocation's `shared/` data (and the job's KV) were kept.
    pub data_kept: bool,
    /// Its worker is removed and unreachable: not stopped, not failed
    /// (see `cutover worker forget`).
    pub orphaned: bool,
    /// Its worker was renamed: only the old record was dropped.
    pub forgotten: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub outcome: Outcome,
    pub seq: Option<i64>,
    pub plan: Plan,
    pub stops: Vec<StopResult>,
    pub jobs: Vec<JobResult>,
    /// `--verify`: allocations that could not be compared because their
    /// worker was unreachable (`job@worker: why`). The run fails.
    pub unverified: Vec<String>,
    /// The holder of a stale lock this run took over.
    pub took_over_lock: Option<String>,
}

/// The connections of a deploy, none opened yet: to every worker of the
/// project, and to those the store still knows that the project dropped
/// (asked what they run over the same connections the rollout uses).
pub(crate) struct Connections {
    known: BTreeMap<String, Worker>,
    fleet: Fleet,
}

impl Connections {
    pub(crate) async fn of(ctx: &Context) -> Result<Connections, EngineError> {
        let known: BTreeMap<String, Worker> = ctx
            .store
            .known_workers()
            .await?
            .into_iter()
            .filter_map(|(name, json)| Some((name, serde_json::from_str::<Worker>(&json).ok()?)))
            .filter(|(name, _)| ctx.project.worker(name).is_none())
            .collect();
        let fleet = Fleet::lazy(
            ctx,
            ctx.project
                .workers
                .iter()
                .chain(known.values())
                .cloned()
                .collect(),
        )?;
        Ok(Connections { known, fleet })
    }

    /// The fleet, to use before the deploy ([`deploy_over`]) takes it.
    pub(crate) fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

/// Plans (and unless `dry_run`, executes) a deploy of the working tree.
pub async fn deploy(ctx: &Context, opts: &DeployOptions) -> Result<DeployReport, EngineError> {
    deploy_over(ctx, opts, None).await
}

/// [`deploy`], over connections the caller may have used already (a
/// promote's check of its canary workers): one handshake per worker and
/// command. They are closed when it returns.
pub(crate) async fn deploy_over(
    ctx: &Context,
    opts: &DeployOptions,
    connections: Option<Connections>,
) -> Result<DeployReport, EngineError> {
    let (recorded, records) = render::recorded(ctx).await?;
    if let Some(jobs) = &opts.jobs {
        for j in jobs {
            if !ctx.project.jobs.contains_key(j) && !records.iter().any(|r| &r.job == j) {
                let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
                return Err(EngineError::usage(
                    format!("--jobs names `{j}`, which is not a job of this project"),
                    format!("jobs: {}", known.join(", ")),
                ));
            }
        }
    }
    let lock = if opts.dry_run || opts.lock_held {
        None
    } else {
        Some(ctx.store.lock(&ctx.holder(&opts.command, None)).await?)
    };
    // One set of connections for the whole run, opened lazily: a run with
    // nothing to do opens none.
    let Connections { known, fleet } = match connections {
        Some(c) => c,
        None => Connections::of(ctx).await?,
    };
    if !opts.dry_run {
        if let Some(failed) = pre_deploy(ctx, opts, &records).await? {
            fleet.close().await;
            return failed_before_planning(ctx, opts, failed, lock.as_ref()).await;
        }
    }
    let Planned {
        recorded,
        records,
        kv,
        rendered,
        plan,
        unverified,
        published,
    } = plan_run(ctx, opts, &fleet, recorded, records).await?;
    let view_versions = published.view_versions();
    if !opts.dry_run {
        // Under the project lock: no other run is reading a tree.
        crate::channel::artifact::prune(ctx, &published);
    }
    let mut report = DeployReport {
        outcome: Outcome::Planned,
        seq: None,
        plan: plan.clone(),
        stops: Vec::new(),
        jobs: Vec::new(),
        unverified,
        took_over_lock: lock
            .as_ref()
            .and_then(|l| l.took_over.as_ref())
            .map(|h| h.to_string()),
    };
    if opts.dry_run {
        fleet.close().await;
        return Ok(report);
    }
    if plan.is_noop() {
        // Everything is promoted: no deployment record, and no connection
        // unless a worker's fleet view changed (a label, say). An
        // allocation `--verify` could not reach is not called up to date.
        report.outcome = if report.unverified.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Failed
        };
        let ran: BTreeSet<String> = records.iter().map(|r| r.worker.clone()).collect();
        if view::any_stale(ctx, &ran, &view_versions).await {
            let n = view::refresh_views(ctx, &fleet, &ran, &view_versions).await;
            ctx.reporter.event(&Event::Message {
                text: format!("wrote worker.json and jobs.json on {n} worker(s)"),
            });
        }
        fleet.close().await;
        return Ok(report);
    }
    if lock.is_some() {
        // This run holds the lock, so no other is live: a deployment still
        // "running" belongs to a process that died.
        finish_dead_runs(ctx).await?;
    }
    if ctx.interrupt.is_set() {
        // Stopped while planning: nothing was started.
        report.outcome = Outcome::Interrupted;
        fleet.close().await;
        return Ok(report);
    }

    let started_at = cutover_state::now_rfc3339();
    let seq = ctx
        .store
        .begin_deployment(&NewDeployment {
            started_at: started_at.clone(),
            head: opts.head.clone(),
            dirty: opts.dirty,
            command: opts.command.clone(),
            user: ctx.operator.user.clone(),
        })
        .await?;
    report.seq = Some(seq);
    ctx.interrupt.set_running(ctx.store.clone(), seq);

    // From here the deployment is on record: whatever fails below, the
    // record is finished (as failed), never left "running".
    let executed = async {
        let (run, stage_root) = stage_run(
            ctx, opts, &plan, &rendered, &recorded, records, kv, fleet, &known, seq, &published,
        )
        .await?;
        drop(published);

        if !run.interrupt.is_set() {
            report.stops = reconcile(&run, &plan.stops).await;
        }
        // Jobs that lost allocations: what is left of them must be healthy
        // before anything else changes.
        let unhealthy = reconcile::check_survivors(&run, &report.stops).await;
        if unhealthy.is_empty() {
            let ran: BTreeSet<String> = run.records.keys().map(|(_, w)| w.clone()).collect();
            // The fleet view is written once the waves are done; a worker
            // no wave touches is connected to while they run.
            let touched: BTreeSet<&str> = plan
                .jobs()
                .flat_map(|j| &j.allocations)
                .filter(|a| a.action != Action::Skip)
                .map(|a| a.worker.as_str())
                .collect();
            let (waves, ()) = tokio::join!(
                waves::run_waves(&run, &plan, &mut report),
                view::connect_stale(ctx, &run.fleet, &ran, &view_versions, &touched)
            );
            waves?;
            if !run.interrupt.is_set() {
                view::refresh_views(ctx, &run.fleet, &ran, &view_versions).await;
            }
        } else {
            let jobs: BTreeSet<&String> = unhealthy.iter().map(|(j, _)| j).collect();
            for job in jobs {
                let why: Vec<&str> = unhealthy
                    .iter()
                    .filter(|(j, _)| j == job)
                    .map(|(_, w)| w.as_str())
                    .collect();
                let message = format!(
                    "what still runs it is unhealthy after reconcile stopped allocations: {}; the deploy stopped before its waves",
                    why.join("; ")
                );
                run.reporter.event(&Event::JobDone {
                    job: job.clone(),
                    status: "failed".into(),
                    message: message.clone(),
                });
                report.jobs.push(JobResult {
                    job: job.clone(),
                    status: JobStatus::Failed,
                    message,
                    allocations: Vec::new(),
                });
            }
        }
        Ok::<_, EngineError>((run, stage_root))
    }
    .await;
    let (run, stage_root) = match executed {
        Ok(done) => done,
        Err(e) => {
            let summary = serde_json::json!({ "error": e.to_string() }).to_string();
            if let Err(store) = ctx.store.finish_deployment(seq, "failed", &summary).await {
                ctx.reporter.event(&Event::Message {
                    text: format!("warning: cannot record deployment {seq} as failed: {store}"),
                });
            }
            ctx.interrupt.clear_running();
            return Err(e);
        }
    };

    report.outcome = waves::outcome(&report, ctx.interrupt.is_set());
    if !report.unverified.is_empty() && report.outcome == Outcome::Success {
        report.outcome = Outcome::Partial;
    }
    let summary = serde_json::json!({ "stops": report.stops, "jobs": report.jobs }).to_string();
    ctx.store
        .finish_deployment(seq, report.outcome.as_str(), &summary)
        .await?;
    ctx.interrupt.clear_running();
    // The staged trees go while the connections close.
    let removed = tokio::task::spawn_blocking(move || drop(stage_root));
    if let Ok(run) = Arc::try_unwrap(run) {
        run.fleet.close().await;
    }
    let _ = removed.await;
    drop(lock);
    Ok(report)
}

/// Runs the `pre_deploy` hook of each job in scope, in wave order, before
/// anything is rendered or planned: a hook may write the KV that templates
/// and `rollout_order` read, and the plan uses what it wrote. It runs
/// whether or not the job turns out to have work (the skip check comes
/// after it). The first failure stops the deploy, before any worker is
/// touched.
async fn pre_deploy(
    ctx: &Context,
    opts: &DeployOptions,
    records: &[AllocationRecord],
) -> Result<Option<JobResult>, EngineError> {
    let mut redactor = None;
    for name in ctx.project.waves().into_iter().flatten() {
        let Some(job) = ctx.project.jobs.get(&name) else {
            continue;
        };
        let Some(hook) = &job.manifest.hooks.pre_deploy else {
            continue;
        };
        if opts.jobs.as_ref().is_some_and(|s| !s.contains(&name)) || ctx.interrupt.is_set() {
            continue;
        }
        let workers: Vec<String> = ctx
            .project
            .workers_for(job)
            .map(|w| w.name.clone())
            .collect();
        let current = records
            .iter()
            .find(|r| r.job == name && workers.contains(&r.worker))
            .and_then(|r| r.version.clone())
            .unwrap_or_default();
        let env = crate::hooks::HookEnv {
            project: &ctx.project.root,
            job: &name,
            event: "pre_deploy",
            workers,
            current_version: &current,
            new_version: &job.manifest.version,
        };
        if redactor.is_none() {
            redactor = Some(kv::for_templates(ctx).await?.redactor());
        }
        let r = crate::hooks::run(hook, &env, ctx.project.config.ssh.command_timeout).await;
        let message = r
            .clone()
            .err()
            .map(|e| redactor.as_ref().map_or(e.clone(), |x| x.redact(&e)));
        ctx.reporter.event(&Event::Hook {
            job: name.clone(),
            hook: "pre_deploy".into(),
            ok: r.is_ok(),
            message: message.clone().unwrap_or_default(),
        });
        if let Some(message) = message {
            return Ok(Some(JobResult {
                job: name,
                status: JobStatus::Failed,
                message: format!("{message}; nothing was deployed"),
                allocations: Vec::new(),
            }));
        }
    }
    Ok(None)
}

/// A run that failed before its plan (a `pre_deploy` hook): on record as a
/// failed deployment, with nothing touched.
async fn failed_before_planning(
    ctx: &Context,
    opts: &DeployOptions,
    failed: JobResult,
    lock: Option<&cutover_state::ProjectLock>,
) -> Result<DeployReport, EngineError> {
    ctx.reporter.event(&Event::JobDone {
        job: failed.job.clone(),
        status: "failed".into(),
        message: failed.message.clone(),
    });
    let seq = ctx
        .store
        .begin_deployment(&NewDeployment {
            started_at: cutover_state::now_rfc3339(),
            head: opts.head.clone(),
            dirty: opts.dirty,
            command: opts.command.clone(),
            user: ctx.operator.user.clone(),
        })
        .await?;
    let jobs = vec![failed];
    let summary = serde_json::json!({ "stops": [], "jobs": jobs }).to_string();
    ctx.store.finish_deployment(seq, "failed", &summary).await?;
    Ok(DeployReport {
        outcome: Outcome::Failed,
        seq: Some(seq),
        plan: Plan {
            stops: Vec::new(),
            waves: Vec::new(),
        },
        stops: Vec::new(),
        jobs,
        unverified: Vec::new(),
        took_over_lock: lock
            .and_then(|l| l.took_over.as_ref())
            .map(|h| h.to_string()),
    })
}

/// What a run plans from.
struct Planned {
    recorded: BTreeMap<Key, cutover_model::plan::Recorded>,
    records: Vec<AllocationRecord>,
    kv: kv::TemplateKv,
    rendered: render::Rendered,
    plan: Plan,
    /// `--verify`: allocations whose worker could not be reached.
    unverified: Vec<String>,
    /// The published jobs' artifacts, unpacked until staged.
    published: crate::channel::artifact::Published,
}

/// The plan: records a worker carries but the store lost are read back
/// first; every allocation is rendered and fingerprinted; with `--verify`,
/// allocations the store calls unchanged are compared with their workers,
/// and those that differ are planned again.
async fn plan_run(
    ctx: &Context,
    opts: &DeployOptions,
    fleet: &Fleet,
    mut recorded: BTreeMap<Key, cutover_model::plan::Recorded>,
    mut records: Vec<AllocationRecord>,
) -> Result<Planned, EngineError> {
    if let Some(rebuilt) = rebuild_missing(ctx, &records, !opts.dry_run, fleet).await? {
        if opts.dry_run {
            // Nothing is written: the plan uses what the workers said.
            for r in &rebuilt {
                recorded.insert(
                    (r.job.clone(), r.worker.clone()),
                    render::recorded_of(r, None),
                );
            }
            records.extend(rebuilt);
        } else {
            (recorded, records) = render::recorded(ctx).await?;
        }
    }

    let kv = kv::for_templates(ctx).await?;
    let rollout_order = kv::rollout_order(&kv);
    let mut post_deploy_failed = BTreeMap::new();
    // A record written before redaction reached it is redacted on the way out.
    let redact = kv.redactor();
    for job in ctx.project.jobs.values() {
        if job.manifest.hooks.post_deploy.is_none() {
            continue;
        }
        let key = job::post_deploy_key(&job.name);
        if let Some(why) = ctx.store.meta_get(&key).await?.filter(|m| !m.is_empty()) {
            post_deploy_failed.insert(job.name.clone(), redact.redact(&why));
        }
    }
    let cert_mode = if opts.dry_run {
        crate::certs::Mode::Preview
    } else {
        crate::certs::Mode::Issue
    };
    let certs = crate::certs::for_render(ctx, opts.jobs.as_ref(), cert_mode).await?;
    // A dry run does not run pre_deploy hooks: a job that has one may
    // read values only its hook sets. It is shown as not planned, with
    // why, instead of failing the dry run.
    let defer: BTreeSet<String> = if opts.dry_run {
        ctx.project
            .jobs
            .values()
            .filter(|j| j.manifest.hooks.pre_deploy.is_some())
            .map(|j| j.name.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    let published = crate::channel::artifact::for_deploy(ctx, opts.jobs.as_ref()).await?;
    let rendered = render::render_all(ctx, opts.jobs.as_ref(), &kv, &certs, &defer, &published)?;
    let plan_opts = PlanOptions {
        jobs: opts.jobs.clone(),
        force: opts.force,
        sync_only: opts.sync_only,
    };
    let mut unverified = Vec::new();
    let mut plan = plan::plan(&PlanInput {
        project: &ctx.project,
        candidates: &rendered.candidates,
        recorded: &recorded,
        rollout_order: &rollout_order,
        post_deploy_failed: &post_deploy_failed,
        options: &plan_opts,
    });
    if opts.verify {
        let skipped: BTreeSet<Key> = plan
            .jobs()
            .flat_map(|j| {
                j.allocations
                    .iter()
                    .filter(|a| a.action == Action::Skip)
                    .map(move |a| (j.job.clone(), a.worker.clone()))
            })
            .collect();
        let verified = crate::drift::compare(ctx, fleet, &rendered.trees, &skipped).await?;
        unverified = verified
            .unreachable
            .into_iter()
            .map(|((job, worker), e)| format!("{job}@{worker}: {e}"))
            .collect();
        let found = verified.differ;
        if !found.is_empty() {
            for (key, files) in found {
                if let Some(r) = recorded.get_mut(&key) {
                    r.drift = files;
                }
            }
            plan = plan::plan(&PlanInput {
                project: &ctx.project,
                candidates: &rendered.candidates,
                recorded: &recorded,
                rollout_order: &rollout_order,
                post_deploy_failed: &post_deploy_failed,
                options: &plan_opts,
            });
        }
    }
    for wave in &mut plan.waves {
        for j in &mut wave.jobs {
            j.deferred = rendered.deferred.get(&j.job).cloned();
            j.source = published.jobs.get(&j.job).map(|p| p.describe());
        }
    }
    Ok(Planned {
        recorded,
        records,
        kv,
        rendered,
        plan,
        unverified,
        published,
    })
}

/// Stages what will be uploaded and gathers what the tasks of the run
/// share: the staged trees, the delta bases, the manifests to record, the
/// workers to reach (those in the project with work, and removed ones
/// with a stop, at their last known address).
#[allow(clippy::too_many_arguments)]
async fn stage_run(
    ctx: &Context,
    opts: &DeployOptions,
    plan: &Plan,
    rendered: &render::Rendered,
    recorded: &BTreeMap<Key, cutover_model::plan::Recorded>,
    records: Vec<AllocationRecord>,
    kv: kv::TemplateKv,
    fleet: Fleet,
    known: &BTreeMap<String, Worker>,
    seq: i64,
    published: &crate::channel::artifact::Published,
) -> Result<(Arc<Run>, crate::scratch::Scratch), EngineError> {
    // Stage what will be uploaded, once per distinct tree, in a private
    // dir (rendered files may hold secrets). A run killed with -9 left
    // its own behind: it is removed now that this run holds the lock.
    crate::scratch::Scratch::sweep(&ctx.runtime_dir);
    let stage_root = crate::scratch::Scratch::create(&ctx.runtime_dir, "stage", &ctx.project.root)?;
    let wanted: BTreeSet<Key> = plan
        .jobs()
        .flat_map(|j| {
            j.allocations
                .iter()
                .filter(|a| a.action != Action::Skip)
                .map(move |a| (j.job.clone(), a.worker.clone()))
        })
        .collect();
    let staged = render::stage(ctx, stage_root.path(), &rendered.trees, &wanted)?;
    let records: BTreeMap<Key, AllocationRecord> = records
        .into_iter()
        .map(|r| ((r.job.clone(), r.worker.clone()), r))
        .collect();
    // Where the store knows which release a worker runs and what is in it,
    // the upload sends only the files that differ from that release.
    let mut ticket_bases: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for b in crate::release::open_bases(ctx).await? {
        ticket_bases
            .entry((b.job, b.worker))
            .or_default()
            .push(b.release_id);
    }
    let bases: BTreeMap<Key, DeltaBase> = wanted
        .iter()
        .filter_map(|k| {
            let release = records.get(k)?.release_id.clone()?;
            let old = recorded.get(k)?.promoted_manifest.as_ref()?;
            let changed =
                cutover_model::tree::changed_paths(old, &rendered.candidates.get(k)?.manifest);
            (changed.len() <= DELTA_MAX_FILES).then(|| (k.clone(), DeltaBase { release, changed }))
        })
        .collect();
    // Allocations changing version (a rollback among them): the worker may
    // still have a release dir of the new tree, which is then reused.
    let returning: BTreeSet<Key> = wanted
        .iter()
        .filter(|k| {
            let (Some(c), Some(r)) = (rendered.candidates.get(*k), records.get(*k)) else {
                return false;
            };
            r.release_id.is_some()
                && r.hash.as_ref() != Some(&c.hash)
                && r.version.as_ref() != Some(&c.version)
        })
        .cloned()
        .collect();
    // `[store] worker_fetch`: each worker downloads its version's artifact
    // from the store; only what differs for the allocation (rendered
    // templates, certificates, the template sources to drop) is sent.
    let fetches: BTreeMap<Key, run::FetchPlan> = wanted
        .iter()
        .filter_map(|k| {
            let c = rendered.candidates.get(k)?;
            let f = published.jobs.get(&k.0)?.fetch.get(&c.version)?;
            let tree = rendered.trees.get(k)?;
            let in_tree: BTreeSet<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
            let mut changed: Vec<String> = tree
                .entries
                .iter()
                .filter(|e| matches!(e.content, cutover_model::tree::Content::Rendered(_)))
                .map(|e| e.path.clone())
                .chain(
                    f.paths
                        .iter()
                        .filter(|p| !in_tree.contains(p.as_str()))
                        .cloned(),
                )
                .collect();
            changed.sort();
            changed.dedup();
            Some((
                k.clone(),
                run::FetchPlan {
                    url: f.url.clone(),
                    sha256: f.version.sha256.clone(),
                    size: f.version.size,
                    name: format!("{} {}", k.0, f.version.version),
                    changed,
                },
            ))
        })
        .collect();
    let manifests = wanted
        .iter()
        .filter_map(|k| {
            let c = rendered.candidates.get(k)?;
            let promoted = cutover_model::tree::Promoted {
                files: c.manifest.clone(),
                inputs: c.inputs.clone(),
            };
            Some(((k.0.clone(), c.hash.clone()), promoted.to_json()))
        })
        .collect();

    // Connect to every worker with work: those in the project, and those
    // removed from it whose last known address the store remembers.
    let mut needed: BTreeMap<String, Worker> = BTreeMap::new();
    for (_, worker) in &wanted {
        if let Some(w) = ctx.project.worker(worker) {
            needed.insert(worker.clone(), w.clone());
        }
    }
    for s in &plan.stops {
        if let Some(w) = ctx.project.worker(&s.worker).or(known.get(&s.worker)) {
            needed.insert(s.worker.clone(), w.clone());
        }
    }

    let redactor = kv.redactor();
    let run = Arc::new(Run {
        project: ctx.project.clone(),
        store: ctx.store.clone(),
        reporter: redactor.reporter(ctx.reporter.clone()),
        redactor,
        fleet,
        staged,
        bases,
        returning,
        fetches,
        ticket_bases,
        manifests,
        records,
        workers: needed,
        seq,
        stamp: cutover_state::now_compact_millis(),
        timeout: ctx.project.config.ssh.command_timeout,
        limit: Arc::new(Semaphore::new(ctx.project.config.ssh.max_parallel)),
        kv,
        env: ctx.template_env(),
        purge_data: opts.purge_data,
        interrupt: ctx.interrupt.clone(),
        views: view::Carried::of(ctx, plan, &published.view_versions()).await,
        outputs: Default::default(),
    });
    Ok((run, stage_root))
}

/// Records every deployment still "running" as interrupted. Called with
/// the lock held: its process is gone.
pub(crate) async fn finish_dead_runs(ctx: &Context) -> Result<(), EngineError> {
    for d in ctx.store.deployments(100).await? {
        if d.outcome == "running" {
            ctx.store
                .finish_deployment(d.seq, "interrupted", &d.summary)
                .await?;
        }
    }
    Ok(())
}

/// The recorded deployments, newest first; one still "running" while no
/// process holds the lock is shown as what it is: interrupted.
pub async fn deployments(
    ctx: &Context,
    limit: i64,
) -> Result<Vec<cutover_state::DeploymentRecord>, EngineError> {
    let mut deps = ctx.store.deployments(limit).await?;
    if ctx.store.lock_status().await?.is_none() {
        for d in deps.iter_mut().filter(|d| d.outcome == "running") {
            d.outcome = "interrupted".into();
        }
    }
    Ok(deps)
}

/// Where the store has no record of a worker that a job selects (a lost
/// or new store, or a new worker), asks the worker what it carries, so
/// that a lost store never means redeploying the fleet from scratch.
/// Returns the records rebuilt, if any (written to the store unless `write`
/// is false, for a dry run).
async fn rebuild_missing(
    ctx: &Context,
    records: &[AllocationRecord],
    write: bool,
    fleet: &Fleet,
) -> Result<Option<Vec<AllocationRecord>>, EngineError> {
    let unknown: BTreeSet<String> = ctx
        .project
        .workers
        .iter()
        .filter(|w| !w.disabled && !records.iter().any(|r| r.worker == w.name))
        .filter(|w| {
            ctx.project
                .jobs
                .values()
                .any(|j| w.matches(&j.manifest.selectors))
        })
        .map(|w| w.name.clone())
        .collect();
    if unknown.is_empty() {
        return Ok(None);
    }
    let report = crate::rebuild::rebuild(ctx, Some(&unknown), true, write, Some(fleet)).await?;
    if report.rebuilt.is_empty() {
        return Ok(None);
    }
    ctx.reporter.event(&Event::Message {
        text: format!(
            "the state store had no record of {}: {} {} allocation record(s) from what the workers carry",
            unknown.iter().cloned().collect::<Vec<_>>().join(", "),
            if write { "rebuilt" } else { "read (dry run: not written)" },
            report.rebuilt.len()
        ),
    });
    Ok(Some(report.records))
}
