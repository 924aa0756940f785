-- make bench STAGE=growth: a year of a store chain's sales written straight into possync's ledgers, in bulk.
--
--   psql -v events=2000000 -v days=365 -v first_day=2025-11-26 -f bench/growth.sql
--
-- Runs in a database that `possync-bench setup` prepared (master data, the default chart, two opening receipts
-- per sku and location posted through possync). Every row is what possync's posting rules would have written
-- for the same sales, so that possync.reconcile() and possync.check_invariants() stay empty:
--
--   * sales of three distinct skus, 1-3 units, every fifth line 10 % off, tax at the STD rate on the rounded
--     net, one card tender; one sale in 500 pays a cent too much (over_short and a tender_mismatch exception,
--     resolved unless it is from the last 30 days);
--   * each line issues at the location's moving average (which a sale does not change), value rounded to
--     cents, and the stock_move chain (on_hand_after, value_after) continues from the opening receipts;
--   * one journal per sale, netted per account as possync does (tender, inventory, tax, revenue, cogs and
--     over_short), lines numbered in account order;
--   * a day_close per store, register and day whose totals match the sales, and the registers' last sequence.
--
-- The sales are spread evenly over `days` business days from `first_day`, in posting order (move and journal
-- ids grow with time). Registers are named R1..R4, so the posting stage's tills (1..4) never meet them.

\set ON_ERROR_STOP 1
SET synchronous_commit = off;
SET work_mem = '512MB';
SET maintenance_work_mem = '1GB';
SET jit = off;

\timing on

