//! `cutover state rebuild`: the store's allocation records, read back
//! from what each worker carries (`<root>/jobs/<job>/promoted.json`,
//! written at promote). A lost store is rebuilt from the fleet, never
//! redeployed from scratch.

use std::collections::{BTreeMap, BTreeSet};

use cutover_model::Worker;
use cutover_state::{AllocStatus, AllocationRecord};
use serde::{Deserialize, Serialize};

use crate::fleet::Fleet;
use crate::remote;
use crate::{Context, EngineError};

/// What a worker carries for one allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Carried {
    pub release: String,
    pub version: String,
    pub hash: String,
    pub seq: i64,
    pub promoted_at: String,
}

/// One allocation record read back from a worker.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuilt {
    pub job: String,
    pub worker: String,
    pub release: String,
    pub version: String,
    /// `current` points at another release than the promoted one (a run
    /// that died between the switch and the promotion).
    pub current_differs: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub rebuilt: Vec<Rebuilt>,
    /// The records read back (written to the store unless a dry run).
    #[serde(skip)]
    pub records: Vec<AllocationRecord>,
    /// Workers that could not be read, with why.
    pub unreachable: Vec<(String, String)>,
}

/// `cutover state rebuild`: every worker of the project is read; the
/// records the store lacks are written (those it has are kept: they know
/// more, a failure or a stop, than a worker's file).
pub async fn rebuild_store(ctx: &Context) -> Result<RebuildReport, EngineError> {
    rebuild(ctx, None, true, true, None).await
}

/// Reads every worker of the project (or only `only`) and writes an
/// allocation record for each allocation it carries. With
/// `keep_existing`, records the store already has are left as they are;
/// with `write` false (a dry run), nothing is written: the records are
/// only returned.
pub(crate) async fn rebuild(
    ctx: &Context,
    only: Option<&BTreeSet<String>>,
    keep_existing: bool,
    write: bool,
    fleet: Option<&Fleet>,
) -> Result<RebuildReport, EngineError> {
    let workers: Vec<Worker> = ctx
        .project
        .workers
        .iter()
        .filter(|w| only.is_none_or(|o| o.contains(&w.name)))
        .cloned()
        .collect();
    let mut report = RebuildReport::default();
    if workers.is_empty() {
        return Ok(report);
    }
    let existing: BTreeSet<(String, String)> = ctx
        .store
        .allocations()
        .await?
        .into_iter()
        .map(|r| (r.job, r.worker))
        .collect();
    // The caller's connections when it has them (a deploy goes on to use
    // them), else this command's own.
    let own = match fleet {
        Some(_) => None,
        None => Some(Fleet::lazy(ctx, workers.clone())?),
    };
    let Some(fleet) = fleet.or(own.as_ref()) else {
        return Ok(report);
    };
    let timeout = ctx.project.config.ssh.command_timeout;
    let reads = crate::join::join_all(workers.iter().map(|w| async {
        let host = fleet.host(&w.name).await?;
        let out = host
            .run(&remote::read_promoted(&w.root, timeout))
            .await
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.tail(3))
        }
    }))
    .await;
    let mut max_seq = 0;
    for (w, read) in workers.iter().zip(reads) {
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                report.unreachable.push((w.name.clone(), e));
                continue;
            }
        };
        for (job, current, carried) in parse(&text) {
            if !ctx.project.jobs.contains_key(&job)
                || (keep_existing && existing.contains(&(job.clone(), w.name.clone())))
                || current.is_empty()
            {
                // A job dir whose `current` is gone runs nothing.
                continue;
            }
            // `current` points elsewhere: a run died between its switch and
            // its promotion. Recorded as failed, so the next deploy rolls
            // the allocation out again rather than trusting either release.
            let differs = current != carried.release;
            max_seq = max_seq.max(carried.seq);
            let rec = AllocationRecord {
                job: job.clone(),
                worker: w.name.clone(),
                status: if differs {
                    AllocStatus::Failed
                } else {
                    AllocStatus::Promoted
                },
                hash: Some(carried.hash.clone()),
                version: Some(carried.version.clone()),
                release_id: Some(carried.release.clone()),
                previous_release_id: None,
                health: "unknown".into(),
                message: "rebuilt from the worker".into(),
                updated_at: cutover_state::now_rfc3339(),
            };
            if write {
                ctx.store.put_allocation(&rec).await?;
                ctx.store
                    .put_known_worker(&w.name, &serde_json::to_string(w).unwrap_or_default())
                    .await?;
            }
            report.records.push(rec);
            report.rebuilt.push(Rebuilt {
                job,
                worker: w.name.clone(),
                current_differs: differs,
                release: carried.release,
                version: carried.version,
            });
        }
    }
    if let Some(own) = own {
        own.close().await;
    }
    if write && max_seq > 0 {
        let summary = serde_json::json!({ "rebuilt": report.rebuilt.len() }).to_string();
        ctx.store.record_rebuild(max_seq, &summary).await?;
    }
    Ok(report)
}

/// Lines `JOB<TAB>CURRENT<TAB>JSON` of [`remote::read_promoted`]; a line
/// that does not parse is skipped (a half-written file is never read: it
/// is renamed into place).
fn parse(text: &str) -> Vec<(String, String, Carried)> {
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(job), Some(current), Some(json)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(carried) = serde_json::from_str::<Carried>(json) else {
            continue;
        };
        if seen.insert(job.to_string(), ()).is_none() {
            out.push((job.to_string(), current.to_string(), carried));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_carried_lines_and_skips_garbage() {
        let text = "api\tr000002-x-abc\t{\"release\":\"r000002-x-abc\",\"version\":\"1\",\"hash\":\"abc\",\"seq\":2,\"promoted_at\":\"t\"}\nweb\t\t{not json\n";
        let got = parse(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "api");
        assert_eq!(got[0].2.seq, 2);
    }
}
