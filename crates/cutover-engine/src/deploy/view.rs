//! The fleet view on each worker, refreshed at the end of a deploy:
//! `<root>/worker.json` and `<root>/jobs.json` (see `cutover_model::view`),
//! written atomically, only where they changed since they were last
//! written (the store keeps a hash of each worker's pair).

use super::*;

/// Writes the fleet view to every worker that runs a job and whose view
/// changed. A worker that cannot be written is warned about: the next
/// deploy tries again (its hash is not recorded).
pub(super) async fn refresh_views(run: &Run) {
    let view = cutover_model::view::FleetView::of(&run.project);
    let jobs_json = view.jobs_json();
    // Workers that run a job, and those that ran one (a job moved away
    // from them: their view must say so). Disabled workers are left alone.
    let targets: Vec<&Worker> = run
        .project
        .workers
        .iter()
        .filter(|w| {
            !w.disabled
                && (view.workers.iter().any(|v| v.name == w.name)
                    || run.records.keys().any(|(_, rw)| rw == &w.name))
        })
        .collect();
    crate::join::join_all(targets.into_iter().map(|w| {
        let jobs_json = &jobs_json;
        async move {
            let worker_json = cutover_model::view::worker_json(w);
            let key = format!("fleet_view/{}", w.name);
            let hash = blake3::hash(format!("{}\0{worker_json}\0{jobs_json}", w.root).as_bytes())
                .to_hex()
                .to_string();
            if run.store.meta_get(&key).await.ok().flatten().as_deref() == Some(hash.as_str()) {
                return;
            }
            let written = async {
                let host = run.fleet.host(&w.name).await?;
                let input = format!("{worker_json}{jobs_json}");
                let cmd = remote::write_views(&w.root, worker_json.len(), run.timeout);
                let out = host
                    .run_with_input(&cmd, input.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(out.tail(3));
                }
                run.store
                    .meta_put(&key, &hash)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = written {
                run.reporter.event(&Event::Message {
                    text: format!(
                        "warning: {}: cannot write worker.json and jobs.json ({e}); the next deploy tries again",
                        w.name
                    ),
                });
            }
        }
    }))
    .await;
}
