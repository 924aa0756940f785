-- possync 0.3.0 -> 0.4.0: apply lanes (one source applied in parallel sessions split by location, each with its
-- own checkpoint) and ledgers partitioned by business month (issue 15).
\echo Use "ALTER EXTENSION possync UPDATE TO '0.4.0'" to load this file. \quit

----------------------------------------------------------------------------------------------------
-- Ledgers partitioned by business month
----------------------------------------------------------------------------------------------------
-- (issue 15) event, stock_move, journal and journal_line become tables partitioned by business month; stock_move
-- and journal_line gain a business_date column (the event's, the journal's). Every row is copied into the
-- partitions of its month (made here, as posting makes them: ordinary tables, not members of the extension), the
-- old tables are dropped, and the views that read them are redefined in place (their grants stay). Event ids go
-- to event_key, which keeps them unique across months. Reads and writes every ledger row once.

-- Every row needs a business date to find its month: posting always gave events and journals one.
DO $check$
BEGIN
    IF EXISTS (SELECT 1 FROM possync.event WHERE business_date IS NULL)
       OR EXISTS (SELECT 1 FROM possync.journal WHERE business_date IS NULL) THEN
        RAISE EXCEPTION 'possync 0.4.0 partitions the ledgers by business month, and some events or journals have no business_date'
            USING ERRCODE = 'not_null_violation',
                  HINT = 'SELECT event_id FROM possync.event WHERE business_date IS NULL (and the same in possync.journal): '
                         'date them, then run ALTER EXTENSION possync UPDATE again';
    END IF;
END
$check$;

-- The old tables step aside; their sequences are kept (their position is the ledgers')
ALTER TABLE event RENAME TO event_0_3_0;
ALTER TABLE stock_move RENAME TO stock_move_0_3_0;
ALTER TABLE journal RENAME TO journal_0_3_0;
ALTER TABLE journal_line RENAME TO journal_line_0_3_0;
ALTER SEQUENCE stock_move_move_id_seq OWNED BY NONE;
ALTER SEQUENCE journal_id_seq OWNED BY NONE;
ALTER TABLE stock_move_0_3_0 ALTER COLUMN move_id DROP DEFAULT;

-- status: applied, held (waiting for master data or a transfer_out), reversed. Partitioned by business month.
CREATE TABLE event (
    event_id      text NOT NULL,
    source        text,
    kind          text NOT NULL,
    location_id   text,
    register      text,
    sequence      bigint,
    business_date date NOT NULL,
    occurred_at   timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL CONSTRAINT event_status_known CHECK (status IN ('applied', 'held', 'reversed')),
    journal_id    bigint,
    payload       jsonb NOT NULL,
    -- transfer_in waiting for its transfer_out is found by this key
    hold_key      text
) PARTITION BY RANGE (business_date);
-- Each partition has (made by possync.make_ledger_month): the primary key (event_id); the held events by
-- hold_key; (location_id, register, sequence) for the sales audit, which finds which event used a register's
-- sequence number; (location_id, business_date, kind) for a store day's events (audit_day finds its day closes,
-- check_day_close the transactions a close covers).

-- Every event id ever stored, with the month it is stored in: the primary key keeps an id unique across the
-- event table's partitions (a partitioned table's unique index must include the partition key), and duplicate
-- detection finds an event's partition from here. Written in the statement that writes the event; kept when the
-- event's month is archived, so that an id is never posted twice.
CREATE TABLE event_key (
    event_id      text PRIMARY KEY,
    business_date date NOT NULL
);

CREATE TABLE stock_move (
    move_id       bigint NOT NULL,
    event_id      text NOT NULL,
    sku           text NOT NULL,
    location_id   text NOT NULL,
    qty           numeric NOT NULL,
    unit_cost     numeric NOT NULL,
    value         numeric NOT NULL,
    on_hand_after numeric NOT NULL,
    value_after   numeric NOT NULL,
    posted_at     timestamptz NOT NULL DEFAULT now(),
    -- the business date of the event that moved the goods (a reversal's moves: the reversed event's date, as
    -- its journal); the partition key
    business_date date NOT NULL
) PARTITION BY RANGE (business_date);
ALTER SEQUENCE stock_move_move_id_seq OWNED BY stock_move.move_id;
ALTER TABLE stock_move ALTER COLUMN move_id SET DEFAULT nextval('stock_move_move_id_seq');
-- Each partition has: the primary key (move_id); (event_id); (location_id, sku) INCLUDE (qty, value), from which
-- reconcile(location) adds up one location's moves per sku.

