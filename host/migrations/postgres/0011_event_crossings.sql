-- Events that depend on a counter (`stock.low`): `mercato_tx_events` gains,
-- per event, the 1-based position of the write (an `add`) whose counter it
-- watches (0: none), a threshold and a field. Such an event is written only
-- if that write took the counter from the threshold or more to less — decided
-- here, after the writes, on the counter's value under this transaction's row
-- lock — and the field of its data and views is set to the new value. This
-- is an overload: the 19-argument function of 0009 stays for replicas of the
-- previous release during a rolling upgrade.
CREATE FUNCTION mercato_tx_events(
    p_ns text[], p_bucket text[], p_key text[], p_pre smallint[], p_pre_version bigint[],
    p_op smallint[], p_value bytea[], p_delta bigint[], p_min bigint[], p_max bigint[],
    p_version bigint[],
    p_ev_id text[], p_ev_kind text[], p_ev_subject text[], p_ev_created bigint[], p_ev_data bytea[],
    p_view_event integer[], p_view_merchant text[], p_view_data bytea[],
    p_ev_when integer[], p_ev_below bigint[], p_ev_field text[]
) RETURNS TABLE (failed_index integer, failed_reason smallint, failed_current bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    j integer;
    w integer;
    after bigint;
    ev_data bytea;
    view_data bytea;
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
        ev_data := p_ev_data[i];
        after := NULL;
        w := p_ev_when[i];
        IF w > 0 THEN
            -- mercato_tx holds this row FOR UPDATE and left a canonical integer in it.
            SELECT convert_from(value, 'UTF8')::bigint INTO after FROM kv
                WHERE namespace = p_ns[w] AND bucket = p_bucket[w] AND key = p_key[w];
            IF p_op[w] <> 2 OR after IS NULL OR after >= p_ev_below[i]
                OR after::numeric - p_delta[w] < p_ev_below[i] THEN
                CONTINUE;
            END IF;
            ev_data := convert_to(
                jsonb_set(convert_from(ev_data, 'UTF8')::jsonb, ARRAY[p_ev_field[i]], to_jsonb(after))::text,
                'UTF8');
        END IF;
        INSERT INTO events (id, kind, subject, created_at, data)
            VALUES (p_ev_id[i], p_ev_kind[i], p_ev_subject[i], p_ev_created[i], ev_data)
            ON CONFLICT (id) DO NOTHING
            RETURNING seq INTO new_seq;
        IF FOUND THEN
            FOR j IN 1 .. coalesce(array_length(p_view_event, 1), 0) LOOP
                IF p_view_event[j] = i THEN
                    view_data := p_view_data[j];
                    IF after IS NOT NULL THEN
                        view_data := convert_to(
                            jsonb_set(convert_from(view_data, 'UTF8')::jsonb, ARRAY[p_ev_field[i]],
                                      to_jsonb(after))::text,
                            'UTF8');
                    END IF;
                    INSERT INTO event_views (event_seq, merchant_id, data)
                        VALUES (new_seq, p_view_merchant[j], view_data);
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
