-- The outbox (SPEC §6.9): each event is written by the transaction that
-- makes the change it tells of (`mercato_tx_events`, one statement with
-- the writes). `seq` is assigned at insert, so it may commit out of order
-- across transactions; events of one subject (an order) are serialized by
-- its row's lock and keep their order. `published_at` is set once the relay
-- has handed the event on. `event_views` holds what each concerned merchant
-- receives (only their lines).
CREATE TABLE events (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    published_at BIGINT
);
CREATE INDEX events_unpublished ON events (seq) WHERE published_at IS NULL;
CREATE TABLE event_views (
    event_seq   BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    merchant_id TEXT NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (event_seq, merchant_id)
);
CREATE INDEX event_views_merchant ON event_views (merchant_id, event_seq);

-- `mercato_tx`, then, if every write applied, the events (and their views:
-- `p_view_event` is the 1-based index of each view's event) in the same
-- transaction, and a notification for the relays (delivered at commit).
-- An event id already present is skipped with its views.
CREATE FUNCTION mercato_tx_events(
    p_ns text[], p_bucket text[], p_key text[], p_pre smallint[], p_pre_version bigint[],
    p_op smallint[], p_value bytea[], p_delta bigint[], p_min bigint[], p_max bigint[],
    p_version bigint[],
    p_ev_id text[], p_ev_kind text[], p_ev_subject text[], p_ev_created bigint[], p_ev_data bytea[],
    p_view_event integer[], p_view_merchant text[], p_view_data bytea[]
) RETURNS TABLE (failed_index integer, failed_reason smallint, failed_current bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    j integer;
    new_seq bigint;
BEGIN
    SELECT t.failed_index, t.failed_reason, t.failed_current
        INTO failed_index, failed_reason, failed_current
        FROM mercato_tx(p_ns, p_bucket, p_key, p_pre, p_pre_version, p_op, p_value,
                        p_delta, p_min, p_max, p_version) AS t;
    IF failed_index >= 0 THEN
        RETURN NEXT;
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ev_id, 1), 0) LOOP
        INSERT INTO events (id, kind, subject, created_at, data)
            VALUES (p_ev_id[i], p_ev_kind[i], p_ev_subject[i], p_ev_created[i], p_ev_data[i])
            ON CONFLICT (id) DO NOTHING
            RETURNING seq INTO new_seq;
        IF FOUND THEN
            FOR j IN 1 .. coalesce(array_length(p_view_event, 1), 0) LOOP
                IF p_view_event[j] = i THEN
                    INSERT INTO event_views (event_seq, merchant_id, data)
                        VALUES (new_seq, p_view_merchant[j], p_view_data[j]);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    IF coalesce(array_length(p_ev_id, 1), 0) > 0 THEN
        -- Relays listen: delivered at commit, not before.
        PERFORM pg_notify('mercato_events', '');
    END IF;
    RETURN NEXT;
END
$$;

-- Leases on host-wide work that one replica at a time does (the event
-- relay): held by `holder` until `until_ms`, renewed by it, taken over by
-- another once it has lapsed.
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
