//! The fleet view on each worker, `<root>/worker.json` and
//! `<root>/jobs.json` (see `cutover_model::view`), written atomically, only
//! where they changed since they were last written (the store keeps a hash
//! of each worker's pair): at the end of a deploy, or, when the deploy
//! starts no new allocation, by the activation of an allocation on the
//! worker once it is healthy ([`Carried`]).

use super::*;

/// The store key of a worker's view hash, before its name.
const VIEW_KEY: &str = "fleet_view/";

/// One worker's view to write: its worker.json, and the store key and
/// hash that say whether it is already there.
struct Stale<'a> {
    worker: &'a Worker,
    worker_json: String,
    key: String,
    hash: String,
}

/// The workers whose view changed since it was last written: those that
/// run a job, and those that ran one (`ran`: a job moved away from them,
/// their view must say so). Disabled workers are left alone. Reads the
/// store only: deciding costs no connection.
async fn stale<'a>(
    ctx: &'a Context,
    jobs_json: &str,
    view: &cutover_model::view::FleetView,
    ran: &BTreeSet<String>,
) -> Vec<Stale<'a>> {
    let written: BTreeMap<String, String> = ctx
        .store
        .meta_prefixed(VIEW_KEY)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for w in ctx.project.workers.iter().filter(|w| {
        !w.disabled && (view.workers.iter().any(|v| v.name == w.name) || ran.contains(&w.name))
    }) {
        let worker_json = cutover_model::view::worker_json(w);
        let key = format!("{VIEW_KEY}{}", w.name);
        let hash = blake3::hash(format!("{}\0{worker_json}\0{jobs_json}", w.root).as_bytes())
            .to_hex()
            .to_string();
        if written.get(&key) != Some(&hash) {
            out.push(Stale {
                worker: w,
                worker_json,
                key,
                hash,
            });
        }
    }
    out
}

/// The views the activation commands write. Only when the deploy starts
/// no new allocation: then every worker a view lists runs its job already,
/// and a view that changed (a new version, a label) can be written as soon
/// as an allocation on the worker is healthy, in its activation command,
/// instead of by a command of its own at the end. When a new allocation
/// would be listed before it runs, views wait for the end of the deploy.
#[derive(Default)]
pub(super) struct Carried {
    jobs_json: String,
    /// Worker name -> its view, while no activation has taken it.
    workers: std::sync::Mutex<BTreeMap<String, View>>,
}

/// One worker's view to write: its worker.json, and the store key and
/// hash that say it is there.
pub(super) struct View {
    pub(super) worker_json: String,
    key: String,
    hash: String,
}

impl Carried {
    pub(super) async fn of(
        ctx: &Context,
        plan: &Plan,
        versions: &BTreeMap<String, String>,
    ) -> Carried {
        let starts = plan
            .jobs()
            .flat_map(|j| &j.allocations)
            .any(|a| a.action != Action::Skip && a.current_version.is_none());
        if starts {
            return Carried::default();
        }
        let view = cutover_model::view::FleetView::of(&ctx.project).with_versions(versions);
        let jobs_json = view.jobs_json();
        let workers = stale(ctx, &jobs_json, &view, &BTreeSet::new())
            .await
            .into_iter()
            .filter(|t| remote::views_fit(&t.worker_json, &jobs_json))
            .map(|t| {
                let view = View {
                    worker_json: t.worker_json,
                    key: t.key,
                    hash: t.hash,
                };
                (t.worker.name.clone(), view)
            })
            .collect();
        Carried {
            jobs_json,
            workers: std::sync::Mutex::new(workers),
        }
    }

    /// The view an activation on `worker` writes: the first to ask takes
    /// it, so that two never write the same files at once.
    pub(super) fn take(&self, worker: &str) -> Option<View> {
        self.workers.lock().ok()?.remove(worker)
    }

    pub(super) fn jobs_json(&self) -> &str {
        &self.jobs_json
    }

    /// Records a view an activation wrote: the end of the deploy leaves it.
    /// If that fails, it is written again then.
    pub(super) async fn written(store: &Store, view: &View) {
        let _ = store.meta_put(&view.key, &view.hash).await;
    }
}

/// Opens the connections [`refresh_views`] will use to the workers not in
/// `skip` (those the waves do not connect to), so that the view is
/// written without a handshake after the rollout. Errors wait for the
/// write, which reports them.
pub(super) async fn connect_stale(
    ctx: &Context,
    fleet: &Fleet,
    ran: &BTreeSet<String>,
    versions: &BTreeMap<String, String>,
    skip: &BTreeSet<&str>,
) {
    let view = cutover_model::view::FleetView::of(&ctx.project).with_versions(versions);
    let targets = stale(ctx, &view.jobs_json(), &view, ran).await;
    crate::join::join_all(
        targets
            .iter()
            .filter(|t| !skip.contains(t.worker.name.as_str()))
            .map(|t| fleet.host(&t.worker.name)),
    )
    .await;
}

/// Writes the fleet view to every worker whose view changed. A worker that
/// cannot be written is warned about: the next deploy tries again (its
/// hash is not recorded). Returns how many were written.
pub(super) async fn refresh_views(
    ctx: &Context,
    fleet: &Fleet,
    ran: &BTreeSet<String>,
    versions: &BTreeMap<String, String>,
) -> usize {
    let view = cutover_model::view::FleetView::of(&ctx.project).with_versions(versions);
    let jobs_json = view.jobs_json();
    let timeout = ctx.project.config.ssh.command_timeout;
    let targets = stale(ctx, &jobs_json, &view, ran).await;
    let written = crate::join::join_all(targets.into_iter().map(|t| {
        let jobs_json = &jobs_json;
        async move {
            let Stale {
                worker: w,
                worker_json,
                key,
                hash,
            } = t;
            let written = async {
                let host = fleet.host(&w.name).await?;
                let (cmd, input) = remote::write_views(&w.root, &worker_json, jobs_json, timeout);
                let out = match input {
                    Some(input) => host.run_with_input(&cmd, input.as_bytes()).await,
                    None => host.run(&cmd).await,
                }
                .map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(out.tail(3));
                }
                ctx.store
                    .meta_put(&key, &hash)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = &written {
                ctx.reporter.event(&Event::Message {
                    text: format!(
                        "warning: {}: cannot write worker.json and jobs.json ({e}); the next deploy tries again",
                        w.name
                    ),
                });
            }
            written.is_ok()
        }
    }))
    .await;
    written.into_iter().filter(|ok| *ok).count()
}

/// Whether any worker's view changed (no connection is made).
pub(super) async fn any_stale(
    ctx: &Context,
    ran: &BTreeSet<String>,
    versions: &BTreeMap<String, String>,
) -> bool {
    let view = cutover_model::view::FleetView::of(&ctx.project).with_versions(versions);
    !stale(ctx, &view.jobs_json(), &view, ran).await.is_empty()
}
