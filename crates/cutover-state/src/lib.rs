//! The state store: what is promoted where, the deployment history, the KV
//! store (secrets encrypted at rest), and the project lock.
//!
//! [`StateStore`] is the interface; [`SqliteStore`] is the embedded
//! backend at `.cutover/state.db`. A PostgreSQL backend implements the
//! same trait with the same schema.

mod lock;
mod migrate;
mod records;
mod secret;
mod sqlite;
mod time;

use std::future::Future;
use std::pin::Pin;

pub use lock::{LockHolder, ProjectLock};
pub use records::*;
pub use secret::{Secret, SecretKey};
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
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The interface every state backend implements.
pub trait StateStore: Send + Sync {
    fn allocations(&self) -> Fut<'_, Vec<AllocationRecord>>;
    fn put_allocation<'a>(&'a self, rec: &'a AllocationRecord) -> Fut<'a, ()>;
    /// The promotions of one batch, in one transaction: all or none.
    fn record_promotions<'a>(&'a self, p: &'a Promotions) -> Fut<'a, ()>;
    fn delete_allocation<'a>(&'a self, job: &'a str, worker: &'a str) -> Fut<'a, ()>;

    /// The manifest (JSON) of a tree that was promoted somewhere.
    fn tree<'a>(&'a self, job: &'a str, hash: &'a str) -> Fut<'a, Option<String>>;
    fn put_tree<'a>(&'a self, job: &'a str, hash: &'a str, manifest: &'a str) -> Fut<'a, ()>;

    fn begin_deployment<'a>(&'a self, d: &'a NewDeployment) -> Fut<'a, i64>;
    fn finish_deployment<'a>(&'a self, seq: i64, outcome: &'a str, summary: &'a str)
        -> Fut<'a, ()>;
    fn deployments(&self, limit: i64) -> Fut<'_, Vec<DeploymentRecord>>;
    /// Records a `state rebuild` as deployment `seq` when the store's
    /// counter is below it, so that later deployments number after what
    /// the workers carry.
    fn record_rebuild<'a>(&'a self, seq: i64, summary: &'a str) -> Fut<'a, ()>;

    /// Raw rows: a secret's value is ciphertext; see [`SecretKey`].
    fn kv_list<'a>(&'a self, job: Option<&'a str>) -> Fut<'a, Vec<KvRecord>>;
    fn kv_put<'a>(&'a self, rec: &'a KvRecord) -> Fut<'a, ()>;
    fn kv_delete<'a>(&'a self, job: &'a str, key: Option<&'a str>) -> Fut<'a, u64>;

    /// The last known address of every worker that ran an allocation, as
    /// JSON, so that a worker removed from workers.toml can still be stopped.
    fn known_workers(&self) -> Fut<'_, Vec<(String, String)>>;
    fn put_known_worker<'a>(&'a self, name: &'a str, spec: &'a str) -> Fut<'a, ()>;
    fn forget_worker<'a>(&'a self, name: &'a str) -> Fut<'a, ()>;

    /// A small named document (JSON), e.g. what a ticket release replaced.
    fn meta_get<'a>(&'a self, key: &'a str) -> Fut<'a, Option<String>>;
    fn meta_put<'a>(&'a self, key: &'a str, value: &'a str) -> Fut<'a, ()>;
    /// Raises a numeric meta value to `value`, never lowers it, in one
    /// statement (two processes cannot lower each other's); returns the
    /// value now stored.
    fn meta_raise<'a>(&'a self, key: &'a str, value: u64) -> Fut<'a, u64>;

    /// Takes the project lock or reports who holds it.
    fn lock<'a>(&'a self, holder: &'a LockHolder) -> Fut<'a, ProjectLock>;
    fn lock_status(&self) -> Fut<'_, Option<LockHolder>>;
    /// Frees a lock held by someone else (an operator's explicit decision).
    fn force_unlock(&self) -> Fut<'_, Option<LockHolder>>;
}
