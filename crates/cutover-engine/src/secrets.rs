//! Secrets a team shares without sharing a key: envelope encryption. The
//! store's secrets are encrypted with one data key, and the store keeps
//! that key wrapped (age, X25519) for each operator's public key. Each
//! operator unwraps it with their own identity file; no one holds another's
//! key. Until the first operator is added, secrets are under the project
//! key file (`.cutover/secret.key`), as for a single operator.
//!
//! Adding the first operator, removing one, and `rotate-key` each put every
//! secret under a new data key in one transaction ([`Store::rekey`]): a
//! removed operator's wrapped key opens nothing that is stored afterwards.
//! Adding a later operator only wraps the current key for them.
//!
//! [`Store::rekey`]: cutover_state::Store::rekey

use std::path::PathBuf;

use cutover_state::{parse_recipient, shown, Identity, OperatorRecord, SecretKey, StateError};
use serde::Serialize;

use crate::app::env;
use crate::kv::{DataKey, Keyring, Open};
use crate::{Context, EngineError};

const IDENTITY_FILE: &str = "identity.key";

/// Where this operator's identity is: `CUTOVER_IDENTITY_FILE`, else
/// `.cutover/identity.key`.
pub fn identity_path(ctx: &Context) -> PathBuf {
    ctx.env
        .get(env::CUTOVER_IDENTITY_FILE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.workspace.join(IDENTITY_FILE))
}

/// This operator's identity, if they have one.
fn load_identity(ctx: &Context) -> Result<Option<(Identity, PathBuf)>, EngineError> {
    let path = identity_path(ctx);
    Ok(Identity::load(&path)?.map(|id| (id, path)))
}

/// `cutover secrets identity`: this operator's identity, made (owner-only)
/// when there is none. Returns it, where it is, and whether it is new.
pub fn identity(ctx: &Context) -> Result<(Identity, PathBuf, bool), EngineError> {
    if let Some((id, path)) = load_identity(ctx)? {
        return Ok((id, path, false));
    }
    let path = identity_path(ctx);
    let id = Identity::create(&path)?;
    Ok((id, path, true))
}

/// An operator, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorView {
    pub name: String,
    pub public_key: String,
    pub added_by: String,
    pub added_at: String,
    /// Whether it is the caller's identity.
    pub you: bool,
}

/// `cutover secrets operators`.
pub async fn operators(ctx: &Context) -> Result<Vec<OperatorView>, EngineError> {
    let mine = my_key(ctx)?;
    Ok(ctx
        .store
        .operators()
        .await?
        .into_iter()
        .map(|op| OperatorView {
            you: mine.as_deref() == Some(op.recipient.as_str()),
            name: op.name,
            public_key: op.recipient,
            added_by: op.added_by,
            added_at: op.added_at,
        })
        .collect())
}

fn names(ops: &[OperatorRecord]) -> String {
    ops.iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The store's data key, unwrapped with this operator's identity.
pub(crate) async fn unwrap(ctx: &Context) -> Result<DataKey, EngineError> {
    let ops = ctx.store.operators().await?;
    let Some((identity, path)) = load_identity(ctx)? else {
        return Err(EngineError::usage(
            format!(
                "this project's secrets are encrypted for its operators ({}), and you have no identity at {}",
                names(&ops),
                identity_path(ctx).display()
            ),
            "if you have one elsewhere, set CUTOVER_IDENTITY_FILE to it; else run `cutover secrets identity` and ask an operator to run `cutover secrets add-operator YOUR-NAME <the public key it prints>`",
        ));
    };
    let mine = identity.recipient();
    let Some(op) = ops.iter().find(|o| o.recipient == mine) else {
        return Err(EngineError::usage(
            format!(
                "your identity at {} ({mine}) is not one of this project's operators ({})",
                path.display(),
                if ops.is_empty() {
                    "none".to_string()
                } else {
                    names(&ops)
                }
            ),
            format!("ask one of them to run `cutover secrets add-operator YOUR-NAME {mine}`"),
        ));
    };
    let key = SecretKey::unwrap(&identity, &op.wrapped).map_err(|reason| {
        EngineError::usage(
            format!(
                "the data key wrapped for operator `{}` does not open with {}: {reason}",
                op.name,
                path.display()
            ),
            "another operator can wrap it for you again: `cutover secrets remove-operator` then `add-operator` with your public key",
        )
    })?;
    Ok(DataKey {
        key,
        source: format!("the data key wrapped for operator `{}`", op.name),
        remedy: "the store's value was not written by cutover with its data key: delete it (`cutover kv delete`) and set it again with `cutover kv put --secret`".into(),
    })
}

/// What adding an operator did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The secrets moved to a new data key (the first operator, or a
    /// start over while no secret is stored).
    pub first: bool,
    /// Secrets re-encrypted (only when `first`).
    pub reencrypted: usize,
    /// The operators a start over replaced.
    pub replaced: Vec<String>,
}

