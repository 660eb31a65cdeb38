//! Loading and updating a job's release index in the store. Every load
//! verifies against the project's trusted keys and the highest seq this
//! project has seen (kept in the state store); every update is a
//! compare-and-swap, retried on the index another publisher wrote.

use cutover_index::{self as index, Expect, Index, Signed};
use ed25519_dalek::SigningKey;

use crate::keys::Trust;
use crate::relstore::{ReleaseStore, Store, Swap, Tag};
use crate::{Context, EngineError};

/// How many times an update reads again after losing a race.
const SWAP_ATTEMPTS: u32 = 50;

/// The highest index seq seen of a job (kept in the state store).
fn seen_key(job: &str) -> String {
    format!("index_seq/{job}")
}

pub(crate) async fn seen(ctx: &Context, job: &str) -> Result<Option<u64>, EngineError> {
    Ok(ctx
        .store
        .meta_get(&seen_key(job))
        .await?
        .and_then(|s| s.parse().ok()))
}

/// Records `seq` as seen, unless a higher one was (atomically: two
/// commands at once never lower it).
async fn note_seen(ctx: &Context, job: &str, seq: u64) -> Result<(), EngineError> {
    ctx.store.meta_raise(&seen_key(job), seq).await?;
    Ok(())
}

fn refused(store: &Store, job: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Refused(format!("{}/{job}/releases.json: {e}", store.url()))
}

/// Adds to an expiry refusal what to do about it.
pub fn explain_expired(job: &str) -> impl FnOnce(EngineError) -> EngineError + '_ {
    move |e| {
        match e {
        EngineError::Refused(m) if m.contains("expired at") => EngineError::Refused(format!(
            "{m}; an expired index may be an old one replayed: check it (`cutover channel status {job}`), then renew it with `cutover channel resign {job} --allow-expired`"
        )),
        e => e,
    }
    }
}

/// A verified index and the tag it was read with.
pub struct Loaded {
    pub index: Index,
    pub tag: Tag,
}

/// Reads and verifies a job's index. `None`: the job was never published
/// (an index this project has seen and the store lost is refused).
/// `allow_expired` is for an update that re-signs it.
pub async fn load(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    job: &str,
    allow_expired: bool,
) -> Result<Option<Loaded>, EngineError> {
    load_with(ctx, store, trust, job, allow_expired, false).await
}

/// [`load`], and with `allow_rollback` an index older than the highest
/// seen is accepted too (a store restored from a backup on purpose).
async fn load_with(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    job: &str,
    allow_expired: bool,
    allow_rollback: bool,
) -> Result<Option<Loaded>, EngineError> {
    let fetched = store.read_index(job).await?;
    check(
        ctx,
        store,
        trust,
        job,
        fetched,
        allow_expired,
        allow_rollback,
    )
    .await
}

/// Verifies an index already read from `store` (`None`: there was none),
/// as [`load`] does, and remembers its seq.
pub async fn check(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    job: &str,
    fetched: Option<crate::relstore::Fetched>,
    allow_expired: bool,
    allow_rollback: bool,
) -> Result<Option<Loaded>, EngineError> {
    let seen_seq = seen(ctx, job).await?.filter(|_| !allow_rollback);
    let Some(fetched) = fetched else {
        if let Some(seq) = seen_seq {
            // Deleted (or a store that was never the one published to):
            // starting over would drop versions and read as a rollback.
            return Err(refused(
                store,
                job,
                format!("it is missing, but this project has seen seq {seq} of it; if the store lost it, restore it from a backup (an older one then needs `cutover channel resign {job} --allow-rollback`)"),
            ));
        }
        return Ok(None);
    };
    let expect = Expect {
        job,
        trusted: &trust.verifying,
        threshold: trust.threshold as usize,
        seen_seq,
        now: jiff::Timestamp::now(),
        allow_expired,
    };
    let index = index::verify(&fetched.bytes, &expect).map_err(|e| {
        let hint = match &e {
            index::Refused::Rollback { .. } => format!(
                "; a store restored from a backup on purpose is accepted with `cutover channel resign {job} --allow-rollback`"
            ),
            index::Refused::Threshold { .. } => format!(
                "; it was changed after it was signed, or signed by keys this project does not trust: find out who wrote it (`cutover channel status {job}`, `cutover keys list`)"
            ),
            _ => String::new(),
        };
        refused(store, job, format!("{e}{hint}"))
    })?;
    note_seen(ctx, job, index.signed.seq).await?;
    Ok(Some(Loaded {
        index,
        tag: fetched.tag,
    }))
}

