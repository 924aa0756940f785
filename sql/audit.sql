-- possync audit: day close comparison, reconciliation, invariants, trace, the exception workflow and KPIs.
-- Everything here reads the ledgers; nothing here posts.

-- Compares a day_close with what was posted for its location, register and business date. Raises one
-- day_close_mismatch exception listing each difference (expected = the register's figure, posted = the ERP's),
-- or resolves an earlier one when they now agree. Returns the number of differences. A void counts as one of the
-- register's transactions (and may hold its last sequence number), but adds no sales, tax or tenders.
CREATE FUNCTION check_day_close(close_event_id text) RETURNS integer LANGUAGE plpgsql AS $$
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
    -- in its month's partition (event_key says which)
    SELECT * INTO dc FROM possync.event e
     WHERE e.event_id = close_event_id AND e.kind = 'day_close'
       AND e.business_date = (SELECT k.business_date FROM possync.event_key k WHERE k.event_id = close_event_id);
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

-- Exceptions a person has to look at, oldest first, with what to do about each. Besides the open rows of
-- possync.exception: POS documents the bridge saw in a draft state (possync.pending_document) that have not
-- become final within possync.document_final_within. Those rows have exception_id NULL: they are not rows of
-- possync.exception, so resolve_exception cannot close them (a synthetic id would invite it); they leave the view
-- when the document settles or its pending_document row is deleted. raised_at is when the document was first seen.
CREATE VIEW open_exceptions AS
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