SELECT count(*) AS locations FROM possync.location \gset
SELECT count(*) AS skus FROM possync.item \gset
SELECT rate AS tax_rate FROM possync.tax_code WHERE tax_code = 'STD' \gset
-- the accounts a card sale posts to, resolved as possync resolves them (no per-location or per-class mapping
-- in the bench's chart)
SELECT coalesce((SELECT account_code FROM possync.account_map WHERE role = 'tender:card' AND location_id IS NULL AND item_class IS NULL),
                (SELECT account_code FROM possync.account_map WHERE role = 'tender:*' AND location_id IS NULL AND item_class IS NULL)) AS acc_tender,
       (SELECT account_code FROM possync.account_map WHERE role = 'inventory' AND location_id IS NULL AND item_class IS NULL) AS acc_inventory,
       (SELECT account_code FROM possync.account_map WHERE role = 'tax_payable' AND location_id IS NULL AND item_class IS NULL) AS acc_tax,
       (SELECT account_code FROM possync.account_map WHERE role = 'revenue' AND location_id IS NULL AND item_class IS NULL) AS acc_revenue,
       (SELECT account_code FROM possync.account_map WHERE role = 'cogs' AND location_id IS NULL AND item_class IS NULL) AS acc_cogs,
       (SELECT account_code FROM possync.account_map WHERE role = 'over_short' AND location_id IS NULL AND item_class IS NULL) AS acc_over_short
\gset
SELECT count(*) AS mapped_elsewhere FROM possync.account_map WHERE location_id IS NOT NULL OR item_class IS NOT NULL \gset
SELECT :mapped_elsewhere = 0 AS chart_is_plain \gset
\if :chart_is_plain
\else
    \echo growth.sql: the account map has per-location or per-class rows; the preload resolves roles chain-wide only
    SELECT 1/0;
\endif
-- journal lines are numbered in account-code order; the preload writes them in the order below
SELECT :'acc_tender' < :'acc_inventory' AND :'acc_inventory' < :'acc_tax' AND :'acc_tax' < :'acc_revenue'
       AND :'acc_revenue' < :'acc_cogs' AND :'acc_cogs' < :'acc_over_short' AS accounts_in_order \gset
\if :accounts_in_order
\else
    \echo growth.sql: the account codes of the default chart are not in the order the preload numbers lines in
    SELECT 1/0;
\endif

-- one row per sale: where, which till, when, and whether it pays a cent too much
CREATE TEMP TABLE g_sale AS
SELECT n,
       1 + (hashint8extended(n, 1) & 2147483647) % :locations AS loc,
       1 + (hashint8extended(n, 2) & 2147483647) % 4 AS reg,
       ((n - 1) * :days / :events)::integer AS day,
       ((n - 1) * :days % :events) * 43200 / :events AS second_of_day,
       (hashint8extended(n, 3) & 2147483647) % 500 = 0 AS pays_a_cent_more
  FROM generate_series(1, :events::bigint) AS n;

-- three distinct skus per sale, 1-3 units each, every fifth line 10 % off
CREATE TEMP TABLE g_line AS
WITH picks AS (
    SELECT n,
           (hashint8extended(n, 4) & 2147483647) % :skus AS s1,
           1 + (hashint8extended(n, 5) & 2147483647) % (:skus / 3) AS k,
           1 + (hashint8extended(n, 6) & 2147483647) % (:skus / 3) AS m
      FROM g_sale),
lines AS (
    SELECT p.n, i AS line_no,
           'SKU' || (1 + CASE i WHEN 1 THEN p.s1 WHEN 2 THEN (p.s1 + p.k) % :skus ELSE (p.s1 + p.k + p.m) % :skus END) AS sku,
           (1 + (hashint8extended(p.n * 4 + i, 7) & 2147483647) % 3)::numeric AS qty,
           (hashint8extended(p.n * 4 + i, 8) & 2147483647) % 5 = 0 AS discounted
      FROM picks p CROSS JOIN generate_series(1, 3) AS i)
SELECT l.n, l.line_no, l.sku, 'L' || s.loc AS location_id, l.qty, x.price,
       CASE WHEN l.discounted THEN round(l.qty * x.price / 10, 2) ELSE 0 END AS discount
  FROM lines l JOIN g_sale s USING (n) JOIN (SELECT sku, standard_cost * 2 - 0.01 AS price FROM possync.item) x USING (sku);
-- rebuilt rather than updated: one pass
CREATE TEMP TABLE g_line2 AS
SELECT l.n, l.line_no, l.sku, l.location_id, l.qty, l.price, l.discount,
       round(l.qty * l.price - l.discount, 2) AS net,
       round(round(l.qty * l.price - l.discount, 2) * :tax_rate, 2) AS tax,
       b.avg_cost AS unit_cost,
       round(l.qty * b.avg_cost, 2) AS cost
  FROM g_line l JOIN possync.stock_balance b USING (sku, location_id);
DROP TABLE g_line;
ALTER TABLE g_line2 RENAME TO g_line;
ANALYZE g_sale;
ANALYZE g_line;

-- the opening stock must last the year: a sale never empties a location here (that would take the whole value)
SELECT coalesce(min(b.on_hand - t.q), 1) > 0 AS stock_lasts
  FROM (SELECT sku, location_id, sum(qty) AS q FROM g_line GROUP BY 1, 2) t
  JOIN possync.stock_balance b USING (sku, location_id) \gset
\if :stock_lasts
\else
    \echo growth.sql: the opening stock does not last this many sales; use fewer events or more skus
    SELECT 1/0;
\endif

-- the ledgers are partitioned by business month: the year's months are made first, as posting makes them
SELECT possync.make_ledger_months(ARRAY(
           SELECT g::date FROM generate_series(date_trunc('month', date :'first_day'),
                                               date :'first_day' + :days, interval '1 month') AS g)) AS partitions_made
\gset

-- ids continue where possync's own sequences stand
SELECT nextval('possync.stock_move_move_id_seq') AS move_base, nextval('possync.journal_id_seq') AS journal_base \gset

-- per sale: totals, the date and time, the payload as the till sent it
CREATE TEMP TABLE g_event AS
SELECT s.n, 'grow-' || s.n AS event_id, 'L' || s.loc AS location_id, 'R' || s.reg AS register,
       row_number() OVER (PARTITION BY s.loc, s.reg ORDER BY s.n) AS sequence,
       (date :'first_day' + s.day) AS business_date,
       ((date :'first_day' + s.day) + time '09:00' + s.second_of_day * interval '1 second') AT TIME ZONE 'UTC' AS occurred_at,
       t.net, t.tax, t.cost, t.net + t.tax + CASE WHEN s.pays_a_cent_more THEN 0.01 ELSE 0 END AS paid,
       s.pays_a_cent_more, :journal_base + s.n - 1 AS journal_id, t.lines
  FROM g_sale s
  JOIN (SELECT n, sum(net) AS net, sum(tax) AS tax, sum(cost) AS cost,
               jsonb_agg(jsonb_build_object('line', line_no, 'sku', sku, 'qty', qty::text, 'unit_price', price::text,
                                            'discount', discount::text, 'tax', tax::text, 'tax_code', 'STD')
                         ORDER BY line_no) AS lines
          FROM g_line GROUP BY n) t USING (n);

-- the stock moves, with their running balance per sku and location continuing from the opening receipts
INSERT INTO possync.stock_move (move_id, event_id, sku, location_id, qty, unit_cost, value, on_hand_after, value_after, posted_at,
                                business_date)
SELECT :move_base + (l.n - 1) * 3 + l.line_no - 1, 'grow-' || l.n, l.sku, l.location_id, -l.qty, l.unit_cost, -l.cost,
       b.on_hand - sum(l.qty) OVER w, b.value - sum(l.cost) OVER w,
       e.occurred_at, e.business_date
  FROM g_line l
  JOIN possync.stock_balance b USING (sku, location_id)
  JOIN g_event e USING (n)
WINDOW w AS (PARTITION BY l.sku, l.location_id ORDER BY l.n, l.line_no)
 ORDER BY 1;
SELECT setval('possync.stock_move_move_id_seq', :move_base + :events * 3);

UPDATE possync.stock_balance b
   SET on_hand = b.on_hand - t.q, value = b.value - t.v, updated_at = now()
  FROM (SELECT sku, location_id, sum(qty) AS q, sum(cost) AS v FROM g_line GROUP BY 1, 2) t
 WHERE b.sku = t.sku AND b.location_id = t.location_id;

INSERT INTO possync.journal (journal_id, event_id, location_id, business_date, posted_at, memo)
SELECT journal_id, event_id, location_id, business_date, occurred_at, 'sale ' || event_id
  FROM g_event ORDER BY journal_id;
SELECT setval('possync.journal_id_seq', :journal_base + :events);

-- one statement: the balance trigger sees every journal's lines at its end
INSERT INTO possync.journal_line (journal_id, line_no, account_code, location_id, debit, credit, business_date)
SELECT e.journal_id, x.line_no, x.account_code, e.location_id, x.debit, x.credit, e.business_date
  FROM g_event e
  CROSS JOIN LATERAL (VALUES (1, :'acc_tender', e.paid, 0),
                             (2, :'acc_inventory', 0, e.cost),
                             (3, :'acc_tax', 0, e.tax),
                             (4, :'acc_revenue', 0, e.net),
                             (5, :'acc_cogs', e.cost, 0),
                             (6, :'acc_over_short', 0, 0.01)) AS x(line_no, account_code, debit, credit)
 WHERE x.line_no < 6 OR e.pays_a_cent_more
 ORDER BY e.journal_id, x.line_no;

INSERT INTO possync.event (event_id, source, kind, location_id, register, sequence, business_date, occurred_at,
                           received_at, status, journal_id, payload)
SELECT event_id, NULL, 'sale', location_id, register, sequence, business_date, occurred_at, occurred_at, 'applied',
       journal_id,
       jsonb_build_object('event_id', event_id, 'kind', 'sale', 'location', location_id, 'register', register,
                          'sequence', sequence, 'business_date', business_date::text,
                          'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                          'currency', 'USD', 'lines', lines,
                          'tenders', jsonb_build_array(jsonb_build_object('type', 'card', 'amount', paid::text)))
  FROM g_event ORDER BY n;
-- every event's id, as posting keeps it (unique across the event table's months)
INSERT INTO possync.event_key (event_id, business_date) SELECT event_id, business_date FROM g_event ORDER BY n;

