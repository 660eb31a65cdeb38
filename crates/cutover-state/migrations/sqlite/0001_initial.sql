-- The schema of cutover's first release: every table the embedded store
-- had before migrations were versioned (IF NOT EXISTS: a store made by
-- that release takes this migration as already there).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    job                 TEXT NOT NULL,
    worker              TEXT NOT NULL,
    status              TEXT NOT NULL,
    hash                TEXT,
    version             TEXT,
    release_id          TEXT,
    previous_release_id TEXT,
    health              TEXT NOT NULL DEFAULT 'unknown',
    message             TEXT NOT NULL DEFAULT '',
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (job, worker)
);
CREATE TABLE IF NOT EXISTS trees (
    job      TEXT NOT NULL,
    hash     TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (job, hash)
);
CREATE TABLE IF NOT EXISTS deployments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    head        TEXT,
    dirty       INTEGER NOT NULL,
    command     TEXT NOT NULL,
    user        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    summary     TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS kv (
    job        TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    secret     INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job, key)
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
