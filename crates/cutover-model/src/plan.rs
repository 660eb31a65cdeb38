//! The planner: from the project, the rendered trees and what the state
//! store says is promoted, decide per wave, job and worker what a deploy
//! does, why, and in which batch. Pure: the same inputs give the same plan,
//! and a dry run prints exactly the plan a real run executes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::RestartPolicy;
use crate::project::Project;
use crate::tree::{changed_paths, Manifest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Restart,
    Reload,
    Sync,
    Stop,
    Skip,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Reload => "reload",
            Action::Sync => "sync",
            Action::Stop => "stop",
            Action::Skip => "skip",
        }
    }

    /// The make target run after the switch, if any.
    pub fn target(self) -> Option<&'static str> {
        match self {
            Action::Start => Some("start"),
            Action::Restart => Some("restart"),
            Action::Reload => Some("reload"),
            Action::Stop => Some("stop"),
            Action::Sync | Action::Skip => None,
        }
    }
}

/// What the state store knows of one allocation.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The promoted tree, if any was ever promoted.
    pub promoted_hash: Option<String>,
    pub promoted_version: Option<String>,
    pub promoted_manifest: Option<Manifest>,
    /// The promoted tree's inputs (job.toml, watched files); `None` when
    /// the store predates their fingerprinting.
    pub promoted_inputs: Option<Manifest>,
    /// The last attempt failed (a retry is due even when hashes match).
    pub failed: bool,
    /// The allocation was stopped by a reconcile.
    pub stopped: bool,
    /// Files that differ on the worker from the promoted tree (`--verify`).
    pub drift: Vec<String>,
}

/// A rendered allocation, ready to plan.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub hash: String,
    pub manifest: Manifest,
    /// job.toml and the watched files, fingerprinted but not shipped.
    pub inputs: Manifest,
    /// The version it rolls out: job.toml's, or a published channel's.
    pub version: String,
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Only these jobs (and stops of these jobs); `None` = all.
    pub jobs: Option<BTreeSet<String>>,
    pub force: bool,
    pub sync_only: bool,
}

pub struct PlanInput<'a> {
    pub project: &'a Project,
    /// (job, worker) -> rendered candidate, for every allocation in scope.
    pub candidates: &'a BTreeMap<(String, String), Candidate>,
    /// (job, worker) -> what is recorded, for every allocation the store knows.
    pub recorded: &'a BTreeMap<(String, String), Recorded>,
    /// job -> worker names, from the job's `rollout_order` KV key.
    pub rollout_order: &'a BTreeMap<String, Vec<String>>,
    /// job -> why its last `post_deploy` hook failed: it runs again.
    pub post_deploy_failed: &'a BTreeMap<String, String>,
    pub options: &'a PlanOptions,
}

