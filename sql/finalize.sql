-- possync: SQL-level wrappers, the default chart, views and privileges. Runs after the Rust functions exist.

-- The bridge's exactly-once door. The Rust function takes the LSN as text (pgrx has no pg_lsn type);
-- this wrapper keeps the contract's signature. SECURITY DEFINER so that a role granted only this function
-- (possync.grant_bridge) can post without privileges on the ledger tables.
CREATE FUNCTION apply_batch(source text, commit_lsn pg_lsn, events jsonb) RETURNS jsonb
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT possync.apply_batch_at(source, commit_lsn::text, events) $$;

-- The door of one apply lane: the same, against the lane's own checkpoint (see start_lanes).
CREATE FUNCTION apply_batch(source text, commit_lsn pg_lsn, events jsonb, lane integer, lanes integer) RETURNS jsonb
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT possync.apply_lane_batch_at(source, commit_lsn::text, events, lane, lanes) $$;

-- Where a source's stream must resume: the commit LSN of the last POS transaction the ERP committed; for a source
-- applied in lanes, the least of the lanes' checkpoints.
CREATE FUNCTION source_checkpoint(source text) RETURNS pg_lsn
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
-- applied past it is posted again: a stored event is found a duplicate by its id, and one kept only as an
-- exception (rejected, conflict) is not recorded again. Called by the bridge once per session, after it owns the
-- source.
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

-- The default retail chart and its role mapping; returns how many accounts it added (0 when present).
CREATE FUNCTION install_default_chart() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    added integer;
BEGIN
    INSERT INTO possync.account (account_code, name, kind) VALUES
        ('1000', 'Cash', 'asset'),
        ('1010', 'Card and other tenders receivable', 'asset'),
        ('1200', 'Inventory', 'asset'),
        ('1210', 'Inventory in transit', 'asset'),
        ('2100', 'Sales tax payable', 'liability'),
        ('2200', 'Goods received not invoiced', 'liability'),
        ('2300', 'Customer deposits', 'liability'),
        ('4000', 'Sales revenue', 'revenue'),
        ('4100', 'Sales returns', 'revenue'),
        ('5000', 'Cost of goods sold', 'expense'),
        ('5100', 'Inventory shrink', 'expense'),
        ('5200', 'Cash over and short', 'expense')
    ON CONFLICT (account_code) DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    INSERT INTO possync.account_map (role, account_code)
    SELECT r, c FROM (VALUES
        ('tender:cash', '1000'), ('tender:*', '1010'), ('inventory', '1200'), ('in_transit', '1210'),
        ('tax_payable', '2100'), ('grni', '2200'), ('customer_deposits', '2300'), ('revenue', '4000'),
        ('returns', '4100'), ('cogs', '5000'), ('shrink', '5100'), ('over_short', '5200')) AS m(r, c)
    WHERE NOT EXISTS (SELECT 1 FROM possync.account_map a
                       WHERE a.role = m.r AND a.location_id IS NULL AND a.item_class IS NULL);
    RETURN added;
END
$$;

-- Debits and credits per account (and location): the ledger's own trial balance, from the beginning (archived
-- months by what they carry).
CREATE VIEW trial_balance AS
SELECT l.account_code, a.name, a.kind, l.location_id,
       sum(l.debit) AS debit, sum(l.credit) AS credit, sum(l.debit) - sum(l.credit) AS balance
  FROM (SELECT j.account_code, j.location_id, j.debit, j.credit FROM possync.journal_line j
        UNION ALL
        SELECT c.account_code, c.location_id, c.debit, c.credit FROM possync.carried_gl c) l
  JOIN possync.account a USING (account_code)
 GROUP BY l.account_code, a.name, a.kind, l.location_id;

-- Per source: where it stands and what it left behind. A rejected event is never in possync.event: it is kept
-- as an exception (kind malformed, or unmapped for a row the bridge could not map) tagged with its source, so
-- rejected counts those still open, and open_exceptions counts the source's open exceptions whether or not their
-- event was stored. The bridge's role reads this view (possync.grant_bridge), not the tables behind it.
CREATE VIEW source_status AS
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