CREATE TABLE journal (
    journal_id    bigint NOT NULL,
    event_id      text NOT NULL,
    location_id   text,
    business_date date NOT NULL,
    posted_at     timestamptz NOT NULL DEFAULT now(),
    memo          text NOT NULL DEFAULT '',
    reverses      bigint
) PARTITION BY RANGE (business_date);
ALTER SEQUENCE journal_id_seq OWNED BY journal.journal_id;
-- Each partition has: the primary key (journal_id); (event_id); (business_date, journal_id), by which trace()
-- bounds a date range by the least and greatest journal id dated in it.

CREATE TABLE journal_line (
    journal_id    bigint NOT NULL,
    line_no       integer NOT NULL,
    account_code  text NOT NULL,
    location_id   text,
    debit         numeric NOT NULL DEFAULT 0 CONSTRAINT journal_line_debit_not_negative CHECK (debit >= 0),
    credit        numeric NOT NULL DEFAULT 0 CONSTRAINT journal_line_credit_not_negative CHECK (credit >= 0),
    sku           text,
    -- its journal's business date; the partition key
    business_date date NOT NULL,
    CONSTRAINT journal_line_one_side CHECK (debit = 0 OR credit = 0)
) PARTITION BY RANGE (business_date);
-- Each partition has: the primary key (journal_id, line_no); (account_code, location_id, journal_id) INCLUDE
-- (debit, credit): an account's lines at a location in journal order, from which trace() reads a range of journal
-- ids and reconcile(location) adds up debits and credits.

-- On the parent for statements that name it; possync.make_ledger_month gives every partition the same trigger,
-- for statements that name a partition (a statement trigger fires only for the table the statement names).
CREATE TRIGGER journal_line_balanced AFTER INSERT ON journal_line
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION journal_must_balance();

CREATE TRIGGER stock_move_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON stock_move
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER journal_line_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_line
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Months whose partitions were archived, what they held and where it is. Posting rejects an event dated in one.
CREATE TABLE archived_period (
    month             date PRIMARY KEY CONSTRAINT archived_period_first_of_month CHECK (extract(day FROM month) = 1),
    archived_at       timestamptz NOT NULL DEFAULT now(),
    archived_by       text NOT NULL DEFAULT session_user,
    -- the detached partitions, now ordinary tables (possync_archive.<table>_YYYY_MM) until the DBA drops them
    tables            text[] NOT NULL,
    events            bigint NOT NULL,
    stock_moves       bigint NOT NULL,
    journals          bigint NOT NULL,
    journal_lines     bigint NOT NULL,
    -- kpi_audit counts manual adjustments from the beginning
    adjustment_events bigint NOT NULL,
    adjustment_value  numeric NOT NULL
);

-- The events of archived months: an id sent again is judged against its payload's digest (md5 of the stored
-- jsonb's text): duplicate when equal, conflict otherwise.
CREATE TABLE archived_event (
    event_id      text PRIMARY KEY,
    business_date date NOT NULL,
    status        text NOT NULL,
    payload_md5   text NOT NULL
);

-- What archived months add to each sku and location: reconcile() and check_invariants() add these to the moves
-- still attached. last_move_id: the month's last move there (the stock_move chain is checked from it on).
CREATE TABLE carried_stock (
    month        date NOT NULL,
    sku          text NOT NULL,
    location_id  text NOT NULL,
    qty          numeric NOT NULL,
    value        numeric NOT NULL,
    moves        bigint NOT NULL,
    last_move_id bigint NOT NULL,
    PRIMARY KEY (month, sku, location_id)
);
CREATE INDEX carried_stock_by_location ON carried_stock (location_id, sku) INCLUDE (qty, value, last_move_id);

-- What archived months add to each account and location: trial_balance and reconcile() add these to the lines
-- still attached.
CREATE TABLE carried_gl (
    month        date NOT NULL,
    account_code text NOT NULL,
    location_id  text,
    debit        numeric NOT NULL,
    credit       numeric NOT NULL,
    lines        bigint NOT NULL
);
CREATE INDEX carried_gl_by_account ON carried_gl (account_code, location_id) INCLUDE (debit, credit);

