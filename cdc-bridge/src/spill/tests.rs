use serde_json::json;

use super::*;

fn insert(table: &str, v: Value) -> Change {
    Change {
        table: table.into(),
        op: ChangeOp::Insert,
        row: match v {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        old: None,
    }
}

fn sale(txn: &str) -> Change {
    insert(
        "pos.sale",
        json!({"txn_id": txn, "store_id": "S042", "register_id": "3", "seq": 7, "kind": "sale",
               "business_date": "2026-11-26", "occurred_at": "2026-11-26T14:03:07.12+00:00",
               "currency": "USD", "original_txn_id": null}),
    )
}

fn line(txn: &str, no: i64) -> Change {
    insert(
        "pos.sale_line",
        json!({"txn_id": txn, "line_no": no, "sku": "CAP", "qty": "1", "unit_price": "10.00",
               "discount": "0.00", "tax": "0.89", "tax_code": "NY", "returned": false}),
    )
}

#[test]
fn a_spilled_transaction_makes_the_events_the_held_one_makes() {
    let mapping = Mapping::reference();
    let mut changes = vec![sale("A")];
    // lines out of order, interleaved with another sale's
    for no in [3, 1, 2] {
        changes.push(line("A", no));
    }
    changes.push(sale("B"));
    changes.push(line("B", 1));
    changes.push(insert(
        "pos.tender",
        json!({"txn_id": "A", "tender_no": 1, "tender_type": "card", "amount": "32.67"}),
    ));
    changes.push(insert(
        "pos.tender",
        json!({"txn_id": "B", "tender_no": 1, "tender_type": "cash", "amount": "10.89"}),
    ));
    changes.push(insert(
        "pos.outbox",
        json!({"id": 1, "payload": {"event_id": "F-1", "kind": "fulfillment"}}),
    ));
    changes.push(line("ORPHAN", 1));
    changes.push(Change {
        op: ChangeOp::Update,
        ..sale("A")
    });
    // a return naming its sale, whose lines inherit it, and a receipt naming its supply
    let mut ret = sale("R");
    ret.row.insert("kind".into(), json!("return"));
    ret.row.insert("original_txn_id".into(), json!("A"));
    changes.push(ret);
    changes.push(line("R", 1));
    changes.push(insert(
        "pos.tender",
        json!({"txn_id": "R", "tender_no": 1, "tender_type": "cash", "amount": "-10.89"}),
    ));
    changes.push(insert(
        "pos.stock_event",
        json!({"event_id": "RC1", "store_id": "S042", "kind": "receipt", "ref": "PO-7", "other_store_id": null,
               "reason": null, "business_date": "2026-11-26", "occurred_at": "2026-11-26T08:00:00+00:00"}),
    ));
    changes.push(insert(
        "pos.stock_event_line",
        json!({"event_id": "RC1", "line_no": 1, "sku": "CAP", "qty": "12.000", "unit_cost": "4.50"}),
    ));
    let lsn = Lsn(0x1975EF8);
    let held = mapping.events_of("east", lsn, &changes);

    let dir = std::env::temp_dir();
    let mut spill =
        Spill::start(&dir, "east", changes[..2].to_vec()).unwrap_or_else(|e| panic!("{e}"));
    for c in &changes[2..] {
        spill.push(c).unwrap_or_else(|e| panic!("{e}"));
    }
    let txn = spill.finish().unwrap_or_else(|e| panic!("{e}"));
    let path = txn.file.path.clone();
    let mut text = String::new();
    let mut pieces = 0;
    let written = write_events(&mapping, "east", lsn, &txn, false, &[], None, &mut |p| {
        pieces += 1;
        text.push_str(&p);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let spilled: Vec<Value> = match serde_json::from_str(&text) {
        Ok(Value::Array(a)) => a,
        other => panic!("{other:?}: {text}"),
    };
    assert_eq!(written as usize, spilled.len());
    assert_eq!(spilled.len(), held.len());
    assert!(
        pieces > spilled.len(),
        "written piece by piece, not as one string"
    );
    // the events, in the same order, equal as the contract reads them (lines sorted by line_no)
    let kinds = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(kinds(&spilled), kinds(&held));
    for (s, h) in spilled.iter().zip(&held) {
        if h["kind"] == "unmapped" {
            assert_eq!(s["reason"], h["reason"]);
            assert_eq!(s["raw"], h["raw"]);
        } else {
            // the same JSON, not only the same event: the ERP finds the one a duplicate of the other
            assert_eq!(s, h);
        }
    }
    assert_eq!(spilled[0]["lines"][0]["line"], 1);
    drop(txn);
    assert!(!path.exists(), "the file goes with the transaction");
}

#[test]
fn the_lanes_of_a_spilled_transaction_write_its_events_between_them_once() {
    let mapping = Mapping::reference();
    let mut changes = Vec::new();
    for (i, store) in ["S1", "S2", "S3", "S4", "S5", "S6"].iter().enumerate() {
        let id = format!("T{i}");
        let mut s = sale(&id);
        s.row.insert("store_id".into(), json!(store));
        changes.push(s);
        changes.push(line(&id, 1));
        changes.push(line(&id, 2));
    }
    changes.push(line("ORPHAN", 1));
    let lsn = Lsn(0x2000);
    let mut spill =
        Spill::start(&std::env::temp_dir(), "east", Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    for c in &changes {
        spill.push(c).unwrap_or_else(|e| panic!("{e}"));
    }
    let txn = spill.finish().unwrap_or_else(|e| panic!("{e}"));
    let events = |lane: Option<(usize, usize)>| -> Vec<Value> {
        let mut text = String::new();
        write_events(&mapping, "east", lsn, &txn, false, &[], lane, &mut |p| {
            text.push_str(&p);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        match serde_json::from_str(&text) {
            Ok(Value::Array(a)) => a,
            other => panic!("{other:?}: {text}"),
        }
    };
    let all = events(None);
    let lanes = 3;
    let mut together = Vec::new();
    for lane in 0..lanes {
        let part = events(Some((lane, lanes)));
        for ev in &part {
            assert_eq!(crate::lanes::event_lane(ev, lanes), lane, "{ev}");
        }
        together.extend(part);
    }
    let key = |v: &Value| v.to_string();
    let mut a: Vec<String> = all.iter().map(key).collect();
    let mut b: Vec<String> = together.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "every event once, each in its own lane");
    // the orphan line is kept once, in lane 0, and no lane takes another's lines for orphans
    assert_eq!(
        together.iter().filter(|e| e["kind"] == "unmapped").count(),
        1
    );
}

#[test]
fn copy_fields_escape_what_copy_text_format_reads_specially() {
    let mut out = String::new();
    copy_field(&mut out, "a\\b\tc\nd\re\"f");
    assert_eq!(out, "a\\\\b\\tc\\nd\\re\"f");
}

#[test]
fn the_lane_of_a_transfer_in_after_its_transfer_out_in_one_spilled_transaction_goes_second() {
    let mapping = Mapping::reference();
    let lanes = 2;
    let a = "S1";
    let b = (2..100)
        .map(|i| format!("S{i}"))
        .find(|l| crate::lanes::lane_of(Some(l), lanes) != crate::lanes::lane_of(Some(a), lanes))
        .expect("a store in the other lane");
    let half = |id: &str, kind: &str, at: &str, other: &str| {
        insert(
            "pos.stock_event",
            json!({"event_id": id, "store_id": at, "kind": kind, "ref": "T1", "other_store_id": other,
                   "reason": null, "business_date": "2026-11-26", "occurred_at": "2026-11-26T08:00:00+00:00"}),
        )
    };
    let spilled = |changes: Vec<Change>| {
        let mut spill = Spill::start(&std::env::temp_dir(), "east", Vec::new())
            .unwrap_or_else(|e| panic!("{e}"));
        for c in &changes {
            spill.push(c).unwrap_or_else(|e| panic!("{e}"));
        }
        spill.finish().unwrap_or_else(|e| panic!("{e}"))
    };
    let txn = spilled(vec![
        half("o", "transfer_out", a, &b),
        half("i", "transfer_in", &b, a),
    ]);
    let later = later_lanes(&mapping, "east", &txn, lanes).unwrap_or_else(|e| panic!("{e}"));
    let lane_b = crate::lanes::lane_of(Some(&b), lanes);
    assert!(later[lane_b] && !later[1 - lane_b], "{later:?}");
    // with a sale only, no lane waits
    let txn = spilled(vec![sale("X")]);
    let later = later_lanes(&mapping, "east", &txn, lanes).unwrap_or_else(|e| panic!("{e}"));
    assert!(later.iter().all(|l| !l));
}
