//! The embedded backend: SQLite at `.cutover/state.db` (WAL, busy timeout).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::lock::ProjectLock;
use crate::{LockHolder, Result, StateError};

/// The schema, as versioned migrations embedded in the binary: a store
/// made by an older cutover is brought up to date when it is opened; one
/// made by a newer cutover is refused.
pub(crate) const MIGRATIONS: crate::migrate::Embedded = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "shared",
        include_str!("../migrations/sqlite/0002_shared.sql"),
    ),
    (
        3,
        "operators",
        include_str!("../migrations/sqlite/0003_operators.sql"),
    ),
];

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
        SqliteStore::open_file(&workspace.join("state.db")).await
    }

    /// Opens (creating if needed) the store in the file `path`; its lock
    /// file is beside it.
    pub async fn open_file(path: &Path) -> Result<SqliteStore> {
        let workspace = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(workspace).map_err(|source| StateError::Io {
            path: workspace.display().to_string(),
            source,
        })?;
        let path = path.to_path_buf();
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
        for suffix in ["", "-wal", "-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let mut f = path.clone().into_os_string();
            f.push(suffix);
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
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

    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        self.path.display().to_string()
    }
}

crate::queries::store_queries!(SqliteStore, sqlx::Sqlite);

impl SqliteStore {
    /// Writes need no fencing here: the lock is a `flock`, which no one
    /// takes over from a live holder.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
        self.pool.begin().await.map_err(self.err())
    }

    /// Takes the project lock or reports who holds it.
    pub async fn lock(&self, holder: &LockHolder) -> Result<ProjectLock> {
        // `lock_status` (a status page, say) holds the flock for a
        // moment to probe it: a refusal is final only when it lasts.
        let mut tries = 0;
        loop {
            match ProjectLock::acquire(&self.lock_path, holder) {
                Err(StateError::Locked(_)) if tries < LOCK_TRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                taken => return taken,
            }
        }
    }

    pub async fn lock_status(&self) -> Result<Option<LockHolder>> {
        Ok(ProjectLock::status(&self.lock_path))
    }

    /// Clears the record of a lock no process holds. A held `flock` ends
    /// only with its process, `force` or not.
    pub async fn release_lock(
        &self,
        _caller: &LockHolder,
        _force: bool,
    ) -> Result<(Option<LockHolder>, bool)> {
        if let Some(live) = ProjectLock::status(&self.lock_path) {
            return Err(StateError::Locked(Box::new(live)));
        }
        Ok((ProjectLock::clear(&self.lock_path), false))
    }
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
    async fn a_prefix_reads_exactly_the_keys_it_starts() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path()).await.expect("new");
        for (k, v) in [
            ("fleet_view/w1", "a"),
            ("fleet_view/w_2", "b"),
            ("fleet_viewXw3", "c"),
            ("fleet_view", "d"),
            ("worker:w1", "e"),
        ] {
            store.meta_put(k, v).await.expect("put");
        }
        let mut got = store.meta_prefixed("fleet_view/").await.expect("read");
        got.sort();
        assert_eq!(
            got,
            [
                ("fleet_view/w1".to_string(), "a".to_string()),
                ("fleet_view/w_2".to_string(), "b".to_string())
            ]
        );
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
        assert_eq!(applied, [1, 2, 3]);
        store.close().await;
        // Opening again applies nothing and changes nothing.
        let store = SqliteStore::open(dir.path()).await.expect("again");
        assert_eq!(
            store.meta_get("kept").await.expect("read").as_deref(),
            Some("yes")
        );
    }

    fn secret(key: &str, value: &[u8]) -> crate::KvRecord {
        crate::KvRecord {
            job: "api".into(),
            key: key.into(),
            value: value.to_vec(),
            secret: true,
            updated_at: String::new(),
        }
    }

    fn operator(name: &str) -> crate::OperatorRecord {
        crate::OperatorRecord {
            name: name.into(),
            recipient: format!("age1{name}"),
            wrapped: b"wrapped".to_vec(),
            added_by: "t".into(),
            added_at: String::new(),
        }
    }

    async fn value(store: &SqliteStore, key: &str) -> Option<Vec<u8>> {
        let kv = store.kv_list(Some("api")).await.expect("kv");
        kv.into_iter().find(|r| r.key == key).map(|r| r.value)
    }

    /// Every write of a secret, and every re-encryption, names the key the
    /// secrets are under: one that names an outdated key writes nothing,
    /// and a re-encryption that fails half-way leaves everything as it was.
    #[tokio::test]
    async fn writes_under_an_outdated_data_key_are_refused_whole() {
        use crate::{StateError, LOCAL_KEY};
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path()).await.expect("new");
        store
            .kv_put_secret(&secret("a", b"1"), LOCAL_KEY)
            .await
            .expect("under the project key");
        let n = store
            .rekey(LOCAL_KEY, "k1", &[operator("ana")], &|r| {
                Ok([b"k1:".as_slice(), &r.value].concat())
            })
            .await
            .expect("rekey");
        assert_eq!(n, 1);
        assert_eq!(
            value(&store, "a").await.as_deref(),
            Some(b"k1:1".as_slice())
        );

        // A writer that read the key before the re-encryption.
        let late = store.kv_put_secret(&secret("b", b"2"), LOCAL_KEY).await;
        assert!(matches!(late, Err(StateError::KeyChanged)), "{late:?}");
        assert_eq!(value(&store, "b").await, None);
        let late = store.add_operator(&operator("bo"), LOCAL_KEY, "k9").await;
        assert!(matches!(late, Err(StateError::KeyChanged)), "{late:?}");
        let late = store
            .rekey(LOCAL_KEY, "k2", &[], &|r| Ok(r.value.clone()))
            .await;
        assert!(matches!(late, Err(StateError::KeyChanged)), "{late:?}");

        // An operator added after a re-encryption read the operators: it
        // is refused, not left to drop the new one.
        store
            .add_operator(&operator("cy"), "k1", "k1b")
            .await
            .expect("add");
        let late = store
            .rekey("k1", "k2", &[operator("ana")], &|r| Ok(r.value.clone()))
            .await;
        assert!(matches!(late, Err(StateError::KeyChanged)), "{late:?}");
        store
            .rekey("k1b", "k1", &[operator("ana")], &|r| Ok(r.value.clone()))
            .await
            .expect("back to k1");

        // A re-encryption that fails on one secret changes nothing.
        store
            .kv_put_secret(&secret("b", b"2"), "k1")
            .await
            .expect("under k1");
        let failed = store
            .rekey("k1", "k3", &[operator("bo")], &|r| {
                if r.key == "b" {
                    Err(StateError::Secret {
                        job: r.job.clone(),
                        key: r.key.clone(),
                        reason: "cannot".into(),
                    })
                } else {
                    Ok(b"k3".to_vec())
                }
            })
            .await;
        assert!(
            matches!(failed, Err(StateError::Secret { .. })),
            "{failed:?}"
        );
        assert_eq!(
            store
                .meta_get(crate::KEY_ID)
                .await
                .expect("id")
                .unwrap_or_default(),
            "k1"
        );
        assert_eq!(
            value(&store, "a").await.as_deref(),
            Some(b"k1:1".as_slice())
        );
        let names: Vec<String> = store
            .operators()
            .await
            .expect("operators")
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["ana"]);
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
                    known: 3,
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
