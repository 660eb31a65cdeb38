//! The team backend: PostgreSQL, shared by every operator of a project.
//!
//! The project lock is a session advisory lock, held on a connection of its
//! own, plus the `lease` row that says who holds it: the holder, its
//! backend pid, a heartbeat written by the database's clock, and a fencing
//! token raised by every acquisition. A holder that dies or loses its
//! network loses its connection and so the lock. A holder whose heartbeat
//! is older than the lease (stopped, paused) is taken over: its backend is
//! ended with `pg_terminate_backend` and the token raised, so that every
//! write it still tries fails (each write transaction checks the token
//! under a share lock on the lease row) and every worker refuses it.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::lock::ProjectLock;
use crate::{LockHolder, Result, StateError};

pub(crate) const MIGRATIONS: crate::migrate::Embedded = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "shared",
        include_str!("../migrations/postgres/0002_shared.sql"),
    ),
    (
        3,
        "operators",
        include_str!("../migrations/postgres/0003_operators.sql"),
    ),
];

/// The advisory lock's key ("cuto"): one project per database.
const LOCK_KEY: i64 = 0x6375_746f;

/// The database's clock, in milliseconds: heartbeats and their age are
/// read from one clock, whatever the operators' machines say.
const NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// How long to wait for a connection, and for an ended holder to let go.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
    opts: PgConnectOptions,
    location: String,
    /// Made by the store's first migration: a worker compares tokens of
    /// one store only (a store made anew starts counting again).
    store_id: String,
    lease: Duration,
    /// The token of the lock this process holds, if any: every write
    /// checks it.
    fence: Arc<Mutex<Option<Fence>>>,
    /// The heartbeat tasks of locks taken here, awaited by `close`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// This process's `application_name`: every session it opens carries
    /// it, so that a takeover can end them all.
    session: String,
    /// Set once this process's lock was taken over or lost (by a write's
    /// check or by the heartbeat): from then on it writes nothing, locked
    /// or not.
    poisoned: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Fence {
    token: i64,
    /// The backend of the connection that holds the advisory lock.
    backend: i64,
}

/// The `pg_locks` rows of the project lock (`$1`: its key) in this
/// database.
const ADVISORY: &str = "locktype = 'advisory' AND granted AND objsubid = 1
       AND CAST(classid AS BIGINT) = 0 AND CAST(objid AS BIGINT) = $1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The lease's token, and whether backend `$2` still holds the advisory
/// lock (a restarted server or a cut connection ends it at once, before
/// any heartbeat could tell).
fn held_query() -> String {
    format!(
        "SELECT token, EXISTS (SELECT 1 FROM pg_locks WHERE {ADVISORY} AND CAST(pid AS BIGINT) = $2)
           FROM lease WHERE id = 1"
    )
}

/// The lease row as read.
struct LeaseRow {
    token: i64,
    holder: Option<LockHolder>,
    backend_pid: Option<i64>,
    /// The holder's `application_name`.
    session: Option<String>,
    /// Milliseconds since the last heartbeat.
    age_ms: Option<i64>,
    /// The backend that holds the advisory lock, if any.
    locked_by: Option<i64>,
}

