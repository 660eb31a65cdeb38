//! The embedded backend: SQLite at `.cutover/state.db` (WAL, busy timeout).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::lock::ProjectLock;
use crate::records::*;
use crate::{Fut, LockHolder, Result, StateError, StateStore};

/// The schema, as versioned migrations embedded in the binary: a store
/// made by an older cutover is brought up to date when it is opened; one
/// made by a newer cutover is refused.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../migrations/sqlite/0001_initial.sql"),
)];

/// How often a held lock is tried again, 25 ms apart, before it is
/// reported held.
const LOCK_TRIES: u32 = 12;

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    lock_path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `workspace` (`.cutover/`).
    pub async fn open(workspace: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(workspace).map_err(|source| StateError::Io {
            path: workspace.display().to_string(),
            source,
        })?;
        let path = workspace.join("state.db");
        let db = |source| StateError::Db {
            path: path.display().to_string(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(db)?;
        crate::migrate::run(&pool, MIGRATIONS, &path.display().to_string()).await?;
        // The operator's alone, like secret.key: it holds what runs where,
        // the KV (secrets encrypted) and the history. SQLite gives its -wal
        // and -shm files the same mode.
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(workspace.join(f), std::fs::Permissions::from_mode(0o600));
        }
        Ok(SqliteStore {
            pool,
            lock_path: workspace.join("lock"),
            path,
        })
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> StateError + '_ {
        move |source| StateError::Db {
            path: self.path.display().to_string(),
            source,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn alloc_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AllocationRecord> {
    let status: String = row.get("status");
    Ok(AllocationRecord {
        job: row.get("job"),
        worker: row.get("worker"),
        status: AllocStatus::parse(&status)
            .ok_or_else(|| StateError::Corrupt(format!("allocation status `{status}`")))?,
        hash: row.get("hash"),
        version: row.get("version"),
        release_id: row.get("release_id"),
        previous_release_id: row.get("previous_release_id"),
        health: row.get("health"),
        message: row.get("message"),
        updated_at: row.get("updated_at"),
    })
}

impl StateStore for SqliteStore {
    fn allocations(&self) -> Fut<'_, Vec<AllocationRecord>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM allocations ORDER BY job, worker")
                .fetch_all(&self.pool)
                .await
                .map_err(self.err())?;
            rows.iter().map(alloc_from_row).collect()
        })
    }

    fn put_allocation<'a>(&'a self, r: &'a AllocationRecord) -> Fut<'a, ()> {
        Box::pin(async move { upsert_allocation(&self.pool, r).await.map_err(self.err()) })
    }

    fn record_promotions<'a>(&'a self, p: &'a Promotions) -> Fut<'a, ()> {
        Box::pin(async move {
            // One transaction: a batch is promoted in the store as a whole.
            let mut tx = self.pool.begin().await.map_err(self.err())?;
            for (job, hash, manifest) in &p.trees {
                insert_tree(&mut *tx, job, hash, manifest)
                    .await
                    .map_err(self.err())?;
            }
            for r in &p.allocations {
                upsert_allocation(&mut *tx, r).await.map_err(self.err())?;
            }
            for (name, spec) in &p.workers {
                upsert_worker(&mut *tx, name, spec)
                    .await
                    .map_err(self.err())?;
            }
            tx.commit().await.map_err(self.err())
        })
    }

    fn delete_allocation<'a>(&'a self, job: &'a str, worker: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM allocations WHERE job = ? AND worker = ?")
                .bind(job)
                .bind(worker)
                .execute(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(())
        })
    }

    fn tree<'a>(&'a self, job: &'a str, hash: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT manifest FROM trees WHERE job = ? AND hash = ?")
                .bind(job)
                .bind(hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(row.map(|r| r.get("manifest")))
        })
    }

    fn put_tree<'a>(&'a self, job: &'a str, hash: &'a str, manifest: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            insert_tree(&self.pool, job, hash, manifest)
                .await
                .map_err(self.err())
        })
    }

    fn begin_deployment<'a>(&'a self, d: &'a NewDeployment) -> Fut<'a, i64> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO deployments (started_at, head, dirty, command, user, outcome)
                 VALUES (?, ?, ?, ?, ?, 'running') RETURNING seq",
            )
            .bind(&d.started_at)
            .bind(&d.head)
            .bind(d.dirty)
            .bind(&d.command)
            .bind(&d.user)
            .fetch_one(&self.pool)
            .await
            .map_err(self.err())?;
            Ok(row.get("seq"))
        })
    }

    fn record_rebuild<'a>(&'a self, seq: i64, summary: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let now = crate::now_rfc3339();
            sqlx::query(
                "INSERT INTO deployments (seq, started_at, finished_at, dirty, command, user, outcome, summary)
                 SELECT ?, ?, ?, 0, 'state rebuild', '', 'rebuilt', ?
                 WHERE ? > COALESCE((SELECT MAX(seq) FROM deployments), 0)",
            )
            .bind(seq)
            .bind(&now)
            .bind(&now)
            .bind(summary)
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
            Ok(())
        })
    }

    fn finish_deployment<'a>(
        &'a self,
        seq: i64,
        outcome: &'a str,
        summary: &'a str,
    ) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE deployments SET finished_at = ?, outcome = ?, summary = ? WHERE seq = ?",
            )
            .bind(crate::now_rfc3339())
            .bind(outcome)
            .bind(summary)
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
            // Trees no allocation is promoted to are only history.
            sqlx::query(
                "DELETE FROM trees WHERE NOT EXISTS (SELECT 1 FROM allocations a
                   WHERE a.job = trees.job AND a.hash = trees.hash)",
            )
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
            Ok(())
        })
    }

    fn deployments(&self, limit: i64) -> Fut<'_, Vec<DeploymentRecord>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM deployments ORDER BY seq DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(rows
                .iter()
                .map(|r| DeploymentRecord {
                    seq: r.get("seq"),
                    started_at: r.get("started_at"),
                    finished_at: r.get("finished_at"),
                    head: r.get("head"),
                    dirty: r.get("dirty"),
                    command: r.get("command"),
                    user: r.get("user"),
                    outcome: r.get("outcome"),
                    summary: r.get("summary"),
                })
                .collect())
        })
    }

    fn kv_list<'a>(&'a self, job: Option<&'a str>) -> Fut<'a, Vec<KvRecord>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT * FROM kv WHERE (? IS NULL OR job = ?) ORDER BY job, key")
                    .bind(job)
                    .bind(job)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
            Ok(rows
                .iter()
                .map(|r| KvRecord {
                    job: r.get("job"),
                    key: r.get("key"),
                    value: r.get("value"),
                    secret: r.get("secret"),
                    updated_at: r.get("updated_at"),
                })
                .collect())
        })
    }

    fn kv_put<'a>(&'a self, r: &'a KvRecord) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO kv (job, key, value, secret, updated_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (job, key) DO UPDATE SET value = excluded.value,
                    secret = excluded.secret, updated_at = excluded.updated_at",
            )
            .bind(&r.job)
            .bind(&r.key)
            .bind(&r.value)
            .bind(r.secret)
            .bind(&r.updated_at)
            .execute(&self.pool)
            .await
            .map_err(self.err())?;
            Ok(())
        })
    }

    fn kv_delete<'a>(&'a self, job: &'a str, key: Option<&'a str>) -> Fut<'a, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM kv WHERE job = ? AND (? IS NULL OR key = ?)")
                .bind(job)
                .bind(key)
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(done.rows_affected())
        })
    }

    fn known_workers(&self) -> Fut<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT key, value FROM meta WHERE key LIKE 'worker:%'")
                .fetch_all(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(rows
                .iter()
                .map(|r| {
                    let k: String = r.get("key");
                    (k.trim_start_matches("worker:").to_string(), r.get("value"))
                })
                .collect())
        })
    }

    fn put_known_worker<'a>(&'a self, name: &'a str, spec: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            upsert_worker(&self.pool, name, spec)
                .await
                .map_err(self.err())
        })
    }

    fn forget_worker<'a>(&'a self, name: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM meta WHERE key = ?")
                .bind(format!("worker:{name}"))
                .execute(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(())
        })
    }

    fn meta_get<'a>(&'a self, key: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(row.map(|r| r.get("value")))
        })
    }

    fn meta_put<'a>(&'a self, key: &'a str, value: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
                .bind(key)
                .bind(value)
                .execute(&self.pool)
                .await
                .map_err(self.err())?;
            Ok(())
        })
    }

    fn meta_raise<'a>(&'a self, key: &'a str, value: u64) -> Fut<'a, u64> {
        Box::pin(async move {
            let v = i64::try_from(value).unwrap_or(i64::MAX);
            let row = sqlx::query(
                "INSERT INTO meta (key, value) VALUES (?1, CAST(?2 AS TEXT))
                 ON CONFLICT(key) DO UPDATE SET value = CAST(MAX(CAST(value AS INTEGER), ?2) AS TEXT)
                 RETURNING value",
            )
            .bind(key)
            .bind(v)
            .fetch_one(&self.pool)
            .await
            .map_err(self.err())?;
            let stored: String = row.get("value");
            Ok(stored.parse().unwrap_or(value))
        })
    }

    fn lock<'a>(&'a self, holder: &'a LockHolder) -> Fut<'a, ProjectLock> {
        Box::pin(async move {
            // `lock_status` (a status page, say) holds the flock for a
            // moment to probe it: a refusal is final only when it lasts.
            let mut tries = 0;
            loop {
                match ProjectLock::acquire(&self.lock_path, holder) {
                    Err(StateError::Locked(_)) if tries < LOCK_TRIES => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                    }
                    taken => return taken,
                }
            }
        })
    }

    fn lock_status(&self) -> Fut<'_, Option<LockHolder>> {
        Box::pin(async move { Ok(ProjectLock::status(&self.lock_path)) })
    }

    fn force_unlock(&self) -> Fut<'_, Option<LockHolder>> {
        Box::pin(async move {
            if let Some(live) = ProjectLock::status(&self.lock_path) {
                return Err(StateError::Locked(Box::new(live)));
            }
            Ok(ProjectLock::clear(&self.lock_path))
        })
    }
}

