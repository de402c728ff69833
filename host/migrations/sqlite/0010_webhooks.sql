-- Merchants' webhooks (SPEC §4): one endpoint per merchant, the event
-- types it wants (`,order.paid,stock.low,`: matched with LIKE), and the
-- signing secret (kept, since every delivery is signed with it).
CREATE TABLE webhooks (
    merchant_id TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
-- One delivery per (event, merchant), made by the relay when it hands the
-- event on (again after a crash: the unique key keeps one), then tried
-- until delivered or past the retry horizon (failed).
CREATE TABLE webhook_deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq    INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    merchant_id  TEXT NOT NULL,
    url          TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    UNIQUE (event_seq, merchant_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (merchant_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_merchant ON webhook_deliveries (merchant_id, seq);
