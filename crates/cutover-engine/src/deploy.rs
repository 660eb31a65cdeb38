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
use cutover_state::{AllocStatus, AllocationRecord, NewDeployment, StateStore};
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
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub outcome: Outcome,
    pub seq: Option<i64>,
    pub plan: Plan,
    pub stops: Vec<StopResult>,
    pub jobs: Vec<JobResult>,
    /// The holder of a stale lock this run took over.
    pub took_over_lock: Option<String>,
}

/// Plans (and unless `dry_run`, executes) a deploy of the working tree.
pub async fn deploy(ctx: &Context, opts: &DeployOptions) -> Result<DeployReport, EngineError> {
    let (mut recorded, mut records) = render::recorded(ctx).await?;
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
    // nothing to do opens none; workers the store forgot are asked what
    // they run over the same connections the rollout then uses.
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
    if let Some(rebuilt) = rebuild_missing(ctx, &records, !opts.dry_run, &fleet).await? {
        if opts.dry_run {
            // Nothing is written: the plan uses what the workers said.
            for r in &rebuilt {
                recorded.insert(
                    (r.job.clone(), r.worker.clone()),
                    cutover_model::plan::Recorded {
                        promoted_hash: r.hash.clone(),
                        promoted_version: r.version.clone(),
                        failed: r.status == AllocStatus::Failed,
                        ..Default::default()
                    },
                );
            }
            records.extend(rebuilt);
        } else {
            (recorded, records) = render::recorded(ctx).await?;
        }
    }

    let kv = kv::for_templates(ctx).await?;
    let rollout_order = kv::rollout_order(&kv);
    let rendered = render::render_all(ctx, opts.jobs.as_ref(), &kv)?;
    let plan_opts = PlanOptions {
        jobs: opts.jobs.clone(),
        force: opts.force,
        sync_only: opts.sync_only,
    };
    let mut plan = plan::plan(&PlanInput {
        project: &ctx.project,
        candidates: &rendered.candidates,
        recorded: &recorded,
        rollout_order: &rollout_order,
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
        let found = crate::drift::compare(ctx, &rendered.trees, &skipped).await?;
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
                options: &plan_opts,
            });
        }
    }
    let mut report = DeployReport {
        outcome: Outcome::Planned,
        seq: None,
        plan: plan.clone(),
        stops: Vec::new(),
        jobs: Vec::new(),
        took_over_lock: lock
            .as_ref()
            .and_then(|l| l.took_over.as_ref())
            .map(|h| h.to_string()),
    };
    if opts.dry_run {
        fleet.close().await;
        return Ok(report);
    }
    if lock.is_some() {
        // This run holds the lock, so no other is live: a deployment still
        // "running" belongs to a process that died.
        finish_dead_runs(ctx).await?;
    }
    if plan.is_noop() {
        // Everything is promoted: no connection, no deployment record.
        report.outcome = Outcome::Unchanged;
        fleet.close().await;
        return Ok(report);
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
        // Stage what will be uploaded, once per distinct tree, in a private
        // dir (rendered files may hold secrets). A run killed with -9 left
        // its own behind: it is removed now that this run holds the lock.
        crate::scratch::Scratch::sweep(&ctx.runtime_dir);
        let stage_root =
            crate::scratch::Scratch::create(&ctx.runtime_dir, "stage", &ctx.project.root)?;
        let wanted: BTreeSet<Key> = plan
            .jobs()
            .flat_map(|j| {
                j.allocations
                    .iter()
                    .filter(|a| a.action != Action::Skip)
                    .map(move |a| (j.job.clone(), a.worker.clone()))
            })
            .collect();
        let staged = render::stage(stage_root.path(), &rendered.trees, &wanted)?;
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
                (changed.len() <= DELTA_MAX_FILES)
                    .then(|| (k.clone(), DeltaBase { release, changed }))
            })
            .collect();
        let manifests = wanted
            .iter()
            .filter_map(|k| {
                let c = rendered.candidates.get(k)?;
                Some((
                    (k.0.clone(), c.hash.clone()),
                    serde_json::to_string(&c.manifest).ok()?,
                ))
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
        });

        if !run.interrupt.is_set() {
            report.stops = reconcile(&run, &plan.stops).await;
        }

        let mut failed_jobs: BTreeSet<String> = BTreeSet::new();
        for wave in &plan.waves {
            let mut tasks = tokio::task::JoinSet::new();
            for jp in &wave.jobs {
                if run.interrupt.is_set() && jp.has_work() {
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
                    Err(e) => {
                        return Err(EngineError::Internal(format!("a job task panicked: {e}")))
                    }
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

    let any_failed = report.stops.iter().any(|s| !s.ok)
        || report.jobs.iter().any(|j| {
            matches!(
                j.status,
                JobStatus::Failed | JobStatus::Blocked | JobStatus::Interrupted
            )
        });
    let any_done = report.stops.iter().any(|s| s.ok)
        || report.jobs.iter().any(|j| j.status == JobStatus::Succeeded);
    report.outcome = match (any_failed, any_done) {
        _ if ctx.interrupt.is_set() => Outcome::Interrupted,
        (false, _) => Outcome::Success,
        (true, true) => Outcome::Partial,
        (true, false) => Outcome::Failed,
    };
    let summary = serde_json::json!({ "stops": report.stops, "jobs": report.jobs }).to_string();
    ctx.store
        .finish_deployment(seq, report.outcome.as_str(), &summary)
        .await?;
    ctx.interrupt.clear_running();
    if let Ok(run) = Arc::try_unwrap(run) {
        run.fleet.close().await;
    }
    drop(stage_root);
    drop(lock);
    Ok(report)
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

/// Above this many changed files an upload is a plain rsync.
const DELTA_MAX_FILES: usize = 256;

/// The release an allocation runs, and the files the new tree changes.
struct DeltaBase {
    release: String,
    changed: Vec<String>,
}

/// What the tasks of one run share.
struct Run {
    project: Arc<Project>,
    store: Arc<dyn StateStore>,
    reporter: Arc<dyn Reporter>,
    /// Secret values, redacted from every message shown or recorded.
    redactor: crate::redact::Redactor,
    fleet: Fleet,
    staged: BTreeMap<(String, String), Arc<LocalTree>>,
    bases: BTreeMap<Key, DeltaBase>,
    /// BASE release ids of unfinished ticket releases, per allocation.
    ticket_bases: BTreeMap<Key, Vec<String>>,
    /// (job, hash) -> manifest JSON of each tree being rolled out.
    manifests: BTreeMap<(String, String), String>,
    records: BTreeMap<Key, AllocationRecord>,
    workers: BTreeMap<String, Worker>,
    seq: i64,
    /// When the deployment started, UTC, `YYYYMMDDTHHMMSSmmm`.
    stamp: String,
    timeout: Duration,
    limit: Arc<Semaphore>,
    kv: crate::kv::TemplateKv,
    env: BTreeMap<String, String>,
    purge_data: bool,
    interrupt: Arc<crate::interrupt::Interrupt>,
}

impl Run {
    /// A release dir's name: the deployment, when it started, and the
    /// tree. The time keeps names unique when the store (and with it the
    /// deployment counter) was lost, so an upload never lands in the dir
    /// of a release that is running or kept.
    fn release_id(&self, hash: &str) -> String {
        format!(
            "r{:06}-{}-{}",
            self.seq,
            self.stamp,
            &hash[..12.min(hash.len())]
        )
    }

    /// What pruning after a switch must keep on this allocation: besides
    /// `current` and the release it replaces, the last healthy release and
    /// the BASE release of an unfinished ticket release (its revert needs it).
    fn prune(&self, job: &Job, worker: &str) -> remote::Prune {
        let key = (job.name.clone(), worker.to_string());
        let rec = self.records.get(&key);
        remote::Prune {
            keep: job.manifest.keep_releases,
            protect: rec
                .and_then(|r| r.release_id.clone())
                .into_iter()
                .chain(self.ticket_bases.get(&key).into_iter().flatten().cloned())
                .collect(),
        }
    }

    /// What the worker carries once the allocation is promoted (JSON).
    fn carried(&self, a: &AllocPlan, release: &str) -> String {
        serde_json::to_string(&crate::rebuild::Carried {
            release: release.to_string(),
            version: a.new_version.clone(),
            hash: a.hash.clone(),
            seq: self.seq,
            promoted_at: cutover_state::now_rfc3339(),
        })
        .unwrap_or_default()
    }

    fn step(&self, job: &str, worker: &str, step: &str) {
        self.reporter.event(&Event::Step {
            job: job.into(),
            worker: worker.into(),
            step: step.into(),
        });
    }

    fn hook_env<'a>(
        &'a self,
        job: &'a Job,
        event: &'a str,
        workers: Vec<String>,
        current: &'a str,
    ) -> HookEnv<'a> {
        HookEnv {
            project: &self.project.root,
            job: &job.name,
            event,
            workers,
            current_version: current,
            new_version: &job.manifest.version,
        }
    }

    async fn hook(
        &self,
        job: &Job,
        name: &str,
        hook: &Option<String>,
        workers: Vec<String>,
    ) -> Result<(), String> {
        let Some(h) = hook else { return Ok(()) };
        let current = workers
            .first()
            .and_then(|w| self.records.get(&(job.name.clone(), w.clone())))
            .and_then(|r| r.version.clone())
            .unwrap_or_default();
        let r = hooks::run(
            h,
            &self.hook_env(job, name, workers, &current),
            self.timeout,
        )
        .await;
        self.reporter.event(&Event::Hook {
            job: job.name.clone(),
            hook: name.to_string(),
            ok: r.is_ok(),
            message: r.clone().err().unwrap_or_default(),
        });
        r
    }
}

/// Stops allocations that should no longer run, then cleans up after them.
async fn reconcile(run: &Arc<Run>, stops: &[StopPlan]) -> Vec<StopResult> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in stops.iter().cloned() {
        let run = run.clone();
        tasks.spawn(async move {
            let r = stop_one(&run, &s).await;
            let ok = r.is_ok();
            let message = run.redactor.redact(&r.err().unwrap_or_default());
            run.reporter.event(&Event::StopDone {
                job: s.job.clone(),
                worker: s.worker.clone(),
                why: s.why.clone(),
                ok,
                message: message.clone(),
            });
            StopResult {
                job: s.job,
                worker: s.worker,
                why: s.why,
                ok,
                message,
                data_kept: !run.purge_data,
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

async fn stop_one(run: &Run, s: &StopPlan) -> Result<(), String> {
    let _permit = run.limit.acquire().await;
    let worker = run
        .workers
        .get(&s.worker)
        .ok_or_else(|| format!("no known address for removed worker {}", s.worker))?;
    // A worker removed from workers.toml whose host and root a worker of
    // the project still has was renamed: its job dir is the other's, live.
    // Only the old record goes.
    let port = run.project.config.ssh.port;
    if let Some(now) = run
        .project
        .workers
        .iter()
        .find(|w| s.worker_removed && w.same_root_as(worker, port))
    {
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
        return Ok(());
    }
    let host = run.fleet.host(&s.worker).await?;
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
    let cleanup = match (run.purge_data, disabled) {
        (true, _) => Some(remote::remove_job(&job_dir, run.timeout)),
        (false, false) => Some(remote::remove_releases(&job_dir, run.timeout)),
        (false, true) => None,
    };
    if let Some(cmd) = cleanup {
        let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!("cleaning up {job_dir} failed: {}", out.tail(3)));
        }
    }
    if run.purge_data {
        run.store
            .delete_allocation(&s.job, &s.worker)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
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
    Ok(())
}

/// An allocation whose new release is in place and switched to.
struct Switched {
    release: String,
    /// What `current` pointed at before the switch.
    previous: Option<String>,
    /// The first health command attempt, when it ran with the lifecycle.
    health: Option<Result<(), String>>,
    /// The worker already wrote its promoted.json (in the same command).
    carried: bool,
}

async fn run_job(run: &Arc<Run>, jp: &JobPlan) -> JobResult {
    let job = &run.project.jobs[&jp.job];
    let mut result = JobResult {
        job: jp.job.clone(),
        status: JobStatus::Unchanged,
        message: String::new(),
        allocations: Vec::new(),
    };
    if !jp.has_work() {
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
    if let Err(e) = run
        .hook(
            job,
            "pre_deploy",
            &job.manifest.hooks.pre_deploy,
            all_workers.clone(),
        )
        .await
    {
        return finish(run, result, JobStatus::Failed, e);
    }

    // Upload every release dir ahead of the rolling batches: each host
    // connects and uploads in batch order, so batch 1 can switch while
    // later hosts still upload. The running releases are untouched until
    // their batch switches.
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    for b in jp.allocations.iter().filter_map(|a| a.batch) {
        *sizes.entry(b).or_default() += 1;
    }
    let first = sizes.values().next().copied().unwrap_or(1);
    let width = (2 * sizes.values().copied().max().unwrap_or(1)).max(4);
    let mut order: Vec<AllocPlan> = jp
        .allocations
        .iter()
        .filter(|a| a.batch.is_some())
        .cloned()
        .collect();
    order.sort_by_key(|a| a.batch);
    let mut uploads: BTreeMap<String, oneshot::Receiver<Result<Uploaded, String>>> =
        BTreeMap::new();
    let mut senders = Vec::new();
    for a in order {
        let (tx, rx) = oneshot::channel();
        uploads.insert(a.worker.clone(), rx);
        senders.push((a, tx));
    }
    // One driver admits the uploads strictly in batch order. Batch 1 goes
    // alone, so that its hosts have the machine to themselves and the first
    // restart (or the first failure) comes as early as it can; after it,
    // up to two batches upload at once. Dropping the driver (the job
    // halted) aborts the uploads still running: batches that never run
    // need no release dir.
    let driver = {
        let (run, job_name) = (run.clone(), job.name.clone());
        tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(first));
            let mut running = tokio::task::JoinSet::new();
            for (i, (a, tx)) in senders.into_iter().enumerate() {
                if i == first {
                    while running.join_next().await.is_some() {}
                    gate.add_permits(width.saturating_sub(first));
                }
                let Ok(slot) = gate.clone().acquire_owned().await else {
                    return;
                };
                if run.interrupt.is_set() {
                    // Start no upload: the batches that would use it
                    // will not run.
                    let _ = tx.send(Err("interrupted before its upload".into()));
                    continue;
                }
                let (run, job_name) = (run.clone(), job_name.clone());
                running.spawn(async move {
                    let _slot = slot;
                    let job = &run.project.jobs[&job_name];
                    let _ = tx.send(upload_one(&run, job, &a).await);
                });
            }
            while running.join_next().await.is_some() {}
        })
    };
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = AbortOnDrop(driver.abort_handle());

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

        // Wait for this batch's uploads, then switch and run the lifecycle
        // target on every member at once.
        let handles: Vec<_> = members.iter().map(|a| uploads.remove(&a.worker)).collect();
        let ups = crate::join::join_all(handles.into_iter().map(|h| async move {
            match h {
                Some(h) => h
                    .await
                    .unwrap_or_else(|_| Err("the upload task ended early".to_string())),
                None => Err("internal error: not uploaded".to_string()),
            }
        }))
        .await;
        let outcomes = crate::join::join_all(
            members
                .iter()
                .zip(ups)
                .map(|(a, up)| activate_one(run, job, a, up)),
        )
        .await;
        let mut switched: Vec<(&AllocPlan, Switched)> = Vec::new();
        let mut failures: Vec<(&AllocPlan, Option<Switched>, String)> = Vec::new();
        for (a, r) in members.iter().copied().zip(outcomes) {
            match r {
                Ok(s) => switched.push((a, s)),
                Err((s, e)) => failures.push((a, s, e)),
            }
        }

        if !switched.is_empty() && failures.is_empty() {
            let started: Vec<String> = switched.iter().map(|(a, _)| a.worker.clone()).collect();
            if let Err(e) = run
                .hook(
                    job,
                    "after_allocation_started",
                    &job.manifest.hooks.after_allocation_started,
                    started,
                )
                .await
            {
                for (a, s) in switched.drain(..) {
                    failures.push((a, Some(s), e.clone()));
                }
            }
        }

        // Health checks, then promotion of the healthy.
        let checked =
            crate::join::join_all(switched.iter().map(|(a, s)| check_one(run, job, a, s))).await;
        let mut healthy: Vec<(&AllocPlan, Switched)> = Vec::new();
        for ((a, s), r) in switched.into_iter().zip(checked) {
            match r {
                Ok(()) => healthy.push((a, s)),
                Err(e) => failures.push((a, Some(s), e)),
            }
        }
        let promoted =
            crate::join::join_all(healthy.iter().map(|(a, s)| promote(run, job, a, s))).await;
        let mut kept = Vec::new();
        for ((a, s), r) in healthy.into_iter().zip(promoted) {
            match r {
                Ok(()) => kept.push((a, s)),
                Err(e) => failures.push((a, Some(s), e)),
            }
        }
        let healthy = kept;

        if failures.is_empty() {
            for (a, s) in healthy {
                result.allocations.push(done(
                    run,
                    job,
                    a,
                    true,
                    Some(s.release.clone()),
                    String::new(),
                    false,
                ));
            }
            continue;
        }

        // The batch failed: record it, then halt or switch the batch back.
        let revert = job.manifest.on_failure == OnFailure::Revert;
        let first_error = format!("{}: {}", failures[0].0.worker, failures[0].2);
        for (a, s, e) in &failures {
            record_failure(run, job, a, e).await;
            let reverted = revert && revert_one(run, job, a, s.as_ref()).await;
            result.allocations.push(done(
                run,
                job,
                a,
                false,
                s.as_ref().map(|s| s.release.clone()),
                e.clone(),
                reverted,
            ));
        }
        for (a, s) in healthy {
            let reverted = revert && revert_one(run, job, a, Some(&s)).await;
            if reverted {
                record_failure(run, job, a, "reverted with its failed batch").await;
            }
            result.allocations.push(done(
                run,
                job,
                a,
                !reverted,
                Some(s.release),
                String::new(),
                reverted,
            ));
        }
        let verb = if revert { "reverted" } else { "halted" };
        return finish(
            run,
            result,
            JobStatus::Failed,
            format!(
                "batch {batch}/{} failed and was {verb}: {first_error}",
                jp.batches
            ),
        );
    }

    if let Err(e) = run
        .hook(
            job,
            "post_deploy",
            &job.manifest.hooks.post_deploy,
            all_workers,
        )
        .await
    {
        return finish(run, result, JobStatus::Failed, e);
    }
    finish(run, result, JobStatus::Succeeded, String::new())
}

fn finish(run: &Run, mut r: JobResult, status: JobStatus, message: String) -> JobResult {
    let message = run.redactor.redact(&message);
    run.reporter.event(&Event::JobDone {
        job: r.job.clone(),
        status: format!("{status:?}").to_lowercase(),
        message: message.clone(),
    });
    r.status = status;
    r.message = message;
    r
}

fn done(
    run: &Run,
    job: &Job,
    a: &AllocPlan,
    ok: bool,
    release: Option<String>,
    message: String,
    reverted: bool,
) -> AllocResult {
    let message = run.redactor.redact(&message);
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
        worker: a.worker.clone(),
        action: a.action,
        ok,
        release,
        message,
        reverted,
    }
}

