-- possync 0.3.0 -> 0.4.0: apply lanes (one source applied in parallel sessions split by location, each with its
-- own checkpoint) and ledgers partitioned by business month (issue 15).
\echo Use "ALTER EXTENSION possync UPDATE TO '0.4.0'" to load this file. \quit

----------------------------------------------------------------------------------------------------
-- Apply lanes: one source applied in parallel sessions split by location, each lane with its own checkpoint
----------------------------------------------------------------------------------------------------

-- A source applied in parallel sessions (apply lanes, see possync.start_lanes): the bridge sends each lane the
-- events of its share of the locations, in commit order, and each lane keeps its own checkpoint. The source's
-- stream resumes at the least of them; a lane skips what it has already applied.
CREATE TABLE source_lane (
    source_id      text NOT NULL,
    lane           integer NOT NULL,
    lanes          integer NOT NULL,
    checkpoint     pg_lsn NOT NULL,
    applied_at     timestamptz,
    events_applied bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (source_id, lane),
    CONSTRAINT source_lane_in_range CHECK (lane >= 0 AND lane < lanes)
)
WITH (fillfactor = 50);

SELECT pg_catalog.pg_extension_config_dump('source_lane', '');

CREATE  FUNCTION "apply_lane_batch_at"(
	"source" TEXT, /* Option < & str > */
	"commit_lsn" TEXT, /* Option < & str > */
	"events" jsonb, /* Option < JsonbText > */
	"lane" INT, /* Option < i32 > */
	"lanes" INT /* Option < i32 > */
) RETURNS jsonb /* JsonB */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'apply_lane_batch_at_wrapper';

-- The door of one apply lane: the same, against the lane's own checkpoint (see start_lanes).
CREATE FUNCTION apply_batch(source text, commit_lsn pg_lsn, events jsonb, lane integer, lanes integer) RETURNS jsonb
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT possync.apply_lane_batch_at(source, commit_lsn::text, events, lane, lanes) $$;

-- Where a source's stream must resume: the commit LSN of the last POS transaction the ERP committed; for a source
-- applied in lanes, the least of the lanes' checkpoints.
CREATE OR REPLACE FUNCTION source_checkpoint(source text) RETURNS pg_lsn
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'possync.source_checkpoint: argument source must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass the source name the bridge streams as';
    END IF;
    RETURN coalesce((SELECT min(l.checkpoint) FROM possync.source_lane l WHERE l.source_id = source),
                    (SELECT s.checkpoint FROM possync.source s WHERE s.source_id = source),
                    '0/0'::pg_lsn);
END
$$;

-- Sets a source up to be applied in `lanes` parallel sessions and returns each lane's checkpoint. Lanes already
-- started with this number are kept as they are, so a restart resumes each lane exactly where it stopped. Any
-- other number starts every lane afresh at the source's checkpoint (the least of the old lanes'): what a lane had
-- applied past it is posted again and found a duplicate by its event id. Called by the bridge once per session,
-- after it owns the source.
CREATE FUNCTION start_lanes(source text, lanes integer) RETURNS TABLE (lane integer, checkpoint pg_lsn)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    resume pg_lsn;
BEGIN
    IF source IS NULL OR lanes IS NULL THEN
        RAISE EXCEPTION 'possync.start_lanes: argument % must not be NULL', CASE WHEN source IS NULL THEN 'source' ELSE 'lanes' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(source) = '' THEN
        RAISE EXCEPTION 'possync.start_lanes: argument source must not be empty'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass the source name the bridge streams as';
    END IF;
    IF lanes < 1 OR lanes > 64 THEN
        RAISE EXCEPTION 'possync.start_lanes: argument lanes is %, not between 1 and 64', lanes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO possync.source AS s (source_id) VALUES (source) ON CONFLICT DO NOTHING;
    -- one session at a time changes a source's lanes, and never while a single session applies it
    PERFORM 1 FROM possync.source s WHERE s.source_id = source FOR UPDATE;
    IF (SELECT count(*) FILTER (WHERE l.lanes = lanes) = lanes AND count(*) = lanes
          FROM possync.source_lane l WHERE l.source_id = source) THEN
        RETURN QUERY SELECT l.lane, l.checkpoint FROM possync.source_lane l
                      WHERE l.source_id = source ORDER BY l.lane;
        RETURN;
    END IF;
    resume := possync.source_checkpoint(source);
    WITH gone AS (DELETE FROM possync.source_lane l WHERE l.source_id = source RETURNING l.events_applied)
    UPDATE possync.source s SET checkpoint = resume,
           events_applied = s.events_applied + coalesce((SELECT sum(g.events_applied) FROM gone g), 0)
     WHERE s.source_id = source;
    INSERT INTO possync.source_lane (source_id, lane, lanes, checkpoint)
    SELECT source, n, lanes, resume FROM generate_series(0, lanes - 1) AS n;
    RETURN QUERY SELECT l.lane, l.checkpoint FROM possync.source_lane l WHERE l.source_id = source ORDER BY l.lane;
END
$$;

REVOKE ALL ON FUNCTION apply_lane_batch_at(text, text, jsonb, integer, integer),
    apply_batch(text, pg_lsn, jsonb, integer, integer), start_lanes(text, integer) FROM PUBLIC;

-- source_status gains apply_lanes, and shows a laned source's checkpoint as the least of its lanes'
CREATE OR REPLACE VIEW source_status AS
SELECT s.source_id, coalesce(l.checkpoint, s.checkpoint) AS checkpoint,
       greatest(s.applied_at, l.applied_at) AS applied_at, s.events_applied + coalesce(l.events_applied, 0) AS events_applied,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id AND e.status = 'held') AS held,
       (SELECT count(*) FROM possync.exception x
         WHERE x.status = 'open'
           AND (x.source = s.source_id
                OR EXISTS (SELECT 1 FROM possync.event e WHERE e.event_id = x.event_id AND e.source = s.source_id)))
           AS open_exceptions,
       (SELECT count(*) FROM possync.exception x
         WHERE x.source = s.source_id AND x.status = 'open' AND x.kind IN ('malformed', 'unmapped')) AS rejected,
       coalesce(l.lanes, 1)::integer AS apply_lanes
  FROM possync.source s
  LEFT JOIN (SELECT source_id, min(checkpoint) AS checkpoint, max(applied_at) AS applied_at,
                    sum(events_applied)::bigint AS events_applied, count(*) AS lanes
               FROM possync.source_lane GROUP BY source_id) l ON l.source_id = s.source_id;

-- grant_bridge also grants the lanes' door; a role granted by an earlier version needs it run again to use lanes
CREATE OR REPLACE FUNCTION grant_bridge(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_bridge: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION possync.apply_batch(text, pg_lsn, jsonb), '
                   'possync.apply_batch(text, pg_lsn, jsonb, integer, integer), possync.start_lanes(text, integer), '
                   'possync.source_checkpoint(text), possync.note_documents(text, text, text[], text[]) TO %s',
                   role_name);
    -- possync-bridge status reads where each source stands
    EXECUTE format('GRANT SELECT ON possync.source_status TO %s', role_name);
END
$$;

