//! `cutover channel status`: each published job's channels, versions,
//! seq, expiry and signature validity, and what each worker runs against
//! the channel it should run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::relstore::{ReleaseStore, Store};
use crate::{Context, EngineError};

/// An index this close to expiry is warned about.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, Serialize)]
pub struct WorkerChannel {
    pub worker: String,
    /// stable | canary
    pub channel: String,
    /// What the channel points at for this worker.
    pub wants: Option<String>,
    /// What the state store says it runs.
    pub runs: Option<String>,
    pub status: String,
    /// `runs` differs from `wants`.
    pub drift: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobChannels {
    pub job: String,
    /// The index verified: signature, threshold, job, expiry, seq.
    pub valid: bool,
    /// Why it did not, if it did not.
    pub refused: Option<String>,
    pub seq: Option<u64>,
    pub expires: Option<String>,
    /// Within 7 days of expiry (or expired).
    pub expiry_warning: Option<String>,
    pub channels: BTreeMap<String, String>,
    pub versions: Vec<cutover_index::Version>,
    /// Key ids of the trusted keys whose signatures verify.
    pub signed_by: Vec<String>,
    pub workers: Vec<WorkerChannel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    pub store: String,
    pub jobs: Vec<JobChannels>,
}

impl ChannelStatus {
    pub fn any_refused(&self) -> bool {
        self.jobs.iter().any(|j| !j.valid)
    }
}

/// A warning when `expires` is within 7 days of `now`.
pub fn expiry_warning(job: &str, expires: &str, now: jiff::Timestamp) -> Option<String> {
    let t: jiff::Timestamp = expires.parse().ok()?;
    let left = t.duration_since(now);
    if left <= jiff::SignedDuration::ZERO {
        return Some(format!(
            "expired at {expires}: check it, then `cutover channel resign {job} --allow-expired`"
        ));
    }
    let warn = jiff::SignedDuration::try_from(EXPIRY_WARNING).ok()?;
    (left < warn).then(|| {
        format!(
            "expires in {}h ({expires}): renew with `cutover channel resign {job}`",
            left.as_secs() / 3600
        )
    })
}

/// The channels of `job` (`None`: every job with an index), read from
/// `index_url` or `[store] url`.
pub async fn status(
    ctx: &Context,
    job: Option<&str>,
    index_url: Option<&str>,
) -> Result<ChannelStatus, EngineError> {
    if let Some(j) = job {
        if !ctx.project.jobs.contains_key(j) {
            let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
            return Err(EngineError::usage(
                format!("no job named `{j}`"),
                format!("jobs: {}", known.join(", ")),
            ));
        }
    }
    let store = match index_url {
        Some(url) => Store::open(url, ctx.interrupt.clone(), &ctx.env)?,
        None => Store::of_project(ctx)?,
    };
    let trust = crate::keys::trust(ctx)?;
    let records = ctx.store.allocations().await?;
    let now = jiff::Timestamp::now();
    let mut jobs = Vec::new();
    for j in ctx.project.jobs.values() {
        if job.is_some_and(|n| n != j.name) {
            continue;
        }
        let Some(fetched) = store.read_index(&j.name).await? else {
            // Missing where it must be: seen before, or declared by
            // [build] / [canary]. Every deploy of it refuses: say so.
            let seen = super::index::seen(ctx, &j.name).await?;
            let declared = j.manifest.build.is_some() || j.manifest.canary.is_some();
            if seen.is_some() || declared {
                jobs.push(JobChannels {
                    job: j.name.clone(),
                    valid: false,
                    refused: Some(match seen {
                        Some(seq) => format!("the index is missing, but this project has seen seq {seq} of it"),
                        None => "the index is missing, and job.toml's [build] or [canary] says the job is published".to_string(),
                    }),
                    seq: None,
                    expires: None,
                    expiry_warning: None,
                    channels: BTreeMap::new(),
                    versions: Vec::new(),
                    signed_by: Vec::new(),
                    workers: Vec::new(),
                });
                continue;
            }
            if job.is_some() {
                return Err(EngineError::usage(
                    format!(
                        "{} is not published: {} has no index of it",
                        j.name,
                        store.url()
                    ),
                    format!("publish it with `cutover publish {}`", j.name),
                ));
            }
            continue;
        };
        let seen = super::index::seen(ctx, &j.name).await?;
        let verified = cutover_index::verify(
            &fetched.bytes,
            &cutover_index::Expect {
                job: &j.name,
                trusted: &trust.verifying,
                threshold: trust.threshold as usize,
                seen_seq: seen,
                now,
                allow_expired: false,
            },
        );
        // Shown even when refused, marked so: what it claims, not what is,
        // with anything that could drive a terminal escaped.
        let (index, refused) = match verified {
            Ok(i) => (Some(i), None),
            Err(e) => (
                serde_json::from_slice::<cutover_index::Index>(&fetched.bytes)
                    .ok()
                    .map(printable),
                Some(e.to_string()),
            ),
        };
        let signed_by = index
            .as_ref()
            .map(|i| {
                cutover_index::signers(i, &trust.verifying)
                    .iter()
                    .map(cutover_index::keyid)
                    .collect()
            })
            .unwrap_or_default();
        let signed = index.map(|i| i.signed);
        let canary_workers: Vec<String> = super::artifact::canary_workers(ctx, j)
            .into_iter()
            .map(|w| w.name.clone())
            .collect();
        let mut workers = Vec::new();
        for w in ctx.project.workers_for(j) {
            let channels = signed.as_ref().map(|s| &s.channels);
            let canary = channels.and_then(|c| c.get("canary"));
            let on_canary = canary.is_some() && canary_workers.contains(&w.name);
            let channel = if on_canary { "canary" } else { "stable" };
            let wants = channels.and_then(|c| c.get(channel)).cloned();
            let rec = records
                .iter()
                .find(|r| r.job == j.name && r.worker == w.name);
            let runs = rec.and_then(|r| r.version.clone());
            workers.push(WorkerChannel {
                worker: w.name.clone(),
                channel: channel.to_string(),
                drift: wants.is_some() && runs != wants,
                wants,
                runs,
                status: rec.map_or("not deployed".into(), |r| r.status.as_str().to_string()),
            });
        }
        jobs.push(JobChannels {
            job: j.name.clone(),
            valid: refused.is_none(),
            refused,
            seq: signed.as_ref().map(|s| s.seq),
            expiry_warning: signed
                .as_ref()
                .and_then(|s| expiry_warning(&j.name, &s.expires, now)),
            expires: signed.as_ref().map(|s| s.expires.clone()),
            channels: signed
                .as_ref()
                .map(|s| s.channels.clone())
                .unwrap_or_default(),
            versions: signed.map(|s| s.versions).unwrap_or_default(),
            signed_by,
            workers,
        });
    }
    Ok(ChannelStatus {
        store: store.url().to_string(),
        jobs,
    })
}

/// An unverified index with every text field escaped for a terminal.
fn printable(mut index: cutover_index::Index) -> cutover_index::Index {
    let clean = |s: &mut String| {
        if s.chars().any(char::is_control) {
            *s = s.escape_default().to_string();
        }
    };
    let signed = &mut index.signed;
    clean(&mut signed.job);
    clean(&mut signed.expires);
    signed.channels = std::mem::take(&mut signed.channels)
        .into_iter()
        .map(|(mut k, mut v)| {
            clean(&mut k);
            clean(&mut v);
            (k, v)
        })
        .collect();
    for v in &mut signed.versions {
        for f in [
            &mut v.version,
            &mut v.sha256,
            &mut v.published_at,
            &mut v.actor,
            &mut v.reason,
            &mut v.ticket,
        ] {
            clean(f);
        }
    }
    index
}
