-- Component storage: one row per key, scoped by the owning component's namespace.
-- `version` is a random token rewritten on every write: compare-and-swap
-- compares it, and a deleted-then-recreated key never matches an old handle.
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    bucket    TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BLOB NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (namespace, bucket, key)
) WITHOUT ROWID;

-- Merchants and their API token hashes (SHA-256 of the secret part).
CREATE TABLE merchants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Host settings, e.g. the admin token hash.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