async fn upsert_allocation<'e, E>(
    e: E,
    r: &AllocationRecord,
) -> std::result::Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO allocations (job, worker, status, hash, version, release_id,
            previous_release_id, health, message, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (job, worker) DO UPDATE SET status = excluded.status,
            hash = excluded.hash, version = excluded.version,
            release_id = excluded.release_id,
            previous_release_id = excluded.previous_release_id,
            health = excluded.health, message = excluded.message,
            updated_at = excluded.updated_at",
    )
    .bind(&r.job)
    .bind(&r.worker)
    .bind(r.status.as_str())
    .bind(&r.hash)
    .bind(&r.version)
    .bind(&r.release_id)
    .bind(&r.previous_release_id)
    .bind(&r.health)
    .bind(&r.message)
    .bind(&r.updated_at)
    .execute(e)
    .await?;
    Ok(())
}

async fn insert_tree<'e, E>(
    e: E,
    job: &str,
    hash: &str,
    manifest: &str,
) -> std::result::Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query("INSERT OR IGNORE INTO trees (job, hash, manifest) VALUES (?, ?, ?)")
        .bind(job)
        .bind(hash)
        .bind(manifest)
        .execute(e)
        .await?;
    Ok(())
}

async fn upsert_worker<'e, E>(e: E, name: &str, spec: &str) -> std::result::Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
        .bind(format!("worker:{name}"))
        .bind(spec)
        .execute(e)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store as the first release made it: the tables, no migration
    /// record.
    async fn made_by_the_first_release(dir: &Path) {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .expect("url")
            .filename(dir.join("state.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(opts)
            .await
            .expect("open");
        sqlx::raw_sql(MIGRATIONS[0].2)
            .execute(&pool)
            .await
            .expect("schema");
        sqlx::raw_sql("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
            .execute(&pool)
            .await
            .expect("row");
        pool.close().await;
    }

    #[tokio::test]
    async fn an_older_store_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().expect("dir");
        made_by_the_first_release(dir.path()).await;
        let store = SqliteStore::open(dir.path()).await.expect("migrated");
        assert_eq!(
            store.meta_get("kept").await.expect("read").as_deref(),
            Some("yes")
        );
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .fetch_all(&store.pool)
            .await
            .expect("migrations");
        assert_eq!(applied, [1]);
        store.close().await;
        // Opening again applies nothing and changes nothing.
        let store = SqliteStore::open(dir.path()).await.expect("again");
        assert_eq!(
            store.meta_get("kept").await.expect("read").as_deref(),
            Some("yes")
        );
    }

    #[tokio::test]
    async fn a_store_from_a_newer_cutover_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path()).await.expect("new");
        store.meta_put("kept", "yes").await.expect("write");
        sqlx::raw_sql(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', 1, x'00', 0)",
        )
        .execute(&store.pool)
        .await
        .expect("future");
        store.close().await;
        let refused = SqliteStore::open(dir.path()).await.err().expect("refused");
        assert!(
            matches!(
                refused,
                StateError::TooNew {
                    version: 99,
                    known: 1,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("written by a newer cutover"));
        let rows: Vec<String> = {
            let opts = SqliteConnectOptions::from_str("sqlite://")
                .expect("url")
                .filename(dir.path().join("state.db"));
            let pool = SqlitePoolOptions::new()
                .connect_with(opts)
                .await
                .expect("open");
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'kept'")
                .fetch_all(&pool)
                .await
                .expect("read")
        };
        assert_eq!(rows, ["yes"]);
    }
}
