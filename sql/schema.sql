-- possync schema: master data, the event inbox, the stock ledger, the general ledger and exceptions.
-- Runs first (bootstrap); functions written in Rust are created after it, views and grants in finalize.sql.

----------------------------------------------------------------------------------------------------
-- Master data, written by the DBA or the ERP with plain INSERT/UPDATE
----------------------------------------------------------------------------------------------------

CREATE TABLE location (
    location_id text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    kind        text NOT NULL DEFAULT 'store' CONSTRAINT location_kind_known CHECK (kind IN ('store', 'dc', 'online')),
    active      boolean NOT NULL DEFAULT true
);

CREATE TABLE item (
    sku           text PRIMARY KEY,
    description   text NOT NULL DEFAULT '',
    item_class    text,
    -- the cost used before anything has been received at a location
    standard_cost numeric NOT NULL DEFAULT 0 CONSTRAINT item_standard_cost_not_negative CHECK (standard_cost >= 0),
    active        boolean NOT NULL DEFAULT true
);

CREATE TABLE account (
    account_code text PRIMARY KEY,
    name         text NOT NULL,
    kind         text NOT NULL CONSTRAINT account_kind_known
                 CHECK (kind IN ('asset', 'liability', 'equity', 'revenue', 'expense'))
);

-- Postings name a role; the most specific mapping wins (location and item class given beats NULL).
CREATE TABLE account_map (
    account_map_id bigint PRIMARY KEY,
    role           text NOT NULL,
    account_code   text NOT NULL REFERENCES account,
    location_id    text REFERENCES location,
    item_class     text
);
-- Ids come from sequences the extension owns (not identity columns): pg_dump keeps their position with the
-- data (pg_extension_config_dump below), so a restored database goes on numbering where it stopped.
CREATE SEQUENCE account_map_account_map_id_seq AS bigint OWNED BY account_map.account_map_id;
ALTER TABLE account_map ALTER COLUMN account_map_id SET DEFAULT nextval('account_map_account_map_id_seq');
CREATE UNIQUE INDEX account_map_one_per_scope
    ON account_map (role, coalesce(location_id, ''), coalesce(item_class, ''));

