-- possync 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION possync UPDATE TO '0.2.0'" to load this file. \quit

-- Ids come from sequences the extension owns instead of identity columns, so that pg_dump keeps their position
-- and a restored database goes on numbering where it stopped. Each sequence continues from where its identity
-- sequence was.
DO $upgrade$
DECLARE
    t record;
    seq text;
    last bigint;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('account_map', 'account_map_id'), ('stock_move', 'move_id'),
                                   ('exception', 'exception_id')) AS v(tab, col) LOOP
        seq := t.tab || '_' || t.col || '_seq';
        last := pg_catalog.pg_sequence_last_value(
                    pg_catalog.pg_get_serial_sequence(format('possync.%I', t.tab), t.col)::regclass);
        EXECUTE format('ALTER TABLE possync.%I ALTER COLUMN %I DROP IDENTITY', t.tab, t.col);
        EXECUTE format('CREATE SEQUENCE possync.%I AS bigint OWNED BY possync.%I.%I', seq, t.tab, t.col);
        EXECUTE format('ALTER TABLE possync.%I ALTER COLUMN %I SET DEFAULT nextval(%L)', t.tab, t.col,
                       format('possync.%I', seq));
        IF last IS NOT NULL THEN
            PERFORM pg_catalog.setval(format('possync.%I', seq), last);
        END IF;
        PERFORM pg_catalog.pg_extension_config_dump(format('possync.%I', seq), '');
    END LOOP;
END
$upgrade$;

