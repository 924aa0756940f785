-- A normalized POS schema (schema `shop`), shaped like the commercial POS databases retailers run, and mapped by
-- configuration alone (cdc-bridge/mappings/normalized.toml). It has what the reference schema avoids:
--   surrogate keys everywhere: lines point at product ids, orders at a till id, payments at a method id;
--   master tables (store, till, product, tax, payment method) that exist long before the bridge starts;
--   a discount stored as a percentage, and each line's tax only in a child table (one row per tax applied);
--   timestamps and no business date (the store's time zone decides the day);
--   an order inserted as 'draft' with its lines, paid later by an UPDATE of `state` (often in a later
--   transaction, after the payment rows); a cancelled order keeps its receipt number and posts nothing;
--   a refund is a new order with negative quantities that points at the order it refunds.
CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE shop.store (
    id   serial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    name text NOT NULL,
    tz   text NOT NULL DEFAULT 'UTC'
);

CREATE TABLE shop.till (
    id            serial PRIMARY KEY,
    store_id      int NOT NULL REFERENCES shop.store,
    register_code text NOT NULL,
    UNIQUE (store_id, register_code)
);

CREATE TABLE shop.tax (
    id       serial PRIMARY KEY,
    code     text NOT NULL UNIQUE,
    rate_pct numeric(7, 4) NOT NULL
);

CREATE TABLE shop.product (
    id           serial PRIMARY KEY,
    default_code text UNIQUE,
    name         text NOT NULL,
    list_price   numeric(12, 2) NOT NULL,
    tax_id       int REFERENCES shop.tax
);

-- journal_type: 'cash', 'card', 'gift' ... (what the ERP calls the tender type)
CREATE TABLE shop.payment_method (
    id           serial PRIMARY KEY,
    name         text NOT NULL,
    journal_type text NOT NULL
);

CREATE TABLE shop.pos_order (
    id         bigserial PRIMARY KEY,
    till_id    int NOT NULL REFERENCES shop.till,
    receipt_no bigint NOT NULL,
    state      text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'paid', 'done', 'cancel')),
    date_order timestamptz NOT NULL,
    refund_of  bigint REFERENCES shop.pos_order,
    currency   char(3) NOT NULL DEFAULT 'USD',
    note       text,
    UNIQUE (till_id, receipt_no)
);

-- price_unit excludes tax; price_subtotal = round(qty × price_unit × (1 − discount_pct / 100), 2)
CREATE TABLE shop.pos_order_line (
    id             bigserial PRIMARY KEY,
    order_id       bigint NOT NULL REFERENCES shop.pos_order,
    product_id     int NOT NULL REFERENCES shop.product,
    qty            numeric(12, 3) NOT NULL,
    price_unit     numeric(12, 2) NOT NULL,
    discount_pct   numeric(5, 2) NOT NULL DEFAULT 0,
    price_subtotal numeric(14, 2) NOT NULL
);
CREATE INDEX ON shop.pos_order_line (order_id);

CREATE TABLE shop.pos_order_line_tax (
    line_id bigint NOT NULL REFERENCES shop.pos_order_line,
    tax_id  int NOT NULL REFERENCES shop.tax,
    amount  numeric(14, 2) NOT NULL,
    PRIMARY KEY (line_id, tax_id)
);

CREATE TABLE shop.pos_payment (
    id        bigserial PRIMARY KEY,
    order_id  bigint NOT NULL REFERENCES shop.pos_order,
    method_id int NOT NULL REFERENCES shop.payment_method,
    amount    numeric(14, 2) NOT NULL,
    paid_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON shop.pos_payment (order_id);