-- Roles the posting rules use; tender roles are open-ended (tender:<type>, tender:* as the fallback).
CREATE FUNCTION account_map_role_is_known() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role IS NULL OR NOT (
        NEW.role IN ('inventory', 'in_transit', 'tax_payable', 'grni', 'customer_deposits', 'revenue',
                     'returns', 'cogs', 'shrink', 'over_short')
        OR NEW.role ~ '^tender:(\*|[A-Za-z0-9_.-]+)$') THEN
        RAISE EXCEPTION 'unknown role % in possync.account_map.role', coalesce(quote_literal(NEW.role), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'roles are inventory, in_transit, tax_payable, grni, customer_deposits, revenue, returns, '
                         'cogs, shrink, over_short, tender:<type> and tender:*';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER account_map_role_is_known BEFORE INSERT OR UPDATE ON account_map
    FOR EACH ROW EXECUTE FUNCTION account_map_role_is_known();

CREATE TABLE tax_code (
    tax_code    text PRIMARY KEY,
    rate        numeric NOT NULL CONSTRAINT tax_code_rate_not_negative CHECK (rate >= 0),
    description text NOT NULL DEFAULT ''
);

CREATE TABLE safety_stock (
    sku         text NOT NULL REFERENCES item,
    location_id text NOT NULL REFERENCES location,
    qty         numeric NOT NULL DEFAULT 0 CONSTRAINT safety_stock_qty_not_negative CHECK (qty >= 0),
    PRIMARY KEY (sku, location_id)
);

-- Incoming supply (purchase orders, inbound transfers) that ATP may count by its expected time.
CREATE TABLE supply (
    supply_id   text PRIMARY KEY,
    sku         text NOT NULL REFERENCES item,
    location_id text NOT NULL REFERENCES location,
    qty_open    numeric NOT NULL CONSTRAINT supply_qty_open_not_negative CHECK (qty_open >= 0),
    expected_at timestamptz NOT NULL,
    kind        text NOT NULL DEFAULT 'po'
);
CREATE INDEX supply_by_sku ON supply (sku, location_id, expected_at) WHERE qty_open > 0;

-- What each receipt took off each supply's open quantity (no more than was open), so that reversing the
-- receipt gives back exactly that.
CREATE TABLE supply_receipt (
    event_id  text NOT NULL,
    supply_id text NOT NULL,
    qty       numeric NOT NULL CONSTRAINT supply_receipt_qty_positive CHECK (qty > 0),
    PRIMARY KEY (event_id, supply_id)
);

-- Promotions the tills may name on a line; an unknown code or one used outside its dates is flagged.
CREATE TABLE promotion (
    promotion_code   text PRIMARY KEY,
    description      text NOT NULL DEFAULT '',
    starts_on        date,
    ends_on          date,
    -- the largest discount the promotion gives, as a percentage of the line's gross; NULL: no limit
    max_discount_pct numeric
);

----------------------------------------------------------------------------------------------------
-- The inbox: every event ever accepted, and where each stream stands
----------------------------------------------------------------------------------------------------

CREATE TABLE source (
    source_id      text PRIMARY KEY,
    checkpoint     pg_lsn NOT NULL DEFAULT '0/0',
    applied_at     timestamptz,
    events_applied bigint NOT NULL DEFAULT 0
)
-- updated by every batch: room on the page keeps those updates HOT and the row's chain short
WITH (fillfactor = 50);

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

-- status: applied, held (waiting for master data or a transfer_out), reversed. Partitioned by business month
-- (see "Ledgers partitioned by business month" below): every event has a business date (the contract requires
-- one, a reversal takes the day it is posted), and its id is unique across months through possync.event_key.
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

----------------------------------------------------------------------------------------------------
-- The stock ledger: append-only moves, and the balance they add up to
----------------------------------------------------------------------------------------------------

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
CREATE SEQUENCE stock_move_move_id_seq AS bigint OWNED BY stock_move.move_id;
ALTER TABLE stock_move ALTER COLUMN move_id SET DEFAULT nextval('stock_move_move_id_seq');
-- Each partition has: the primary key (move_id); (event_id); (location_id, sku) INCLUDE (qty, value), from which
-- reconcile(location) adds up one location's moves per sku.

CREATE TABLE stock_balance (
    sku         text NOT NULL,
    location_id text NOT NULL,
    on_hand     numeric NOT NULL DEFAULT 0,
    value       numeric NOT NULL DEFAULT 0,
    -- moving weighted average, 6 decimals; NULL until something was received here
    avg_cost    numeric,
    reserved    numeric NOT NULL DEFAULT 0 CONSTRAINT stock_balance_reserved_not_negative CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, location_id)
)
-- a best seller's row is updated by nearly every batch: room on each page keeps the updates HOT, so the
-- primary key is not touched and pruning keeps the version chain short
WITH (fillfactor = 60);

