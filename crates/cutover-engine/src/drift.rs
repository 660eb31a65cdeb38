//! `cutover drift`: compare what each worker's `current` actually holds
//! with what is promoted, file by file (rsync's checksum dry run: nothing
//! is changed on the worker, and it needs nothing there but rsync).

use std::collections::BTreeSet;

use cutover_model::tree::Manifest;
use cutover_state::AllocStatus;
use cutover_transport::{Drift, Expected};
use serde::Serialize;

use crate::fleet::Fleet;
use crate::render;
use crate::{kv, Context, EngineError};

#[derive(Debug, Clone, Serialize)]
pub struct AllocDrift {
    pub job: String,
    pub worker: String,
    /// clean | drifted | outdated | unreachable | error
    pub state: String,
    /// Files on the worker that differ from what was promoted.
    pub files: Vec<Drift>,
    /// The project has changed since the promote (a deploy would roll the
    /// allocation out). Reported apart from `files`: an outdated
    /// allocation can also have been tampered with.
    pub outdated: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub allocations: Vec<AllocDrift>,
}

impl DriftReport {
    /// Any allocation whose files could not be shown to match what was
    /// promoted. An allocation that is only outdated (the project moved
    /// on, the worker untouched) is not drift: a deploy applies it.
    pub fn any_drift(&self) -> bool {
        self.allocations
            .iter()
            .any(|a| a.state != "clean" && a.state != "outdated")
    }
}

pub async fn drift(
    ctx: &Context,
    jobs: Option<&BTreeSet<String>>,
) -> Result<DriftReport, EngineError> {
    if let Some(jobs) = jobs {
        for j in jobs {
            if !ctx.project.jobs.contains_key(j) {
                return Err(EngineError::usage(
                    format!("no job named `{j}`"),
                    "name jobs of this project with --jobs a,b",
                ));
            }
        }
    }
    let kv = kv::for_templates(ctx).await?;
    let certs = crate::certs::for_render(ctx, jobs, crate::certs::Mode::Existing).await?;
    let published = crate::channel::artifact::for_deploy(ctx, jobs).await?;
    let rendered = render::render_all(ctx, jobs, &kv, &certs, &BTreeSet::new(), &published)?;
    let (recorded, records) = render::recorded(ctx).await?;
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| jobs.is_none_or(|j| j.contains(&r.job)))
        .filter(|r| r.hash.is_some() && r.status != AllocStatus::Stopped)
        .collect();

    let mut out = Vec::new();
    let mut to_check = Vec::new();
    let mut outdated = Vec::new();
    for r in &records {
        let key = (r.job.clone(), r.worker.clone());
        match rendered.trees.get(&key) {
            Some(t) if Some(&t.hash) == r.hash.as_ref() => to_check.push(key),
            _ => match recorded.get(&key).and_then(|x| x.promoted_manifest.clone()) {
                Some(m) => outdated.push((key, m)),
                None => out.push(AllocDrift {
                    job: r.job.clone(),
                    worker: r.worker.clone(),
                    state: "outdated".into(),
                    files: Vec::new(),
                    outdated: true,
                    message: OUTDATED.into(),
                }),
            },
        }
    }

    // One connection per worker for both comparisons below.
    let workers = records
        .iter()
        .filter_map(|r| ctx.project.worker(&r.worker).cloned())
        .map(|w| (w.name.clone(), w))
        .collect::<std::collections::BTreeMap<_, _>>();
    let fleet = Fleet::lazy(ctx, workers.into_values().collect())?;

    // Outdated allocations: the project cannot say what the worker should
    // hold any more, but the store's manifest of the promoted tree can.
    if !outdated.is_empty() {
        for (key, found) in against_promoted(ctx, &fleet, &outdated).await {
            let mut d = AllocDrift {
                job: key.0,
                worker: key.1,
                state: "outdated".into(),
                files: Vec::new(),
                outdated: true,
                message: OUTDATED.into(),
            };
            match found {
                Found::Unreachable(e) => (d.state, d.message) = ("unreachable".into(), e),
                Found::Error(e) => {
                    d.message = format!("{OUTDATED}; its files could not be listed: {e}")
                }
                Found::Files(files) if files.is_empty() => {}
                Found::Files(files) => {
                    d.state = "drifted".into();
                    d.files = files;
                    d.message =
                        format!("the worker differs from what was promoted; also, {OUTDATED}");
                }
            }
            out.push(d);
        }
    }

    let wanted: BTreeSet<_> = to_check.into_iter().collect();
    let compared = on_workers(ctx, &fleet, &rendered.trees, &wanted, By::Content).await;
    fleet.close().await;
    for ((job, worker), found) in compared? {
        let mut d = AllocDrift {
            job,
            worker,
            state: "clean".into(),
            files: Vec::new(),
            outdated: false,
            message: String::new(),
        };
        match found {
            Found::Unreachable(e) => (d.state, d.message) = ("unreachable".into(), e),
            Found::Error(e) => (d.state, d.message) = ("error".into(), e),
            Found::Files(files) if files.is_empty() => {}
            Found::Files(files) => (d.state, d.files) = ("drifted".into(), files),
        }
        out.push(d);
    }
    out.sort_by(|a, b| (&a.job, &a.worker).cmp(&(&b.job, &b.worker)));
    Ok(DriftReport { allocations: out })
}

const OUTDATED: &str =
    "the project has changed since this allocation was promoted; `cutover deploy` applies it";

