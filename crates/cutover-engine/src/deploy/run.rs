//! What the tasks of one deploy run share: the project, the store, the
//! connections, the staged trees, and what each step needs to know.

use super::*;

/// Above this many changed files an upload is a plain rsync.
pub(super) const DELTA_MAX_FILES: usize = 256;

/// The release an allocation runs, and the files the new tree changes.
pub(super) struct DeltaBase {
    pub(super) release: String,
    pub(super) changed: Vec<String>,
}

/// An allocation whose worker downloads its artifact from the store.
pub(super) struct FetchPlan {
    pub(super) url: String,
    pub(super) sha256: String,
    pub(super) size: u64,
    /// `job version`, for messages.
    pub(super) name: String,
    /// What differs from the artifact for this allocation.
    pub(super) changed: Vec<String>,
}

/// What the tasks of one run share.
pub(super) struct Run {
    pub(super) project: Arc<Project>,
    pub(super) store: Arc<Store>,
    pub(super) reporter: Arc<dyn Reporter>,
    /// Secret values, redacted from every message shown or recorded.
    pub(super) redactor: crate::redact::Redactor,
    pub(super) fleet: Fleet,
    pub(super) staged: BTreeMap<(String, String), Arc<LocalTree>>,
    pub(super) bases: BTreeMap<Key, DeltaBase>,
    /// Allocations going back to a tree promoted before: a release dir of
    /// it that the worker kept is reused, with no transfer.
    pub(super) returning: BTreeSet<Key>,
    /// `[store] worker_fetch`: allocations whose worker downloads the bulk.
    pub(super) fetches: BTreeMap<Key, FetchPlan>,
    /// BASE release ids of unfinished ticket releases, per allocation.
    pub(super) ticket_bases: BTreeMap<Key, Vec<String>>,
    /// (job, hash) -> manifest JSON of each tree being rolled out.
    pub(super) manifests: BTreeMap<(String, String), String>,
    pub(super) records: BTreeMap<Key, AllocationRecord>,
    pub(super) workers: BTreeMap<String, Worker>,
    pub(super) seq: i64,
    /// When the deployment started, UTC, `YYYYMMDDTHHMMSSmmm`.
    pub(super) stamp: String,
    pub(super) timeout: Duration,
    pub(super) limit: Arc<Semaphore>,
    pub(super) kv: crate::kv::TemplateKv,
    pub(super) env: BTreeMap<String, String>,
    pub(super) purge_data: bool,
    pub(super) interrupt: Arc<crate::interrupt::Interrupt>,
    /// The fleet views the activation commands write.
    pub(super) views: super::view::Carried,
    /// The whole output (its last lines) of each allocation's failed
    /// lifecycle target, for the allocation's result (playbooks match it).
    pub(super) outputs: std::sync::Mutex<BTreeMap<Key, String>>,
}

/// How much of a failed step's output a result keeps.
const OUTPUT_LINES: usize = 200;

impl Run {
    /// Keeps the output of an allocation's failed step.
    pub(super) fn keep_output(&self, job: &str, worker: &str, out: &cutover_transport::Output) {
        let text = out.tail(OUTPUT_LINES);
        if let Ok(mut m) = self.outputs.lock() {
            m.insert((job.to_string(), worker.to_string()), text);
        }
    }

    /// The kept output of an allocation's failed step, redacted.
    pub(super) fn take_output(&self, job: &str, worker: &str) -> String {
        let text = self
            .outputs
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(job.to_string(), worker.to_string())))
            .unwrap_or_default();
        self.redactor.redact(&text)
    }

    /// A release dir's name: the deployment, when it started, and the
    /// tree. The time keeps names unique when the store (and with it the
    /// deployment counter) was lost, so an upload never lands in the dir
    /// of a release that is running or kept.
    pub(super) fn release_id(&self, hash: &str) -> String {
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
    pub(super) fn prune(&self, job: &Job, worker: &str) -> remote::Prune {
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
    pub(super) fn carried(&self, a: &AllocPlan, release: &str) -> String {
        serde_json::to_string(&crate::rebuild::Carried {
            release: release.to_string(),
            version: a.new_version.clone(),
            hash: a.hash.clone(),
            seq: self.seq,
            promoted_at: cutover_state::now_rfc3339(),
        })
        .unwrap_or_default()
    }

    pub(super) fn step(&self, job: &str, worker: &str, step: &str) {
        self.reporter.event(&Event::Step {
            job: job.into(),
            worker: worker.into(),
            step: step.into(),
        });
    }

    pub(super) fn hook_env<'a>(
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

    pub(super) async fn hook(
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