type RolloutError = (Option<Switched>, String);

/// A release dir written completely on the worker; `current` untouched.
#[derive(Clone)]
struct Uploaded {
    release: String,
}

/// Writes the allocation's new release dir. The running release is not
/// touched, so every allocation of a job uploads at once, ahead of the
/// rolling batches: only the switch and the lifecycle roll.
///
/// It is one remote command: the job dir is created and old releases are
/// pruned (`remote::upload_setup`) in the same command as the transfer.
/// When the store knows the release the worker runs, the new one is made
/// from it by hard links plus the changed files (`Host::push_delta`), and
/// checked file by file; otherwise, or if that check fails, rsync sends
/// what differs, hard-linking the rest from that release.
async fn upload_one(run: &Run, job: &Job, a: &AllocPlan) -> Result<Uploaded, String> {
    let _permit = run.limit.acquire().await;
    let worker = &run.workers[&a.worker];
    let host = run.fleet.host(&a.worker).await?;
    let job_dir = worker.job_dir(&job.name);
    let release = run.release_id(&a.hash);
    let dest = format!("{job_dir}/releases/{release}");
    let stage = run
        .staged
        .get(&(job.name.clone(), a.hash.clone()))
        .ok_or_else(|| "internal error: tree not staged".to_string())?;
    let base = run.bases.get(&(job.name.clone(), a.worker.clone()));
    let base_dir = base.map(|b| format!("{job_dir}/releases/{}", b.release));
    let setup = remote::upload_setup(&job_dir, &release, run.timeout);
    if let (Some(b), Some(base_dir)) = (base, &base_dir) {
        let n = b.changed.len();
        let step = format!("upload {n} changed file{}", if n == 1 { "" } else { "s" });
        run.step(&job.name, &a.worker, &step);
        let done = host
            .push_delta(
                stage,
                &dest,
                base_dir,
                &b.changed,
                Some(&setup),
                run.timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        if done {
            return Ok(Uploaded { release });
        }
        let step = format!(
            "upload with rsync: the worker's {} is not as shipped",
            b.release
        );
        run.step(&job.name, &a.worker, &step);
    } else {
        run.step(&job.name, &a.worker, "upload with rsync");
    }
    host.push(
        stage.root(),
        &dest,
        base_dir.as_deref(),
        Some(&setup),
        run.timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(Uploaded { release })
}

/// Switches `current` to the uploaded release and runs the lifecycle target.
async fn activate_one(
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
                run.timeout,
            )
        }
        None => {
            run.step(&job.name, &a.worker, "switch");
            let prune = run.prune(job, &a.worker);
            remote::switch(&job_dir, &up.release, Some(&prune), run.timeout)
        }
    };
    let out = host.run(&cmd).await.map_err(|e| (None, e.to_string()))?;
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
        carried: carried.is_some() && out.success() && !out.stderr.contains("cannot write"),
    };
    if let Some(h) = &folded {
        switched.health = remote::folded_health(h.command, &out);
    }
    match (make_target, a.action.target()) {
        // The target ran with the switch; a folded health result means it
        // passed (the health command runs only after it).
        (Some(target), _) if !out.success() && switched.health.is_none() => {
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
fn alloc_env<'a>(
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

async fn lifecycle(
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
        Err(remote::target_failed(target, &out))
    }
}

async fn check_one(run: &Run, job: &Job, a: &AllocPlan, s: &Switched) -> Result<(), String> {
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

/// Records a healthy allocation as promoted: on its worker first
/// (`promoted.json`, what `state rebuild` reads), then in the store. A
/// store that cannot be written fails the allocation: the next run must
/// not take it for promoted, nor this one go on as if it were.
async fn promote(run: &Run, job: &Job, a: &AllocPlan, s: &Switched) -> Result<(), String> {
    let now = cutover_state::now_rfc3339();
    let json = run.carried(a, &s.release);
    if let (false, Ok(host)) = (s.carried, run.fleet.host(&a.worker).await) {
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
    let rec = AllocationRecord {
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
        updated_at: now,
    };
    let store_failed =
        |e: cutover_state::StateError| format!("recording the promotion failed: {e}");
    if let Some(json) = run.manifests.get(&(job.name.clone(), a.hash.clone())) {
        run.store
            .put_tree(&job.name, &a.hash, json)
            .await
            .map_err(store_failed)?;
    }
    run.store.put_allocation(&rec).await.map_err(store_failed)?;
    if let Some(w) = run.workers.get(&a.worker) {
        if let Ok(json) = serde_json::to_string(w) {
            run.store
                .put_known_worker(&w.name, &json)
                .await
                .map_err(store_failed)?;
        }
    }
    Ok(())
}

async fn record_failure(run: &Run, job: &Job, a: &AllocPlan, message: &str) {
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
        message: run.redactor.redact(message),
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

/// Switches one allocation of a failed batch back to the release it ran
/// before and restarts it; a new allocation is stopped instead.
async fn revert_one(run: &Run, job: &Job, a: &AllocPlan, s: Option<&Switched>) -> bool {
    let Some(s) = s else {
        return false; // never switched: the old release still runs
    };
    let worker = &run.workers[&a.worker];
    let Ok(host) = run.fleet.host(&a.worker).await else {
        return false;
    };
    let job_dir = worker.job_dir(&job.name);
    let (ok, message) = match &s.previous {
        Some(prev) => {
            let r = async {
                let out = host
                    .run(&remote::switch(&job_dir, prev, None, run.timeout))
                    .await
                    .map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(format!("switch back failed: {}", out.tail(3)));
                }
                let back = AllocPlan {
                    current_version: Some(a.new_version.clone()),
                    new_version: a.current_version.clone().unwrap_or_default(),
                    ..a.clone()
                };
                lifecycle(run, job, worker, &host, "restart", prev, &back).await
            }
            .await;
            (r.is_ok(), r.err().unwrap_or_default())
        }
        None => {
            let back = AllocPlan {
                current_version: Some(a.new_version.clone()),
                ..a.clone()
            };
            let r = lifecycle(run, job, worker, &host, "stop", &s.release, &back).await;
            (r.is_ok(), r.err().unwrap_or_default())
        }
    };
    run.reporter.event(&Event::Reverted {
        job: job.name.clone(),
        worker: a.worker.clone(),
        ok,
        message,
    });
    ok
}
