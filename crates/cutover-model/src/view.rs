//! The fleet view a worker needs for service discovery: who it is
//! (`<root>/worker.json`) and which jobs run where (`<root>/jobs.json`).
//! Templates see the same data as `fleet`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Worker;
use crate::project::Project;

/// One worker as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    pub name: String,
    pub host: String,
    pub labels: Vec<String>,
}

impl WorkerView {
    pub fn of(w: &Worker) -> WorkerView {
        WorkerView {
            name: w.name.clone(),
            host: w.host.clone(),
            labels: w.labels.clone(),
        }
    }
}

/// One job: its version and the workers that run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    pub version: String,
    pub workers: Vec<WorkerView>,
}

/// The whole view: every job of the project, and every worker that runs
/// at least one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetView {
    pub jobs: BTreeMap<String, JobView>,
    pub workers: Vec<WorkerView>,
}

impl FleetView {
    pub fn of(project: &Project) -> FleetView {
        let jobs: BTreeMap<String, JobView> = project
            .jobs
            .values()
            .map(|j| {
                (
                    j.name.clone(),
                    JobView {
                        version: j.manifest.version.clone(),
                        workers: project.workers_for(j).map(WorkerView::of).collect(),
                    },
                )
            })
            .collect();
        let workers = project
            .workers
            .iter()
            .filter(|w| {
                jobs.values()
                    .any(|j| j.workers.iter().any(|x| x.name == w.name))
            })
            .map(WorkerView::of)
            .collect();
        FleetView { jobs, workers }
    }

    /// The same view with these jobs' versions (a published job's is its
    /// stable version, not job.toml's, which reaches no worker).
    pub fn with_versions(mut self, versions: &BTreeMap<String, String>) -> FleetView {
        for (job, v) in versions {
            if let Some(j) = self.jobs.get_mut(job) {
                j.version = v.clone();
            }
        }
        self
    }

    /// `jobs.json`: every job, its version and the workers that run it.
    pub fn jobs_json(&self) -> String {
        serde_json::to_string_pretty(&self.jobs).unwrap_or_default() + "\n"
    }
}

/// `worker.json`: the worker's name, host and labels.
pub fn worker_json(w: &Worker) -> String {
    serde_json::to_string_pretty(&WorkerView::of(w)).unwrap_or_default() + "\n"
}