/// Compares each allocation's `current` with the manifest of its promoted
/// tree, by one listing per allocation (modes and content-derived mtimes):
/// cheap enough for `status`, and possible when the project has moved on.
pub(crate) async fn against_promoted(
    ctx: &Context,
    fleet: &Fleet,
    items: &[((String, String), Manifest)],
) -> Vec<((String, String), Found)> {
    let timeout = ctx.project.config.ssh.command_timeout;
    connect_all(fleet, items.iter().map(|((_, w), _)| w.as_str())).await;
    crate::join::join_all(items.iter().map(|((job, worker), manifest)| async move {
        let key = (job.clone(), worker.clone());
        let Some(w) = ctx.project.worker(worker) else {
            return (key, Found::Unreachable("not in workers.toml".into()));
        };
        let host = match fleet.get(worker) {
            Ok(h) => h,
            Err(e) => return (key, Found::Unreachable(e)),
        };
        let dir = format!("{}/current", w.job_dir(job));
        match host
            .compare_expected(&expected(manifest), &dir, timeout)
            .await
        {
            Ok(files) => (key, Found::Files(files)),
            Err(e) => (key, Found::Error(e.to_string())),
        }
    }))
    .await
}

/// What a worker's copy of a promoted tree looks like in a listing.
fn expected(manifest: &Manifest) -> Expected {
    let mut e = Expected::default();
    for (path, sig) in manifest {
        if cutover_model::tree::is_symlink(sig) {
            e.symlink(path.clone());
        } else if let Some(mtime) = cutover_model::tree::shipped_mtime_ns(&sig.hash) {
            e.file(path.clone(), sig.mode, mtime);
        }
    }
    e
}

/// What comparing one allocation with its worker found.
pub(crate) enum Found {
    Files(Vec<Drift>),
    Unreachable(String),
    Error(String),
}

/// How a worker's files are compared with the promoted tree.
#[derive(Debug, Clone, Copy)]
enum By {
    /// Every file's content, by rsync's checksums: reads everything on
    /// both sides (`cutover drift`).
    Content,
    /// rsync's quick check: type, mode, size and mtime to the nanosecond.
    /// Shipped files carry mtimes derived from their content hash, so any
    /// edit that sets a new mtime (every editor, `cp`, `sed -i`) shows;
    /// one that forges the old mtime does not (`deploy --verify`).
    Metadata,
}

/// Opens the connections to `workers` that are not open yet, all at once
/// (a worker that cannot be reached is remembered as such by the fleet).
async fn connect_all<'a>(fleet: &Fleet, workers: impl Iterator<Item = &'a str>) {
    let names: BTreeSet<&str> = workers.collect();
    crate::join::join_all(names.into_iter().map(|n| fleet.host(n))).await;
}

/// Compares each of `keys` on its worker with its rendered tree (which the
/// caller knows to be the promoted one), all workers at once.
async fn on_workers(
    ctx: &Context,
    fleet: &Fleet,
    trees: &std::collections::BTreeMap<(String, String), cutover_model::tree::Tree>,
    keys: &BTreeSet<(String, String)>,
    by: By,
) -> Result<Vec<((String, String), Found)>, EngineError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // Rendered files may hold secrets: a private scratch dir, like deploy's.
    let stage_root = crate::scratch::Scratch::create(&ctx.runtime_dir, "drift", &ctx.project.root)?;
    let staged = render::stage(ctx, stage_root.path(), trees, keys)?;
    connect_all(fleet, keys.iter().map(|(_, w)| w.as_str())).await;
    let timeout = ctx.project.config.ssh.command_timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (job, worker) in keys {
        let (Some(tree), Some(w)) = (
            trees.get(&(job.clone(), worker.clone())),
            ctx.project.worker(worker),
        ) else {
            continue;
        };
        let Some(stage) = staged.get(&(job.clone(), tree.hash.clone())).cloned() else {
            continue;
        };
        let dir = format!("{}/current", w.job_dir(job));
        let host = fleet.get(worker);
        let key = (job.clone(), worker.clone());
        tasks.spawn(async move {
            let compared = match host {
                Err(e) => return (key, Found::Unreachable(e)),
                Ok(h) if matches!(by, By::Content) => h.diff(stage.root(), &dir, timeout).await,
                Ok(h) => h.quick_diff(&stage, &dir, timeout).await,
            };
            let found = match compared {
                Ok(files) => Found::Files(files),
                Err(e) => Found::Error(e.to_string()),
            };
            (key, found)
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(r)) = tasks.join_next().await {
        out.push(r);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What `deploy --verify` found: the allocations of `keys` whose worker
/// differs from the promoted tree, by the quick check, with the paths that
/// do (one whose comparison fails counts as differing: it is rolled out
/// again rather than trusted), and the ones whose worker could not be
/// reached: never reported as verified.
pub(crate) struct Verified {
    pub differ: Vec<((String, String), Vec<String>)>,
    pub unreachable: Vec<((String, String), String)>,
}

pub(crate) async fn compare(
    ctx: &Context,
    fleet: &Fleet,
    trees: &std::collections::BTreeMap<(String, String), cutover_model::tree::Tree>,
    keys: &BTreeSet<(String, String)>,
) -> Result<Verified, EngineError> {
    let mut v = Verified {
        differ: Vec::new(),
        unreachable: Vec::new(),
    };
    for (key, found) in on_workers(ctx, fleet, trees, keys, By::Metadata).await? {
        match found {
            Found::Files(f) if f.is_empty() => {}
            Found::Unreachable(e) => v.unreachable.push((key, e)),
            Found::Files(f) => v
                .differ
                .push((key, f.into_iter().map(|d| d.path).collect())),
            Found::Error(e) => v.differ.push((key, vec![format!("(cannot compare: {e})")])),
        }
    }
    Ok(v)
}
