//! The captured sale transaction (tests/fixtures/pgoutput_v1.txt, xid 736) assembled into one event.

use super::*;
use crate::decoder::decode;

const FIXTURE: &str = include_str!("../../tests/fixtures/pgoutput_v1.txt");

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

#[test]
fn the_captured_stream_assembles_into_mapped_transactions() {
    let mut a = Assembler::new("east", Arc::new(Mapping::reference()));
    let mut txns = Vec::new();
    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        let hex = line.rsplit('|').next().expect("hex column");
        let msg = decode(&unhex(hex)).expect("decodes");
        if let Some(t) = a.push(msg).expect("known relations") {
            txns.push(t);
        }
    }
    assert_eq!(txns.len(), 8, "one per captured transaction");
    let sale = &txns[0];
    assert_eq!(sale.commit_lsn.to_string(), "0/1975EF8");
    assert_eq!(sale.events.len(), 1);
    let e = &sale.events[0];
    assert_eq!(e["event_id"], "T1");
    assert_eq!(e["occurred_at"], "2026-11-26T14:03:07.12+00:00");
    let dec = |v: &serde_json::Value| -> rust_decimal::Decimal {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .expect("a decimal string")
    };
    assert_eq!(dec(&e["lines"][0]["qty"]), rust_decimal::Decimal::from(2));
    assert_eq!(
        dec(&e["lines"][0]["discount"]),
        rust_decimal::Decimal::new(400, 2)
    );
    assert_eq!(
        dec(&e["tenders"][0]["amount"]),
        rust_decimal::Decimal::new(3886, 2)
    );
    let ev = possync_events::Event::from_json(e).expect("well-formed");
    assert_eq!(ev.sold_net(), rust_decimal::Decimal::new(3598, 2));
    // the delete of the tender, and the truncate of the outbox, are kept as unmapped
    let kinds: Vec<String> = txns
        .iter()
        .flat_map(|t| t.events.iter())
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect();
    assert!(kinds.iter().filter(|k| *k == "unmapped").count() >= 2);
    // commit LSNs rise
    assert!(txns.windows(2).all(|w| w[0].commit_lsn < w[1].commit_lsn));
}
