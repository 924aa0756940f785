-- possync 0.2.0 -> 0.3.0: voids, documents waiting to become final, source_status readable by the bridge, and the
-- audit functions bounded by the location and the day (issue 15). Building the new indexes reads the ledgers once.
\echo Use "ALTER EXTENSION possync UPDATE TO '0.3.0'" to load this file. \quit

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
