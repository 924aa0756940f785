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

-- status: applied, held (waiting for master data or a transfer_out), reversed
CREATE TABLE event (
    event_id      text PRIMARY KEY,
    source        text,
    kind          text NOT NULL,
    location_id   text,
    register      text,
    sequence      bigint,
    business_date date,
    occurred_at   timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL CONSTRAINT event_status_known CHECK (status IN ('applied', 'held', 'reversed')),
    journal_id    bigint,
    payload       jsonb NOT NULL,
    -- transfer_in waiting for its transfer_out is found by this key
    hold_key      text
);
CREATE INDEX event_held ON event (hold_key) WHERE status = 'held';
-- the sales audit finds which event used a register's sequence number
CREATE INDEX event_by_register_sequence ON event (location_id, register, sequence) WHERE sequence IS NOT NULL;
-- a store day's events: audit_day finds its day closes, check_day_close the transactions a close covers
CREATE INDEX event_by_location_day ON event (location_id, business_date, kind);

----------------------------------------------------------------------------------------------------
-- The stock ledger: append-only moves, and the balance they add up to
----------------------------------------------------------------------------------------------------

CREATE TABLE stock_move (
    move_id       bigint PRIMARY KEY,
    event_id      text NOT NULL,
    sku           text NOT NULL,
    location_id   text NOT NULL,
    qty           numeric NOT NULL,
    unit_cost     numeric NOT NULL,
    value         numeric NOT NULL,
    on_hand_after numeric NOT NULL,
    value_after   numeric NOT NULL,
    posted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE stock_move_move_id_seq AS bigint OWNED BY stock_move.move_id;
ALTER TABLE stock_move ALTER COLUMN move_id SET DEFAULT nextval('stock_move_move_id_seq');
CREATE INDEX stock_move_by_event ON stock_move (event_id);
-- reconcile(location) adds up one location's moves per sku from the index alone
CREATE INDEX stock_move_by_location ON stock_move (location_id, sku) INCLUDE (qty, value);

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
    journal_id    bigint PRIMARY KEY,
    event_id      text NOT NULL,
    location_id   text,
    business_date date,
    posted_at     timestamptz NOT NULL DEFAULT now(),
    memo          text NOT NULL DEFAULT '',
    reverses      bigint
);
CREATE SEQUENCE journal_id_seq AS bigint OWNED BY journal.journal_id;
CREATE INDEX journal_by_event ON journal (event_id);
-- trace() bounds a date range by the least and greatest journal id dated in it
CREATE INDEX journal_by_day ON journal (business_date, journal_id);

CREATE TABLE journal_line (
    journal_id   bigint NOT NULL,
    line_no      integer NOT NULL,
    account_code text NOT NULL,
    location_id  text,
    debit        numeric NOT NULL DEFAULT 0 CONSTRAINT journal_line_debit_not_negative CHECK (debit >= 0),
    credit       numeric NOT NULL DEFAULT 0 CONSTRAINT journal_line_credit_not_negative CHECK (credit >= 0),
    sku          text,
    PRIMARY KEY (journal_id, line_no),
    CONSTRAINT journal_line_one_side CHECK (debit = 0 OR credit = 0)
);
-- an account's lines at a location in journal order: trace() reads a range of journal ids, reconcile(location)
-- adds up debits and credits from the index alone
CREATE INDEX journal_line_by_account ON journal_line (account_code, location_id, journal_id) INCLUDE (debit, credit);

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
CREATE TRIGGER journal_line_balanced AFTER INSERT ON journal_line
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION journal_must_balance();

-- Ledgers are append-only: a correction is a reversing entry.
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