-- Closes an exception with a note saying why.
CREATE FUNCTION resolve_exception(exception_id bigint, note text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    x possync.exception;
BEGIN
    IF exception_id IS NULL THEN
        RAISE EXCEPTION 'possync.resolve_exception: argument exception_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF note IS NULL OR btrim(note) = '' THEN
        RAISE EXCEPTION 'possync.resolve_exception: argument note must say why the exception is resolved'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO x FROM possync.exception e WHERE e.exception_id = resolve_exception.exception_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'possync.resolve_exception: argument exception_id % does not exist', exception_id
            USING ERRCODE = 'no_data_found', HINT = 'see SELECT * FROM possync.open_exceptions';
    END IF;
    IF x.status = 'resolved' THEN
        RAISE EXCEPTION 'possync.resolve_exception: argument exception_id % is already resolved', exception_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE possync.exception e SET status = 'resolved', resolved_at = now(), resolution = note
     WHERE e.exception_id = resolve_exception.exception_id;
    RETURN jsonb_build_object('exception_id', exception_id, 'kind', x.kind, 'status', 'resolved');
END
$$;

-- Re-checks a store day (its day closes) and returns its status; a clean day is marked audited.
CREATE FUNCTION audit_day(location text, business_date date) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    dc      text;
    open_x  jsonb;
    done_at timestamptz;
BEGIN
    IF location IS NULL THEN
        RAISE EXCEPTION 'possync.audit_day: argument location must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF business_date IS NULL THEN
        RAISE EXCEPTION 'possync.audit_day: argument business_date must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM possync.location l WHERE l.location_id = audit_day.location) THEN
        RAISE EXCEPTION 'possync.audit_day: argument location % is not in possync.location', quote_literal(location)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR dc IN SELECT e.event_id FROM possync.event e
               WHERE e.kind = 'day_close' AND e.location_id = audit_day.location
                 AND e.business_date = audit_day.business_date LOOP
        PERFORM possync.check_day_close(dc);
    END LOOP;
    SELECT coalesce(jsonb_agg(jsonb_build_object('exception_id', x.exception_id, 'kind', x.kind,
                                                 'reason', x.reason, 'amount', x.amount) ORDER BY x.exception_id), '[]')
      INTO open_x
      FROM possync.exception x
      -- an event's business date, whatever its month
      LEFT JOIN possync.event_key e ON e.event_id = x.event_id
     WHERE x.status = 'open' AND x.location_id = audit_day.location
       AND (e.business_date = audit_day.business_date
            OR x.detail ->> 'business_date' = audit_day.business_date::text);
    IF jsonb_array_length(open_x) = 0 THEN
        INSERT INTO possync.audited_day AS a (location_id, business_date)
        VALUES (audit_day.location, audit_day.business_date)
        ON CONFLICT ON CONSTRAINT audited_day_pkey DO UPDATE SET audited_at = now()
        RETURNING a.audited_at INTO done_at;
        RETURN jsonb_build_object('location', location, 'business_date', business_date, 'status', 'clean',
                                  'audited_at', done_at, 'exceptions', open_x);
    END IF;
    RETURN jsonb_build_object('location', location, 'business_date', business_date, 'status', 'exceptions',
                              'exceptions', open_x);
END
$$;

-- Only discrepancies: stock ledger value vs GL inventory per location, stock_balance vs the sum of stock_move,
-- in-transit vs open transfers. An empty result means the books agree.
-- The ledgers' sums include what archived months carry (carried_stock, carried_gl), so the books of the open
-- months still agree with the balances after a month is archived.
-- Every part is filtered by the location before it is aggregated, so reconcile(location) reads that location's
-- rows through the location indexes (stock_move_by_location, journal_line_by_account) and not whole ledgers. The
-- text is planned for each call with the location known (EXECUTE ... USING): for one location the filter is an
-- index condition, for all of them it folds away.
CREATE FUNCTION reconcile(location text DEFAULT NULL)
RETURNS TABLE (check_name text, location_id text, sku text, expected numeric, actual numeric, difference numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE $q$
    WITH inventory_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'inventory'),
    transit_accounts AS (SELECT DISTINCT account_code FROM possync.account_map WHERE role = 'in_transit'),
    balances AS (SELECT b.sku, b.location_id, b.on_hand, b.value FROM possync.stock_balance b
                  WHERE $1 IS NULL OR b.location_id = $1),
    stock AS (SELECT b.location_id, sum(b.value) AS v FROM balances b GROUP BY 1),
    gl AS (SELECT g.location_id, sum(g.v) AS v FROM (
               SELECT l.location_id, l.debit - l.credit AS v FROM possync.journal_line l
                WHERE l.account_code IN (SELECT account_code FROM inventory_accounts)
                  AND ($1 IS NULL OR l.location_id = $1)
               UNION ALL
               SELECT c.location_id, c.debit - c.credit FROM possync.carried_gl c
                WHERE c.account_code IN (SELECT account_code FROM inventory_accounts)
                  AND ($1 IS NULL OR c.location_id = $1)) g GROUP BY 1),
    moves AS (SELECT x.sku, x.location_id, sum(x.q) AS q, sum(x.v) AS v FROM (
                  SELECT m.sku, m.location_id, m.qty AS q, m.value AS v FROM possync.stock_move m
                   WHERE $1 IS NULL OR m.location_id = $1
                  UNION ALL
                  SELECT c.sku, c.location_id, c.qty, c.value FROM possync.carried_stock c
                   WHERE $1 IS NULL OR c.location_id = $1) x GROUP BY 1, 2),
    open_transfers AS (SELECT t.from_location AS location_id, sum(tl.value_shipped - tl.value_received) AS v
                         FROM possync.transfer t JOIN possync.transfer_line tl USING (transfer_id)
                        WHERE $1 IS NULL OR t.from_location = $1 GROUP BY 1),
    transit AS (SELECT g.location_id, sum(g.v) AS v FROM (
                    SELECT l.location_id, l.debit - l.credit AS v FROM possync.journal_line l
                     WHERE l.account_code IN (SELECT account_code FROM transit_accounts)
                       AND ($1 IS NULL OR l.location_id = $1)
                    UNION ALL
                    SELECT c.location_id, c.debit - c.credit FROM possync.carried_gl c
                     WHERE c.account_code IN (SELECT account_code FROM transit_accounts)
                       AND ($1 IS NULL OR c.location_id = $1)) g GROUP BY 1),
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

-- Only broken invariants; an empty result means the ledgers are sound.
-- Readers (possync.grant_reader) call these without privileges on the ledger tables: definer rights, a fixed
-- search_path, every name qualified.
CREATE FUNCTION check_invariants() RETURNS TABLE (invariant text, detail text)
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
      FROM (SELECT m.move_id, m.sku, m.location_id, m.on_hand_after, m.value_after, c.last_move_id,
                   coalesce(c.qty, 0) + sum(m.qty) OVER w AS running_qty,
                   coalesce(c.value, 0) + sum(m.value) OVER w AS running_value
              FROM possync.stock_move m
              LEFT JOIN (SELECT sku, location_id, sum(qty) AS qty, sum(value) AS value, max(last_move_id) AS last_move_id
                           FROM possync.carried_stock GROUP BY 1, 2) c USING (sku, location_id)
            WINDOW w AS (PARTITION BY m.sku, m.location_id ORDER BY m.move_id)) r
     -- what archived months carry comes before every later move; a move posted before an archived month's last
     -- move there (a late event of that month, a reversal dated in it) has archived moves after it and is not
     -- checked here
     WHERE (last_move_id IS NULL OR move_id > last_move_id)
       AND (on_hand_after <> running_qty OR value_after <> running_value)
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
      FROM (SELECT n.name, n.tab FROM (VALUES ('stock_move_append_only', 'stock_move'), ('journal_append_only', 'journal'),
                   ('journal_line_append_only', 'journal_line'), ('journal_line_balanced', 'journal_line')) AS n(name, tab)
            UNION ALL
            -- every partition carries its parent's triggers
            SELECT n.name, c.relname
              FROM (VALUES ('stock_move_append_only', 'stock_move'), ('journal_append_only', 'journal'),
                           ('journal_line_append_only', 'journal_line'), ('journal_line_balanced', 'journal_line'))
                   AS n(name, tab)
              JOIN pg_catalog.pg_inherits i ON i.inhparent = pg_catalog.to_regclass('possync.' || n.tab)
              JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid) AS g(name, tab)
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
     -- an event of an archived month is in archived_event
     WHERE NOT EXISTS (SELECT 1 FROM possync.event e WHERE e.event_id = r.event_id)
       AND NOT EXISTS (SELECT 1 FROM possync.archived_event a WHERE a.event_id = r.event_id)
    UNION ALL
    SELECT 'event_without_key', format('event %s (%s) is not in possync.event_key, which keeps event ids unique',
           e.event_id, e.business_date)
      FROM possync.event e
     WHERE NOT EXISTS (SELECT 1 FROM possync.event_key k WHERE k.event_id = e.event_id
                                                          AND k.business_date = e.business_date)
$$;

-- The journal lines (and their events) whose sum is an account's balance, for a location and a date range.
-- For a date range it first takes the least and the greatest journal id dated in it (journal_by_day): every
-- journal of the range lies between them, so the lines are read from the account's index for the location
-- between those ids (the range's lines, in the usual case where ids grow with the business day), not from the
-- account's whole history. Bounding by journal id, not by the journal's location, also finds the lines that sit
-- at another location than their journal (in transit, at the shipping location). Planned per call with the
-- arguments known (EXECUTE ... USING), so absent filters fold away and the date range prunes the months' partitions
-- of both tables (a line carries its journal's business date). A range that reaches into an archived month raises
-- a WARNING naming the months and the tables that hold their journals: those lines are not in the result.
CREATE FUNCTION trace(account text, location text DEFAULT NULL, from_date date DEFAULT NULL, to_date date DEFAULT NULL)
RETURNS TABLE (event_id text, journal_id bigint, line_no integer, business_date date, debit numeric, credit numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    first_journal bigint;
    last_journal bigint;
    archived_months text;
    archived_tables text;
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'possync.trace: argument account must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM possync.account a WHERE a.account_code = trace.account) THEN
        RAISE EXCEPTION 'possync.trace: argument account % is not in possync.account', quote_literal(account)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass an account code such as 4000';
    END IF;
    -- archived months' lines are not in the ledger any more: say so when the range reaches into one
    SELECT string_agg(to_char(a.month, 'YYYY-MM'), ', ' ORDER BY a.month),
           string_agg(t.name, ', ' ORDER BY a.month)
      INTO archived_months, archived_tables
      FROM possync.archived_period a
      LEFT JOIN LATERAL (SELECT string_agg(x, ', ') AS name FROM unnest(a.tables) AS x
                          WHERE x LIKE '%journal%') t ON true
     WHERE (trace.to_date IS NULL OR a.month <= trace.to_date)
       AND (trace.from_date IS NULL OR (a.month + interval '1 month')::date > trace.from_date);
    IF archived_months IS NOT NULL THEN
        RAISE WARNING 'possync.trace: the range reaches into archived periods (%): their lines are not listed',
            archived_months
            USING DETAIL = format('Their journals are in the detached tables %s; their totals per account and '
                                  'location are carried in possync.carried_gl.', coalesce(archived_tables, '(none)')),
                  HINT = 'trace a range of open months, or query the archived tables (restored from their dump if '
                         'they were dropped)';
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
      FROM possync.journal_line l
      JOIN possync.journal j ON j.journal_id = l.journal_id AND j.business_date = l.business_date
     WHERE l.account_code = $1
       AND ($2 IS NULL OR l.location_id = $2)
       AND ($3 IS NULL OR (j.business_date >= $3 AND l.business_date >= $3))
       AND ($4 IS NULL OR (j.business_date <= $4 AND l.business_date <= $4))
       AND ($5 IS NULL OR l.journal_id BETWEEN $5 AND $6)
     ORDER BY j.business_date, l.journal_id, l.line_no $q$
    USING account, location, from_date, to_date, first_journal, last_journal;
END
$$;

-- Per source: where it stands, how busy it is, what it left behind.
CREATE VIEW kpi_integration AS
SELECT s.source_id, s.checkpoint, s.applied_at AS last_applied_at, now() - s.applied_at AS lag,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id
           AND e.received_at > now() - interval '5 minutes') AS events_last_5_minutes,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id
           AND e.received_at > now() - interval '1 hour') AS events_last_hour,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id AND e.status = 'held') AS held,
       (SELECT count(*) FROM possync.exception x WHERE x.source = s.source_id AND x.status = 'open'
           AND x.kind IN ('malformed', 'conflict')) AS rejected,
       s.events_applied
  FROM possync.source s;

-- From count events: how close the books were to the shelf.
CREATE VIEW kpi_inventory_accuracy AS
SELECT c.location_id, count(DISTINCT c.sku) AS items_counted, sum(c.counted_qty) AS counted_qty,
       sum(abs(c.counted_qty - c.system_qty)) AS absolute_variance,
       CASE WHEN sum(c.counted_qty) = 0 THEN NULL
            ELSE round(1 - sum(abs(c.counted_qty - c.system_qty)) / sum(c.counted_qty), 4) END AS accuracy,
       max(c.business_date) AS last_counted
  FROM possync.count_line c GROUP BY c.location_id;

-- Promises that could not be kept: refused reservations and shelves that went below zero.
CREATE VIEW kpi_oversell AS
SELECT l.location_id,
       (SELECT count(*) FROM possync.reservation r WHERE r.location_id = l.location_id
           AND r.status = 'insufficient') AS insufficient_reservations,
       (SELECT count(*) FROM possync.exception x WHERE x.location_id = l.location_id
           AND x.kind = 'negative_on_hand') AS negative_on_hand,
       (SELECT count(*) FROM possync.stock_balance b WHERE b.location_id = l.location_id AND b.on_hand < 0)
           AS skus_negative_now
  FROM possync.location l;

-- The sales audit at a glance: open exceptions by kind and age, manual adjustments, audited days.
CREATE VIEW kpi_audit AS
SELECT 'open_exceptions' AS measure, x.kind AS dimension,
       CASE WHEN now() - x.raised_at < interval '1 hour' THEN 'under 1 hour'
            WHEN now() - x.raised_at < interval '1 day' THEN 'under 1 day'
            ELSE '1 day or more' END AS age, count(*)::numeric AS value
  FROM possync.exception x WHERE x.status = 'open' GROUP BY 2, 3
UNION ALL
SELECT 'manual_adjustments', 'count', NULL,
       (SELECT count(DISTINCT m.event_id) FROM possync.stock_move m JOIN possync.event e USING (event_id)
         WHERE e.kind = 'adjustment')::numeric
       + (SELECT coalesce(sum(a.adjustment_events), 0) FROM possync.archived_period a)
UNION ALL
SELECT 'manual_adjustments', 'value', NULL,
       (SELECT coalesce(sum(abs(m.value)), 0) FROM possync.stock_move m JOIN possync.event e USING (event_id)
         WHERE e.kind = 'adjustment')
       + (SELECT coalesce(sum(a.adjustment_value), 0) FROM possync.archived_period a)
UNION ALL
SELECT 'days_audited', 'count', NULL, count(*)::numeric FROM possync.audited_day;