-- Shipped but not yet received, per sku; the in_transit account's balance is the sum of what is open here.
CREATE TABLE transfer (
    transfer_id   text PRIMARY KEY,
    from_location text NOT NULL,
    to_location   text NOT NULL,
    out_event_id  text NOT NULL,
    shipped_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE transfer_line (
    transfer_id    text NOT NULL REFERENCES transfer,
    sku            text NOT NULL,
    qty_shipped    numeric NOT NULL,
    value_shipped  numeric NOT NULL,
    qty_received   numeric NOT NULL DEFAULT 0,
    value_received numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (transfer_id, sku)
);

-- What each count found, for inventory accuracy.
CREATE TABLE count_line (
    event_id      text NOT NULL,
    sku           text NOT NULL,
    location_id   text NOT NULL,
    business_date date NOT NULL,
    system_qty    numeric NOT NULL,
    counted_qty   numeric NOT NULL,
    PRIMARY KEY (event_id, sku)
);

CREATE TABLE reservation (
    reservation_id text PRIMARY KEY,
    sku            text NOT NULL,
    location_id    text NOT NULL,
    qty            numeric NOT NULL CONSTRAINT reservation_qty_positive CHECK (qty > 0),
    -- active holds stock; released, expired and consumed (by a fulfillment) do not; insufficient records a
    -- refused request, so the same id asked again gets the same answer
    status         text NOT NULL DEFAULT 'active'
                   CONSTRAINT reservation_status_known
                   CHECK (status IN ('active', 'released', 'expired', 'consumed', 'insufficient')),
    expires_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    consumed_by    text
);
CREATE INDEX reservation_expiring ON reservation (expires_at) WHERE status = 'active';
CREATE INDEX reservation_active_by_item ON reservation (sku, location_id, expires_at) WHERE status = 'active';
CREATE INDEX reservation_consumed_by ON reservation (consumed_by) WHERE consumed_by IS NOT NULL;

----------------------------------------------------------------------------------------------------
-- The general ledger: balanced journals, never changed
----------------------------------------------------------------------------------------------------

CREATE TABLE journal (
    journal_id    bigint NOT NULL,
    event_id      text NOT NULL,
    location_id   text,
    business_date date NOT NULL,
    posted_at     timestamptz NOT NULL DEFAULT now(),
    memo          text NOT NULL DEFAULT '',
    reverses      bigint
) PARTITION BY RANGE (business_date);
CREATE SEQUENCE journal_id_seq AS bigint OWNED BY journal.journal_id;
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

-- A journal's lines must balance at the end of every statement that writes them, whoever writes them. Lines are
-- never updated or deleted (below), so checking the lines a statement adds, per journal, keeps every journal
-- balanced: each statement adds a net zero to each journal it touches. No existing line is read.
CREATE FUNCTION journal_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.journal_id, sum(n.debit) AS debits, sum(n.credit) AS credits INTO bad
      FROM new_lines n
     GROUP BY n.journal_id
    HAVING sum(n.debit) <> sum(n.credit)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance: debits % and credits %', bad.journal_id, bad.debits, bad.credits
            USING ERRCODE = 'check_violation',
                  HINT = 'insert all lines of a journal in one statement, with total debits equal to total credits';
    END IF;
    RETURN NULL;
END
$$;
-- On the parent for statements that name it; possync.make_ledger_month gives every partition the same trigger,
-- for statements that name a partition (a statement trigger fires only for the table the statement names).
CREATE TRIGGER journal_line_balanced AFTER INSERT ON journal_line
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION journal_must_balance();

-- Ledgers are append-only: a correction is a reversing entry. (As above, on the parents and on every partition.)
CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'possync.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'correct a posting with possync.reverse_event(event_id, reason) and post the right event';
END
$$;
CREATE TRIGGER stock_move_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON stock_move
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER journal_line_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_line
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

----------------------------------------------------------------------------------------------------
-- Exceptions: everything that could not post, or posted with something a person should look at
----------------------------------------------------------------------------------------------------
-- Not partitioned by month like the ledgers: an exception changes (resolved, a sequence gap's detail), an open
-- one must stay in view whatever month it belongs to, and the table stays small (1.3 MB at 2 million sales).

CREATE TABLE exception (
    exception_id bigint PRIMARY KEY,
    event_id     text,
    kind         text NOT NULL,
    status       text NOT NULL DEFAULT 'open' CONSTRAINT exception_status_known CHECK (status IN ('open', 'resolved')),
    reason       text NOT NULL,
    payload      jsonb,
    location_id  text,
    -- money or quantity at stake, where there is one
    amount       numeric,
    -- structured facts for the audit (missing sequence numbers, expected and posted day totals, ...)
    detail       jsonb,
    -- the stream the event came in on, when it came through apply_batch
    source       text,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolution   text
);
CREATE SEQUENCE exception_exception_id_seq AS bigint OWNED BY exception.exception_id;
ALTER TABLE exception ALTER COLUMN exception_id SET DEFAULT nextval('exception_exception_id_seq');
CREATE INDEX exception_by_event ON exception (event_id);
CREATE INDEX exception_open_by_location ON exception (location_id, kind) WHERE status = 'open';
-- a late transaction finds the open gap of its register directly
CREATE INDEX exception_open_gaps ON exception (location_id, (detail ->> 'register'))
    WHERE kind = 'missing_transaction' AND status = 'open';

----------------------------------------------------------------------------------------------------
-- Sales audit: register sequences and audited days
----------------------------------------------------------------------------------------------------

-- The highest sequence seen per register: a jump past it names the numbers in between as missing.
CREATE TABLE register_state (
    source        text NOT NULL,
    location_id   text NOT NULL,
    register      text NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (source, location_id, register)
)
WITH (fillfactor = 50);

CREATE TABLE audited_day (
    location_id   text NOT NULL,
    business_date date NOT NULL,
    audited_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, business_date)
);
CREATE INDEX exception_open ON exception (kind) WHERE status = 'open';

----------------------------------------------------------------------------------------------------
-- POS documents (orders) seen in a draft state and not yet final, written by the bridge through
-- possync.note_documents; one that stays longer than possync.document_final_within shows in open_exceptions
----------------------------------------------------------------------------------------------------

CREATE TABLE pending_document (
    source     text NOT NULL,
    document   text NOT NULL,
    doc_key    text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, document, doc_key)
);

