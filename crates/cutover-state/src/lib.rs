//! The state store: what is promoted where, the deployment history, the KV
//! store (secrets encrypted at rest), and the project lock.
//!
//! [`Store`] is the interface: [`SqliteStore`], the embedded backend at
//! `.cutover/state.db`, or [`PgStore`], PostgreSQL shared by a team; one
//! schema and one set of queries for both.

mod lock;
mod migrate;
mod pg;
mod queries;
mod records;
mod secret;
mod sqlite;
mod time;

pub use lock::{LockHolder, ProjectLock};
pub use pg::{redact as redact_url, PgStore};
pub use records::*;
pub use secret::{parse_recipient, shown, Identity, Secret, SecretKey};
pub use sqlite::SqliteStore;
pub use time::{now_compact_millis, now_rfc3339, rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the project lock is held by {0}")]
    Locked(Box<LockHolder>),
    #[error("cannot decrypt secret `{job}/{key}`: {reason}")]
    Secret {
        job: String,
        key: String,
        reason: String,
    },
    /// The secrets' data key changed (another operator re-encrypted the
    /// secrets) while this command ran: it wrote nothing.
    #[error("the secrets were re-encrypted under a new data key while this command ran (by `secrets add-operator`, `remove-operator` or `rotate-key`); nothing was written")]
    KeyChanged,
    #[error("cannot reach the state store at {0}")]
    Unreachable(String),
    /// The lock this process took was taken over (or lost with its
    /// connection): it may change nothing more.
    #[error("this run no longer holds the project lock (its fencing token {token} is outdated{}); it stops and changes nothing more", holder.as_ref().map(|h| format!("; it is now held by {h}")).unwrap_or_default())]
    Fenced {
        token: i64,
        holder: Option<Box<LockHolder>>,
    },
    /// The connection that held this process's lock ended (PostgreSQL
    /// restarted, the network went): the lock went with it.
    #[error("this run lost the project lock: its connection to the state store at {0} ended; it stops and changes nothing more")]
    LockLost(String),
    /// Bad input about the store itself: exit 2, nothing written.
    #[error("{0}")]
    Config(String),
    #[error("corrupt state: {0}")]
    Corrupt(String),
    #[error("{path} was written by a newer cutover: it has schema migration {version}, and this cutover knows up to {known}")]
    TooNew {
        path: String,
        version: i64,
        known: i64,
    },
}

pub type Result<T> = std::result::Result<T, StateError>;

/// Job and worker names read from a store become paths on workers: a row
/// whose name no project could define (`..`, `/`) is refused, as
/// cutover.toml refuses it.
pub(crate) fn check_names(names: &[&str]) -> Result<()> {
    for name in names {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(StateError::Corrupt(format!(
                "the store names a job or worker `{}`, which no project can define; it was written by hand or by something else than cutover, and nothing was done with it",
                name.escape_debug()
            )));
        }
    }
    Ok(())
}

/// The meta key naming the data key the secrets are under.
pub(crate) const KEY_ID: &str = "secrets:key_id";
/// The key id of secrets under the project key file (no operators yet).
pub const LOCAL_KEY: &str = "local";

/// The state store: one of two known backends, with the same schema and
/// the same queries (see `queries.rs`). An enum rather than a trait
/// object: no boxed futures, and the one place that tells the backends
/// apart is here.
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(Box<PgStore>),
}

