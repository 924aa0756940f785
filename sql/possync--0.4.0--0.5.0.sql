-- possync 0.4.0 -> 0.5.0
\echo Use "ALTER EXTENSION possync UPDATE TO '0.5.0'" to load this file. \quit

----------------------------------------------------------------------------------------------------
-- Default partitions: a bounded number of partitions whatever the business dates
----------------------------------------------------------------------------------------------------
-- Months from 60 before the current one to 12 after it get partitions of their own; rows dated outside that
-- window go to a default partition per ledger table, made on first need. Before, every month a date fell in got
-- its partitions, so a payload with dates over the contract's years 0001-9999 made thousands and a posting
-- call ran out of lock table (out of shared memory).

-- The default partition of a ledger table, if one is attached: it holds the rows dated in a month that has no
-- partition of its own (see ensure_ledger_months).
CREATE FUNCTION ledger_default_partition(parent regclass) RETURNS regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT nullif(p.partdefid, 0)::regclass FROM pg_catalog.pg_partitioned_table p WHERE p.partrelid = parent
$$;


-- The first default partition of a ledger table that holds rows of the month, if any: such a month cannot have
-- partitions of its own (they could not be attached beside those rows), nor be archived.
CREATE FUNCTION ledger_month_in_default(month date) RETURNS regclass
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    parent text;
    dflt regclass;
    held boolean;
BEGIN
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        dflt := possync.ledger_default_partition(format('possync.%I', parent)::regclass);
        CONTINUE WHEN dflt IS NULL;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE business_date >= $1 AND business_date < $2)', dflt)
           INTO STRICT held USING first, (first + interval '1 month')::date;
        IF held THEN
            RETURN dflt;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Makes one partition of a ledger table, with its primary key, indexes and triggers, and attaches it: the month
-- from `first` (<parent>_YYYY_MM), or the default partition when `first` is NULL (<parent>_default).
CREATE FUNCTION make_ledger_partition(parent text, first date) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text := parent || CASE WHEN first IS NULL THEN '_default' ELSE '_' || to_char(first, 'YYYY_MM') END;
    bound text := CASE WHEN first IS NULL THEN 'DEFAULT'
                       ELSE format('FOR VALUES FROM (%L) TO (%L)', first, (first + interval '1 month')::date) END;
BEGIN
    IF to_regclass(format('possync.%I', part)) IS NOT NULL THEN
        RAISE EXCEPTION 'possync: cannot make the % partition of possync.%: table possync.% exists and is not attached',
            coalesce(to_char(first, 'YYYY-MM'), 'default'), parent, part
            USING ERRCODE = 'duplicate_table',
                  HINT = format('attach it (ALTER TABLE possync.%I ATTACH PARTITION possync.%I %s) or move it away',
                                parent, part, bound);
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
    EXECUTE format('ALTER TABLE possync.%I ATTACH PARTITION possync.%I %s', parent, part, bound);
    -- made by an upgrade script (ALTER EXTENSION ... UPDATE), the table became a member of the extension:
    -- partitions never are, wherever they were made
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = format('possync.%I', part)::regclass
                  AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e') THEN
        EXECUTE format('ALTER EXTENSION possync DROP TABLE possync.%I', part);
    END IF;
END
$$;


-- Makes the partitions of one month that are missing, in the fixed order event, stock_move, journal,
-- journal_line; returns how many it made. A month that a default partition holds rows of stays there (its own
-- partition could not be attached beside them): it makes none. The caller holds the partition lock
-- (make_ledger_months).
CREATE OR REPLACE FUNCTION make_ledger_month(month date) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    parent text;
    made integer := 0;
BEGIN
    IF possync.ledger_month_in_default(first) IS NOT NULL THEN
        RETURN 0;
    END IF;
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        CONTINUE WHEN possync.ledger_month_partition(format('possync.%I', parent)::regclass, first) IS NOT NULL;
        PERFORM possync.make_ledger_partition(parent, first);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;


-- Makes the default partition of every ledger table that has none, under the partition lock; returns how many.
CREATE FUNCTION make_ledger_defaults() RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent text;
    made integer := 0;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(1347637364, 0);
    FOREACH parent IN ARRAY ARRAY['event', 'stock_move', 'journal', 'journal_line'] LOOP
        CONTINUE WHEN possync.ledger_default_partition(format('possync.%I', parent)::regclass) IS NOT NULL;
        PERFORM possync.make_ledger_partition(parent, NULL);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;