----------------------------------------------------------------------------------------------------
-- Ledgers partitioned by business month
----------------------------------------------------------------------------------------------------
-- event, stock_move, journal and journal_line are partitioned by business_date, one partition per month, named
-- <table>_YYYY_MM (possync.event_2026_11). Posting makes the months a call writes into (and the month after the
-- latest of them) before it writes anything; possync.make_partitions(through) makes months ahead for a DBA or
-- pg_cron. A partition is made as an ordinary table with its own primary key, indexes and triggers, then
-- attached: attaching takes SHARE UPDATE EXCLUSIVE on the parent, which posting sessions (ROW EXCLUSIVE) and
-- readers do not wait for (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE). The parents carry no
-- index: the parents belong to the extension and pg_restore recreates them with CREATE EXTENSION, so an index on
-- a parent would be built on each partition again when pg_restore attaches it, before the partition's own
-- (dumped) index is created, and that restore would fail. Partitions never belong to the extension (pg_dump
-- dumps them, with their rows, as the ordinary tables they are).
--
-- A closed month is archived with possync.archive_period(month): its totals are carried in carried_stock and
-- carried_gl, its event ids and payload digests in archived_event, and its partitions are detached into the
-- schema possync_archive, as ordinary tables the DBA can dump and drop.

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

-- What each sale and exchange of an archived month issued, per sku: a later return naming it comes back at
-- that cost, as it would while the month was open.
CREATE TABLE archived_issue (
    event_id text NOT NULL,
    sku      text NOT NULL,
    qty      numeric NOT NULL,
    value    numeric NOT NULL,
    PRIMARY KEY (event_id, sku)
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
CREATE FUNCTION make_ledger_month(month date) RETURNS integer
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
CREATE FUNCTION ensure_ledger_months(months date[]) RETURNS date[]
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

----------------------------------------------------------------------------------------------------
-- pg_dump keeps the data of these tables (extension configuration tables)
----------------------------------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('location', '');
SELECT pg_catalog.pg_extension_config_dump('item', '');
SELECT pg_catalog.pg_extension_config_dump('account', '');
SELECT pg_catalog.pg_extension_config_dump('account_map', '');
SELECT pg_catalog.pg_extension_config_dump('tax_code', '');
SELECT pg_catalog.pg_extension_config_dump('safety_stock', '');
SELECT pg_catalog.pg_extension_config_dump('supply', '');
SELECT pg_catalog.pg_extension_config_dump('supply_receipt', '');
SELECT pg_catalog.pg_extension_config_dump('source', '');
SELECT pg_catalog.pg_extension_config_dump('source_lane', '');
-- event, stock_move, journal and journal_line are partitioned: pg_dump dumps their rows with each partition (an
-- ordinary table, not a member of the extension), and their entries here add nothing
SELECT pg_catalog.pg_extension_config_dump('event', '');
SELECT pg_catalog.pg_extension_config_dump('stock_move', '');
SELECT pg_catalog.pg_extension_config_dump('stock_balance', '');
SELECT pg_catalog.pg_extension_config_dump('transfer', '');
SELECT pg_catalog.pg_extension_config_dump('transfer_line', '');
SELECT pg_catalog.pg_extension_config_dump('count_line', '');
SELECT pg_catalog.pg_extension_config_dump('reservation', '');
SELECT pg_catalog.pg_extension_config_dump('journal', '');
SELECT pg_catalog.pg_extension_config_dump('journal_line', '');
SELECT pg_catalog.pg_extension_config_dump('exception', '');
SELECT pg_catalog.pg_extension_config_dump('journal_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('stock_move_move_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('exception_exception_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('account_map_account_map_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('promotion', '');
SELECT pg_catalog.pg_extension_config_dump('register_state', '');
SELECT pg_catalog.pg_extension_config_dump('audited_day', '');
SELECT pg_catalog.pg_extension_config_dump('pending_document', '');
SELECT pg_catalog.pg_extension_config_dump('event_key', '');
SELECT pg_catalog.pg_extension_config_dump('archived_period', '');
SELECT pg_catalog.pg_extension_config_dump('archived_event', '');
SELECT pg_catalog.pg_extension_config_dump('archived_issue', '');
SELECT pg_catalog.pg_extension_config_dump('carried_stock', '');
SELECT pg_catalog.pg_extension_config_dump('carried_gl', '');
