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

use cutover_state::{parse_recipient, Identity, OperatorRecord, SecretKey, LOCAL_KEY};
use serde::Serialize;

use crate::app::env;
use crate::kv::DataKey;
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
    let mine = load_identity(ctx)?.map(|(id, _)| id.recipient());
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

/// The store's data key (`id`), unwrapped with this operator's identity.
pub(crate) async fn unwrap(ctx: &Context, id: String) -> Result<DataKey, EngineError> {
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
        id,
        source: format!("the data key wrapped for operator `{}`", op.name),
        remedy: "the store's value was not written by cutover with its data key: set it again with `cutover kv put --secret`".into(),
    })
}

/// What adding an operator did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The store's first operator: its secrets moved from the project key
    /// file to a data key.
    pub first: bool,
    /// Secrets re-encrypted (only when `first`).
    pub reencrypted: usize,
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
        format!("`{}` is not a valid operator name", name.escape_debug()),
        "use letters, digits, `_`, `-`, `.` and `@` (at most 64), such as `ana` or `ana@laptop`",
    ))
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
    if ops.is_empty() {
        // The first operator must be the caller, or the secrets would move
        // to a key the caller cannot open.
        let mine = load_identity(ctx)?.map(|(id, _)| id.recipient());
        if mine.as_deref() != Some(recipient_text.as_str()) {
            return Err(EngineError::usage(
                format!(
                    "the first operator must be you: the secrets move to a key wrapped for the operators, and {pubkey} is not your identity ({})",
                    match &mine {
                        Some(m) => format!("yours is {m}"),
                        None => format!("you have none at {}", identity_path(ctx).display()),
                    }
                ),
                "run `cutover secrets identity`, then `cutover secrets add-operator YOUR-NAME <the public key it prints>`, then add the others",
            ));
        }
        let current = current_key(ctx).await?;
        let reencrypted = rekey(ctx, current.as_ref(), vec![record(Vec::new())]).await?;
        return Ok(Added {
            first: true,
            reencrypted,
        });
    }
    let current = crate::kv::data_key(ctx, None).await?;
    let wrapped = wrap(&current.key, &recipient_text)?;
    ctx.store
        .add_operator(&record(wrapped), &current.id)
        .await?;
    Ok(Added {
        first: false,
        reencrypted: 0,
    })
}

/// `cutover secrets remove-operator NAME`: every secret goes under a new
/// data key, wrapped for the others only. Returns how many secrets were
/// re-encrypted.
pub async fn remove_operator(ctx: &Context, name: &str) -> Result<usize, EngineError> {
    let ops = ctx.store.operators().await?;
    if !ops.iter().any(|o| o.name == name) {
        return Err(EngineError::usage(
            format!("there is no operator named `{}`", name.escape_debug()),
            if ops.is_empty() {
                "this project's secrets have no operators yet".to_string()
            } else {
                format!("its operators: {}", names(&ops))
            },
        ));
    }
    if ops.len() == 1 {
        return Err(EngineError::usage(
            format!("`{name}` is the last operator: without one, no one could read the secrets"),
            "add the operator who takes over first (`cutover secrets add-operator NAME PUBKEY`), then remove this one",
        ));
    }
    let current = current_key(ctx).await?;
    let rest = ops.into_iter().filter(|o| o.name != name).collect();
    rekey(ctx, current.as_ref(), rest).await
}

/// `cutover secrets rotate-key`: every secret under a new data key, wrapped
/// for the same operators. Returns how many secrets were re-encrypted.
pub async fn rotate_key(ctx: &Context) -> Result<usize, EngineError> {
    let ops = ctx.store.operators().await?;
    if ops.is_empty() {
        return Err(EngineError::usage(
            "this project's secrets have no operators: they are under the project key file, which rotate-key does not replace",
            "add yourself as the first operator (`cutover secrets identity`, then `cutover secrets add-operator YOUR-NAME <its public key>`): that puts them under a new data key",
        ));
    }
    let current = current_key(ctx).await?;
    rekey(ctx, current.as_ref(), ops).await
}

/// The key the secrets are under now; `None` when there is no secret and
/// no operator (no project key file is made just to move nothing).
async fn current_key(ctx: &Context) -> Result<Option<DataKey>, EngineError> {
    let first = crate::kv::first_secret(ctx).await?;
    if first.is_none() && ctx.store.secrets_key_id().await? == LOCAL_KEY {
        return Ok(None);
    }
    crate::kv::data_key(ctx, first.as_ref()).await.map(Some)
}

fn wrap(key: &SecretKey, recipient: &str) -> Result<Vec<u8>, EngineError> {
    let r = parse_recipient(recipient)
        .map_err(|m| EngineError::Failed(format!("an operator's public key in the store: {m}")))?;
    key.wrap(&r)
        .map_err(|e| EngineError::Failed(format!("wrapping the data key for {recipient}: {e}")))
}

/// Puts every secret under a new data key wrapped for `operators`, in one
/// transaction; see [`cutover_state::Store::rekey`].
async fn rekey(
    ctx: &Context,
    current: Option<&DataKey>,
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
    let from = current.map_or(LOCAL_KEY, |k| k.id.as_str());
    let to = new_key_id();
    let n = ctx
        .store
        .rekey(from, &to, &operators, |r| {
            // A secret written after `current` was read (none existed
            // then) is refused: the command is run again.
            let key =
                current.ok_or("it was written while the key changed; run the command again")?;
            let plain = key.key.decrypt(&r.value)?;
            Ok(next.encrypt(&plain))
        })
        .await?;
    Ok(n)
}

/// A new data key's id: random, so that two re-encryptions never agree.
fn new_key_id() -> String {
    SecretKey::generate().seal(b"key id")[..16].to_string()
}
