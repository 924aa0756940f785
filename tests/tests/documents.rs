//! Documents on a POS shaped unlike the normalized example: names in mixed case that SQL must quote, uuid and
//! composite keys, a generated column (logical replication does not send it), tickets written complete in one
//! transaction (final from the start), and deliveries mapped as stock receipts. The mapping is written here,
//! from the README's guide, as a user would.

use std::time::Duration;

use possync_e2e::*;
use rust_decimal::Decimal;

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA "Till";
CREATE TABLE "Till"."Item" ("ItemCode" text PRIMARY KEY, "Sku" text NOT NULL, "TaxPct" numeric NOT NULL);
CREATE TABLE "Till"."Ticket" ("TicketId" uuid PRIMARY KEY, "Store" text NOT NULL, "Lane" int NOT NULL,
    "No" bigint NOT NULL, "At" timestamptz NOT NULL);
CREATE TABLE "Till"."TicketLine" ("TicketId" uuid NOT NULL REFERENCES "Till"."Ticket", "Seq" int NOT NULL,
    "ItemCode" text NOT NULL, "Qty" numeric NOT NULL, "Price" numeric NOT NULL,
    "LineTotal" numeric GENERATED ALWAYS AS ("Qty" * "Price") STORED,
    PRIMARY KEY ("TicketId", "Seq"));
CREATE TABLE "Till"."Payment" ("TicketId" uuid NOT NULL REFERENCES "Till"."Ticket", "Seq" int NOT NULL,
    "Kind" text NOT NULL, "Amount" numeric NOT NULL, PRIMARY KEY ("TicketId", "Seq"));
CREATE TABLE "Till"."Delivery" ("DeliveryNo" text PRIMARY KEY, "Store" text NOT NULL, "At" timestamptz NOT NULL);
CREATE TABLE "Till"."DeliveryLine" ("DeliveryNo" text NOT NULL REFERENCES "Till"."Delivery", "Seq" int NOT NULL,
    "ItemCode" text NOT NULL, "Qty" numeric NOT NULL, "Cost" numeric NOT NULL, PRIMARY KEY ("DeliveryNo", "Seq"));
"#;

const MAPPING: &str = r#"
[[mirror]]
table = "Till.Item"
[[mirror]]
table = "Till.Ticket"
[[mirror]]
table = "Till.TicketLine"
[[mirror]]
table = "Till.Payment"
[[mirror]]
table = "Till.Delivery"
[[mirror]]
table = "Till.DeliveryLine"

[[document]]
name = "ticket"
table = "Ticket"
alias = "t"
key = "TicketId"
final = "true"
[document.fields]
event_id = "'T-' || t.\"TicketId\""
kind = "'sale'"
location = "t.\"Store\""
register = "t.\"Lane\"::text"
sequence = "t.\"No\""
business_date = "(t.\"At\" AT TIME ZONE 'UTC')::date"
occurred_at = "t.\"At\""
[[document.children]]
into = "lines"
table = "TicketLine"
alias = "l"
parent = "TicketId"
order_by = "l.\"Seq\""
lookups = [{ alias = "i", table = "Item", on = "i.\"ItemCode\" = l.\"ItemCode\"" }]
[document.children.fields]
line = "l.\"Seq\""
sku = "i.\"Sku\""
qty = "l.\"Qty\""
unit_price = "l.\"Price\""
tax = "round(l.\"Qty\" * l.\"Price\" * i.\"TaxPct\" / 100, 2)"
[[document.children]]
into = "tenders"
table = "Payment"
alias = "p"
parent = "TicketId"
order_by = "p.\"Seq\""
[document.children.fields]
type = "p.\"Kind\""
amount = "p.\"Amount\""

