-- The operators who can read the store's secrets (envelope encryption):
-- the secrets are encrypted with one data key, and this table holds that
-- key wrapped (age, X25519) for each operator's public key. While it is
-- empty, secrets are under the project key in .cutover/secret.key.
-- meta 'secrets:key_id' names the data key the secrets are under: every
-- secret written, and every re-encryption, checks it in its transaction.
CREATE TABLE operators (
    name      TEXT PRIMARY KEY,
    recipient TEXT NOT NULL UNIQUE,
    wrapped   BYTEA NOT NULL,
    added_by  TEXT NOT NULL,
    added_at  TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('secrets:key_id', 'local');
