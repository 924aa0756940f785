//! The dashboard in a real headless browser (Debian's chromium): the page is loaded from a running bridge, its
//! script fetches the data, and the rendered DOM is checked against what the test committed on the POS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use possync_e2e::*;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const SALES: i64 = 20;
/// A SKU the ERP does not know, with markup in it: the page must show it as text.
const BAD_SKU: &str = "<b id=\"injected\">NOPE</b>";

fn target_e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("target").join("e2e"))
        .unwrap_or_else(|| PathBuf::from("target/e2e"))
}

/// Runs chromium headless against `url` with `args`; returns its stdout. Fails the test after 90 s.
fn chromium(url: &str, args: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the dashboard test needs a headless browser. Install Debian's chromium \
         (apt-get install chromium; scripts/bootstrap.sh does it)"
    );
    let dir = target_e2e();
    let n = std::process::id();
    let profile = dir.join(format!("chromium-profile-{n}-{}", args.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let out_path = dir.join(format!("chromium-{n}-{}.out", args.len()));
    let err_path = dir.join(format!("chromium-{n}-{}.err", args.len()));
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("chromium stdout: {e}"));
    let err = std::fs::File::create(&err_path).unwrap_or_else(|e| panic!("chromium stderr: {e}"));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 90 s\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status})\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    stdout
}

fn dashboard_json(bridge: &Bridge) -> Value {
    let (code, body) = bridge
        .http_get("/api/dashboard.json")
        .unwrap_or_else(|| panic!("no answer from /api/dashboard.json\n{}", bridge.log()));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("dashboard JSON: {e}\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_health_applied_counts_and_exceptions_in_a_real_browser() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    // the ERP knows the tax code and has stock, so the only exceptions are the bad rows below
    let erp_db = erp.connect("erp").await;
    let mut receipt = String::from(
        "INSERT INTO possync.tax_code (tax_code, rate) VALUES ('NY', 0.08875);
         SELECT possync.apply_event('{\"event_id\": \"R-1\", \"kind\": \"receipt\", \"source\": \"erp\",
             \"location\": \"S042\", \"business_date\": \"2026-11-26\", \"occurred_at\": \"2026-11-26T08:00:00Z\",
             \"currency\": \"USD\", \"lines\": [",
    );
    for (i, sku) in SKUS.iter().enumerate() {
        if i > 0 {
            receipt.push(',');
        }
        receipt.push_str(&format!(
            "{{\"line\": {}, \"sku\": \"{sku}\", \"qty\": \"1000\", \"unit_cost\": \"5.00\"}}",
            i + 1
        ));
    }
    receipt.push_str("]}');");
    erp_db
        .batch_execute(&receipt)
        .await
        .expect("ERP tax code and stock");
    let bridge = Bridge::start(&erp.url("erp"), &[("store42", pos.url("pos"))], &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));

    run_sales(&pos_db, "D", 1, SALES - 1, 50).await;
    // two bad rows: a line at quantity 0 cannot make a well-formed event and is kept as rejected (malformed); a
    // SKU the ERP does not know is held (unknown_sku), and its name carries markup
    pos_db
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date)
                  VALUES ('X-1', '{STORE}', 'X', 1, 'sale', '2026-11-26');
             INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code)
                  VALUES ('X-1', 1, 'CAP', 0, 9.99, 0, 0, 'NY');
             INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('X-1', 1, 'cash', 0);
             COMMIT;
             BEGIN;
             INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date)
                  VALUES ('Y-1', '{STORE}', 'Y', 1, 'sale', '2026-11-26');
             INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code)
                  VALUES ('Y-1', 1, '{BAD_SKU}', 1, 10.00, 0, 0.89, 'NY');
             INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('Y-1', 1, 'card', 10.89);
             COMMIT;"
        ))
        .await
        .expect("bad rows");
    // the last sale is committed on a quiet system, so the lag the dashboard shows is the healthy steady state
    tokio::time::sleep(Duration::from_millis(500)).await;
    run_sales(&pos_db, "D", SALES, 1, 1).await;

    // wait until the bridge applied everything and its background task has read the exception from the ERP
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let data = dashboard_json(&bridge);
        let source = &data["sources"][0];
        let kinds: Vec<&str> = data["erp"]["sections"]["exceptions_by_kind"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k["kind"].as_str()).collect())
            .unwrap_or_default();
        let applied = source["events_applied"].as_i64();
        if applied == Some(SALES) && kinds == ["malformed", "unknown_sku"] {
            assert_eq!(source["health"], "healthy", "{data}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard data did not catch up: applied {applied:?}, exception kinds {kinds:?}\n{data}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let url = format!("http://127.0.0.1:{}/", bridge.metrics_port);
    let dom = chromium(&url, &["--dump-dom"]);
    let source_card = dom
        .split("data-source=\"store42\"")
        .nth(1)
        .unwrap_or_else(|| panic!("the page shows no card for source store42:\n{dom}"));
    assert!(
        dom.contains("class=\"card source\" data-source=\"store42\" data-health=\"healthy\""),
        "store42 is not shown healthy:\n{dom}"
    );
    assert!(
        source_card.contains("<span class=\"name\">store42</span>"),
        "{dom}"
    );
    assert!(
        source_card.contains("data-field=\"health\">healthy</span>"),
        "{dom}"
    );
    assert!(
        source_card.contains(&format!(
            "<div class=\"v\" data-field=\"events_applied\">{SALES}</div>"
        )),
        "the page does not show {SALES} events applied:\n{dom}"
    );
    assert!(
        source_card.contains("data-field=\"state\">streaming</span>"),
        "{dom}"
    );
    assert!(
        source_card.contains("<svg class=\"chart\""),
        "no lag chart:\n{dom}"
    );
    assert!(
        source_card.contains("<polyline"),
        "the lag chart has no line:\n{dom}"
    );
    for kind in ["malformed", "unknown_sku"] {
        assert!(
            dom.contains(&format!(
                "<td data-field=\"kind\">{kind}</td><td class=\"num\" data-field=\"open\">1</td>"
            )),
            "the open exceptions do not show one {kind}:\n{dom}"
        );
    }
    assert!(
        dom.contains("<span id=\"overall\" class=\"pill healthy\">healthy</span>"),
        "{dom}"
    );
    // the SKU's markup is shown as text, never as an element
    assert!(
        !dom.contains("<b id=\"injected\">"),
        "user data was parsed as HTML:\n{dom}"
    );
    assert!(
        dom.contains("&lt;b id=\"injected\"&gt;NOPE&lt;/b&gt;"),
        "the held event's reason does not name the SKU:\n{dom}"
    );

    let shot = target_e2e().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    // the ERP goes away: the source retries and the page says it is failing, and why the KPIs are old
    erp.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = dashboard_json(&bridge);
        if data["sources"][0]["health"] == "failing" && data["erp"]["error"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard data does not show the ERP outage:\n{data}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dom = chromium(&url, &["--dump-dom"]);
    assert!(
        dom.contains("class=\"card source\" data-source=\"store42\" data-health=\"failing\""),
        "store42 is not shown failing while the ERP is down:\n{dom}"
    );
    assert!(
        dom.contains("data-field=\"state\">retrying</span>"),
        "{dom}"
    );
    assert!(
        dom.contains("<div id=\"banner\" class=\"banner\">ERP unreachable: "),
        "no banner about the ERP:\n{dom}"
    );
    let shot = target_e2e().join("dashboard-failing.png");
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
}