-- The partition of a ledger table that holds a whole month, if one is attached (made by possync, or by a DBA
-- with a wider range).
CREATE FUNCTION ledger_month_partition(parent regclass, month date) RETURNS regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS b) x
     CROSS JOIN LATERAL (
           SELECT coalesce((pg_catalog.regexp_match(x.b, 'FROM \(''([^'']*)''\)'))[1]::date, '-infinity') AS lo,
                  coalesce((pg_catalog.regexp_match(x.b, 'TO \(''([^'']*)''\)'))[1]::date, 'infinity') AS hi) r
     WHERE i.inhparent = parent AND NOT i.inhdetachpending AND x.b <> 'DEFAULT'
       AND r.lo <= date_trunc('month', month)::date AND (date_trunc('month', month) + interval '1 month')::date <= r.hi
     LIMIT 1
$$;

-- Makes the partitions of one month that are missing, in the fixed order event, stock_move, journal,
-- journal_line; returns how many it made. The caller holds the partition lock (make_ledger_months).
CREATE FUNCTION make_ledger_month(month date) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    parent text;
    part text;
    made integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        CONTINUE WHEN possync.ledger_month_partition(format('possync.%I', parent)::regclass, first) IS NOT NULL;
        part := parent || '_' || to_char(first, 'YYYY_MM');
        IF to_regclass(format('possync.%I', part)) IS NOT NULL THEN
            RAISE EXCEPTION 'possync: cannot make the % partition of possync.%: table possync.% exists and is not attached',
                to_char(first, 'YYYY-MM'), parent, part
                USING ERRCODE = 'duplicate_table',
                      HINT = format('attach it (ALTER TABLE possync.%I ATTACH PARTITION possync.%I FOR VALUES FROM (%L) TO (%L)) '
                                    'or move it away', parent, part, first, (first + interval '1 month')::date);
        END IF;
        EXECUTE format('CREATE TABLE possync.%I (LIKE possync.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        CASE parent
        WHEN 'event' THEN
            EXECUTE format('ALTER TABLE possync.%I ADD CONSTRAINT %I PRIMARY KEY (event_id)', part, part || '_pkey');
            EXECUTE format('CREATE INDEX %I ON possync.%I (hold_key) WHERE status = ''held''', part || '_held', part);
            EXECUTE format('CREATE INDEX %I ON possync.%I (location_id, register, sequence) WHERE sequence IS NOT NULL',
                           part || '_by_register_sequence', part);
            EXECUTE format('CREATE INDEX %I ON possync.%I (location_id, business_date, kind)',
                           part || '_by_location_day', part);
        WHEN 'stock_move' THEN
            EXECUTE format('ALTER TABLE possync.%I ADD CONSTRAINT %I PRIMARY KEY (move_id)', part, part || '_pkey');
            EXECUTE format('CREATE INDEX %I ON possync.%I (event_id)', part || '_by_event', part);
            EXECUTE format('CREATE INDEX %I ON possync.%I (location_id, sku) INCLUDE (qty, value)',
                           part || '_by_location', part);
            EXECUTE format('CREATE TRIGGER stock_move_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON possync.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only()', part);
        WHEN 'journal' THEN
            EXECUTE format('ALTER TABLE possync.%I ADD CONSTRAINT %I PRIMARY KEY (journal_id)', part, part || '_pkey');
            EXECUTE format('CREATE INDEX %I ON possync.%I (event_id)', part || '_by_event', part);
            EXECUTE format('CREATE INDEX %I ON possync.%I (business_date, journal_id)', part || '_by_day', part);
            EXECUTE format('CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON possync.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only()', part);
        ELSE
            EXECUTE format('ALTER TABLE possync.%I ADD CONSTRAINT %I PRIMARY KEY (journal_id, line_no)', part, part || '_pkey');
            EXECUTE format('CREATE INDEX %I ON possync.%I (account_code, location_id, journal_id) INCLUDE (debit, credit)',
                           part || '_by_account', part);
            EXECUTE format('CREATE TRIGGER journal_line_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON possync.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only()', part);
            EXECUTE format('CREATE TRIGGER journal_line_balanced AFTER INSERT ON possync.%I REFERENCING NEW TABLE AS new_lines '
                           'FOR EACH STATEMENT EXECUTE FUNCTION possync.journal_must_balance()', part);
        END CASE;
        EXECUTE format('ALTER TABLE possync.%I ATTACH PARTITION possync.%I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, first, (first + interval '1 month')::date);
        -- made by an upgrade script (ALTER EXTENSION ... UPDATE), the table became a member of the extension:
        -- partitions never are, wherever they were made
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = format('possync.%I', part)::regclass
                      AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e') THEN
            EXECUTE format('ALTER EXTENSION possync DROP TABLE possync.%I', part);
        END IF;
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- Makes the partitions these months need (archived months are never made again), under the partition lock
-- (advisory, transaction-level: one session makes a month, another that needs it waits and finds it made);
-- returns how many tables it made.
CREATE FUNCTION make_ledger_months(months date[]) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m date;
    made integer := 0;
BEGIN
    -- the partition lock ("PSPt"); archive_period takes it too, after the archive lock
    PERFORM pg_catalog.pg_advisory_xact_lock(1347637364, 0);
    FOR m IN SELECT DISTINCT date_trunc('month', x)::date FROM unnest(months) AS x WHERE x IS NOT NULL ORDER BY 1 LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM possync.archived_period a WHERE a.month = m);
        made := made + possync.make_ledger_month(m);
    END LOOP;
    RETURN made;
END
$$;

-- For posting: makes what the months need unless every ledger table already has them, and returns the months
-- (first days) that every ledger table has a partition for. SECURITY DEFINER: apply_batch's callers may post, and
-- posting must be able to make a month; the tables made belong to the extension's owner, as their parents.
CREATE FUNCTION ensure_ledger_months(months date[]) RETURNS date[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted date[];
    missing boolean;
BEGIN
    SELECT array_agg(DISTINCT date_trunc('month', x)::date) INTO wanted FROM unnest(months) AS x WHERE x IS NOT NULL;
    SELECT EXISTS (SELECT 1 FROM unnest(wanted) AS m, unnest(ARRAY['event', 'stock_move', 'journal', 'journal_line']) AS t
                    WHERE possync.ledger_month_partition(format('possync.%I', t)::regclass, m) IS NULL
                      AND NOT EXISTS (SELECT 1 FROM possync.archived_period a WHERE a.month = m))
      INTO missing;
    IF missing THEN
        PERFORM possync.make_ledger_months(wanted);
    END IF;
    RETURN (SELECT coalesce(array_agg(m ORDER BY m), '{}') FROM unnest(wanted) AS m
             WHERE NOT EXISTS (SELECT 1 FROM unnest(ARRAY['event', 'stock_move', 'journal', 'journal_line']) AS t
                                WHERE possync.ledger_month_partition(format('possync.%I', t)::regclass, m) IS NULL));
END
$$;

-- For DBAs and pg_cron: makes every month from the current one through the month of `through`; returns how many
-- tables it made (0 when they exist). Posting makes what it needs by itself: this takes the making out of the
-- first posting of a month.
CREATE FUNCTION make_partitions(through date) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF through IS NULL THEN
        RAISE EXCEPTION 'possync.make_partitions: argument through must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass the last day to make partitions for, e.g. current_date + 90';
    END IF;
    IF through > current_date + interval '10 years' THEN
        RAISE EXCEPTION 'possync.make_partitions: argument through % is more than 10 years ahead', through
            USING ERRCODE = 'invalid_parameter_value', HINT = 'make a few months ahead; posting makes any month it needs';
    END IF;
    RETURN possync.make_ledger_months(ARRAY(
        SELECT g::date FROM generate_series(date_trunc('month', current_date), date_trunc('month', through),
                                            interval '1 month') AS g));
END
$$;

-- Closes a month for good: its totals are carried (carried_stock, carried_gl, archived_event, archived_period) and
-- its partitions detached into the schema possync_archive, as ordinary tables to dump and drop. A month can be
-- archived when it is before the current month, every earlier month holding rows is archived, none of its
-- events is held and no exception of its events or of its days (day close, sequence audit) is open. Posting waits
-- while it runs (it takes the archive lock that every posting holds shared).
CREATE FUNCTION archive_period(month date) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first date;
    next date;
    parent text;
    part regclass;
    parts jsonb := '{}';
    earlier text;
    held bigint := 0;
    open_x bigint := 0;
    counts jsonb := '{}';
    n bigint;
    adj_events bigint := 0;
    adj_value numeric := 0;
    moved text[] := '{}';
    bound text;
    has_rows boolean;
    trig text;
BEGIN
    IF month IS NULL THEN
        RAISE EXCEPTION 'possync.archive_period: argument month must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass a day of the month to archive, e.g. ''2026-09-01''';
    END IF;
    first := date_trunc('month', month)::date;
    next := (first + interval '1 month')::date;
    -- no posting runs while a month is archived (each holds the archive lock, "PSAr", shared), and no partition
    -- is made (the partition lock, "PSPt")
    PERFORM pg_catalog.pg_advisory_xact_lock(1347633522, 0);
    PERFORM pg_catalog.pg_advisory_xact_lock(1347637364, 0);
    IF EXISTS (SELECT 1 FROM possync.archived_period a WHERE a.month = first) THEN
        RAISE EXCEPTION 'possync.archive_period: argument month %: period % is archived already', month,
            to_char(first, 'YYYY-MM')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'see SELECT * FROM possync.archived_period';
    END IF;
    IF first >= date_trunc('month', current_date) THEN
        RAISE EXCEPTION 'possync.archive_period: argument month %: period % is open', month, to_char(first, 'YYYY-MM')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'only a month before the current one can be closed and archived';
    END IF;
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        part := possync.ledger_month_partition(format('possync.%I', parent)::regclass, first);
        CONTINUE WHEN part IS NULL;
        bound := pg_catalog.pg_get_expr((SELECT c.relpartbound FROM pg_catalog.pg_class c WHERE c.oid = part), part);
        IF bound <> format('FOR VALUES FROM (%L) TO (%L)', first, next) THEN
            RAISE EXCEPTION 'possync.archive_period: argument month %: partition % holds more than the month (%)',
                month, part, bound
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'archive_period detaches monthly partitions, as possync makes them';
        END IF;
        parts := parts || jsonb_build_object(parent, part::text);
    END LOOP;
    -- earlier months still attached that hold rows
    FOR part IN SELECT c.oid::regclass
                  FROM unnest(ARRAY['event', 'stock_move', 'journal', 'journal_line']) AS t
                  JOIN pg_catalog.pg_inherits i ON i.inhparent = format('possync.%I', t)::regclass
                  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                 WHERE coalesce((pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                                         'TO \(''([^'']*)''\)'))[1]::date, 'infinity') <= first
                 ORDER BY 1 LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', part) INTO STRICT has_rows;
        IF has_rows THEN
            earlier := coalesce(earlier || ', ', '') || part::text;
        END IF;
    END LOOP;
    IF earlier IS NOT NULL THEN
        RAISE EXCEPTION 'possync.archive_period: argument month %: earlier months are not archived (% hold rows)',
            month, earlier
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'archive the months in order, oldest first';
    END IF;
    IF parts ? 'event' THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE status = ''held''', parts ->> 'event') INTO held;
    END IF;
    SELECT count(*) INTO open_x
      FROM possync.exception x
      LEFT JOIN possync.event_key k ON k.event_id = x.event_id
     WHERE x.status = 'open'
       AND ((k.business_date >= first AND k.business_date < next)
            OR left(x.detail ->> 'business_date', 7) = to_char(first, 'YYYY-MM'));
    IF held > 0 OR open_x > 0 THEN
        RAISE EXCEPTION 'possync.archive_period: argument month %: period % is not closed: % held events, % open exceptions',
            month, to_char(first, 'YYYY-MM'), held, open_x
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'post held events (possync.replay_held) and resolve the exceptions (possync.open_exceptions, '
                         'possync.resolve_exception) of the month first';
    END IF;
    -- nothing writes to the month from here on (direct writes included) until it is detached
    IF parts <> '{}' THEN
        EXECUTE 'LOCK TABLE ' || (SELECT string_agg(v, ', ') FROM jsonb_each_text(parts) AS p(k, v)) || ' IN SHARE MODE';
    END IF;
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        n := 0;
        IF parts ? parent THEN
            EXECUTE format('SELECT count(*) FROM %s', parts ->> parent) INTO n;
        END IF;
        counts := counts || jsonb_build_object(parent, n);
    END LOOP;
    IF parts ? 'event' THEN
        EXECUTE format('INSERT INTO possync.archived_event (event_id, business_date, status, payload_md5) '
                       'SELECT event_id, business_date, status, md5(payload::text) FROM %s', parts ->> 'event');
    END IF;
    IF parts ? 'stock_move' THEN
        EXECUTE format('INSERT INTO possync.carried_stock (month, sku, location_id, qty, value, moves, last_move_id) '
                       'SELECT $1, sku, location_id, sum(qty), sum(value), count(*), max(move_id) FROM %s GROUP BY 2, 3',
                       parts ->> 'stock_move') USING first;
        IF parts ? 'event' THEN
            EXECUTE format('SELECT count(DISTINCT m.event_id), coalesce(sum(abs(m.value)), 0) FROM %s m JOIN %s e '
                           'ON e.event_id = m.event_id WHERE e.kind = ''adjustment''',
                           parts ->> 'stock_move', parts ->> 'event') INTO adj_events, adj_value;
        END IF;
    END IF;
    IF parts ? 'journal_line' THEN
        EXECUTE format('INSERT INTO possync.carried_gl (month, account_code, location_id, debit, credit, lines) '
                       'SELECT $1, account_code, location_id, sum(debit), sum(credit), count(*) FROM %s GROUP BY 2, 3',
                       parts ->> 'journal_line') USING first;
    END IF;
    IF to_regnamespace('possync_archive') IS NULL THEN
        CREATE SCHEMA possync_archive;
    END IF;
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        CONTINUE WHEN NOT parts ? parent;
        part := (parts ->> parent)::regclass;
        IF to_regclass(format('possync_archive.%I', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = part)))
           IS NOT NULL THEN
            RAISE EXCEPTION 'possync.archive_period: argument month %: possync_archive already has a table named as %',
                month, part
                USING ERRCODE = 'duplicate_table', HINT = 'rename or drop the table in possync_archive first';
        END IF;
        EXECUTE format('ALTER TABLE possync.%I DETACH PARTITION %s', parent, part);
        -- an ordinary table that needs nothing of possync (DROP EXTENSION leaves it alone)
        FOR trig IN SELECT t.tgname FROM pg_catalog.pg_trigger t WHERE t.tgrelid = part AND NOT t.tgisinternal LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', trig, part);
        END LOOP;
        IF parent = 'stock_move' THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN move_id DROP DEFAULT', part);
        END IF;
        EXECUTE format('ALTER TABLE %s SET SCHEMA possync_archive', part);
        moved := moved || part::text;
    END LOOP;
    INSERT INTO possync.archived_period (month, tables, events, stock_moves, journals, journal_lines,
                                         adjustment_events, adjustment_value)
    VALUES (first, moved, (counts ->> 'event')::bigint, (counts ->> 'stock_move')::bigint,
            (counts ->> 'journal')::bigint, (counts ->> 'journal_line')::bigint, adj_events, adj_value);
    RETURN jsonb_build_object('month', first, 'status', 'archived', 'tables', to_jsonb(moved),
                              'events', counts -> 'event', 'stock_moves', counts -> 'stock_move',
                              'journals', counts -> 'journal', 'journal_lines', counts -> 'journal_line');
