-- The schema of cutover's first release, as the embedded store has it
-- (sqlite/0001_initial.sql), in PostgreSQL's types.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE allocations (
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
CREATE TABLE trees (
    job      TEXT NOT NULL,
    hash     TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (job, hash)
);
CREATE TABLE deployments (
    seq         BIGINT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    head        TEXT,
    dirty       BOOLEAN NOT NULL,
    command     TEXT NOT NULL,
    "user"      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    summary     TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE kv (
    job        TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BYTEA NOT NULL,
    secret     BOOLEAN NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job, key)
);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