-- a cent too much: the difference went to over_short and a person looked at it (unless it is recent)
INSERT INTO possync.exception (event_id, kind, status, reason, location_id, amount, raised_at, resolved_at, resolution)
SELECT event_id, 'tender_mismatch',
       CASE WHEN business_date < date :'first_day' + :days - 30 THEN 'resolved' ELSE 'open' END,
       format('tenders total %s but the lines come to %s; %s was posted to over_short', paid, net + tax, 0.01),
       location_id, 0.01, occurred_at,
       CASE WHEN business_date < date :'first_day' + :days - 30 THEN occurred_at + interval '2 days' END,
       CASE WHEN business_date < date :'first_day' + :days - 30 THEN 'counted the drawer: customer left the cent' END
  FROM g_event WHERE pays_a_cent_more ORDER BY n;

-- each register's day close, matching what was posted
INSERT INTO possync.event (event_id, source, kind, location_id, register, sequence, business_date, occurred_at,
                           received_at, status, payload)
SELECT format('grow-close-%s-%s-%s', location_id, register, business_date), NULL, 'day_close', location_id, register,
       NULL, business_date, closed_at, closed_at, 'applied',
       jsonb_build_object('event_id', format('grow-close-%s-%s-%s', location_id, register, business_date),
                          'kind', 'day_close', 'location', location_id, 'register', register,
                          'business_date', business_date::text,
                          'occurred_at', to_char(closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                          'totals', jsonb_build_object('net_sales', net::text, 'tax', tax::text,
                                                       'tenders', jsonb_build_object('card', paid::text),
                                                       'transaction_count', transactions,
                                                       'last_sequence', last_sequence))
  FROM (SELECT location_id, register, business_date, sum(net) AS net, sum(tax) AS tax, sum(paid) AS paid,
               count(*) AS transactions, max(sequence) AS last_sequence,
               (business_date + time '22:00') AT TIME ZONE 'UTC' AS closed_at
          FROM g_event GROUP BY 1, 2, 3) d
 ORDER BY business_date, location_id, register;
INSERT INTO possync.event_key (event_id, business_date)
SELECT DISTINCT format('grow-close-%s-%s-%s', location_id, register, business_date), business_date FROM g_event;

INSERT INTO possync.register_state (source, location_id, register, last_sequence)
SELECT '', location_id, register, max(sequence) FROM g_event GROUP BY 1, 2, 3;

DROP TABLE g_sale, g_line, g_event;
\timing off
