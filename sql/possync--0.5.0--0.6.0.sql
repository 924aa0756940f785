-- possync 0.5.0 -> 0.6.0
\echo Use "ALTER EXTENSION possync UPDATE TO '0.6.0'" to load this file. \quit

----------------------------------------------------------------------------------------------------
-- json_object_present: the events of a normalized POS built in one pass
----------------------------------------------------------------------------------------------------
-- The bridge evaluates a document mapping's SQL in the ERP and built each event with
-- json_strip_nulls(json_build_object(...)); this function makes the same JSON without looking up each
-- argument's type on every call and without parsing the event again to drop its null fields. A bridge whose
-- role may execute it uses it; a role granted by an earlier version gets it when grant_bridge runs again.
CREATE FUNCTION json_object_present(VARIADIC "any") RETURNS json
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'possync_json_object_present';
REVOKE ALL ON FUNCTION json_object_present("any") FROM PUBLIC;

CREATE OR REPLACE FUNCTION grant_bridge(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_bridge: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION possync.apply_batch(text, pg_lsn, jsonb), '
                   'possync.apply_batch(text, pg_lsn, jsonb, integer, integer), possync.start_lanes(text, integer), '
                   'possync.source_checkpoint(text), possync.note_documents(text, text, text[], text[]), '
                   'possync.json_object_present("any") TO %s',
                   role_name);
    -- possync-bridge status reads where each source stands
    EXECUTE format('GRANT SELECT ON possync.source_status TO %s', role_name);
END
$$;