-- The bridge's record of POS documents (orders) it has seen in a draft state: each key of pending is noted as
-- waiting (first_seen kept, last_seen now), then each key of settled (final, cancelled or dropped) is forgotten;
-- a key in both settles. Called by the bridge in the transaction of its apply_batch; SECURITY DEFINER so that
-- a role granted only this and apply_batch (possync.grant_bridge) needs no privileges on the table.
CREATE FUNCTION note_documents(source text, document text, pending text[], settled text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF source IS NULL OR document IS NULL OR pending IS NULL OR settled IS NULL THEN
        RAISE EXCEPTION 'possync.note_documents: argument % must not be NULL',
            CASE WHEN source IS NULL THEN 'source' WHEN document IS NULL THEN 'document'
                 WHEN pending IS NULL THEN 'pending' ELSE 'settled' END
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass an empty array (''{}'') when there is nothing to note';
    END IF;
    IF array_position(pending, NULL) IS NOT NULL OR array_position(settled, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'possync.note_documents: argument % must not contain NULL keys',
            CASE WHEN array_position(pending, NULL) IS NOT NULL THEN 'pending' ELSE 'settled' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    INSERT INTO possync.pending_document AS p (source, document, doc_key, first_seen, last_seen)
    SELECT DISTINCT note_documents.source, note_documents.document, k.key, now(), now()
      FROM unnest(pending) AS k(key)
    ON CONFLICT ON CONSTRAINT pending_document_pkey DO UPDATE SET last_seen = now();
    DELETE FROM possync.pending_document p
     WHERE p.source = note_documents.source AND p.document = note_documents.document
       AND p.doc_key = ANY (settled);
END
$$;

-- The JSON object of its key/value pairs without the pairs whose value is NULL: the same JSON as
-- json_strip_nulls(json_build_object(...)), made in one pass, with each argument's type looked at once per call
-- site (src/json_object.rs). The bridge builds the events of a normalized POS with it, in SQL over its mirror.
CREATE FUNCTION json_object_present(VARIADIC "any") RETURNS json
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'possync_json_object_present';

-- Nothing is granted to PUBLIC; roles get what they need through these two functions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA possync FROM PUBLIC;

CREATE FUNCTION grant_bridge(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
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

CREATE FUNCTION grant_reader(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f text;
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_reader: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    FOR f IN SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'possync'::regnamespace AND p.proname IN ('atp', 'atp_checked', 'atp_detail', 'reconcile', 'check_invariants', 'trace') LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', f, role_name);
    END LOOP;
    -- the views, and the balances and master data ATP reads; not the inbox, the exceptions or the ledgers, which
    -- hold raw POS payloads (the views and reconcile/check_invariants/trace give readers what they need of them)
    FOR f IN SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'possync'::regnamespace
                AND (c.relkind = 'v' OR c.relname IN ('stock_balance', 'reservation', 'safety_stock', 'supply',
                                                      'location', 'item')) LOOP
        EXECUTE format('GRANT SELECT ON %s TO %s', f, role_name);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION grant_bridge(regrole), grant_reader(regrole) FROM PUBLIC;

-- DROP EXTENSION possync (or DROP SCHEMA possync CASCADE) would delete every ledger with it. While the ledgers
-- hold data such a command is refused, before anything is dropped, unless the session says it means it.
-- (A sql_drop trigger cannot do this: it is dropped by the same command and never fires.)
CREATE FUNCTION keep_ledgers_on_drop() RETURNS event_trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events bigint;
    lines bigint;
    exceptions bigint;
BEGIN
    -- the trigger cannot see the command's target; it reads the names the query's DROP statements list
    IF NOT EXISTS (SELECT 1
                     FROM regexp_matches(current_query(),
                                         'drop\s+(?:extension|schema)\s+(?:if\s+exists\s+)?([^;]*)', 'gi') AS m(g)
                    WHERE m.g[1] ~* '(^|[\s,])"?possync"?(\s|,|$)')
       OR coalesce(current_setting('possync.allow_drop', true), 'off') IN ('on', 'true', 'yes', '1')
       OR to_regclass('possync.event') IS NULL THEN
        RETURN;
    END IF;
    SELECT (SELECT count(*) FROM possync.event), (SELECT count(*) FROM possync.journal_line),
           (SELECT count(*) FROM possync.exception)
      INTO events, lines, exceptions;
    IF events + lines + exceptions = 0 AND NOT EXISTS (SELECT 1 FROM possync.stock_move) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION '% refused: possync''s ledgers hold % events, % journal lines and % exceptions, which it would delete',
        tg_tag, events, lines, exceptions
        USING ERRCODE = 'dependent_objects_still_exist',
              HINT = 'archive the ledgers first (pg_dump --format=custom --file=before-drop.dump of this database '
                     'keeps every possync table with its rows), then SET possync.allow_drop = on in this session '
                     'and run the command again';
END
$$;
CREATE EVENT TRIGGER possync_keep_ledgers ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION keep_ledgers_on_drop();
REVOKE ALL ON FUNCTION keep_ledgers_on_drop() FROM PUBLIC;

-- Where a source's stream resumes, set by an operator: after a mistaken apply_batch moved it too far, or to
-- re-read a range after a restore. Not granted to anyone: the extension's owner (or a superuser) calls it. The
-- change is recorded as a resolved exception that says who moved it, from where to where, and why.
CREATE FUNCTION set_source_checkpoint(source text, checkpoint pg_lsn, reason text) RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was pg_lsn;
BEGIN
    IF source IS NULL OR checkpoint IS NULL THEN
        RAISE EXCEPTION 'possync.set_source_checkpoint: argument % must not be NULL',
            CASE WHEN source IS NULL THEN 'source' ELSE 'checkpoint' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'possync.set_source_checkpoint: argument reason must be given'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'say why the checkpoint moves; it is kept with the change';
    END IF;
    SELECT s.checkpoint INTO was FROM possync.source s WHERE s.source_id = set_source_checkpoint.source FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'possync.set_source_checkpoint: argument source % is not a known source',
            quote_literal(source)
            USING ERRCODE = 'no_data_found', HINT = 'list sources with SELECT * FROM possync.source_status';
    END IF;
    UPDATE possync.source s SET checkpoint = set_source_checkpoint.checkpoint
     WHERE s.source_id = set_source_checkpoint.source;
    INSERT INTO possync.exception (kind, status, reason, source, detail, resolved_at, resolution)
    VALUES ('checkpoint_changed', 'resolved',
            format('checkpoint of source %s moved from %s to %s by %s: %s', source, was, checkpoint,
                   session_user, reason),
            source, jsonb_build_object('from', was::text, 'to', checkpoint::text, 'by', session_user::text),
            now(), reason);
    RETURN jsonb_build_object('source', source, 'from', was::text, 'to', checkpoint::text);
END
$$;
REVOKE ALL ON FUNCTION set_source_checkpoint(text, pg_lsn, text) FROM PUBLIC;