[[document]]
name = "delivery"
table = "Delivery"
alias = "d"
key = "DeliveryNo"
final = "EXISTS (SELECT 1 FROM \"DeliveryLine\" x WHERE x.\"DeliveryNo\" = d.\"DeliveryNo\")"
[document.fields]
event_id = "'D-' || d.\"DeliveryNo\""
kind = "'receipt'"
location = "d.\"Store\""
business_date = "(d.\"At\" AT TIME ZONE 'UTC')::date"
[[document.children]]
into = "lines"
table = "DeliveryLine"
alias = "x"
parent = "DeliveryNo"
lookups = [{ alias = "i", table = "Item", on = "i.\"ItemCode\" = x.\"ItemCode\"" }]
[document.children.fields]
sku = "i.\"Sku\""
qty = "x.\"Qty\""
unit_cost = "x.\"Cost\""
"#;

#[tokio::test]
async fn a_pos_with_quoted_names_uuid_keys_and_generated_columns_maps_by_configuration() {
    let _serial = serial().await;
    let pos_c = empty_pos_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp_c = erp_cluster().await;
    let erp = erp_c.connect("erp").await;
    let mut master = String::from(SCHEMA);
    for (i, sku) in SKUS.iter().enumerate() {
        master.push_str(&format!(
            r#"INSERT INTO "Till"."Item" VALUES ('IC{i}', '{sku}', {});"#,
            if i % 2 == 0 { "8.875" } else { "0" }
        ));
    }
    pos.batch_execute(&master)
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    let dir = workspace_root().join("target").join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let mapping = dir.join(format!("documents-{}.toml", std::process::id()));
    std::fs::write(&mapping, MAPPING).unwrap_or_else(|e| panic!("{e}"));
    let mapping = mapping.display().to_string();
    let bridge = Bridge::start(
        &erp_c.url("erp"),
        &[("till", pos_c.url("pos"))],
        &["--mapping", &mapping, "--spill-after-changes", "5000"],
    );
    bridge.wait_streaming("till", Duration::from_secs(60));

    // a delivery whose lines come in a later transaction than its header: final once they are there
    pos.batch_execute(&format!(
        r#"INSERT INTO "Till"."Delivery" VALUES ('DN1', '{STORE}', '2026-11-27 08:00+00');"#
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = String::new();
    for i in 0..SKUS.len() {
        lines.push_str(&format!(
            r#"INSERT INTO "Till"."DeliveryLine" VALUES ('DN1', {i}, 'IC{i}', 50, 4.{i}0);"#
        ));
    }
    pos.batch_execute(&format!("BEGIN; {lines} COMMIT;"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // tickets written complete, one transaction each
    for n in 1..=40i64 {
        let a = (n % 4) as usize;
        let b = ((n + 1) % 4) as usize;
        pos.batch_execute(&format!(
            r#"BEGIN;
               CREATE TEMP TABLE IF NOT EXISTS t (id uuid); TRUNCATE t; INSERT INTO t VALUES (gen_random_uuid());
               INSERT INTO "Till"."Ticket" SELECT id, '{STORE}', 7, {n}, timestamptz '2026-11-27 09:00+00' + {n} * interval '1 minute' FROM t;
               INSERT INTO "Till"."TicketLine" SELECT id, 1, 'IC{a}', {qa}, 2.50 FROM t;
               INSERT INTO "Till"."TicketLine" SELECT id, 2, 'IC{b}', 1, 9.99 FROM t;
               INSERT INTO "Till"."Payment"
                 SELECT t.id, 1, CASE WHEN {n} % 3 = 0 THEN 'cash' ELSE 'card' END,
                        sum(l."LineTotal" + round(l."Qty" * l."Price" * i."TaxPct" / 100, 2))
                   FROM t JOIN "Till"."TicketLine" l ON l."TicketId" = t.id JOIN "Till"."Item" i USING ("ItemCode") GROUP BY t.id;
               COMMIT;"#,
            qa = 1 + n % 3
        ))
        .await
        .unwrap_or_else(|e| panic!("ticket {n}: {e}"));
    }
    // a bulk load of 6,000 items and a ticket selling one of them, in one transaction: past the spill
    // threshold, so it is written to disk and posted from there, mirror and document included
    pos.batch_execute(&format!(
        r#"BEGIN;
           INSERT INTO "Till"."Item" SELECT 'BULK' || i, '{sku}', 0 FROM generate_series(1, 6000) i;
           INSERT INTO "Till"."Ticket" VALUES ('00000000-0000-0000-0000-000000000bbb', '{STORE}', 8, 1, '2026-11-27 18:00+00');
           INSERT INTO "Till"."TicketLine" VALUES ('00000000-0000-0000-0000-000000000bbb', 1, 'BULK5999', 2, 3.00);
           INSERT INTO "Till"."Payment" VALUES ('00000000-0000-0000-0000-000000000bbb', 1, 'card', 6.00);
           COMMIT;"#,
        sku = SKUS[0]
    ))
    .await
    .unwrap_or_else(|e| panic!("bulk load: {e}"));
    wait_count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE source = 'till'",
        42,
        Duration::from_secs(60),
        || bridge.log(),
    )
    .await;
    let log = bridge.log();
    drop(bridge);
    let dec = |s: Option<String>| -> Decimal { s.and_then(|s| s.parse().ok()).unwrap_or_default() };
    let one = |sql: &'static str| {
        let erp = &erp;
        async move {
            erp.query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, Option<String>>(0)
        }
    };
    let rejected =
        one("SELECT string_agg(reason, '; ') FROM possync.exception WHERE kind = 'malformed'")
            .await;
    assert!(rejected.is_none(), "{rejected:?}\n{log}");
    let kinds = one("SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind) FROM (SELECT kind, count(*) AS n FROM possync.event WHERE source = 'till' GROUP BY kind) k").await;
    assert_eq!(kinds.as_deref(), Some("receipt 1, sale 41"));
    assert!(log.contains("spilled to disk"), "{log}");
    let bulk: Option<String> = erp
        .query_one(
            "SELECT payload->'lines'->0->>'sku' FROM possync.event WHERE event_id = 'T-00000000-0000-0000-0000-000000000bbb'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(
        bulk.as_deref(),
        Some(SKUS[0]),
        "the ticket found an item of its own spilled transaction"
    );
    // revenue and tax from the POS's own rows (the generated column included) against the general ledger
    let pos_fig = pos
        .query_one(
            r#"SELECT sum(l."LineTotal")::text, sum(round(l."Qty" * l."Price" * i."TaxPct" / 100, 2))::text,
                      (SELECT sum("Amount") FROM "Till"."Payment" WHERE "Kind" = 'cash')::text
                 FROM "Till"."TicketLine" l JOIN "Till"."Item" i USING ("ItemCode")"#,
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let revenue = dec(one(
        "SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '4000'",
    )
    .await);
    let tax = dec(one(
        "SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '2100'",
    )
    .await);
    let cash = dec(one(
        "SELECT sum(debit - credit)::text FROM possync.journal_line WHERE account_code = '1000'",
    )
    .await);
    assert_eq!(revenue, dec(pos_fig.get(0)));
    assert_eq!(tax, dec(pos_fig.get(1)));
    assert_eq!(cash, dec(pos_fig.get(2)));
    // stock: received less sold, per SKU
    for sku in SKUS {
        let sold: Option<String> = pos
            .query_one(
                r#"SELECT sum(l."Qty")::text FROM "Till"."TicketLine" l JOIN "Till"."Item" i USING ("ItemCode") WHERE i."Sku" = $1"#,
                &[&sku],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        let on_hand: Option<String> = erp
            .query_one(
                "SELECT on_hand::text FROM possync.stock_balance WHERE sku = $1 AND location_id = $2",
                &[&sku, &STORE],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        assert_eq!(dec(on_hand), Decimal::from(50) - dec(sold), "{sku}");
    }
    let broken: Option<String> = erp
        .query_one(
            "SELECT string_agg(invariant || ': ' || detail, '; ') FROM possync.check_invariants()",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(broken.is_none(), "{broken:?}");
}

/// A group of POS transactions is posted in one pipeline, the rows it inserted with plain INSERTs, since the
/// mirror holds what the POS held at the checkpoint. Should the mirror hold such a row anyway (after an
/// accepted slot loss, or written by hand), that INSERT fails and the group is applied again one statement at
/// a time, with upserts: the POS's row wins and the document posts once.
#[tokio::test]
async fn a_row_the_mirror_already_holds_is_upserted_when_the_pos_inserts_it() {
    let _serial = serial().await;
    let pos_c = empty_pos_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp_c = erp_cluster().await;
    let erp = erp_c.connect("erp").await;
    pos.batch_execute(SCHEMA)
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    let dir = workspace_root().join("target").join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let mapping = dir.join(format!("documents-upsert-{}.toml", std::process::id()));
    std::fs::write(&mapping, MAPPING).unwrap_or_else(|e| panic!("{e}"));
    let mapping = mapping.display().to_string();
    let bridge = Bridge::start(
        &erp_c.url("erp"),
        &[("till", pos_c.url("pos"))],
        &["--mapping", &mapping],
    );
    bridge.wait_streaming("till", Duration::from_secs(60));
    // the mirror holds a stale row under the key the POS is about to insert
    erp.batch_execute(r#"INSERT INTO possync_pos_till."Item" VALUES ('IC0', 'STALE', 0)"#)
        .await
        .unwrap_or_else(|e| panic!("stale row: {e}"));
    let ticket = |n: i64, item: &str, paid: &str, extra: &str| {
        format!(
            r#"BEGIN; {extra}
               INSERT INTO "Till"."Ticket" VALUES ('00000000-0000-0000-0000-00000000000{n}', '{STORE}', 7, {n}, '2026-11-27 09:0{n}+00');
               INSERT INTO "Till"."TicketLine" VALUES ('00000000-0000-0000-0000-00000000000{n}', 1, '{item}', 2, 2.50);
               INSERT INTO "Till"."Payment" VALUES ('00000000-0000-0000-0000-00000000000{n}', 1, 'card', {paid});
               COMMIT;"#
        )
    };
    pos.batch_execute(&ticket(
        1,
        "IC0",
        "5.44",
        &format!(
            r#"INSERT INTO "Till"."Item" VALUES ('IC0', '{}', 8.875);"#,
            SKUS[0]
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("ticket 1: {e}"));
    wait_count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE source = 'till'",
        1,
        Duration::from_secs(60),
        || bridge.log(),
    )
    .await;
    // later groups go through the pipeline again
    pos.batch_execute(&ticket(
        2,
        "IC1",
        "5.00",
        &format!(
            r#"INSERT INTO "Till"."Item" VALUES ('IC1', '{}', 0);"#,
            SKUS[1]
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("ticket 2: {e}"));
    wait_count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE source = 'till'",
        2,
        Duration::from_secs(60),
        || bridge.log(),
    )
    .await;
    let log = bridge.log();
    drop(bridge);
    assert!(log.contains("one statement at a time"), "{log}");
    let row = erp
        .query_one(
            r#"SELECT (SELECT "Sku" FROM possync_pos_till."Item" WHERE "ItemCode" = 'IC0'),
                      (SELECT payload->'lines'->0->>'sku' FROM possync.event
                        WHERE event_id = 'T-00000000-0000-0000-0000-000000000001'),
                      (SELECT count(*) FROM possync.exception WHERE kind = 'malformed'),
                      (SELECT count(*) FROM possync_pos_till."Item")"#,
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some(SKUS[0]));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(SKUS[0]));
    assert_eq!(row.get::<_, i64>(2), 0, "{log}");
    assert_eq!(row.get::<_, i64>(3), 2);
    let kinds: Option<String> = erp
        .query_one(
            "SELECT string_agg(DISTINCT kind, ', ') FROM possync.exception WHERE kind IN ('malformed', 'conflict', 'unknown_sku', 'tender_mismatch')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(kinds, None, "{log}");
}