END
$$;


-- The months the rows are dated in. A stock move takes its event's date; a reversal's moves, the date of the
-- event it reverses (as its journal).
SELECT make_ledger_months(ARRAY(
    SELECT e.business_date FROM event_0_3_0 e
    UNION SELECT j.business_date FROM journal_0_3_0 j
    UNION SELECT coalesce(r.business_date, e.business_date, m.posted_at::date)
            FROM stock_move_0_3_0 m
            LEFT JOIN event_0_3_0 e ON e.event_id = m.event_id
            LEFT JOIN event_0_3_0 r ON e.kind = 'reversal' AND r.event_id = e.payload ->> 'reverses'
    UNION SELECT current_date));

INSERT INTO event (event_id, source, kind, location_id, register, sequence, business_date, occurred_at, received_at,
                   status, journal_id, payload, hold_key)
SELECT event_id, source, kind, location_id, register, sequence, business_date, occurred_at, received_at,
       status, journal_id, payload, hold_key
  FROM event_0_3_0;
INSERT INTO event_key (event_id, business_date) SELECT event_id, business_date FROM event_0_3_0;
INSERT INTO stock_move (move_id, event_id, sku, location_id, qty, unit_cost, value, on_hand_after, value_after,
                        posted_at, business_date)
SELECT m.move_id, m.event_id, m.sku, m.location_id, m.qty, m.unit_cost, m.value, m.on_hand_after, m.value_after,
       m.posted_at, coalesce(r.business_date, e.business_date, m.posted_at::date)
  FROM stock_move_0_3_0 m
  LEFT JOIN event_0_3_0 e ON e.event_id = m.event_id
  LEFT JOIN event_0_3_0 r ON e.kind = 'reversal' AND r.event_id = e.payload ->> 'reverses';
