//! `make demo` end to end at a small scale: scripts/demo.sh trades a short day through the real bridge and
//! simulator, keeps both clusters, and this test checks the summary's invariants from the databases with its
//! own arithmetic: the books balance, reconcile finds nothing, every POS transaction reached the ERP, only the
//! planted bad rows were rejected, and the POS tables' totals equal what the ledgers posted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use possync_e2e::{free_port, serial, workspace_root};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Builds possync-bridge and possync-sim with the test's own profile and target directory; returns that folder.
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test binary in <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "possync-bridge", "-p", "possync-sim"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().map(|s| s.success()).unwrap_or(false),
        "cannot build possync-bridge and possync-sim"
    );
    profile_dir
}

/// Stops the clusters the demo kept, whatever happens to the test.
struct KeptClusters {
    dir: PathBuf,
}

impl Drop for KeptClusters {
    fn drop(&mut self) {
        for c in ["pos", "erp"] {
            let data = self.dir.join(c).to_string_lossy().into_owned();
            let ctl = format!("{PG_BIN}/pg_ctl");
            let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
            let _ = if is_root() {
                Command::new("sudo")
                    .args(["-u", "postgres", &ctl])
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            } else {
                Command::new(&ctl)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(port: u16, db: &str) -> Client {
    let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

fn dec(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|e| panic!("not a decimal: {s:?}: {e}"))
}

fn json_dec(v: Option<&Value>) -> Option<Decimal> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// What the tills recorded, summed here line by line.
#[derive(Debug, Default, PartialEq)]
struct Books {
    revenue: Decimal,
    returns: Decimal,
    tax: Decimal,
    cash: Decimal,
    other_tenders: Decimal,
    deposits_used: Decimal,
    units_sold: Decimal,
    units_returned: Decimal,
    till_transactions: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_day_posts_every_till_transaction_and_the_books_agree() {
    let _serial = serial().await;
    let bin = binaries();
    let dir = workspace_root()
        .join("target")
        .join("e2e")
        .join(format!("demo-{}", std::process::id()));
    let (pos_port, erp_port, metrics_port) = (free_port(), free_port(), free_port());
    let _kept = KeptClusters { dir: dir.clone() };
    let out = Command::new(workspace_root().join("scripts").join("demo.sh"))
        .current_dir(workspace_root())
        .env("DEMO_DIR", &dir)
        .env("DEMO_POS_PORT", pos_port.to_string())
        .env("DEMO_ERP_PORT", erp_port.to_string())
        .env("DEMO_METRICS", format!("127.0.0.1:{metrics_port}"))
        .env("DEMO_BIN_DIR", &bin)
        .env("DEMO_KEEP", "1")
        .env("DEMO_SECONDS", "8")
        .env("DEMO_RATE", "75")
        .env("DEMO_STORES", "3")
        .env("DEMO_REGISTERS", "2")
        .env("DEMO_SKUS", "300")
        .env("DEMO_SEED", "7")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bridge_log = std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "demo.sh failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- bridge log\n{bridge_log}"
    );
    assert!(
        stdout.contains("balances"),
        "no balanced trial balance in the summary:\n{stdout}"
    );

    let pos = connect(pos_port, "pos").await;
    let erp = connect(erp_port, "erp").await;

    // every journal balances, and so does the whole ledger
    let unbalanced: i64 = erp
        .query_one(
            "SELECT count(*) FROM (SELECT journal_id FROM possync.journal_line GROUP BY 1
                                   HAVING sum(debit) <> sum(credit)) j",
            &[],
        )
        .await
        .expect("journals")
        .get(0);
    assert_eq!(unbalanced, 0, "unbalanced journals");
    let tb = erp
        .query_one(
            "SELECT sum(debit)::text, sum(credit)::text, count(*) FROM possync.journal_line",
            &[],
        )
        .await
        .expect("trial balance");
    let (debits, credits) = (dec(tb.get(0)), dec(tb.get(1)));
    assert_eq!(debits, credits);
    assert!(
        tb.get::<_, i64>(2) > 1000,
        "too few journal lines for a trading day"
    );

    // reconcile returns nothing, once the extension has it
    let has_reconcile: bool = erp
        .query_one(
            "SELECT count(*) > 0 FROM pg_proc WHERE proname = 'reconcile' AND pronamespace = 'possync'::regnamespace",
            &[],
        )
        .await
        .expect("pg_proc")
        .get(0);
    if has_reconcile {
        let n: i64 = erp
            .query_one("SELECT count(*) FROM possync.reconcile()", &[])
            .await
            .expect("reconcile")
            .get(0);
        assert_eq!(n, 0, "reconcile found discrepancies");
        assert!(stdout.contains("reconcile clean"), "{stdout}");
    } else {
        assert!(stdout.contains("reconcile not available"), "{stdout}");
    }

    // rejected: exactly the planted bad rows (a line at quantity 0, a payload whose qty is not a number); the
    // bridge sends a row it cannot make a well-formed event of under its own id, with the built event inside
    let rejected: BTreeSet<String> = erp
        .query(
            "SELECT DISTINCT coalesce(payload #>> '{event,event_id}', event_id) FROM possync.exception
              WHERE kind = 'malformed'",
            &[],
        )
        .await
        .expect("rejected")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut planted: BTreeSet<String> = pos
        .query(
            "SELECT DISTINCT txn_id FROM pos.sale_line WHERE qty = 0",
            &[],
        )
        .await
        .expect("zero lines")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let outbox: Vec<Value> = pos
        .query("SELECT payload::text FROM pos.outbox ORDER BY id", &[])
        .await
        .expect("outbox")
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("outbox json"))
        .collect();
    for p in &outbox {
        let lines = p["lines"].as_array().cloned().unwrap_or_default();
        if lines.iter().any(|l| json_dec(l.get("qty")).is_none()) {
            planted.insert(p["event_id"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(
        planted.len() >= 2,
        "the day should plant bad rows: {planted:?}"
    );
    assert_eq!(rejected, planted);

    // every POS transaction reached the ERP: posted, or kept as rejected; nothing is left held
    let pos_count: i64 = pos
        .query_one(
            "SELECT (SELECT count(*) FROM pos.sale) + (SELECT count(*) FROM pos.stock_event)
                  + (SELECT count(*) FROM pos.outbox) + (SELECT count(*) FROM pos.day_close)",
            &[],
        )
        .await
        .expect("POS count")
        .get(0);
    let erp_row = erp
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'applied'), count(*) FILTER (WHERE status = 'held')
               FROM possync.event WHERE source = 'pos-central'",
            &[],
        )
        .await
        .expect("ERP events");
    let (applied, held): (i64, i64) = (erp_row.get(0), erp_row.get(1));
    assert_eq!(held, 0, "events still held after the late items arrived");
    assert_eq!(applied + rejected.len() as i64, pos_count);
    let unknown_sku: i64 = erp
        .query_one(
            "SELECT count(*) FROM possync.exception WHERE kind = 'unknown_sku'",
            &[],
        )
        .await
        .expect("unknown sku")
        .get(0);
    assert!(
        unknown_sku > 0,
        "the day should sell items the ERP did not know yet"
    );

    // the tills' totals, summed here from the POS rows (rejected transactions left out)
    let mut books = Books::default();
    let mut tills: BTreeSet<String> = BTreeSet::new();
    for r in pos
        .query(
            "SELECT s.txn_id, s.kind, l.qty::text, l.unit_price::text, l.discount::text, l.tax::text, l.returned
               FROM pos.sale s JOIN pos.sale_line l USING (txn_id)",
            &[],
        )
        .await
        .expect("sale lines")
    {
        let txn: String = r.get(0);
        if rejected.contains(&txn) {
            continue;
        }
        let kind: &str = r.get(1);
        let (qty, price, discount, tax) = (dec(r.get(2)), dec(r.get(3)), dec(r.get(4)), dec(r.get(5)));
        let net = qty * price - discount;
        if kind == "return" || r.get::<_, bool>(6) {
            books.returns += net;
            books.tax -= tax;
            books.units_returned += qty;
        } else {
            books.revenue += net;
            books.tax += tax;
            books.units_sold += qty;
        }
        tills.insert(txn);
    }
    books.till_transactions = tills.len() as i64;
    for r in pos
        .query(
            "SELECT txn_id, tender_type, amount::text FROM pos.tender",
            &[],
        )
        .await
        .expect("tenders")
    {
        if rejected.contains(r.get::<_, &str>(0)) {
            continue;
        }
        let amount = dec(r.get(2));
        if r.get::<_, &str>(1) == "cash" {
            books.cash += amount;
        } else {
            books.other_tenders += amount;
        }
    }
    for p in &outbox {
        if p["kind"] != "fulfillment"
            || rejected.contains(p["event_id"].as_str().unwrap_or_default())
        {
            continue;
        }
        for l in p["lines"].as_array().cloned().unwrap_or_default() {
            let qty = json_dec(l.get("qty")).unwrap_or_default();
            let net = qty * json_dec(l.get("unit_price")).unwrap_or_default()
                - json_dec(l.get("discount")).unwrap_or_default();
            let tax = json_dec(l.get("tax")).unwrap_or_default();
            books.revenue += net;
            books.tax += tax;
            books.deposits_used += net + tax;
            books.units_sold += qty;
        }
    }

    // the same from the ERP's ledgers
    let mut gl: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for r in erp
        .query(
            "SELECT account_code, sum(debit)::text, sum(credit)::text FROM possync.journal_line GROUP BY 1",
            &[],
        )
        .await
        .expect("general ledger")
    {
        gl.insert(r.get(0), (dec(r.get(1)), dec(r.get(2))));
    }
    let dr = |a: &str| gl.get(a).map(|(d, c)| d - c).unwrap_or_default();
    let units = erp
        .query_one(
            "SELECT coalesce(-sum(m.qty) FILTER (WHERE e.kind IN ('sale', 'exchange', 'fulfillment') AND m.qty < 0), 0)::text,
                    coalesce(sum(m.qty) FILTER (WHERE e.kind IN ('return', 'exchange') AND m.qty > 0), 0)::text,
                    (SELECT count(*) FROM possync.event WHERE kind IN ('sale', 'return', 'exchange') AND status = 'applied')
               FROM possync.stock_move m JOIN possync.event e USING (event_id)",
            &[],
        )
        .await
        .expect("stock ledger");
    let posted = Books {
        revenue: -dr("4000"),
        returns: dr("4100"),
        tax: -dr("2100"),
        cash: dr("1000"),
        other_tenders: dr("1010"),
        deposits_used: dr("2300"),
        units_sold: dec(units.get(0)),
        units_returned: dec(units.get(1)),
        till_transactions: units.get(2),
    };
    assert!(books.revenue > Decimal::from(1000), "{books:?}");
    assert!(
        books.returns > Decimal::ZERO && books.deposits_used > Decimal::ZERO,
        "{books:?}"
    );
    assert_eq!(
        books, posted,
        "POS totals (left) against the ERP's ledgers (right)"
    );
    // tenders paid exactly what was owed: nothing went to over/short
    assert_eq!(dr("5200"), Decimal::ZERO);
    assert!(stdout.contains("POS against ERP"), "{stdout}");
}