impl PgStore {
    /// Connects to the store at `url` and brings its schema up to date.
    pub async fn open(url: &str, lease: Duration) -> Result<PgStore> {
        let location = redact(url);
        let db = |source| StateError::Db {
            path: location.clone(),
            source,
        };
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            StateError::Config(format!(
                "the PostgreSQL store's URL {location} cannot be read: {e} (a password with `/`, `?`, `@` or `:` must be percent-encoded)"
            ))
        })?;
        let session = format!(
            "cutover:{}:{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let opts = opts.application_name(&session);
        // One connection first: its error (refused, unknown host, bad
        // password) is the one to show, not a pool's timeout.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| StateError::Unreachable(location.clone()))?
            .map_err(db)?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts.clone())
            .await
            .map_err(db)?;
        refuse_foreign_tables(&pool, &location).await?;
        crate::migrate::run(&pool, MIGRATIONS, &location).await?;
        let store_id: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'store_id'")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        Ok(PgStore {
            session,
            poisoned: Arc::default(),
            store_id,
            pool,
            opts,
            location,
            lease,
            fence: Arc::default(),
            tasks: Mutex::default(),
        })
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> StateError + '_ {
        move |source| StateError::Db {
            path: self.location.clone(),
            source,
        }
    }

    /// Where the store is, for messages (the URL without its password).
    pub fn location(&self) -> String {
        self.location.clone()
    }

    /// Lets go of every lock taken here and closes the connections.
    pub async fn close(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.pool.close().await;
    }

    /// The store's id and this process's lock token, while it holds it.
    pub fn fence_token(&self) -> Option<(String, u64)> {
        let fence = self.fence()?;
        Some((self.store_id.clone(), u64::try_from(fence.token).ok()?))
    }

    fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A write transaction. While this process holds the lock, it first
    /// checks that the lock is still its own, under a share lock on the
    /// lease row that a takeover's update waits for: a write either ends
    /// before a takeover or fails after it.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        let fence = self.fence();
        if fence.is_none() && self.poisoned.load(Ordering::SeqCst) {
            return Err(StateError::LockLost(self.location.clone()));
        }
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        if let Some(fence) = fence {
            let now: (i64, bool) = sqlx::query_as(&format!("{} FOR SHARE OF lease", held_query()))
                .bind(LOCK_KEY)
                .bind(fence.backend)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.err())?;
            self.still_held(&fence, now).await?;
        }
        Ok(tx)
    }

    /// Whether the lock this process took is still its own; an error
    /// that says who took it otherwise. Checked before each remote step.
    pub async fn check_fence(&self) -> Result<()> {
        let Some(fence) = self.fence() else {
            return Ok(());
        };
        let now: (i64, bool) = sqlx::query_as(&held_query())
            .bind(LOCK_KEY)
            .bind(fence.backend)
            .fetch_one(&self.pool)
            .await
            .map_err(self.err())?;
        self.still_held(&fence, now).await
    }

    /// Whether the lock is still this process's, given the token the store
    /// has now.
    async fn still_held(&self, fence: &Fence, (now, held): (i64, bool)) -> Result<()> {
        if now == fence.token && held && !self.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Released by this process since the fence was read (its heartbeat
        // task clears the fence before it lets go of the lock): the write
        // goes on as any write without the lock does; nothing was lost.
        let released = self.fence().is_none_or(|f| f.token != fence.token);
        if released && !self.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        if now != fence.token {
            self.poisoned.store(true, Ordering::SeqCst);
            return Err(self.fenced(fence.token).await);
        }
        if !held || self.poisoned.load(Ordering::SeqCst) {
            self.poisoned.store(true, Ordering::SeqCst);
            return Err(StateError::LockLost(self.location.clone()));
        }
        Ok(())
    }

    async fn fenced(&self, token: i64) -> StateError {
        let row = self.lease_row().await.ok();
        StateError::Fenced {
            token,
            holder: row
                .and_then(|r| r.holder.filter(|_| r.token != token))
                .map(Box::new),
        }
    }

    async fn lease_row(&self) -> Result<LeaseRow> {
        let row = sqlx::query(&format!(
            "SELECT token, holder, backend_pid, session, {NOW_MS} - heartbeat AS age_ms,
               (SELECT CAST(pid AS BIGINT) FROM pg_locks WHERE {ADVISORY} LIMIT 1) AS locked_by
             FROM lease WHERE id = 1"
        ))
        .bind(LOCK_KEY)
        .fetch_one(&self.pool)
        .await
        .map_err(self.err())?;
        let holder: Option<String> = row.get("holder");
        Ok(LeaseRow {
            token: row.get("token"),
            holder: holder.and_then(|h| serde_json::from_str(&h).ok()),
            backend_pid: row.get("backend_pid"),
            session: row.get("session"),
            age_ms: row.get("age_ms"),
            locked_by: row.get("locked_by"),
        })
    }

    /// Takes the project lock, taking it over from a holder whose lease
    /// ran out, or reports who holds it.
    pub async fn lock(&self, holder: &LockHolder) -> Result<ProjectLock> {
        let mut conn =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.opts))
                .await
                .map_err(|_| StateError::Unreachable(self.location.clone()))?
                .map_err(self.err())?;
        let mut ended: Option<LockHolder> = None;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await
                .map_err(self.err())?;
            if got {
                break;
            }
            let row = self.lease_row().await?;
            let holder_now = row.holder.clone().unwrap_or_else(LockHolder::unknown);
            if ended.is_some() {
                // Ended; its backend lets go of the lock in a moment.
                if tokio::time::Instant::now() > deadline {
                    return Err(StateError::Locked(Box::new(holder_now)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // The lease describes the lock's holder only when it names the
            // backend that holds it; otherwise a holder is between taking
            // the lock and writing its lease, and is live.
            let stale = matches!(
                (row.locked_by, row.backend_pid, row.age_ms),
                (Some(by), Some(pid), Some(age)) if by == pid && age > self.lease_ms()
            );
            if !stale {
                return Err(StateError::Locked(Box::new(holder_now)));
            }
            self.end_sessions(row.backend_pid, row.session.as_deref())
                .await?;
            ended = Some(holder_now);
        }
        let json = serde_json::to_string(holder).unwrap_or_default();
        // A session of a stopped holder may still hold the lease row in an
        // open transaction: wait for it a while, never forever.
        sqlx::query("SET lock_timeout = '10s'")
            .execute(&mut conn)
            .await
            .map_err(self.err())?;
        // With the record it replaces: a holder that died left it.
        let (token, backend, leftover): (i64, i64, Option<String>) = sqlx::query_as(&format!(
            "UPDATE lease SET token = token + 1, holder = $1,
               backend_pid = pg_backend_pid(), session = $2, heartbeat = {NOW_MS}
             FROM (SELECT holder AS old FROM lease WHERE id = 1) AS before
             WHERE lease.id = 1 RETURNING lease.token, lease.backend_pid, before.old"
        ))
        .bind(json)
        .bind(&self.session)
        .fetch_one(&mut conn)
        .await
        .map_err(self.err())?;
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fence { token, backend });
        // A lock lost before (a long-lived `cutover serve`) no longer
        // speaks for this process: this one does.
        self.poisoned.store(false, Ordering::SeqCst);
        let (release, released) = oneshot::channel();
        let task = tokio::spawn(heartbeat(
            conn,
            token,
            self.heartbeat_every(),
            self.poisoned.clone(),
            released,
            self.fence.clone(),
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(ProjectLock::leased(
            release,
            ended.or(leftover.and_then(|h| serde_json::from_str(&h).ok())),
            u64::try_from(token).unwrap_or(0),
        ))
    }

    /// Ends a holder's sessions: the one that holds the advisory lock and
    /// every other of its process (one may hold the lease row in an open
    /// transaction).
    async fn end_sessions(&self, backend: Option<i64>, session: Option<&str>) -> Result<()> {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE pid <> pg_backend_pid()
                AND (CAST(pid AS BIGINT) = $1 OR application_name = $2)",
        )
        .bind(backend)
        .bind(session)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn heartbeat_every(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Who holds the lock, if anyone.
    pub async fn lock_status(&self) -> Result<Option<LockHolder>> {
        let row = self.lease_row().await?;
        Ok(row
            .locked_by
            .map(|_| row.holder.unwrap_or_else(LockHolder::unknown)))
    }

    /// `lock release`: clears the record of a free lock; a held lock is
    /// ended (its backend terminated, its token outdated) when it is the
    /// caller's own (same user and host), or with `force`.
    pub async fn release_lock(
        &self,
        caller: &LockHolder,
        force: bool,
    ) -> Result<(Option<LockHolder>, bool)> {
        let row = self.lease_row().await?;
        let live = row.locked_by.is_some();
        if let Some(pid) = row.locked_by {
            let holder = row.holder.clone().unwrap_or_else(LockHolder::unknown);
            let own = holder.user == caller.user && holder.host == caller.host;
            if !own && !force {
                return Err(StateError::Locked(Box::new(holder)));
            }
            self.end_sessions(Some(pid), row.session.as_deref()).await?;
        }
        // Only the lease as read: a lock taken meanwhile is not touched.
        sqlx::query(
            "UPDATE lease SET token = token + 1, holder = NULL, backend_pid = NULL,
               session = NULL, heartbeat = NULL WHERE id = 1 AND token = $1",
        )
        .bind(row.token)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok((row.holder, live))
    }
}

crate::queries::store_queries!(PgStore, sqlx::Postgres);

/// Keeps the lease fresh until the lock is released or lost; then lets go
/// of it and closes its connection.
async fn heartbeat(
    mut conn: PgConnection,
    token: i64,
    every: Duration,
    lost: Arc<AtomicBool>,
    mut released: oneshot::Receiver<()>,
    fence: Arc<Mutex<Option<Fence>>>,
) {
    let beat = format!("UPDATE lease SET heartbeat = {NOW_MS} WHERE id = 1 AND token = $1");
    loop {
        tokio::select! {
            _ = &mut released => break,
            () = tokio::time::sleep(every) => {
                let done = sqlx::query(&beat).bind(token).execute(&mut conn).await;
                if !matches!(done, Ok(d) if d.rows_affected() == 1) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
    {
        let mut held = fence.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|f| f.token == token) {
            *held = None;
        }
    }
    let _ = sqlx::query(
        "UPDATE lease SET holder = NULL, backend_pid = NULL, session = NULL, heartbeat = NULL
         WHERE id = 1 AND token = $1",
    )
    .bind(token)
    .execute(&mut conn)
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}

/// cutover's tables, and those of the migrator: a database that holds
/// any other is not a cutover store, and nothing is written to it.
const OWN_TABLES: &[&str] = &[
    "_sqlx_migrations",
    "meta",
    "allocations",
    "trees",
    "deployments",
    "kv",
    "lease",
    "audit",
    "release_files",
    "operators",
];

async fn refuse_foreign_tables(pool: &PgPool, location: &str) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .fetch_all(pool)
    .await
    .map_err(|source| StateError::Db {
        path: location.to_string(),
        source,
    })?;
    let foreign: Vec<&String> = tables
        .iter()
        .filter(|t| !OWN_TABLES.contains(&t.as_str()))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(StateError::Config(format!(
        "the database at {location} holds tables that are not cutover's ({}): it is not a cutover store, and nothing was written to it; give cutover a database of its own",
        foreign.iter().take(5).map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
    )))
}

/// `url` without its password (and without a `password=` parameter).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<a postgres URL>".into();
    };
    // The user info ends at the last `@` (a password may hold `/`, `?`
    // or `:` unencoded); the host part at the first `/` or `?` after it.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(userinfo.split(':').next().unwrap_or("")), after),
        None => (None, rest),
    };
    let (host, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact("postgres://ops:hunter2@db.internal:5432/cutover"),
            "postgres://ops@db.internal:5432/cutover"
        );
        assert_eq!(
            redact("postgresql://db/cutover?user=ops&password=hunter2&sslmode=require"),
            "postgresql://db/cutover?user=ops&sslmode=require"
        );
        assert_eq!(redact("postgres://db/cutover"), "postgres://db/cutover");
        assert_eq!(redact("nonsense"), "<a postgres URL>");
        assert!(!redact("postgres://a:p@ss:w@h/db").contains("ss:w"));
        assert_eq!(
            redact("postgres://ops:S3cr/tP?w@h:5432/db"),
            "postgres://ops@h:5432/db"
        );
    }
}
