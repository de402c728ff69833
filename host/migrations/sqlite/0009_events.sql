-- The outbox (SPEC §6.9): each event is written by the transaction that
-- makes the change it tells of. `seq` orders them as they committed (one
-- writer); `published_at` is set once the relay has handed the event on.
-- `event_views` holds what each concerned merchant receives (only their
-- lines); a merchant with no row hears nothing of the event.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    data         BLOB NOT NULL,
    published_at INTEGER
);
CREATE INDEX events_unpublished ON events (seq) WHERE published_at IS NULL;
CREATE TABLE event_views (
    event_seq   INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    merchant_id TEXT NOT NULL,
    data        BLOB NOT NULL,
    PRIMARY KEY (event_seq, merchant_id)
);
CREATE INDEX event_views_merchant ON event_views (merchant_id, event_seq);

-- Leases on host-wide work that one replica at a time does (the event
-- relay): held by `holder` until `until_ms`, renewed by it, taken over by
-- another once it has lapsed.
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
