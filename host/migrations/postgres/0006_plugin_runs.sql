-- Each merchant's pricing plugin configuration (JSON text given to every run).
CREATE TABLE plugin_configs (
    merchant_id  TEXT PRIMARY KEY REFERENCES merchants (id),
    config       TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Recorded production runs of merchants' plugins, for replay; the newest
-- within each merchant's retention (count and bytes) are kept.
CREATE TABLE plugin_runs (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    merchant_id  TEXT NOT NULL,
    at           BIGINT NOT NULL,
    digest       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    size         BIGINT NOT NULL,
    record       TEXT NOT NULL
);
CREATE INDEX plugin_runs_by_merchant ON plugin_runs (merchant_id, seq);
CREATE INDEX plugin_runs_by_digest ON plugin_runs (digest);

-- A candidate plugin running in the shadow of a merchant's active one on
-- live pricing, never applied; `report` (JSON) is what it did, `version`
-- guards its read-modify-write updates.
CREATE TABLE plugin_shadows (
    merchant_id   TEXT PRIMARY KEY REFERENCES merchants (id),
    digest        TEXT NOT NULL REFERENCES plugin_blobs (digest),
    installed_at  BIGINT NOT NULL,
    report        TEXT NOT NULL,
    version       BIGINT NOT NULL
);
