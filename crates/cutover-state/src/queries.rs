//! The store's queries, written once for both backends: the SQL is the
//! dialect SQLite and PostgreSQL share (`$N` parameters, `ON CONFLICT`,
//! `RETURNING`, `CAST`), and [`store_queries!`] expands it into each
//! backend's `impl`, over that backend's pool and row types.
//!
//! A backend provides `pool`, `err()` (its errors, naming the store) and
//! `begin_write()`: the transaction every write runs in (PostgreSQL's also
//! checks the writer's fencing token).

/// Expands the shared queries for `$store`, whose `pool` is a `Pool<$db>`.
macro_rules! store_queries {
    ($store:ty, $db:ty) => {
        impl $store {
            pub async fn allocations(&self) -> $crate::Result<Vec<$crate::AllocationRecord>> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM allocations ORDER BY job, worker")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
                rows.iter()
                    .map(|row| {
                        let status: String = row.get("status");
                        $crate::check_names(&[row.get("job"), row.get("worker")])?;
                        Ok($crate::AllocationRecord {
                            job: row.get("job"),
                            worker: row.get("worker"),
                            status: $crate::AllocStatus::parse(&status).ok_or_else(|| {
                                $crate::StateError::Corrupt(format!(
                                    "allocation status `{status}`"
                                ))
                            })?,
                            hash: row.get("hash"),
                            version: row.get("version"),
                            release_id: row.get("release_id"),
                            previous_release_id: row.get("previous_release_id"),
                            health: row.get("health"),
                            message: row.get("message"),
                            updated_at: row.get("updated_at"),
                        })
                    })
                    .collect()
            }

            pub async fn put_allocation(&self, r: &$crate::AllocationRecord) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                upsert_allocation(&mut *tx, r).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            /// The promotions of one batch, in one transaction: all or none.
            pub async fn record_promotions(&self, p: &$crate::Promotions) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                for (job, hash, manifest) in &p.trees {
                    insert_tree(&mut *tx, job, hash, manifest)
                        .await
                        .map_err(self.err())?;
                }
                for r in &p.allocations {
                    upsert_allocation(&mut *tx, r).await.map_err(self.err())?;
                }
                for (name, spec) in &p.workers {
                    put_meta(&mut *tx, &format!("worker:{name}"), spec)
                        .await
                        .map_err(self.err())?;
                }
                tx.commit().await.map_err(self.err())
            }

            pub async fn delete_allocation(&self, job: &str, worker: &str) -> $crate::Result<()> {
                self.write(
                    sqlx::query("DELETE FROM allocations WHERE job = $1 AND worker = $2")
                        .bind(job)
                        .bind(worker),
                )
                .await
                .map(drop)
            }

            /// The manifest (JSON) of a tree that was promoted somewhere.
            pub async fn tree(&self, job: &str, hash: &str) -> $crate::Result<Option<String>> {
                sqlx::query_scalar("SELECT manifest FROM trees WHERE job = $1 AND hash = $2")
                    .bind(job)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.err())
            }

            pub async fn put_tree(&self, job: &str, hash: &str, manifest: &str) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                insert_tree(&mut *tx, job, hash, manifest)
                    .await
                    .map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            pub async fn begin_deployment(&self, d: &$crate::NewDeployment) -> $crate::Result<i64> {
                let mut tx = self.begin_write().await?;
                let seq: i64 = sqlx::query_scalar(
                    r#"INSERT INTO deployments (seq, started_at, head, dirty, command, "user", outcome)
                       VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments),
                               $1, $2, $3, $4, $5, 'running')
                       RETURNING seq"#,
                )
                .bind(&d.started_at)
                .bind(&d.head)
                .bind(d.dirty)
                .bind(&d.command)
                .bind(&d.user)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.err())?;
                tx.commit().await.map_err(self.err())?;
                Ok(seq)
            }

            /// Records a `state rebuild` as deployment `seq` when the
            /// store's counter is below it, so that later deployments
            /// number after what the workers carry.
            pub async fn record_rebuild(&self, seq: i64, summary: &str) -> $crate::Result<()> {
                let now = $crate::now_rfc3339();
                self.write(
                    sqlx::query(
                        r#"INSERT INTO deployments
                             (seq, started_at, finished_at, dirty, command, "user", outcome, summary)
                           SELECT $1, $2, $2, $3, 'state rebuild', '', 'rebuilt', $4
                           WHERE $1 > (SELECT COALESCE(MAX(seq), 0) FROM deployments)"#,
                    )
                    .bind(seq)
                    .bind(now)
                    .bind(false)
                    .bind(summary),
                )
                .await
                .map(drop)
            }

            pub async fn finish_deployment(
                &self,
                seq: i64,
                outcome: &str,
                summary: &str,
            ) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE deployments SET finished_at = $1, outcome = $2, summary = $3
                     WHERE seq = $4",
                )
                .bind($crate::now_rfc3339())
                .bind(outcome)
                .bind(summary)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(self.err())?;
                // Trees no allocation is promoted to are only history.
                sqlx::query(
                    "DELETE FROM trees WHERE NOT EXISTS (SELECT 1 FROM allocations a
                       WHERE a.job = trees.job AND a.hash = trees.hash)",
                )
                .execute(&mut *tx)
                .await
                .map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            pub async fn deployments(&self, limit: i64) -> $crate::Result<Vec<$crate::DeploymentRecord>> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM deployments ORDER BY seq DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
                Ok(rows
                    .iter()
                    .map(|r| $crate::DeploymentRecord {
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
            }

            /// Raw rows: a secret's value is ciphertext; see [`SecretKey`].
            pub async fn kv_list(&self, job: Option<&str>) -> $crate::Result<Vec<$crate::KvRecord>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT * FROM kv WHERE (CAST($1 AS TEXT) IS NULL OR job = $1) ORDER BY job, key",
                )
                .bind(job)
                .fetch_all(&self.pool)
                .await
                .map_err(self.err())?;
                Ok(rows
                    .iter()
                    .map(|r| $crate::KvRecord {
                        job: r.get("job"),
                        key: r.get("key"),
                        value: r.get("value"),
                        secret: r.get("secret"),
                        updated_at: r.get("updated_at"),
                    })
                    .collect())
            }

            pub async fn kv_put(&self, r: &$crate::KvRecord) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                upsert_kv(&mut *tx, r).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            pub async fn kv_delete(&self, job: &str, key: Option<&str>) -> $crate::Result<u64> {
                self.write(
                    sqlx::query(
                        "DELETE FROM kv WHERE job = $1 AND (CAST($2 AS TEXT) IS NULL OR key = $2)",
                    )
                    .bind(job)
                    .bind(key),
                )
                .await
            }

            pub async fn kv_put_secret(&self, r: &$crate::KvRecord, key_id: &str) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                if !claim_key(&mut *tx, key_id, key_id).await.map_err(self.err())? {
                    return Err($crate::StateError::KeyChanged);
                }
                upsert_kv(&mut *tx, r).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            pub async fn operators(&self) -> $crate::Result<Vec<$crate::OperatorRecord>> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT * FROM operators ORDER BY name")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
                Ok(rows
                    .iter()
                    .map(|r| $crate::OperatorRecord {
                        name: r.get("name"),
                        recipient: r.get("recipient"),
                        wrapped: r.get("wrapped"),
                        added_by: r.get("added_by"),
                        added_at: r.get("added_at"),
                    })
                    .collect())
            }

            pub async fn add_operator(
                &self,
                op: &$crate::OperatorRecord,
                from: &str,
                to: &str,
            ) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                if !claim_key(&mut *tx, from, to).await.map_err(self.err())? {
                    return Err($crate::StateError::KeyChanged);
                }
                insert_operator(&mut *tx, op).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            pub async fn rekey(
                &self,
                from: &str,
                to: &str,
                operators: &[$crate::OperatorRecord],
                reencrypt: &(dyn Fn(&$crate::KvRecord) -> $crate::Result<Vec<u8>>
                      + Send
                      + Sync),
            ) -> $crate::Result<usize> {
                use sqlx::Row;
                let mut tx = self.begin_write().await?;
                // The claim comes first: from here on no secret can be
                // written under the old key, and the secrets read below
                // include every one written before.
                if !claim_key(&mut *tx, from, to).await.map_err(self.err())? {
                    return Err($crate::StateError::KeyChanged);
                }
                let rows = sqlx::query("SELECT * FROM kv WHERE secret ORDER BY job, key")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(self.err())?;
                for row in &rows {
                    let r = $crate::KvRecord {
                        job: row.get("job"),
                        key: row.get("key"),
                        value: row.get("value"),
                        secret: true,
                        updated_at: row.get("updated_at"),
                    };
                    let value = reencrypt(&r)?;
                    sqlx::query("UPDATE kv SET value = $1 WHERE job = $2 AND key = $3")
                        .bind(value)
                        .bind(&r.job)
                        .bind(&r.key)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.err())?;
                }
                sqlx::query("DELETE FROM operators")
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err())?;
                for op in operators {
                    insert_operator(&mut *tx, op).await.map_err(self.err())?;
                }
                tx.commit().await.map_err(self.err())?;
                Ok(rows.len())
            }

            /// The last known address of every worker that ran an
            /// allocation, as JSON, so that a worker removed from
            /// workers.toml can still be stopped.
            pub async fn known_workers(&self) -> $crate::Result<Vec<(String, String)>> {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT key, value FROM meta WHERE key LIKE 'worker:%'")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.err())?;
                let workers: Vec<(String, String)> = rows
                    .into_iter()
                    .map(|(k, v)| (k.trim_start_matches("worker:").to_string(), v))
                    .collect();
                for (name, _) in &workers {
                    $crate::check_names(&[name.as_str()])?;
                }
                Ok(workers)
            }

            pub async fn put_known_worker(&self, name: &str, spec: &str) -> $crate::Result<()> {
                self.meta_put(&format!("worker:{name}"), spec).await
            }

            pub async fn forget_worker(&self, name: &str) -> $crate::Result<()> {
                self.write(sqlx::query("DELETE FROM meta WHERE key = $1").bind(format!("worker:{name}")))
                    .await
                    .map(drop)
            }

            /// A small named document (JSON), e.g. what a ticket release
            /// replaced.
            pub async fn meta_get(&self, key: &str) -> $crate::Result<Option<String>> {
                sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.err())
            }

            /// Every meta entry whose key starts with `prefix`.
            pub async fn meta_prefixed(&self, prefix: &str) -> $crate::Result<Vec<(String, String)>> {
                sqlx::query_as("SELECT key, value FROM meta WHERE substr(key, 1, length($1)) = $1")
                    .bind(prefix)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())
            }

            pub async fn meta_put(&self, key: &str, value: &str) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                put_meta(&mut *tx, key, value).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            /// Raises a numeric meta value to `value`, never lowers it, in
            /// one statement (two processes cannot lower each other's);
            /// returns the value now stored.
            pub async fn meta_raise(&self, key: &str, value: u64) -> $crate::Result<u64> {
                let v = i64::try_from(value).unwrap_or(i64::MAX);
                let mut tx = self.begin_write().await?;
                let stored: String = sqlx::query_scalar(
                    "INSERT INTO meta (key, value) VALUES ($1, CAST($2 AS TEXT))
                     ON CONFLICT (key) DO UPDATE SET value = CASE
                        WHEN CAST(meta.value AS BIGINT) >= $2 THEN meta.value
                        ELSE CAST($2 AS TEXT) END
                     RETURNING value",
                )
                .bind(key)
                .bind(v)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.err())?;
                tx.commit().await.map_err(self.err())?;
                Ok(stored.parse().unwrap_or(value))
            }

            /// Appends one line to the audit log.
            pub async fn audit_append(&self, line: &str) -> $crate::Result<()> {
                self.write(sqlx::query("INSERT INTO audit (line) VALUES ($1)").bind(line))
                    .await
                    .map(drop)
            }

            /// The last `limit` lines of the audit log, oldest first.
            pub async fn audit_tail(&self, limit: i64) -> $crate::Result<Vec<String>> {
                let mut lines: Vec<String> =
                    sqlx::query_scalar("SELECT line FROM audit ORDER BY seq DESC LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.err())?;
                lines.reverse();
                Ok(lines)
            }

            /// One of a ticket release's files (`env`, `log`) as stored.
            pub async fn release_file(&self, ticket: &str, kind: &str) -> $crate::Result<Option<String>> {
                sqlx::query_scalar("SELECT content FROM release_files WHERE ticket = $1 AND kind = $2")
                    .bind(ticket)
                    .bind(kind)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.err())
            }

            /// Replaces a ticket release's file, or with `append`, adds to it.
            pub async fn put_release_file(
                &self,
                ticket: &str,
                kind: &str,
                content: &str,
                append: bool,
            ) -> $crate::Result<()> {
                let sql = if append {
                    "INSERT INTO release_files (ticket, kind, content, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (ticket, kind) DO UPDATE SET
                        content = release_files.content || excluded.content,
                        updated_at = excluded.updated_at"
                } else {
                    "INSERT INTO release_files (ticket, kind, content, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (ticket, kind) DO UPDATE SET
                        content = excluded.content, updated_at = excluded.updated_at"
                };
                self.write(
                    sqlx::query(sql)
                        .bind(ticket)
                        .bind(kind)
                        .bind(content)
                        .bind($crate::now_rfc3339()),
                )
                .await
                .map(drop)
            }

            /// Every stored release file: (ticket, kind, content).
            pub async fn release_files(&self) -> $crate::Result<Vec<(String, String, String)>> {
                sqlx::query_as("SELECT ticket, kind, content FROM release_files ORDER BY ticket, kind")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())
            }

            /// Everything the store holds, for `state migrate`.
            pub async fn export(&self) -> $crate::Result<$crate::Snapshot> {
                let meta: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM meta ORDER BY key")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
                let trees: Vec<(String, String, String)> =
                    sqlx::query_as("SELECT job, hash, manifest FROM trees ORDER BY job, hash")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.err())?;
                let audit: Vec<String> = sqlx::query_scalar("SELECT line FROM audit ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.err())?;
                let token: i64 = sqlx::query_scalar("SELECT token FROM lease WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(self.err())?;
                let mut deployments = self.deployments(i64::MAX).await?;
                deployments.reverse();
                Ok($crate::Snapshot {
                    meta,
                    allocations: self.allocations().await?,
                    trees,
                    deployments,
                    kv: self.kv_list(None).await?,
                    audit,
                    release_files: self.release_files().await?,
                    operators: self.operators().await?,
                    lease_token: token,
                })
            }

            /// Whether the store holds nothing but what its migrations
            /// wrote.
            pub async fn is_empty(&self) -> $crate::Result<bool> {
                let rows: i64 = sqlx::query_scalar(
                    "SELECT (SELECT COUNT(*) FROM allocations) + (SELECT COUNT(*) FROM trees)
                      + (SELECT COUNT(*) FROM deployments) + (SELECT COUNT(*) FROM kv)
                      + (SELECT COUNT(*) FROM audit) + (SELECT COUNT(*) FROM release_files)
                      + (SELECT COUNT(*) FROM operators)
                      + (SELECT COUNT(*) FROM meta
                         WHERE key NOT IN ('schema_version', 'store_id', 'secrets:key_id'))",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(self.err())?;
                Ok(rows == 0)
            }

            /// Writes `s` into this (empty) store, in one transaction.
            pub async fn import(&self, s: &$crate::Snapshot) -> $crate::Result<()> {
                let mut tx = self.begin_write().await?;
                for (k, v) in &s.meta {
                    put_meta(&mut *tx, k, v).await.map_err(self.err())?;
                }
                for r in &s.allocations {
                    upsert_allocation(&mut *tx, r).await.map_err(self.err())?;
                }
                for (job, hash, manifest) in &s.trees {
                    insert_tree(&mut *tx, job, hash, manifest)
                        .await
                        .map_err(self.err())?;
                }
                for d in &s.deployments {
                    sqlx::query(
                        r#"INSERT INTO deployments
                             (seq, started_at, finished_at, head, dirty, command, "user", outcome, summary)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
                    )
                    .bind(d.seq)
                    .bind(&d.started_at)
                    .bind(&d.finished_at)
                    .bind(&d.head)
                    .bind(d.dirty)
                    .bind(&d.command)
                    .bind(&d.user)
                    .bind(&d.outcome)
                    .bind(&d.summary)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err())?;
                }
                for r in &s.kv {
                    sqlx::query(
                        "INSERT INTO kv (job, key, value, secret, updated_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&r.job)
                    .bind(&r.key)
                    .bind(&r.value)
                    .bind(r.secret)
                    .bind(&r.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err())?;
                }
                for line in &s.audit {
                    sqlx::query("INSERT INTO audit (line) VALUES ($1)")
                        .bind(line)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.err())?;
                }
                for (ticket, kind, content) in &s.release_files {
                    sqlx::query(
                        "INSERT INTO release_files (ticket, kind, content, updated_at)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(ticket)
                    .bind(kind)
                    .bind(content)
                    .bind($crate::now_rfc3339())
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err())?;
                }
                for op in &s.operators {
                    insert_operator(&mut *tx, op).await.map_err(self.err())?;
                }
                // Workers keep tokens per store id: the copy goes on counting.
                sqlx::query("UPDATE lease SET token = $1 WHERE id = 1")
                    .bind(s.lease_token)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err())?;
                tx.commit().await.map_err(self.err())
            }

            /// Runs one statement in a write transaction; the rows it
            /// changed.
            async fn write<'q>(
                &self,
                q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            ) -> $crate::Result<u64> {
                let mut tx = self.begin_write().await?;
                let done = q.execute(&mut *tx).await.map_err(self.err())?;
                tx.commit().await.map_err(self.err())?;
                Ok(done.rows_affected())
            }
        }

        async fn upsert_allocation<'e, E>(
            e: E,
            r: &$crate::AllocationRecord,
        ) -> std::result::Result<(), sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO allocations (job, worker, status, hash, version, release_id,
                    previous_release_id, health, message, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO trees (job, hash, manifest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(job)
            .bind(hash)
            .bind(manifest)
            .execute(e)
            .await?;
            Ok(())
        }

        async fn upsert_kv<'e, E>(e: E, r: &$crate::KvRecord) -> std::result::Result<(), sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO kv (job, key, value, secret, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (job, key) DO UPDATE SET value = excluded.value,
                    secret = excluded.secret, updated_at = excluded.updated_at",
            )
            .bind(&r.job)
            .bind(&r.key)
            .bind(&r.value)
            .bind(r.secret)
            .bind(&r.updated_at)
            .execute(e)
            .await?;
            Ok(())
        }

        async fn insert_operator<'e, E>(
            e: E,
            op: &$crate::OperatorRecord,
        ) -> std::result::Result<(), sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO operators (name, recipient, wrapped, added_by, added_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&op.name)
            .bind(&op.recipient)
            .bind(&op.wrapped)
            .bind(&op.added_by)
            .bind(&op.added_at)
            .execute(e)
            .await?;
            Ok(())
        }

        /// Moves the secrets' key id from `from` to `to` (the same, to
        /// check it): false when it is no longer `from`. Run first in a
        /// write transaction, it also keeps any other from changing it
        /// until that one ends (the row is locked, or the database is).
        async fn claim_key<'e, E>(e: E, from: &str, to: &str) -> std::result::Result<bool, sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            // The row is written by the migration that made the table.
            let done = sqlx::query("UPDATE meta SET value = $1 WHERE key = $2 AND value = $3")
                .bind(to)
                .bind($crate::KEY_ID)
                .bind(from)
                .execute(e)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn put_meta<'e, E>(e: E, key: &str, value: &str) -> std::result::Result<(), sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(e)
            .await?;
            Ok(())
        }
    };
}

pub(crate) use store_queries;