/// Sorts a job's workers by its `rollout_order`: those it names first, in
/// its order; the others after them, in the order they came (workers.toml's).
pub fn in_rollout_order(workers: &mut [&crate::config::Worker], order: &[String]) {
    let rank = |name: &str| order.iter().position(|o| o == name).unwrap_or(usize::MAX);
    workers.sort_by_key(|w| rank(&w.name));
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocPlan {
    pub worker: String,
    pub action: Action,
    pub why: String,
    /// 1-based batch within the job; `None` for skipped allocations.
    pub batch: Option<usize>,
    pub hash: String,
    pub current_version: Option<String>,
    pub new_version: String,
    /// Files that differ from the promoted tree.
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    pub job: String,
    pub wave: usize,
    pub allocations: Vec<AllocPlan>,
    pub batches: usize,
    /// The job has a `pre_deploy` hook. A real run runs it before it
    /// renders and plans (it may write the KV that templates and
    /// `rollout_order` read); a dry run does not, so its plan of this job
    /// may differ from the real one.
    pub pre_deploy: bool,
    /// Why the job's last `post_deploy` hook failed: it runs again in this
    /// deploy, after the rollout or alone.
    pub retry_post_deploy: Option<String>,
    /// A dry run could not plan the job before its `pre_deploy` hook runs
    /// (its templates need what the hook writes): why.
    pub deferred: Option<String>,
    /// Where the job's files come from, when not the working tree (a
    /// published job: its channels' artifacts).
    pub source: Option<String>,
}

impl JobPlan {
    /// Whether any allocation rolls out.
    pub fn has_work(&self) -> bool {
        self.allocations.iter().any(|a| a.action != Action::Skip)
    }

    /// Whether the deploy has anything to do for this job: a rollout, or a
    /// failed `post_deploy` hook to run again.
    pub fn needs_run(&self) -> bool {
        self.has_work() || self.retry_post_deploy.is_some()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StopPlan {
    pub job: String,
    pub worker: String,
    pub why: String,
    /// The job is gone from the project: its files and KV go too.
    pub job_removed: bool,
    /// The worker is gone from workers.toml: it cannot be reached to stop.
    pub worker_removed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wave {
    pub wave: usize,
    pub jobs: Vec<JobPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stops: Vec<StopPlan>,
    pub waves: Vec<Wave>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.stops.is_empty()
            && self
                .waves
                .iter()
                .all(|w| w.jobs.iter().all(|j| !j.needs_run()))
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobPlan> {
        self.waves.iter().flat_map(|w| w.jobs.iter())
    }

    /// Counts of each action, for summaries.
    pub fn counts(&self) -> BTreeMap<Action, usize> {
        let mut out = BTreeMap::new();
        for a in self.jobs().flat_map(|j| j.allocations.iter()) {
            *out.entry(a.action).or_default() += 1;
        }
        if !self.stops.is_empty() {
            out.insert(Action::Stop, self.stops.len());
        }
        out
    }
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let project = input.project;
    let in_scope = |job: &str| input.options.jobs.as_ref().is_none_or(|s| s.contains(job));

    let mut stops = Vec::new();
    for ((job, worker), rec) in input.recorded {
        if rec.stopped || !in_scope(job) {
            continue;
        }
        let why = match (project.jobs.get(job), project.worker(worker)) {
            (None, _) => "job removed from the project",
            (_, None) => "worker removed from workers.toml",
            (_, Some(w)) if w.disabled => "worker disabled",
            (Some(j), Some(w)) if !w.matches(&j.manifest.selectors) => {
                "worker no longer matches the job's selectors"
            }
            _ => continue,
        };
        stops.push(StopPlan {
            job: job.clone(),
            worker: worker.clone(),
            why: why.to_string(),
            job_removed: !project.jobs.contains_key(job),
            worker_removed: project.worker(worker).is_none(),
        });
    }

    let mut waves = Vec::new();
    for (i, names) in project.waves().into_iter().enumerate() {
        let jobs: Vec<JobPlan> = names
            .iter()
            .filter(|n| in_scope(n))
            .filter_map(|n| project.jobs.get(n))
            .map(|job| plan_job(input, job, i + 1))
            .collect();
        if !jobs.is_empty() {
            waves.push(Wave { wave: i + 1, jobs });
        }
    }
    Plan { stops, waves }
}

fn plan_job(input: &PlanInput<'_>, job: &crate::config::Job, wave: usize) -> JobPlan {
    let m = &job.manifest;
    let opts = input.options;
    let restart_globs = {
        let mut b = globset::GlobSetBuilder::new();
        for g in &m.restart_globs {
            if let Ok(g) = globset::Glob::new(g) {
                b.add(g);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    };

    let mut workers: Vec<&crate::config::Worker> = input.project.workers_for(job).collect();
    if let Some(order) = input.rollout_order.get(&job.name) {
        in_rollout_order(&mut workers, order);
    }

    let mut allocations = Vec::new();
    for w in workers {
        let key = (job.name.clone(), w.name.clone());
        let Some(cand) = input.candidates.get(&key) else {
            continue;
        };
        let rec = input.recorded.get(&key).cloned().unwrap_or_default();
        let promoted = rec.promoted_hash.as_ref().filter(|_| !rec.stopped);
        let (action, why, changed) = match promoted {
            None => (
                Action::Start,
                if rec.failed {
                    "new allocation (last attempt failed)".to_string()
                } else {
                    "new allocation".to_string()
                },
                Vec::new(),
            ),
            Some(hash) => {
                let version_changed =
                    rec.promoted_version.as_deref() != Some(cand.version.as_str());
                let changed = match &rec.promoted_manifest {
                    Some(old) => changed_paths(old, &cand.manifest),
                    None => cand.manifest.keys().cloned().collect(),
                };
                let same = *hash == cand.hash && !version_changed && rec.drift.is_empty();
                let inputs_changed = match &rec.promoted_inputs {
                    Some(old) => changed_paths(old, &cand.inputs),
                    None if *hash != cand.hash && changed.is_empty() => {
                        vec![format!("jobs/{}/job.toml or watched files", job.name)]
                    }
                    None => Vec::new(),
                };
                let changed = if rec.drift.is_empty() {
                    changed
                } else {
                    rec.drift.clone()
                };
                if same && !rec.failed && !opts.force {
                    (Action::Skip, "unchanged".to_string(), Vec::new())
                } else {
                    let mut reasons = Vec::new();
                    if version_changed {
                        reasons.push(format!(
                            "version {} -> {}",
                            rec.promoted_version.as_deref().unwrap_or("?"),
                            cand.version
                        ));
                    }
                    let shown: Vec<String> =
                        changed.iter().chain(&inputs_changed).cloned().collect();
                    if !shown.is_empty() {
                        reasons.push(format!("changed: {}", summarize(&shown)));
                    }
                    if rec.failed {
                        reasons.push("last attempt failed".into());
                    }
                    if !rec.drift.is_empty() {
                        reasons.push("the worker differs from the promoted tree".into());
                    }
                    if same && opts.force {
                        reasons.push("forced".into());
                    }
                    let action = if opts.sync_only {
                        Action::Sync
                    } else {
                        match m.restart_policy {
                            RestartPolicy::Always => Action::Restart,
                            RestartPolicy::Never => Action::Sync,
                            RestartPolicy::Reload => {
                                let hits: Vec<&String> = changed
                                    .iter()
                                    .filter(|p| restart_globs.is_match(p))
                                    .collect();
                                if hits.is_empty() {
                                    Action::Reload
                                } else {
                                    reasons.push(format!(
                                        "restart_globs match {}",
                                        summarize(&hits.into_iter().cloned().collect::<Vec<_>>())
                                    ));
                                    Action::Restart
                                }
                            }
                        }
                    };
                    (action, reasons.join("; "), changed)
                }
            }
        };
        let action = if opts.sync_only && action == Action::Start {
            Action::Sync
        } else {
            action
        };
        allocations.push(AllocPlan {
            worker: w.name.clone(),
            action,
            why,
            batch: None,
            hash: cand.hash.clone(),
            current_version: rec.promoted_version.clone().filter(|_| promoted.is_some()),
            new_version: cand.version.clone(),
            changed,
        });
    }

    // New allocations first, in batches of max_concurrent_starts (0 = all);
    // then upgrades in batches of max_concurrent_upgrades.
    let mut batch = 0;
    let is_new = |a: &AllocPlan| a.current_version.is_none() && a.action != Action::Skip;
    for (new, size) in [
        (true, m.max_concurrent_starts),
        (false, m.max_concurrent_upgrades),
    ] {
        let size = if size == 0 { usize::MAX } else { size };
        let mut in_batch = 0;
        for a in allocations.iter_mut() {
            if a.action == Action::Skip || is_new(a) != new {
                continue;
            }
            if in_batch == 0 {
                batch += 1;
            }
            a.batch = Some(batch);
            in_batch = (in_batch + 1) % size;
        }
    }
    JobPlan {
        job: job.name.clone(),
        wave,
        allocations,
        batches: batch,
        pre_deploy: m.hooks.pre_deploy.is_some(),
        retry_post_deploy: m
            .hooks
            .post_deploy
            .as_ref()
            .and_then(|_| input.post_deploy_failed.get(&job.name).cloned()),
        deferred: None,
        source: None,
    }
}

fn summarize(paths: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = paths
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s.push_str(&format!(" (+{} more)", paths.len() - SHOWN));
    }
    s
}
