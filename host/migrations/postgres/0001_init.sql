-- Component storage: one row per key, scoped by the owning component's namespace.
-- `version` is a random token rewritten on every write: compare-and-swap
-- compares it, and a deleted-then-recreated key never matches an old handle.
-- Keys use the "C" collation so list order is byte order, as on SQLite.
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    bucket    TEXT NOT NULL,
    key       TEXT COLLATE "C" NOT NULL,
    value     BYTEA NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (namespace, bucket, key)
);

-- Merchants and their API token hashes (SHA-256 of the secret part).
CREATE TABLE merchants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Host settings, e.g. the admin token hash.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