/// Checks that `keys` can write an index readers accept: every key is
/// trusted, and there are as many distinct ones as the threshold.
pub fn check_signers(trust: &Trust, keys: &[SigningKey]) -> Result<(), EngineError> {
    for k in keys {
        if !trust.verifying.contains(&k.verifying_key()) {
            return Err(EngineError::usage(
                format!(
                    "signing key {} is not trusted by this project",
                    crate::keys::keyid(&k.verifying_key())
                ),
                "add its .pub file to [trust] public_keys (see `cutover keys list`)",
            ));
        }
    }
    let distinct: std::collections::BTreeSet<[u8; 32]> =
        keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
    if distinct.len() < trust.threshold as usize {
        return Err(EngineError::usage(
            format!(
                "{} distinct signing key(s) given; the project's threshold is {}",
                distinct.len(),
                trust.threshold
            ),
            "give one --key per signer, as many as [trust] threshold",
        ));
    }
    Ok(())
}

/// Updates a job's index: reads and verifies it, lets `change` edit what
/// is signed, then writes it
/// with seq + 1 and a new expiry if nobody wrote in between, else reads
/// again and retries. The written index is read back and verified.
/// `change` runs once per attempt, on the index as read then.
pub async fn update(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    keys: &[SigningKey],
    job: &str,
    change: impl FnMut(&mut Signed) -> Result<(), EngineError>,
) -> Result<Index, EngineError> {
    update_with(ctx, store, trust, keys, job, Allow::default(), change).await
}

/// What an update accepts of the index it reads, beyond a valid one: only
/// `channel resign`, on the operator's word.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// An expired index (it is renewed).
    pub expired: bool,
    /// An index older than the highest seq seen (re-signed above it).
    pub rollback: bool,
}

/// [`update`], accepting what `allow` says.
pub async fn update_with(
    ctx: &Context,
    store: &Store,
    trust: &Trust,
    keys: &[SigningKey],
    job: &str,
    allow: Allow,
    mut change: impl FnMut(&mut Signed) -> Result<(), EngineError>,
) -> Result<Index, EngineError> {
    let allow_rollback = allow.rollback;
    check_signers(trust, keys)?;
    let lifetime = i64::try_from(trust.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    for attempt in 0..SWAP_ATTEMPTS {
        if attempt > 0 {
            if ctx.interrupt.is_set() {
                return Err(EngineError::Failed(format!(
                    "interrupted while updating {}/{job}/releases.json; it was not written",
                    store.url()
                )));
            }
            // Someone else wrote: back off a little, differently each time.
            let ms = 20 + u64::from(attempt) * 10 + u64::from(std::process::id() % 17);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let loaded = load_with(ctx, store, trust, job, allow.expired, allow_rollback)
            .await
            .map_err(explain_expired(job))?;
        let (mut signed, tag) = match loaded {
            Some(l) => (l.index.signed, Some(l.tag)),
            None => (
                Signed {
                    schema_version: index::SCHEMA_VERSION,
                    job: job.to_string(),
                    seq: 0,
                    expires: String::new(),
                    channels: Default::default(),
                    versions: Vec::new(),
                },
                None,
            ),
        };
        change(&mut signed)?;
        let now = jiff::Timestamp::now();
        if allow_rollback {
            signed.seq = signed.seq.max(seen(ctx, job).await?.unwrap_or(0));
        }
        signed.seq += 1;
        signed.expires = jiff::Timestamp::from_second(now.as_second().saturating_add(lifetime))
            .map_err(|e| {
                EngineError::usage(
                    format!("[trust] index_lifetime: {e}"),
                    "use a lifetime of days, such as \"30d\"",
                )
            })?
            .to_string();
        let seq = signed.seq;
        let new = index::sign(signed, keys);
        let bytes =
            serde_json::to_vec_pretty(&new).map_err(|e| EngineError::Internal(e.to_string()))?;
        if bytes.len() > index::MAX_BYTES {
            return Err(EngineError::usage(
                format!(
                    "the index of {job} would be {} bytes, over the 1 MiB every reader refuses",
                    bytes.len()
                ),
                "an index keeps every published version; start a new job name for a new series",
            ));
        }
        match store.write_index(job, &bytes, tag.as_ref()).await? {
            Swap::Written => {}
            Swap::Conflict => {
                // A retried request (a 5xx after the write landed) reports
                // our own write as a conflict: it is one only if what is
                // there now is not what was just signed.
                let ours = match store.read_index(job).await? {
                    Some(f) => serde_json::from_slice::<Index>(&f.bytes)
                        .is_ok_and(|there| there.signed == new.signed),
                    None => false,
                };
                if !ours {
                    continue;
                }
            }
        }
        // Read back what others will read.
        let back = load(ctx, store, trust, job, false)
            .await?
            .ok_or_else(|| refused(store, job, "it is missing right after it was written"))?;
        if back.index.signed.seq < seq {
            return Err(refused(
                store,
                job,
                format!(
                    "read back seq {} after writing {seq}",
                    back.index.signed.seq
                ),
            ));
        }
        return Ok(new);
    }
    Err(EngineError::Failed(format!(
        "{}/{job}/releases.json changed under each of {SWAP_ATTEMPTS} attempts to update it; try again",
        store.url()
    )))
}
