-- Pricing plugin binaries, by digest (shared when two merchants upload the same one).
CREATE TABLE plugin_blobs (
    digest      TEXT PRIMARY KEY,
    bytes       BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Each merchant's active plugin.
CREATE TABLE merchant_plugins (
    merchant_id  TEXT PRIMARY KEY REFERENCES merchants (id),
    digest       TEXT NOT NULL REFERENCES plugin_blobs (digest),
    uploaded_at  BIGINT NOT NULL
);

-- Budgets the operator set for a merchant (JSON); defaults apply otherwise.
CREATE TABLE plugin_limits (
    merchant_id  TEXT PRIMARY KEY REFERENCES merchants (id),
    limits       TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Recent failed runs, shown to the merchant.
CREATE TABLE plugin_errors (
    id           BIGSERIAL PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    digest       TEXT NOT NULL,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL,
    log          TEXT NOT NULL
);
CREATE INDEX plugin_errors_by_merchant ON plugin_errors (merchant_id, id);