fn check_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        return Ok(());
    }
    Err(EngineError::usage(
        format!("{} is not a valid operator name", shown(name)),
        "use letters, digits, `_`, `-`, `.` and `@` (at most 64), such as `ana` or `ana@laptop`",
    ))
}

/// The caller's public key, if they have an identity.
fn my_key(ctx: &Context) -> Result<Option<String>, EngineError> {
    Ok(load_identity(ctx)?.map(|(id, _)| id.recipient()))
}

/// `cutover secrets add-operator NAME PUBKEY`.
pub async fn add_operator(ctx: &Context, name: &str, pubkey: &str) -> Result<Added, EngineError> {
    check_name(name)?;
    let recipient = parse_recipient(pubkey).map_err(|m| {
        EngineError::usage(
            m,
            "the operator runs `cutover secrets identity` (or `age-keygen`) and gives you the public key it prints",
        )
    })?;
    let recipient_text = recipient.to_string();
    // The key id first, then the operators: operators newer than the id
    // fail the write's check of it, as a change made since would.
    let ring = crate::kv::read(ctx, None, Open::IfSecrets).await?;
    let ops = ctx.store.operators().await?;
    if let Some(o) = ops.iter().find(|o| o.name == name) {
        return Err(EngineError::usage(
            format!(
                "there is already an operator named `{name}` ({})",
                o.recipient
            ),
            format!("to change their key, run `cutover secrets remove-operator {name}` first"),
        ));
    }
    if let Some(o) = ops.iter().find(|o| o.recipient == recipient_text) {
        return Err(EngineError::usage(
            format!("{recipient_text} is already operator `{}`", o.name),
            "each operator has their own key: nothing was changed",
        ));
    }
    let record = |wrapped| OperatorRecord {
        name: name.to_string(),
        recipient: recipient_text.clone(),
        wrapped,
        added_by: ctx.operator.user.clone(),
        added_at: cutover_state::now_rfc3339(),
    };
    let mine = my_key(ctx)?;
    let am_operator = ops.iter().any(|o| Some(&o.recipient) == mine.as_ref());
    let stored = ring.records.iter().any(|r| r.secret);
    // The secrets move to a new data key: for the first operator, and, when
    // no secret is stored, for a caller who is not an operator (the
    // operators lost their identities): they start over as the only one,
    // so that no one joins unnoticed to read what is stored next.
    if ops.is_empty() || (!am_operator && !stored) {
        if mine.as_deref() != Some(recipient_text.as_str()) {
            let why = if ops.is_empty() {
                "the first operator must be you: the secrets move to a key wrapped for the operators"
            } else {
                "you are not an operator, and no secret is stored: you can only add yourself"
            };
            return Err(EngineError::usage(
                format!(
                    "{why}, and {recipient_text} is not your identity ({})",
                    match &mine {
                        Some(m) => format!("yours is {m}"),
                        None => format!("you have none at {}", identity_path(ctx).display()),
                    }
                ),
                "run `cutover secrets identity`, then `cutover secrets add-operator YOUR-NAME <the public key it prints>`, then add the others",
            ));
        }
        let reencrypted = rekey(ctx, &ring, vec![record(Vec::new())]).await?;
        return Ok(Added {
            first: true,
            reencrypted,
            replaced: ops.into_iter().map(|o| o.name).collect(),
        });
    }
    // The current key (checked against a stored secret, when one is):
    // only an operator lets another in, with the key that opens them.
    let current = match ring.key {
        Some(key) => key,
        None => unwrap(ctx).await?,
    };
    let wrapped = wrap(&current.key, &recipient_text)?;
    // A new key id: a re-encryption that read the operators before this
    // one was added is refused, rather than dropping it.
    ctx.store
        .add_operator(&record(wrapped), &ring.id, &new_key_id())
        .await?;
    Ok(Added {
        first: false,
        reencrypted: 0,
        replaced: Vec::new(),
    })
}