-- check_invariants sees stranded value, a value of the other sign than on-hand, append-only triggers set to
-- ENABLE REPLICA or dropped, lines on accounts outside the chart and ledger rows whose event is gone; it,
-- reconcile and trace (replaced below) run with definer rights, so that readers need no privileges on the ledger
-- tables.
CREATE OR REPLACE FUNCTION check_invariants() RETURNS TABLE (invariant text, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'journal_unbalanced', format('journal %s: debits %s, credits %s', journal_id, sum(debit), sum(credit))
      FROM possync.journal_line GROUP BY journal_id HAVING sum(debit) <> sum(credit)
    UNION ALL
    SELECT 'journal_line_both_sides', format('journal %s line %s', journal_id, line_no)
      FROM possync.journal_line WHERE debit <> 0 AND credit <> 0
    UNION ALL
    SELECT 'stock_move_chain_broken',
           format('move %s (%s at %s): on_hand_after %s but the moves add up to %s, value_after %s but %s',
                  move_id, sku, location_id, on_hand_after, running_qty, value_after, running_value)
      FROM (SELECT m.*, sum(qty) OVER w AS running_qty, sum(value) OVER w AS running_value
              FROM possync.stock_move m
            WINDOW w AS (PARTITION BY sku, location_id ORDER BY move_id)) r
     WHERE on_hand_after <> running_qty OR value_after <> running_value
    UNION ALL
    SELECT 'balance_differs_from_moves', format('%s at %s: %s %s, moves add up to %s', sku, location_id,
           check_name, expected, actual)
      FROM possync.reconcile() WHERE check_name LIKE 'balance_%'
    UNION ALL
    SELECT 'stranded_value', format('%s at %s: on_hand 0 but value %s', sku, location_id, value)
      FROM possync.stock_balance WHERE on_hand = 0 AND value <> 0
    UNION ALL
    SELECT 'value_sign_differs_from_on_hand', format('%s at %s: on_hand %s, value %s', sku, location_id, on_hand, value)
      FROM possync.stock_balance WHERE (on_hand > 0 AND value < 0) OR (on_hand < 0 AND value > 0)
    UNION ALL
    SELECT 'reserved_negative', format('%s at %s: reserved %s', sku, location_id, reserved)
      FROM possync.stock_balance WHERE reserved < 0
    UNION ALL
    SELECT 'reserved_differs_from_reservations', format('%s at %s: reserved %s, active reservations %s',
           b.sku, b.location_id, b.reserved, coalesce(r.q, 0))
      FROM possync.stock_balance b
      LEFT JOIN (SELECT sku, location_id, sum(qty) AS q FROM possync.reservation WHERE status = 'active'
                  GROUP BY 1, 2) r USING (sku, location_id)
     WHERE b.reserved <> coalesce(r.q, 0)
    UNION ALL
    SELECT 'ledger_not_append_only',
           CASE WHEN t.oid IS NULL
                THEN format('trigger %s on possync.%s is missing: ledger rows may have been changed', g.name, g.tab)
                ELSE format('trigger %s on possync.%s is set to %s, not on: ledger rows may have been changed',
                            g.name, g.tab, CASE t.tgenabled WHEN 'D' THEN 'DISABLE' ELSE 'ENABLE REPLICA' END)
           END
      FROM (VALUES ('stock_move_append_only', 'stock_move'), ('journal_append_only', 'journal'),
                   ('journal_line_append_only', 'journal_line'), ('journal_line_balanced', 'journal_line')) AS g(name, tab)
      LEFT JOIN pg_catalog.pg_trigger t
        ON t.tgname = g.name AND t.tgrelid = pg_catalog.to_regclass('possync.' || g.tab)
     WHERE t.oid IS NULL OR t.tgenabled NOT IN ('O', 'A')
    UNION ALL
    SELECT 'journal_line_unknown_account', format('journal %s line %s posts to account %s, which is not in possync.account',
           l.journal_id, l.line_no, l.account_code)
      FROM possync.journal_line l
     WHERE NOT EXISTS (SELECT 1 FROM possync.account a WHERE a.account_code = l.account_code)
    UNION ALL
    SELECT 'ledger_row_without_event', format('%s %s was posted by event %s, which is not in possync.event', r.what,
           r.id, r.event_id)
      FROM (SELECT 'journal' AS what, j.journal_id AS id, j.event_id FROM possync.journal j
            UNION ALL
            SELECT 'stock move', m.move_id, m.event_id FROM possync.stock_move m) r
     WHERE NOT EXISTS (SELECT 1 FROM possync.event e WHERE e.event_id = r.event_id)
$$;

-- Readers get the views and what ATP reads, not the tables that hold raw POS payloads.
CREATE OR REPLACE FUNCTION grant_reader(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
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

-- 0.2.0, continued: voids, documents waiting to become final, source_status readable by the bridge, and the audit
-- functions bounded by the location and the day (issue 15). Building the new indexes reads the ledgers once.

-- Indexes the audit functions read by location and by business day.
-- a store day's events: audit_day finds its day closes, check_day_close the transactions a close covers
CREATE INDEX event_by_location_day ON event (location_id, business_date, kind);
-- reconcile(location) adds up one location's moves per sku from the index alone
CREATE INDEX stock_move_by_location ON stock_move (location_id, sku) INCLUDE (qty, value);
-- trace() bounds a date range by the least and greatest journal id dated in it
CREATE INDEX journal_by_day ON journal (business_date, journal_id);
DROP INDEX journal_line_by_account;
-- an account's lines at a location in journal order: trace() reads a range of journal ids, reconcile(location)
-- adds up debits and credits from the index alone
CREATE INDEX journal_line_by_account ON journal_line (account_code, location_id, journal_id) INCLUDE (debit, credit);

CREATE TABLE pending_document (
    source     text NOT NULL,
    document   text NOT NULL,
    doc_key    text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, document, doc_key)
);
SELECT pg_catalog.pg_extension_config_dump('pending_document', '');

-- A void counts as one of the register's transactions at its day close, and adds nothing else.
CREATE OR REPLACE FUNCTION check_day_close(close_event_id text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    dc         possync.event;
    totals     jsonb;
    posted     record;
    posted_tenders jsonb;
    diffs      jsonb := '[]';
    tender     text;
    want       numeric;
    got        numeric;
BEGIN
    SELECT * INTO dc FROM possync.event e WHERE e.event_id = close_event_id AND e.kind = 'day_close';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'possync.check_day_close: argument close_event_id % is not a day_close event',
            quote_literal(close_event_id) USING ERRCODE = 'no_data_found';
    END IF;
    totals := dc.payload -> 'totals';
    WITH ev AS (
        SELECT e.event_id, e.kind, e.sequence, e.payload FROM possync.event e
         WHERE e.location_id = dc.location_id AND e.register IS NOT DISTINCT FROM dc.register
           AND e.business_date = dc.business_date AND e.kind IN ('sale', 'return', 'exchange', 'void')
           AND e.status IN ('applied', 'held')),
    -- what a void carries of the cancelled transaction was never sold or paid
    sold AS (SELECT ev.* FROM ev WHERE ev.kind <> 'void'),
    lines AS (
        SELECT CASE WHEN ev.kind = 'return' OR coalesce((l ->> 'returned')::boolean, false) THEN -1 ELSE 1 END AS sign, l
          FROM sold ev, jsonb_array_elements(ev.payload -> 'lines') l)
    SELECT coalesce((SELECT sum(sign * round((l ->> 'qty')::numeric * (l ->> 'unit_price')::numeric
                                             - coalesce((l ->> 'discount')::numeric, 0), 2)) FROM lines), 0) AS net_sales,
           coalesce((SELECT sum(sign * coalesce((l ->> 'tax')::numeric, 0)) FROM lines), 0) AS tax,
           (SELECT count(*) FROM ev) AS transaction_count,
           coalesce((SELECT max(ev.sequence) FROM ev), 0) AS last_sequence,
           coalesce((SELECT jsonb_object_agg(t.type, t.amount) FROM (
               SELECT x ->> 'type' AS type, sum((x ->> 'amount')::numeric) AS amount
                 FROM sold ev, jsonb_array_elements(ev.payload -> 'tenders') x GROUP BY 1) t), '{}') AS tenders
      INTO posted;
    posted_tenders := posted.tenders;

    FOR tender, want, got IN
        SELECT f, (totals ->> f)::numeric, v FROM (VALUES
            ('net_sales', posted.net_sales), ('tax', posted.tax),
            ('transaction_count', posted.transaction_count::numeric),
            ('last_sequence', posted.last_sequence::numeric)) AS c(f, v)
    LOOP
        IF coalesce(want, 0) <> got THEN
            diffs := diffs || jsonb_build_object('field', tender, 'expected', coalesce(want, 0), 'posted', got,
                                                 'difference', coalesce(want, 0) - got);
        END IF;
    END LOOP;
    FOR tender IN SELECT jsonb_object_keys(coalesce(totals -> 'tenders', '{}'))
                  UNION SELECT jsonb_object_keys(posted_tenders) LOOP
        want := coalesce((totals -> 'tenders' ->> tender)::numeric, 0);
        got := coalesce((posted_tenders ->> tender)::numeric, 0);
        IF want <> got THEN
            diffs := diffs || jsonb_build_object('field', 'tender:' || tender, 'expected', want, 'posted', got,
                                                 'difference', want - got);
        END IF;
    END LOOP;

    -- an earlier comparison of the same register and day is superseded by this one
    UPDATE possync.exception x SET status = 'resolved', resolved_at = now(),
           resolution = CASE WHEN jsonb_array_length(diffs) = 0 THEN 'day close now matches what was posted'
                             ELSE 'superseded by a newer comparison' END
     WHERE x.kind = 'day_close_mismatch' AND x.status = 'open' AND x.location_id = dc.location_id
       AND x.detail ->> 'register' IS NOT DISTINCT FROM dc.register
       AND x.detail ->> 'business_date' = dc.business_date::text;
    IF jsonb_array_length(diffs) > 0 THEN
        INSERT INTO possync.exception (event_id, kind, reason, location_id, amount, detail, source)
        SELECT dc.event_id, 'day_close_mismatch',
               format('register %s on %s: %s', dc.register, dc.business_date,
                      string_agg(format('%s expected %s, posted %s', d ->> 'field', d ->> 'expected', d ->> 'posted'), '; ')),
               dc.location_id,
               coalesce((SELECT (d2 ->> 'difference')::numeric FROM jsonb_array_elements(diffs) d2
                          WHERE d2 ->> 'field' = 'net_sales'), 0),
               jsonb_build_object('register', dc.register, 'business_date', dc.business_date::text, 'differences', diffs),
               dc.source
          FROM jsonb_array_elements(diffs) d;
    END IF;
    RETURN jsonb_array_length(diffs);
END
$$;

-- Documents that never became final are open exceptions.
CREATE OR REPLACE VIEW open_exceptions AS
SELECT x.exception_id, x.kind, now() - x.raised_at AS age, x.location_id, x.amount AS amount_at_stake,
       x.event_id, x.reason,
       CASE WHEN x.kind IN ('unknown_sku', 'unknown_location', 'missing_account', 'awaiting_transfer_out')
                THEN 'held: add the missing data, then SELECT possync.replay_held()'
            WHEN x.kind IN ('malformed', 'conflict') OR (x.kind = 'negative_on_hand' AND x.payload IS NOT NULL)
                THEN 'rejected: SELECT possync.resubmit(exception_id, corrected_event)'
            ELSE 'review, then SELECT possync.resolve_exception(exception_id, note)' END AS next_step,
       x.payload, x.detail, x.source, x.raised_at
  FROM possync.exception x
 WHERE x.status = 'open'
UNION ALL
SELECT NULL::bigint, 'document_not_final', now() - p.first_seen, NULL::text, NULL::numeric, NULL::text,
       format('source %s: %s %s has waited %s for a final state (first seen %s, last seen %s)', p.source,
              p.document, p.doc_key, date_trunc('second', now() - p.first_seen), p.first_seen, p.last_seen),
       format('the POS order never reached a final state, so nothing of it was posted: finish or cancel it in the '
              'POS (the bridge then posts or drops it and this row goes away); if it was settled by hand, '
              'DELETE FROM possync.pending_document WHERE source = %L AND document = %L AND doc_key = %L',
              p.source, p.document, p.doc_key),
       NULL::jsonb,
       jsonb_build_object('document', p.document, 'doc_key', p.doc_key, 'first_seen', p.first_seen,
                          'last_seen', p.last_seen),
       p.source, p.first_seen
  FROM possync.pending_document p
 WHERE p.first_seen < now() - coalesce(nullif(current_setting('possync.document_final_within', true), ''),
                                      '1 hour')::interval
 ORDER BY raised_at, exception_id;

-- reconcile(location) filters by the location before it aggregates; trace bounds a date range by journal id.
CREATE OR REPLACE FUNCTION reconcile(location text DEFAULT NULL)
RETURNS TABLE (check_name text, location_id text, sku text, expected numeric, actual numeric, difference numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE $q$
    WITH inventory_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'inventory'),
    transit_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'in_transit'),
    balances AS (SELECT b.sku, b.location_id, b.on_hand, b.value FROM possync.stock_balance b
                  WHERE $1 IS NULL OR b.location_id = $1),
    stock AS (SELECT b.location_id, sum(b.value) AS v FROM balances b GROUP BY 1),
    gl AS (SELECT l.location_id, sum(l.debit - l.credit) AS v FROM possync.journal_line l
            WHERE l.account_code IN (SELECT account_code FROM inventory_accounts)
              AND ($1 IS NULL OR l.location_id = $1) GROUP BY 1),
    moves AS (SELECT m.sku, m.location_id, sum(m.qty) AS q, sum(m.value) AS v FROM possync.stock_move m
               WHERE $1 IS NULL OR m.location_id = $1 GROUP BY 1, 2),
    open_transfers AS (SELECT t.from_location AS location_id, sum(tl.value_shipped - tl.value_received) AS v
                         FROM possync.transfer t JOIN possync.transfer_line tl USING (transfer_id)
                        WHERE $1 IS NULL OR t.from_location = $1 GROUP BY 1),
    transit AS (SELECT l.location_id, sum(l.debit - l.credit) AS v FROM possync.journal_line l
                 WHERE l.account_code IN (SELECT account_code FROM transit_accounts)
                   AND ($1 IS NULL OR l.location_id = $1) GROUP BY 1),
    found AS (
        SELECT 'stock_value_vs_gl_inventory' AS check_name, coalesce(s.location_id, g.location_id) AS location_id,
               NULL::text AS sku, coalesce(s.v, 0) AS expected, coalesce(g.v, 0) AS actual
          FROM stock s FULL JOIN gl g ON g.location_id = s.location_id
        UNION ALL
        SELECT 'balance_qty_vs_moves', coalesce(b.location_id, m.location_id), coalesce(b.sku, m.sku),
               coalesce(b.on_hand, 0), coalesce(m.q, 0)
          FROM balances b FULL JOIN moves m ON m.sku = b.sku AND m.location_id = b.location_id
        UNION ALL
        SELECT 'balance_value_vs_moves', coalesce(b.location_id, m.location_id), coalesce(b.sku, m.sku),
               coalesce(b.value, 0), coalesce(m.v, 0)
          FROM balances b FULL JOIN moves m ON m.sku = b.sku AND m.location_id = b.location_id
        UNION ALL
        SELECT 'in_transit_vs_open_transfers', coalesce(o.location_id, t.location_id), NULL,
               coalesce(o.v, 0), coalesce(t.v, 0)
          FROM open_transfers o FULL JOIN transit t ON t.location_id = o.location_id)
    SELECT f.check_name, f.location_id, f.sku, f.expected, f.actual, f.expected - f.actual
      FROM found f
     WHERE f.expected <> f.actual
     ORDER BY 1, 2, 3 $q$ USING location;
END
$$;

CREATE OR REPLACE FUNCTION trace(account text, location text DEFAULT NULL, from_date date DEFAULT NULL, to_date date DEFAULT NULL)
RETURNS TABLE (event_id text, journal_id bigint, line_no integer, business_date date, debit numeric, credit numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    first_journal bigint;
    last_journal bigint;
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'possync.trace: argument account must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM possync.account a WHERE a.account_code = trace.account) THEN
        RAISE EXCEPTION 'possync.trace: argument account % is not in possync.account', quote_literal(account)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass an account code such as 4000';
    END IF;
    IF from_date IS NOT NULL OR to_date IS NOT NULL THEN
        -- the range's journals from journal_by_day alone (not a walk of every journal id in order)
        WITH dated AS MATERIALIZED (
            SELECT j.journal_id AS id FROM possync.journal j
             WHERE j.business_date BETWEEN coalesce(trace.from_date, '-infinity') AND coalesce(trace.to_date, 'infinity'))
        SELECT min(d.id), max(d.id) INTO first_journal, last_journal FROM dated d;
        IF first_journal IS NULL THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE $q$
    SELECT j.event_id, l.journal_id, l.line_no, j.business_date, l.debit, l.credit
      FROM possync.journal_line l JOIN possync.journal j ON j.journal_id = l.journal_id
     WHERE l.account_code = $1
       AND ($2 IS NULL OR l.location_id = $2)
       AND ($3 IS NULL OR j.business_date >= $3)
       AND ($4 IS NULL OR j.business_date <= $4)
       AND ($5 IS NULL OR l.journal_id BETWEEN $5 AND $6)
     ORDER BY j.business_date, l.journal_id, l.line_no $q$
    USING account, location, from_date, to_date, first_journal, last_journal;
END
$$;

-- source_status counts a source's rejected events and all its open exceptions; the bridge's role reads it and
-- notes pending documents. Roles granted possync.grant_bridge before this version get both by calling it again.
CREATE OR REPLACE VIEW source_status AS
SELECT s.source_id, s.checkpoint, s.applied_at, s.events_applied,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id AND e.status = 'held') AS held,
       (SELECT count(*) FROM possync.exception x
         WHERE x.status = 'open'
           AND (x.source = s.source_id
                OR EXISTS (SELECT 1 FROM possync.event e WHERE e.event_id = x.event_id AND e.source = s.source_id)))
           AS open_exceptions,
       (SELECT count(*) FROM possync.exception x
         WHERE x.source = s.source_id AND x.status = 'open' AND x.kind IN ('malformed', 'unmapped')) AS rejected
  FROM possync.source s;

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
REVOKE ALL ON FUNCTION note_documents(text, text, text[], text[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION grant_bridge(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_bridge: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION possync.apply_batch(text, pg_lsn, jsonb), '
                   'possync.source_checkpoint(text), possync.note_documents(text, text, text[], text[]) TO %s',
                   role_name);
    -- possync-bridge status reads where each source stands
    EXECUTE format('GRANT SELECT ON possync.source_status TO %s', role_name);
END
$$;
