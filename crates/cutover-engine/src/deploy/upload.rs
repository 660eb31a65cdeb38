//! Upload: a new release dir per allocation, complete before any switch.

use super::*;
use cutover_transport::{Delta, Kept};

/// The uploads of one job, started in batch order; each batch takes its
/// members' results. Dropped (the job ended), it aborts the uploads still
/// running: batches that never run need no release dir.
pub(super) struct Uploads {
    pending: BTreeMap<String, oneshot::Receiver<Result<Uploaded, String>>>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Uploads {
    /// Waits for the uploads of `members`, in their order.
    pub(super) async fn take(&mut self, members: &[&AllocPlan]) -> Vec<Result<Uploaded, String>> {
        let handles: Vec<_> = members
            .iter()
            .map(|a| self.pending.remove(&a.worker))
            .collect();
        crate::join::join_all(handles.into_iter().map(|h| async move {
            match h {
                Some(h) => h
                    .await
                    .unwrap_or_else(|_| Err("the upload task ended early".to_string())),
                None => Err("internal error: not uploaded".to_string()),
            }
        }))
        .await
    }
}

/// Starts every upload of a job ahead of its rolling batches: each host
/// connects and uploads in batch order, so batch 1 can switch while later
/// hosts still upload. The running releases are untouched until their
/// batch switches.
///
/// One driver admits the uploads strictly in batch order. Batch 1 goes
/// alone, so that its hosts have the machine to themselves and the first
/// restart (or the first failure) comes as early as it can; after it, up to
/// two batches upload at once. After a signal it starts no more.
pub(super) fn start_uploads(run: &Arc<Run>, jp: &JobPlan) -> Uploads {
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
    let mut pending = BTreeMap::new();
    let mut senders = Vec::new();
    for a in order {
        let (tx, rx) = oneshot::channel();
        pending.insert(a.worker.clone(), rx);
        senders.push((a, tx));
    }
    let (run, job_name) = (run.clone(), jp.job.clone());
    let driver = tokio::spawn(async move {
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
    });
    Uploads {
        pending,
        driver: driver.abort_handle(),
    }
}

pub(super) type RolloutError = (Option<Switched>, String);

/// A release dir written completely on the worker; `current` untouched.
#[derive(Clone)]
pub(super) struct Uploaded {
    pub(super) release: String,
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
/// what differs, hard-linking the rest from that release. An allocation
/// going back to a tree the worker may have kept reuses that release dir
/// whole (checked the same way).
pub(super) async fn upload_one(run: &Run, job: &Job, a: &AllocPlan) -> Result<Uploaded, String> {
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
    if let Some(f) = run.fetches.get(&(job.name.clone(), a.worker.clone())) {
        return fetch_one(run, job, a, &host, &job_dir, &dest, &setup, f)
            .await
            .map(|()| Uploaded { release });
    }
    // Going back to a tree the worker may have kept: the delta upload
    // looks for that release first, in the same command, and reuses it.
    let returning = run
        .returning
        .contains(&(job.name.clone(), a.worker.clone()));
    let releases = format!("{job_dir}/releases");
    let suffix = format!("-{}", a.hash.get(..12).unwrap_or(&a.hash));
    let kept = returning.then_some(Kept {
        dir: &releases,
        suffix: &suffix,
    });
    let delta_step = base.map(|b| {
        let n = b.changed.len();
        format!("upload {n} changed file{}", if n == 1 { "" } else { "s" })
    });
    if base.is_some() || kept.is_some() {
        if let (Some(step), false) = (&delta_step, returning) {
            run.step(&job.name, &a.worker, step);
        }
        let changed = base.map_or(&[][..], |b| b.changed.as_slice());
        let done = host
            .push_delta(
                stage,
                &dest,
                base_dir.as_deref(),
                changed,
                Some(&setup),
                kept,
                run.timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        match done {
            Delta::Reused(kept) => {
                run.step(&job.name, &a.worker, &format!("reuse {kept}: no transfer"));
                return Ok(Uploaded { release });
            }
            Delta::Made => {
                if returning {
                    let step = delta_step.as_deref().unwrap_or(full_upload(&host));
                    run.step(&job.name, &a.worker, step);
                }
                return Ok(Uploaded { release });
            }
            Delta::Differs => {}
        }
    }
    match base {
        Some(b) => {
            let step = format!(
                "{}: the worker's {} is not as shipped",
                full_upload(&host),
                b.release
            );
            run.step(&job.name, &a.worker, &step);
        }
        None => run.step(&job.name, &a.worker, full_upload(&host)),
    }
    host.push(stage, &dest, base_dir.as_deref(), Some(&setup), run.timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Uploaded { release })
}

/// `[store] worker_fetch`: the worker downloads the artifact from the
/// store, checks its sha256 and unpacks it; the new release dir is made
/// from it by hard links plus what differs for the allocation (rendered
/// templates, certificates), sent from here, and checked file by file
/// like any delta upload. A worker that cannot reach the store fails
/// with what curl said.
#[allow(clippy::too_many_arguments)]
async fn fetch_one(
    run: &Run,
    job: &Job,
    a: &AllocPlan,
    host: &cutover_transport::Host,
    job_dir: &str,
    dest: &str,
    setup: &cutover_transport::Command,
    f: &super::run::FetchPlan,
) -> Result<(), String> {
    let out = host.run(setup).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("preparing {job_dir}: {}", out.stderr.trim()));
    }
    run.step(
        &job.name,
        &a.worker,
        &format!("fetch {} from the store", f.name),
    );
    let fetch = remote::fetch_artifact(job_dir, &f.sha256, f.size, run.timeout);
    // A curl config line: the URL never appears on a command line.
    let config = format!("url = \"{}\"\n", f.url.replace(['\\', '"', '\n'], ""));
    let out = host
        .run_with_input(&fetch, config.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(out
            .stderr
            .trim()
            .trim_start_matches("cutover: ")
            .to_string());
    }
    // The path the worker printed is used only if it is the one the
    // script makes: under the job dir, a `.fetch.` dir, plain characters.
    let base = out.stdout.trim().to_string();
    let plain = base
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !plain || !base.starts_with(&format!("{job_dir}/.fetch.")) || base.contains("..") {
        return Err(format!(
            "the worker answered an unexpected fetch dir: {base:?}"
        ));
    }
    let stage = run
        .staged
        .get(&(job.name.clone(), a.hash.clone()))
        .ok_or_else(|| "internal error: tree not staged".to_string())?;
    let n = f.changed.len();
    run.step(
        &job.name,
        &a.worker,
        &format!(
            "upload {n} file{} of its own",
            if n == 1 { "" } else { "s" }
        ),
    );
    let done = host
        .push_delta(
            stage,
            dest,
            Some(&base),
            &f.changed,
            None,
            None,
            run.timeout,
        )
        .await
        .map(|d| d != Delta::Differs)
        .map_err(|e| e.to_string());
    let parent = base.trim_end_matches("/t").to_string();
    let mut rm = cutover_transport::Command::new(["rm", "-rf", "--", parent.as_str()]);
    rm.timeout = run.timeout;
    let _ = host.run(&rm).await;
    if done? {
        return Ok(());
    }
    run.step(
        &job.name,
        &a.worker,
        &format!("{}: the fetched tree did not check out", full_upload(host)),
    );
    host.push(stage, dest, None, None, run.timeout)
        .await
        .map_err(|e| e.to_string())
}

fn full_upload(host: &cutover_transport::Host) -> &'static str {
    if host.is_local() {
        "upload by local copy"
    } else {
        "upload with rsync"
    }
}
