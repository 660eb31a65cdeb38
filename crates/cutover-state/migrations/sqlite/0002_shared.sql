-- What a team shares through the store: the lease of the project lock (one
-- row; the embedded backend locks with a file and only counts its tokens
-- here), the audit log, and each ticket release's state file and log (the
-- files under .cutover/releases/ are copies of these).
CREATE TABLE lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token       BIGINT NOT NULL DEFAULT 0,
    holder      TEXT,
    backend_pid BIGINT,
    -- The holder's sessions (their application_name): a takeover ends
    -- them all, not only the one that holds the advisory lock.
    session     TEXT,
    heartbeat   BIGINT
);
INSERT INTO lease (id, token) VALUES (1, 0);
CREATE TABLE audit (
    seq  INTEGER PRIMARY KEY,
    line TEXT NOT NULL
);
CREATE TABLE release_files (
    ticket     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    content    TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (ticket, kind)
);
-- The store's identity, which workers keep beside the highest fencing
-- token they have seen.
INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