-- For posting: makes the partitions the months need, and returns the months (first days) that every ledger
-- table can take rows of. A month gets partitions of its own when it lies in the partition window, from 60
-- months before the current one to 12 after it; a date outside it (a till's clock years off, a migration of old
-- history, a hostile payload: the contract allows years 0001-9999) goes to the default partitions, made on
-- first need, so that the number of partitions stays bounded whatever the dates. A month in the window that the
-- default partitions hold rows of stays there. SECURITY DEFINER: apply_batch's callers may post, and posting must
-- be able to make partitions; the tables made belong to the extension's owner, as their parents.
CREATE OR REPLACE FUNCTION ensure_ledger_months(months date[]) RETURNS date[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo constant date := (date_trunc('month', current_date) - interval '60 months')::date;
    hi constant date := (date_trunc('month', current_date) + interval '12 months')::date;
    wanted date[];
    near date[];
    far boolean;
    tables constant text[] := ARRAY['event', 'stock_move', 'journal', 'journal_line'];
BEGIN
    SELECT array_agg(DISTINCT date_trunc('month', x)::date) INTO wanted FROM unnest(months) AS x WHERE x IS NOT NULL;
    SELECT array_agg(m) FILTER (WHERE m BETWEEN lo AND hi), coalesce(bool_or(NOT m BETWEEN lo AND hi), false)
      INTO near, far
      FROM unnest(wanted) AS m
     WHERE NOT EXISTS (SELECT 1 FROM possync.archived_period a WHERE a.month = m);
    IF EXISTS (SELECT 1 FROM unnest(near) AS m, unnest(tables) AS t
                WHERE possync.ledger_month_partition(format('possync.%I', t)::regclass, m) IS NULL) THEN
        PERFORM possync.make_ledger_months(near);
    END IF;
    -- (a month of the window that the default partitions hold rows of needs nothing more: they exist)
    IF far AND EXISTS (SELECT 1 FROM unnest(tables) AS t
                        WHERE possync.ledger_default_partition(format('possync.%I', t)::regclass) IS NULL) THEN
        PERFORM possync.make_ledger_defaults();
    END IF;
    RETURN (SELECT coalesce(array_agg(m ORDER BY m), '{}') FROM unnest(wanted) AS m
             WHERE NOT EXISTS (SELECT 1 FROM unnest(tables) AS t
                                WHERE possync.ledger_month_partition(format('possync.%I', t)::regclass, m) IS NULL
                                  AND possync.ledger_default_partition(format('possync.%I', t)::regclass) IS NULL));
END
$$;


-- Closes a month for good: its totals are carried (carried_stock, carried_gl, archived_event, archived_period) and
-- its partitions detached into the schema possync_archive, as ordinary tables to dump and drop. A month can be
-- archived when it is before the current month, every earlier month holding rows is archived, none of its
-- events is held and no exception of its events or of its days (day close, sequence audit) is open. Posting waits
-- while it runs (it takes the archive lock that every posting holds shared).
CREATE OR REPLACE FUNCTION archive_period(month date) RETURNS jsonb
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
    -- rows of the month in a default partition (dated outside the partition window when they were posted) stay
    -- in the ledgers: archiving detaches a month's own partitions only
    part := possync.ledger_month_in_default(first);
    IF part IS NOT NULL THEN
        RAISE EXCEPTION 'possync.archive_period: argument month %: % holds rows of period %, which has no partitions of its own',
            month, part, to_char(first, 'YYYY-MM')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'a month is archived by detaching its own partitions; rows dated outside the partition '
                         'window when they were posted stay in the default partitions, and in the books';
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
    IF parts ? 'stock_move' AND parts ? 'event' THEN
        EXECUTE format('INSERT INTO possync.archived_issue (event_id, sku, qty, value) '
                       'SELECT m.event_id, m.sku, -sum(m.qty), -sum(m.value) FROM %s m JOIN %s e '
                       'ON e.event_id = m.event_id WHERE e.kind IN (''sale'', ''exchange'') AND m.qty < 0 GROUP BY 1, 2',
                       parts ->> 'stock_move', parts ->> 'event');
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


REVOKE ALL ON FUNCTION ledger_default_partition(regclass), ledger_month_in_default(date), make_ledger_partition(text, date),
    make_ledger_defaults() FROM PUBLIC;

----------------------------------------------------------------------------------------------------
-- What archived sales issued
----------------------------------------------------------------------------------------------------
-- A return naming a sale of an archived month came back at the current average cost: archive_period now keeps
-- what each sale and exchange issued per sku (archive_period above writes it).
-- What each sale and exchange of an archived month issued, per sku: a later return naming it comes back at
-- that cost, as it would while the month was open.
CREATE TABLE archived_issue (
    event_id text NOT NULL,
    sku      text NOT NULL,
    qty      numeric NOT NULL,
    value    numeric NOT NULL,
    PRIMARY KEY (event_id, sku)
);

SELECT pg_catalog.pg_extension_config_dump('archived_issue', '');

-- months archived by 0.4.0: read from their archived tables where the DBA has not dropped them yet
DO $$
DECLARE
    a record;
    moves text;
    events text;
BEGIN
    FOR a IN SELECT month, tables FROM possync.archived_period ORDER BY month LOOP
        SELECT t INTO moves FROM unnest(a.tables) AS t WHERE t LIKE 'possync_archive.stock_move_%';
        SELECT t INTO events FROM unnest(a.tables) AS t WHERE t LIKE 'possync_archive.event_%';
        CONTINUE WHEN moves IS NULL OR events IS NULL OR to_regclass(moves) IS NULL OR to_regclass(events) IS NULL;
        EXECUTE format('INSERT INTO possync.archived_issue (event_id, sku, qty, value) '
                       'SELECT m.event_id, m.sku, -sum(m.qty), -sum(m.value) FROM %s m JOIN %s e '
                       'ON e.event_id = m.event_id WHERE e.kind IN (''sale'', ''exchange'') AND m.qty < 0 GROUP BY 1, 2 '
                       'ON CONFLICT DO NOTHING', moves, events);
    END LOOP;
END
$$;