/// `cutover secrets remove-operator NAME`: every secret goes under a new
/// data key, wrapped for the others only. Returns how many secrets were
/// re-encrypted. The caller must stay an operator: someone who opened the
/// key just now keeps it, so a removal never leaves the secrets to no one.
pub async fn remove_operator(ctx: &Context, name: &str) -> Result<usize, EngineError> {
    let ring = crate::kv::read(ctx, None, Open::IfSecrets).await?;
    let ops = ctx.store.operators().await?;
    let Some(removed) = ops.iter().find(|o| o.name == name) else {
        return Err(EngineError::usage(
            format!("there is no operator named {}", shown(name)),
            if ops.is_empty() {
                "this project's secrets have no operators yet".to_string()
            } else {
                format!("its operators: {}", names(&ops))
            },
        ));
    };
    let mine = my_key(ctx)?;
    if mine.as_deref() == Some(removed.recipient.as_str()) {
        return Err(EngineError::usage(
            format!("`{name}` is you: an operator is removed by another, so that someone who can open the secrets stays"),
            if ops.len() == 1 {
                "add the operator who takes over first (`cutover secrets add-operator NAME PUBKEY`); they remove you".to_string()
            } else {
                format!(
                    "ask one of {} to run `cutover secrets remove-operator {name}`",
                    names(&others(&ops, name))
                )
            },
        ));
    }
    must_be_operator(ctx, &ops, mine.as_deref(), "removes one")?;
    rekey(ctx, &ring, others(&ops, name)).await
}

/// `cutover secrets rotate-key`: every secret under a new data key, wrapped
/// for the same operators. Returns how many secrets were re-encrypted.
pub async fn rotate_key(ctx: &Context) -> Result<usize, EngineError> {
    let ring = crate::kv::read(ctx, None, Open::IfSecrets).await?;
    let ops = ctx.store.operators().await?;
    if ops.is_empty() {
        return Err(EngineError::usage(
            "this project's secrets have no operators: they are under the project key file, which rotate-key does not replace",
            "add yourself as the first operator (`cutover secrets identity`, then `cutover secrets add-operator YOUR-NAME <its public key>`): that puts them under a new data key",
        ));
    }
    must_be_operator(ctx, &ops, my_key(ctx)?.as_deref(), "rotates the key")?;
    rekey(ctx, &ring, ops).await
}

/// Refuses a caller whose key (`mine`) is not one of `ops`: only an
/// operator `does` what is asked.
fn must_be_operator(
    ctx: &Context,
    ops: &[OperatorRecord],
    mine: Option<&str>,
    does: &str,
) -> Result<(), EngineError> {
    if ops.iter().any(|o| Some(o.recipient.as_str()) == mine) {
        return Ok(());
    }
    Err(EngineError::usage(
        format!(
            "only an operator {does}, and your identity at {} is not one of this project's operators ({})",
            identity_path(ctx).display(),
            names(ops)
        ),
        "run it as one of them (CUTOVER_IDENTITY_FILE names whose identity)",
    ))
}

/// Every operator but `name`.
fn others(ops: &[OperatorRecord], name: &str) -> Vec<OperatorRecord> {
    ops.iter().filter(|o| o.name != name).cloned().collect()
}

fn wrap(key: &SecretKey, recipient: &str) -> Result<Vec<u8>, EngineError> {
    let r = parse_recipient(recipient)
        .map_err(|m| EngineError::Failed(format!("an operator's public key in the store: {m}")))?;
    key.wrap(&r)
        .map_err(|e| EngineError::Failed(format!("wrapping the data key for {recipient}: {e}")))
}

/// Puts every secret under a new data key wrapped for `operators`, in one
/// transaction, if the secrets are still under the key `ring` read (else
/// [`StateError::KeyChanged`]); see [`cutover_state::Store::rekey`].
///
/// [`StateError::KeyChanged`]: cutover_state::StateError::KeyChanged
async fn rekey(
    ctx: &Context,
    ring: &Keyring,
    operators: Vec<OperatorRecord>,
) -> Result<usize, EngineError> {
    let next = SecretKey::generate();
    let operators = operators
        .into_iter()
        .map(|op| {
            Ok(OperatorRecord {
                wrapped: wrap(&next, &op.recipient)?,
                ..op
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let current = ring.key.as_ref();
    let n = ctx
        .store
        .rekey(&ring.id, &new_key_id(), &operators, |r| {
            // A secret written after the ring was read (none was stored
            // then): the command is run again.
            let key = current.ok_or(StateError::KeyChanged)?;
            let plain = key
                .key
                .decrypt(&r.value)
                .map_err(|reason| StateError::Secret {
                    job: r.job.clone(),
                    key: r.key.clone(),
                    reason,
                })?;
            Ok(next.encrypt(&plain))
        })
        .await?;
    Ok(n)
}

/// A new key id: random, so that two changes never agree.
fn new_key_id() -> String {
    SecretKey::generate().seal(b"key id")[..16].to_string()
}
