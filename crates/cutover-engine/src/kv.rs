//! The KV store: per-job keys that templates read as `kv.KEY`. Secrets are
//! encrypted before they reach the store (with the project key, or once
//! the store has operators, its data key: see [`crate::secrets`]) and are
//! only decrypted in memory, to render or when the operator asks with
//! `--reveal`.

use std::collections::{BTreeMap, BTreeSet};

use cutover_state::{KvRecord, Secret, SecretKey, LOCAL_KEY};
use serde::Serialize;

use crate::{Context, EngineError};

pub const ROLLOUT_ORDER: &str = "rollout_order";

const KEY_FILE: &str = "secret.key";

/// The key the store's secrets are under, as this operator holds it.
pub(crate) struct DataKey {
    pub key: SecretKey,
    /// Where it came from, for messages.
    pub source: String,
    /// What to do when it does not open a secret.
    pub remedy: String,
}

/// When [`read`] opens the data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    Never,
    /// When a secret is among the records read.
    IfSecrets,
    /// To write a secret.
    Always,
}

/// The KV as of one moment: its records, the id of the key the secrets
/// are under, and (as asked) that key, checked against a stored secret.
pub(crate) struct Keyring {
    pub records: Vec<KvRecord>,
    /// [`LOCAL_KEY`] (the project key file), or the store's data key's.
    pub id: String,
    pub key: Option<DataKey>,
}

/// Reads the KV records (of `job`, or every job's) and the key their
/// secrets are under. Until the store has operators the key is the project
/// key file; then it is the store's data key, unwrapped with this
/// operator's identity (see [`crate::secrets`]). A re-encryption changes
/// the key id together with everything else: when the id reads the same
/// before and after, what was read between is of one moment; else it is
/// read again.
pub(crate) async fn read(
    ctx: &Context,
    job: Option<&str>,
    open: Open,
) -> Result<Keyring, EngineError> {
    for _ in 0..3 {
        let id = ctx.store.secrets_key_id().await?;
        let records = ctx.store.kv_list(job).await?;
        let first = records.iter().find(|r| r.secret);
        let want = match open {
            Open::Never => false,
            Open::IfSecrets => first.is_some(),
            Open::Always => true,
        };
        let key = if want {
            let key = if id == LOCAL_KEY {
                local_key(ctx, first)
            } else {
                crate::secrets::unwrap(ctx).await
            };
            match key {
                Ok(key) => Some(key),
                Err(_) if ctx.store.secrets_key_id().await? != id => continue,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if ctx.store.secrets_key_id().await? != id {
            continue;
        }
        if let (Some(key), Some(first)) = (&key, first) {
            decrypt(key, first)?;
        }
        return Ok(Keyring { records, id, key });
    }
    Err(cutover_state::StateError::KeyChanged.into())
}

/// The project key file. A new key is made only when the store holds no
/// secret: a lost key is restored, never replaced, or the old secrets
/// could not be read and new ones would be under another key.
fn local_key(ctx: &Context, existing: Option<&KvRecord>) -> Result<DataKey, EngineError> {
    let path = ctx.workspace.join(KEY_FILE);
    let key = match (SecretKey::load(&path)?, existing) {
        (Some(key), _) => key,
        (None, None) => SecretKey::create(&path)?,
        (None, Some(r)) => {
            return Err(EngineError::usage(
                format!(
                "{} is missing, and the store holds secrets encrypted with it (such as `{}/{}`)",
                path.display(),
                r.job,
                r.key
            ),
                format!(
                    "restore the key file from your backup to {} (32 bytes, mode 0600); \
                     cutover does not make a new key over existing secrets",
                    path.display()
                ),
            ))
        }
    };
    Ok(DataKey {
        key,
        source: path.display().to_string(),
        remedy: format!(
            "restore the key that encrypted it to {} from your backup",
            path.display()
        ),
    })
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

pub(crate) fn decrypt(key: &DataKey, r: &KvRecord) -> Result<String, EngineError> {
    key.key
        .decrypt(&r.value)
        .map(|s| s.expose().to_string())
        .map_err(|reason| {
            EngineError::usage(
                format!(
                    "cannot decrypt secret `{}/{}` with {}: {reason}",
                    r.job, r.key, key.source
                ),
                key.remedy.clone(),
            )
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
    let mut rec = KvRecord {
        job: job.to_string(),
        key: k.to_string(),
        value: Vec::new(),
        secret,
        updated_at: cutover_state::now_rfc3339(),
    };
    if secret {
        let ring = read(ctx, None, Open::Always).await?;
        let Some(key) = ring.key else {
            return Err(EngineError::Internal("the data key was not opened".into()));
        };
        rec.value = key.key.encrypt(&value);
        ctx.store.kv_put_secret(&rec, &ring.id).await?;
    } else {
        rec.value = value.expose().as_bytes().to_vec();
        ctx.store.kv_put(&rec).await?;
    }
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
    let open = if reveal { Open::IfSecrets } else { Open::Never };
    let ring = read(ctx, job, open).await?;
    let secret_key = ring.key;
    ring.records
        .into_iter()
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
    let find = |views: Vec<KvView>| {
        views.into_iter().find(|v| v.key == k).ok_or_else(|| {
            EngineError::usage(
                format!("job `{job}` has no key `{k}`"),
                format!("list its keys with `cutover kv list {job}`"),
            )
        })
    };
    let view = find(list(ctx, Some(job), false).await?)?;
    // The key is opened only for a secret that is to be shown.
    if view.secret && reveal {
        return find(list(ctx, Some(job), true).await?);
    }
    Ok(view)
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

/// Every job's keys, decrypted, for rendering templates. Held in memory
/// only; which keys are secrets is kept too, so that a file rendered from
/// one is private on the worker and its value is redacted from output.
#[derive(Debug, Default)]
pub(crate) struct TemplateKv {
    values: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeSet<String>>,
}

impl TemplateKv {
    /// One job's keys.
    pub fn get(&self, job: &str) -> Option<&BTreeMap<String, String>> {
        self.values.get(job)
    }

    /// The names of one job's secret keys.
    pub fn secret_keys(&self, job: &str) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        self.secrets.get(job).unwrap_or(&NONE)
    }

    /// Every secret value, to redact wherever output is shown or recorded.
    pub fn redactor(&self) -> crate::redact::Redactor {
        crate::redact::Redactor::new(self.secrets.iter().flat_map(|(job, keys)| {
            keys.iter()
                .filter_map(move |k| self.values.get(job)?.get(k).cloned())
        }))
    }
}

pub(crate) async fn for_templates(ctx: &Context) -> Result<TemplateKv, EngineError> {
    let ring = read(ctx, None, Open::IfSecrets).await?;
    let secret_key = ring.key;
    let mut out = TemplateKv::default();
    for r in ring.records {
        let value = match (&secret_key, r.secret) {
            (Some(k), true) => decrypt(k, &r)?,
            _ => String::from_utf8_lossy(&r.value).into_owned(),
        };
        if r.secret {
            out.secrets
                .entry(r.job.clone())
                .or_default()
                .insert(r.key.clone());
        }
        out.values.entry(r.job).or_default().insert(r.key, value);
    }
    Ok(out)
}

/// A job's `rollout_order`: worker names separated by commas or whitespace.
pub(crate) fn rollout_order(kv: &TemplateKv) -> BTreeMap<String, Vec<String>> {
    kv.values
        .iter()
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