INSERT INTO journal (journal_id, event_id, location_id, business_date, posted_at, memo, reverses)
SELECT journal_id, event_id, location_id, business_date, posted_at, memo, reverses FROM journal_0_3_0;
-- the lines as they are: a journal that an earlier hand left unbalanced is check_invariants()' to report, not
-- a reason to stop the upgrade
ALTER TABLE journal_line DISABLE TRIGGER journal_line_balanced;
INSERT INTO journal_line (journal_id, line_no, account_code, location_id, debit, credit, sku, business_date)
SELECT l.journal_id, l.line_no, l.account_code, l.location_id, l.debit, l.credit, l.sku,
       coalesce(j.business_date, current_date)
  FROM journal_line_0_3_0 l LEFT JOIN journal_0_3_0 j ON j.journal_id = l.journal_id;
ALTER TABLE journal_line ENABLE TRIGGER journal_line_balanced;

-- What a DBA granted on the old tables holds on the new ones
DO $grants$
DECLARE
    t text;
    g record;
BEGIN
    FOREACH t IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        FOR g IN SELECT a.privilege_type, a.is_grantable,
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
                   FROM pg_catalog.pg_class c
                  CROSS JOIN LATERAL aclexplode(c.relacl) a
                   LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                  WHERE c.oid = format('possync.%I', t || '_0_3_0')::regclass AND c.relacl IS NOT NULL LOOP
            EXECUTE format('GRANT %s ON possync.%I TO %s%s', g.privilege_type, t, g.grantee,
                           CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END
$grants$;

-- The views that read the ledgers, redefined in place (their grants stay): the trial balance and kpi_audit count
-- archived months by what they carry
CREATE OR REPLACE VIEW trial_balance AS
SELECT l.account_code, a.name, a.kind, l.location_id,
       sum(l.debit) AS debit, sum(l.credit) AS credit, sum(l.debit) - sum(l.credit) AS balance
  FROM (SELECT j.account_code, j.location_id, j.debit, j.credit FROM possync.journal_line j
        UNION ALL
        SELECT c.account_code, c.location_id, c.debit, c.credit FROM possync.carried_gl c) l
  JOIN possync.account a USING (account_code)
 GROUP BY l.account_code, a.name, a.kind, l.location_id;

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

CREATE OR REPLACE VIEW kpi_integration AS
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

CREATE OR REPLACE VIEW kpi_audit AS
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

-- The audit functions add what archived months carry; trace() warns when its range reaches into one; a day close
-- and an exception's event are found by their month (event_key)
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

CREATE OR REPLACE FUNCTION audit_day(location text, business_date date) RETURNS jsonb LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION trace(account text, location text DEFAULT NULL, from_date date DEFAULT NULL, to_date date DEFAULT NULL)
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

-- The old tables go (out of the extension first, which also forgets their pg_dump entries)
ALTER EXTENSION possync DROP TABLE event_0_3_0;
ALTER EXTENSION possync DROP TABLE stock_move_0_3_0;
ALTER EXTENSION possync DROP TABLE journal_0_3_0;
ALTER EXTENSION possync DROP TABLE journal_line_0_3_0;
DROP TABLE event_0_3_0, stock_move_0_3_0, journal_0_3_0, journal_line_0_3_0;

SELECT pg_catalog.pg_extension_config_dump('event', '');
SELECT pg_catalog.pg_extension_config_dump('stock_move', '');
SELECT pg_catalog.pg_extension_config_dump('journal', '');
SELECT pg_catalog.pg_extension_config_dump('journal_line', '');
SELECT pg_catalog.pg_extension_config_dump('event_key', '');
SELECT pg_catalog.pg_extension_config_dump('archived_period', '');
SELECT pg_catalog.pg_extension_config_dump('archived_event', '');
SELECT pg_catalog.pg_extension_config_dump('carried_stock', '');
SELECT pg_catalog.pg_extension_config_dump('carried_gl', '');
REVOKE ALL ON FUNCTION ledger_month_partition(regclass, date), make_ledger_month(date), make_ledger_months(date[]), ensure_ledger_months(date[]), make_partitions(date), archive_period(date) FROM PUBLIC;

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

