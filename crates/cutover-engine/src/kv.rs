//! The KV store: per-job keys that templates read as `kv.KEY`. Secrets are
//! encrypted with the project key before they reach the store and are only
//! decrypted in memory, to render or when the operator asks with `--reveal`.

use std::collections::BTreeMap;

use cutover_state::{KvRecord, Secret, SecretKey};
use serde::Serialize;

use crate::{Context, EngineError};

pub const ROLLOUT_ORDER: &str = "rollout_order";

fn key(ctx: &Context) -> Result<SecretKey, EngineError> {
    Ok(SecretKey::load_or_create(
        &ctx.workspace.join("secret.key"),
    )?)
}

fn check_job(ctx: &Context, job: &str) -> Result<(), EngineError> {
    if ctx.project.jobs.contains_key(job) {
        return Ok(());
    }
    let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
    Err(EngineError::usage(
        format!("no job named `{job}`"),
        format!("jobs in this project: {}", known.join(", ")),
    ))
}

fn decrypt(key: &SecretKey, r: &KvRecord) -> Result<String, EngineError> {
    key.decrypt(&r.value)
        .map(|s| s.expose().to_string())
        .map_err(|reason| {
            cutover_state::StateError::Secret {
                job: r.job.clone(),
                key: r.key.clone(),
                reason,
            }
            .into()
        })
}

/// A value as shown to the operator: secrets stay hidden unless revealed.
#[derive(Debug, Clone, Serialize)]
pub struct KvView {
    pub job: String,
    pub key: String,
    pub secret: bool,
    /// `None` for a secret that was not revealed.
    pub value: Option<String>,
    pub updated_at: String,
}

pub async fn put(
    ctx: &Context,
    job: &str,
    k: &str,
    value: Secret,
    secret: bool,
) -> Result<(), EngineError> {
    check_job(ctx, job)?;
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(EngineError::usage(
            format!("`{k}` is not a valid key"),
            "keys are letters, digits, `_`, `-` and `.`; templates read them as kv.KEY",
        ));
    }
    let bytes = if secret {
        key(ctx)?.encrypt(&value)
    } else {
        value.expose().as_bytes().to_vec()
    };
    let rec = KvRecord {
        job: job.to_string(),
        key: k.to_string(),
        value: bytes,
        secret,
        updated_at: cutover_state::now_rfc3339(),
    };
    ctx.store.kv_put(&rec).await?;
    Ok(())
}

pub async fn list(
    ctx: &Context,
    job: Option<&str>,
    reveal: bool,
) -> Result<Vec<KvView>, EngineError> {
    if let Some(j) = job {
        check_job(ctx, j)?;
    }
    let recs = ctx.store.kv_list(job).await?;
    let secret_key = if reveal && recs.iter().any(|r| r.secret) {
        Some(key(ctx)?)
    } else {
        None
    };
    recs.into_iter()
        .map(|r| {
            let value = match (&secret_key, r.secret) {
                (_, false) => Some(String::from_utf8_lossy(&r.value).into_owned()),
                (Some(k), true) => Some(decrypt(k, &r)?),
                (None, true) => None,
            };
            Ok(KvView {
                job: r.job,
                key: r.key,
                secret: r.secret,
                value,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

pub async fn get(ctx: &Context, job: &str, k: &str, reveal: bool) -> Result<KvView, EngineError> {
    list(ctx, Some(job), reveal)
        .await?
        .into_iter()
        .find(|v| v.key == k)
        .ok_or_else(|| {
            EngineError::usage(
                format!("job `{job}` has no key `{k}`"),
                format!("list its keys with `cutover kv list {job}`"),
            )
        })
}

pub async fn delete(ctx: &Context, job: &str, k: &str) -> Result<(), EngineError> {
    check_job(ctx, job)?;
    if ctx.store.kv_delete(job, Some(k)).await? == 0 {
        return Err(EngineError::usage(
            format!("job `{job}` has no key `{k}`"),
            format!("list its keys with `cutover kv list {job}`"),
        ));
    }
    Ok(())
}

/// Every job's keys, decrypted, for rendering templates. Held in memory only.
pub(crate) async fn for_templates(
    ctx: &Context,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
    let recs = ctx.store.kv_list(None).await?;
    let secret_key = if recs.iter().any(|r| r.secret) {
        Some(key(ctx)?)
    } else {
        None
    };
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in recs {
        let value = match (&secret_key, r.secret) {
            (Some(k), true) => decrypt(k, &r)?,
            _ => String::from_utf8_lossy(&r.value).into_owned(),
        };
        out.entry(r.job).or_default().insert(r.key, value);
    }
    Ok(out)
}

/// A job's `rollout_order`: worker names separated by commas or whitespace.
pub(crate) fn rollout_order(
    kv: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, Vec<String>> {
    kv.iter()
        .filter_map(|(job, keys)| {
            let order = keys.get(ROLLOUT_ORDER)?;
            let names = order
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((job.clone(), names))
        })
        .collect()
}
