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
-- reconcile and trace run with definer rights, so that readers need no privileges on the ledger tables.
CREATE OR REPLACE FUNCTION reconcile(location text DEFAULT NULL)
RETURNS TABLE (check_name text, location_id text, sku text, expected numeric, actual numeric, difference numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH inventory_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'inventory'),
    transit_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'in_transit'),
    stock AS (SELECT b.location_id, sum(b.value) AS v FROM possync.stock_balance b GROUP BY 1),
    gl AS (SELECT l.location_id, sum(l.debit - l.credit) AS v FROM possync.journal_line l
            WHERE l.account_code IN (SELECT account_code FROM inventory_accounts) GROUP BY 1),
    moves AS (SELECT m.sku, m.location_id, sum(m.qty) AS q, sum(m.value) AS v FROM possync.stock_move m GROUP BY 1, 2),
    open_transfers AS (SELECT t.from_location AS location_id, sum(tl.value_shipped - tl.value_received) AS v
                         FROM possync.transfer t JOIN possync.transfer_line tl USING (transfer_id) GROUP BY 1),
    transit AS (SELECT l.location_id, sum(l.debit - l.credit) AS v FROM possync.journal_line l
                 WHERE l.account_code IN (SELECT account_code FROM transit_accounts) GROUP BY 1),
    found AS (
        SELECT 'stock_value_vs_gl_inventory' AS check_name, coalesce(s.location_id, g.location_id) AS location_id,
               NULL::text AS sku, coalesce(s.v, 0) AS expected, coalesce(g.v, 0) AS actual
          FROM stock s FULL JOIN gl g ON g.location_id = s.location_id
        UNION ALL
        SELECT 'balance_qty_vs_moves', coalesce(b.location_id, m.location_id), coalesce(b.sku, m.sku),
               coalesce(b.on_hand, 0), coalesce(m.q, 0)
          FROM possync.stock_balance b FULL JOIN moves m ON m.sku = b.sku AND m.location_id = b.location_id
        UNION ALL
        SELECT 'balance_value_vs_moves', coalesce(b.location_id, m.location_id), coalesce(b.sku, m.sku),
               coalesce(b.value, 0), coalesce(m.v, 0)
          FROM possync.stock_balance b FULL JOIN moves m ON m.sku = b.sku AND m.location_id = b.location_id
        UNION ALL
        SELECT 'in_transit_vs_open_transfers', coalesce(o.location_id, t.location_id), NULL,
               coalesce(o.v, 0), coalesce(t.v, 0)
          FROM open_transfers o FULL JOIN transit t ON t.location_id = o.location_id)
    SELECT f.check_name, f.location_id, f.sku, f.expected, f.actual, f.expected - f.actual
      FROM found f
     WHERE f.expected <> f.actual AND (reconcile.location IS NULL OR f.location_id = reconcile.location)
     ORDER BY 1, 2, 3
$$;

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

CREATE OR REPLACE FUNCTION trace(account text, location text DEFAULT NULL, from_date date DEFAULT NULL, to_date date DEFAULT NULL)
RETURNS TABLE (event_id text, journal_id bigint, line_no integer, business_date date, debit numeric, credit numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'possync.trace: argument account must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM possync.account a WHERE a.account_code = trace.account) THEN
        RAISE EXCEPTION 'possync.trace: argument account % is not in possync.account', quote_literal(account)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass an account code such as 4000';
    END IF;
    RETURN QUERY
    SELECT j.event_id, l.journal_id, l.line_no, j.business_date, l.debit, l.credit
      FROM possync.journal_line l JOIN possync.journal j USING (journal_id)
     WHERE l.account_code = trace.account
       AND (trace.location IS NULL OR l.location_id = trace.location)
       AND (trace.from_date IS NULL OR j.business_date >= trace.from_date)
       AND (trace.to_date IS NULL OR j.business_date <= trace.to_date)
     ORDER BY j.business_date, l.journal_id, l.line_no;
END
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