/// Calls the backend's method of the same name.
macro_rules! each {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    pub async fn allocations(&self) -> Result<Vec<AllocationRecord>> {
        each!(self.allocations())
    }
    pub async fn put_allocation(&self, rec: &AllocationRecord) -> Result<()> {
        each!(self.put_allocation(rec))
    }
    /// The promotions of one batch, in one transaction: all or none.
    pub async fn record_promotions(&self, p: &Promotions) -> Result<()> {
        each!(self.record_promotions(p))
    }
    pub async fn delete_allocation(&self, job: &str, worker: &str) -> Result<()> {
        each!(self.delete_allocation(job, worker))
    }
    /// The manifest (JSON) of a tree that was promoted somewhere.
    pub async fn tree(&self, job: &str, hash: &str) -> Result<Option<String>> {
        each!(self.tree(job, hash))
    }
    pub async fn put_tree(&self, job: &str, hash: &str, manifest: &str) -> Result<()> {
        each!(self.put_tree(job, hash, manifest))
    }
    pub async fn begin_deployment(&self, d: &NewDeployment) -> Result<i64> {
        each!(self.begin_deployment(d))
    }
    pub async fn finish_deployment(&self, seq: i64, outcome: &str, summary: &str) -> Result<()> {
        each!(self.finish_deployment(seq, outcome, summary))
    }
    pub async fn deployments(&self, limit: i64) -> Result<Vec<DeploymentRecord>> {
        each!(self.deployments(limit))
    }
    /// Records a `state rebuild` as deployment `seq` when the store's
    /// counter is below it, so that later deployments number after what
    /// the workers carry.
    pub async fn record_rebuild(&self, seq: i64, summary: &str) -> Result<()> {
        each!(self.record_rebuild(seq, summary))
    }
    /// Raw rows: a secret's value is ciphertext; see [`SecretKey`].
    pub async fn kv_list(&self, job: Option<&str>) -> Result<Vec<KvRecord>> {
        each!(self.kv_list(job))
    }
    pub async fn kv_put(&self, rec: &KvRecord) -> Result<()> {
        each!(self.kv_put(rec))
    }
    pub async fn kv_delete(&self, job: &str, key: Option<&str>) -> Result<u64> {
        each!(self.kv_delete(job, key))
    }
    /// Writes a secret (already encrypted) if the secrets are still under
    /// data key `key_id`; else [`StateError::KeyChanged`].
    pub async fn kv_put_secret(&self, rec: &KvRecord, key_id: &str) -> Result<()> {
        each!(self.kv_put_secret(rec, key_id))
    }
    /// The data key the secrets are under: an id the store keeps, or
    /// [`LOCAL_KEY`] (the project key file).
    pub async fn secrets_key_id(&self) -> Result<String> {
        Ok(self
            .meta_get(KEY_ID)
            .await?
            .unwrap_or_else(|| LOCAL_KEY.to_string()))
    }
    /// The operators who can read the secrets, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>> {
        each!(self.operators())
    }
    /// Adds an operator (the data key wrapped for them) if the key id is
    /// still `from` (else [`StateError::KeyChanged`]), and makes it `to`:
    /// a re-encryption that read the operators before is refused.
    pub async fn add_operator(&self, op: &OperatorRecord, from: &str, to: &str) -> Result<()> {
        each!(self.add_operator(op, from, to))
    }
    /// Puts every secret under a new data key, in one transaction: the
    /// secrets must still be under `from` (else [`StateError::KeyChanged`]);
    /// each is re-encrypted by `reencrypt` as read inside the transaction
    /// (a secret written meanwhile is not left behind), the operators are
    /// replaced by `operators` (the new key wrapped for each), and the key
    /// id becomes `to`. Returns how many secrets were re-encrypted.
    pub async fn rekey<F>(
        &self,
        from: &str,
        to: &str,
        operators: &[OperatorRecord],
        reencrypt: F,
    ) -> Result<usize>
    where
        F: Fn(&KvRecord) -> Result<Vec<u8>> + Send + Sync,
    {
        each!(self.rekey(from, to, operators, &reencrypt))
    }
    /// The last known address of every worker that ran an allocation, as
    /// JSON, so that a worker removed from workers.toml can still be stopped.
    pub async fn known_workers(&self) -> Result<Vec<(String, String)>> {
        each!(self.known_workers())
    }
    pub async fn put_known_worker(&self, name: &str, spec: &str) -> Result<()> {
        each!(self.put_known_worker(name, spec))
    }
    pub async fn forget_worker(&self, name: &str) -> Result<()> {
        each!(self.forget_worker(name))
    }
    /// A small named document (JSON), e.g. what a ticket release replaced.
    pub async fn meta_get(&self, key: &str) -> Result<Option<String>> {
        each!(self.meta_get(key))
    }
    /// Every meta entry whose key starts with `prefix`: (key, value).
    pub async fn meta_prefixed(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        each!(self.meta_prefixed(prefix))
    }
    pub async fn meta_put(&self, key: &str, value: &str) -> Result<()> {
        each!(self.meta_put(key, value))
    }
    /// Raises a numeric meta value to `value`, never lowers it, in one
    /// statement (two processes cannot lower each other's); returns the
    /// value now stored.
    pub async fn meta_raise(&self, key: &str, value: u64) -> Result<u64> {
        each!(self.meta_raise(key, value))
    }
    /// Appends one line to the audit log.
    pub async fn audit_append(&self, line: &str) -> Result<()> {
        each!(self.audit_append(line))
    }
    /// The last `limit` lines of the audit log, oldest first.
    pub async fn audit_tail(&self, limit: i64) -> Result<Vec<String>> {
        each!(self.audit_tail(limit))
    }
    /// One of a ticket release's files (`env`, `log`) as stored.
    pub async fn release_file(&self, ticket: &str, kind: &str) -> Result<Option<String>> {
        each!(self.release_file(ticket, kind))
    }
    /// Replaces a ticket release's file, or with `append`, adds to it.
    pub async fn put_release_file(
        &self,
        ticket: &str,
        kind: &str,
        content: &str,
        append: bool,
    ) -> Result<()> {
        each!(self.put_release_file(ticket, kind, content, append))
    }
    /// Every stored release file: (ticket, kind, content).
    pub async fn release_files(&self) -> Result<Vec<(String, String, String)>> {
        each!(self.release_files())
    }

    /// Everything the store holds, for `state migrate`.
    pub async fn export(&self) -> Result<Snapshot> {
        each!(self.export())
    }
    /// Whether the store holds nothing but what its migrations wrote.
    pub async fn is_empty(&self) -> Result<bool> {
        each!(self.is_empty())
    }
    /// Writes a snapshot into this (empty) store, in one transaction.
    pub async fn import(&self, snapshot: &Snapshot) -> Result<()> {
        each!(self.import(snapshot))
    }

    /// Takes the project lock or reports who holds it (PostgreSQL: takes
    /// over a holder whose lease ran out).
    pub async fn lock(&self, holder: &LockHolder) -> Result<ProjectLock> {
        each!(self.lock(holder))
    }
    pub async fn lock_status(&self) -> Result<Option<LockHolder>> {
        each!(self.lock_status())
    }
    /// `lock release`: clears a free lock's record; ends a held one when
    /// the backend can and it is the caller's own, or with `force`.
    /// Returns whose record it was, and whether a live holder was ended.
    pub async fn release_lock(
        &self,
        caller: &LockHolder,
        force: bool,
    ) -> Result<(Option<LockHolder>, bool)> {
        each!(self.release_lock(caller, force))
    }
    /// Fails when the lock this process took has been taken over (or,
    /// PostgreSQL, lost with its connection): checked before each step
    /// that changes a worker.
    pub async fn check_fence(&self) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.check_fence().await,
        }
    }
    /// The store's id and the fencing token of the lock this process
    /// holds, for the workers to keep (PostgreSQL, while locked).
    pub fn fence_token(&self) -> Option<(String, u64)> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => s.fence_token(),
        }
    }
    /// Whether operators share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }
    /// Where the store is, for messages (never with a password).
    pub fn location(&self) -> String {
        match self {
            Store::Sqlite(s) => s.location(),
            Store::Postgres(s) => s.location(),
        }
    }
    /// Lets go of locks and connections.
    pub async fn close(&self) {
        each!(self.close())
    }
}
