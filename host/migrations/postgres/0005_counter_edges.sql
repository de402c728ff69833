-- Counters at the edges of the 64-bit range (as the SQLite and in-memory
-- backends treat them): every canonical decimal in i64 is a counter (0004
-- refused those of 19 digits), and a sum that would leave i64 is out of
-- bounds (0004 raised a numeric-overflow error instead). Otherwise the
-- function is 0004's.
CREATE OR REPLACE FUNCTION mercato_tx(
    p_ns text[], p_bucket text[], p_key text[], p_pre smallint[], p_pre_version bigint[],
    p_op smallint[], p_value bytea[], p_delta bigint[], p_min bigint[], p_max bigint[],
    p_version bigint[]
) RETURNS TABLE (failed_index integer, failed_reason smallint, failed_current bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    row_value bytea;
    row_version bigint;
    present boolean;
    counter_text text;
    n bigint;
    f_index integer := -1;
    f_reason smallint;
    f_current bigint;
BEGIN
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_key, 1), 0) LOOP
            <<attempt>>
            LOOP
                SELECT value, version INTO row_value, row_version FROM kv
                    WHERE namespace = p_ns[i] AND bucket = p_bucket[i] AND key = p_key[i]
                    FOR UPDATE;
                present := FOUND;
                IF p_pre[i] = 1 AND present THEN
                    f_index := i - 1; f_reason := 0;
                ELSIF p_pre[i] IN (2, 3) AND NOT present THEN
                    f_index := i - 1; f_reason := 1;
                ELSIF p_pre[i] = 3 AND row_version <> p_pre_version[i] THEN
                    f_index := i - 1; f_reason := 2;
                END IF;
                IF f_index >= 0 THEN
                    RAISE EXCEPTION 'mercato_tx: write % did not apply', f_index;
                END IF;
                IF p_op[i] = 1 THEN
                    IF present THEN
                        DELETE FROM kv WHERE namespace = p_ns[i] AND bucket = p_bucket[i] AND key = p_key[i];
                    END IF;
                    EXIT attempt;
                ELSIF p_op[i] = 3 THEN
                    EXIT attempt;
                END IF;
                IF p_op[i] = 2 THEN
                    n := 0;
                    IF present THEN
                        counter_text := convert_from(row_value, 'UTF8');
                        IF counter_text !~ '^(0|-?[1-9][0-9]{0,18})$'
                            OR counter_text::numeric NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
                            f_index := i - 1; f_reason := 4;
                            RAISE EXCEPTION 'mercato_tx: write % is not a counter', f_index;
                        END IF;
                        n := counter_text::bigint;
                    END IF;
                    -- In numeric: a sum past the 64-bit range is out of bounds, not an error.
                    IF n::numeric + p_delta[i] < p_min[i] OR n::numeric + p_delta[i] > p_max[i] THEN
                        f_index := i - 1; f_reason := 3; f_current := n;
                        RAISE EXCEPTION 'mercato_tx: write % out of bounds', f_index;
                    END IF;
                    row_value := convert_to((n + p_delta[i])::text, 'UTF8');
                ELSE
                    row_value := p_value[i];
                END IF;
                IF present THEN
                    UPDATE kv SET value = row_value, version = p_version[i]
                        WHERE namespace = p_ns[i] AND bucket = p_bucket[i] AND key = p_key[i];
                    EXIT attempt;
                END IF;
                INSERT INTO kv (namespace, bucket, key, value, version)
                    VALUES (p_ns[i], p_bucket[i], p_key[i], row_value, p_version[i])
                    ON CONFLICT DO NOTHING;
                -- Inserted concurrently by another transaction: read it again.
                EXIT attempt WHEN FOUND;
            END LOOP;
        END LOOP;
    EXCEPTION WHEN raise_exception THEN
        IF f_index < 0 THEN
            RAISE;
        END IF;
    END;
    failed_index := f_index;
    failed_reason := f_reason;
    failed_current := f_current;
    RETURN NEXT;
END
$$;
