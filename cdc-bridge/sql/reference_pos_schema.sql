-- The reference POS schema (DESIGN.md, "The reference POS schema"): the bridge maps it with no configuration.
CREATE SCHEMA IF NOT EXISTS pos;

CREATE TABLE pos.sale (
    txn_id          text PRIMARY KEY,
    store_id        text NOT NULL,
    register_id     text NOT NULL,
    seq             bigint NOT NULL,
    kind            text NOT NULL DEFAULT 'sale' CHECK (kind IN ('sale', 'return', 'exchange')),
    business_date   date NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    currency        text NOT NULL DEFAULT 'USD',
    original_txn_id text
);

CREATE TABLE pos.sale_line (
    txn_id     text NOT NULL REFERENCES pos.sale,
    line_no    int NOT NULL,
    sku        text NOT NULL,
    qty        numeric NOT NULL,
    unit_price numeric NOT NULL,
    discount   numeric NOT NULL DEFAULT 0,
    tax        numeric NOT NULL DEFAULT 0,
    tax_code   text,
    returned   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (txn_id, line_no)
);

CREATE TABLE pos.tender (
    txn_id      text NOT NULL REFERENCES pos.sale,
    tender_no   int NOT NULL,
    tender_type text NOT NULL,
    amount      numeric NOT NULL,
    PRIMARY KEY (txn_id, tender_no)
);

CREATE TABLE pos.stock_event (
    event_id       text PRIMARY KEY,
    store_id       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('receipt', 'transfer_out', 'transfer_in', 'adjustment', 'count')),
    ref            text,
    other_store_id text,
    reason         text,
    business_date  date NOT NULL,
    occurred_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pos.stock_event_line (
    event_id  text NOT NULL REFERENCES pos.stock_event,
    line_no   int NOT NULL,
    sku       text NOT NULL,
    qty       numeric NOT NULL,
    unit_cost numeric,
    PRIMARY KEY (event_id, line_no)
);

CREATE TABLE pos.day_close (
    store_id      text NOT NULL,
    register_id   text NOT NULL,
    business_date date NOT NULL,
    net_sales     numeric NOT NULL,
    tax           numeric NOT NULL,
    txn_count     bigint NOT NULL,
    last_seq      bigint NOT NULL,
    tenders       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (store_id, register_id, business_date)
);

CREATE TABLE pos.outbox (
    id      bigserial PRIMARY KEY,
    payload jsonb NOT NULL
);
