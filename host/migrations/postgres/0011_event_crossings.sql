-- Events that depend on counters (`stock.low`): `mercato_tx_events` gains,
-- per event, the 1-based position of the write (an `add`) whose counter it
-- watches (0: none), the key of the threshold counter beside it (same
-- namespace and bucket), and the two fields of its data to fill in. Such an
-- event is written only if that write took its counter from the threshold
-- (absent or not above 0: none) or more to less — decided here, after the
-- writes, on both counters' values: the watched one is still held FOR UPDATE
-- by `mercato_tx` (so concurrent changes of it queue, and exactly one sees a
-- crossing), the threshold is read as committed now — and the two fields of
-- its data and views are set to the values. The relays are notified only if
-- an event was written, and `events_written` says how many. This is an overload: the 19-argument function of
-- 0009 stays for replicas of the previous release during a rolling upgrade.
CREATE FUNCTION mercato_tx_events(
    p_ns text[], p_bucket text[], p_key text[], p_pre smallint[], p_pre_version bigint[],
    p_op smallint[], p_value bytea[], p_delta bigint[], p_min bigint[], p_max bigint[],
    p_version bigint[],
    p_ev_id text[], p_ev_kind text[], p_ev_subject text[], p_ev_created bigint[], p_ev_data bytea[],
    p_view_event integer[], p_view_merchant text[], p_view_data bytea[],
    p_ev_when integer[], p_ev_threshold_key text[], p_ev_value_field text[], p_ev_threshold_field text[]
) RETURNS TABLE (failed_index integer, failed_reason smallint, failed_current bigint, events_written integer)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    j integer;
    w integer;
    after bigint;
    threshold_text text;
    threshold bigint;
    ev_data bytea;
    view_data bytea;
    new_seq bigint;
    written integer := 0;
BEGIN
    SELECT t.failed_index, t.failed_reason, t.failed_current
        INTO failed_index, failed_reason, failed_current
        FROM mercato_tx(p_ns, p_bucket, p_key, p_pre, p_pre_version, p_op, p_value,
                        p_delta, p_min, p_max, p_version) AS t;
    events_written := 0;
    IF failed_index >= 0 THEN
        RETURN NEXT;
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ev_id, 1), 0) LOOP
        ev_data := p_ev_data[i];
        after := NULL;
        w := p_ev_when[i];
        IF w > 0 THEN
            IF p_op[w] <> 2 THEN
                CONTINUE;
            END IF;
            -- mercato_tx left a canonical integer in this row, and holds it.
            SELECT convert_from(value, 'UTF8')::bigint INTO after FROM kv
                WHERE namespace = p_ns[w] AND bucket = p_bucket[w] AND key = p_key[w];
            threshold_text := NULL;
            SELECT convert_from(value, 'UTF8') INTO threshold_text FROM kv
                WHERE namespace = p_ns[w] AND bucket = p_bucket[w] AND key = p_ev_threshold_key[i];
            threshold := 0;
            IF threshold_text ~ '^(0|-?[1-9][0-9]{0,18})$' THEN
                IF threshold_text::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
                    threshold := threshold_text::bigint;
                END IF;
            END IF;
            IF after IS NULL OR threshold <= 0 OR after >= threshold
                OR after::numeric - p_delta[w] < threshold THEN
                CONTINUE;
            END IF;
            ev_data := convert_to(
                jsonb_set(
                    jsonb_set(convert_from(ev_data, 'UTF8')::jsonb, ARRAY[p_ev_value_field[i]], to_jsonb(after)),
                    ARRAY[p_ev_threshold_field[i]], to_jsonb(threshold))::text,
                'UTF8');
        END IF;
        INSERT INTO events (id, kind, subject, created_at, data)
            VALUES (p_ev_id[i], p_ev_kind[i], p_ev_subject[i], p_ev_created[i], ev_data)
            ON CONFLICT (id) DO NOTHING
            RETURNING seq INTO new_seq;
        IF FOUND THEN
            written := written + 1;
            FOR j IN 1 .. coalesce(array_length(p_view_event, 1), 0) LOOP
                IF p_view_event[j] = i THEN
                    view_data := p_view_data[j];
                    IF after IS NOT NULL THEN
                        view_data := convert_to(
                            jsonb_set(
                                jsonb_set(convert_from(view_data, 'UTF8')::jsonb, ARRAY[p_ev_value_field[i]],
                                          to_jsonb(after)),
                                ARRAY[p_ev_threshold_field[i]], to_jsonb(threshold))::text,
                            'UTF8');
                    END IF;
                    INSERT INTO event_views (event_seq, merchant_id, data)
                        VALUES (new_seq, p_view_merchant[j], view_data);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    IF written > 0 THEN
        -- Relays listen: delivered at commit, not before.
        PERFORM pg_notify('mercato_events', '');
    END IF;
    events_written := written;
    RETURN NEXT;
END
$$;
