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

/// A transaction of every sort of row: sales with lines out of order, tenders, an outbox event, orphan lines, an
/// update, a return naming its sale, a receipt, an outbox row without its payload.
fn mixed_changes() -> Vec<Change> {
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
    // an orphan after a row that is not an insert, and an outbox row without its payload: the rows left over
    // are named by their place among the changes, in their order there
    changes.push(line("ORPHAN2", 1));
    changes.push(insert("pos.outbox", json!({"id": 2, "payload": null})));
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
    changes
}

#[test]
fn a_spilled_transaction_makes_the_events_the_held_one_makes() {
    let mapping = Mapping::reference();
    let changes = mixed_changes();
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
    let written = write_events(&mapping, "east", lsn, &txn, false, &[], &mut |p| {
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
            // the same id: a transaction posted from memory and from its file makes the same rejected records
            assert_eq!(s["event_id"], h["event_id"]);
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

fn spill_of(changes: &[Change]) -> SpilledTxn {
    let mut spill =
        Spill::start(&std::env::temp_dir(), "east", Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    for c in changes {
        spill.push(c).unwrap_or_else(|e| panic!("{e}"));
    }
    spill.finish().unwrap_or_else(|e| panic!("{e}"))
}

fn rejected_of(mapping: &Mapping, lsn: Lsn, txn: &SpilledTxn, rejection: &Rejection) -> Vec<Value> {
    let mut text = String::new();
    let written = write_rejected(mapping, "east", lsn, txn, rejection, &mut |p| {
        text.push_str(&p);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    match serde_json::from_str(&text) {
        Ok(Value::Array(a)) => {
            assert_eq!(a.len() as u64, written);
            a
        }
        other => panic!("{other:?}: {text}"),
    }
}

#[test]
fn a_refused_spilled_transaction_keeps_every_event_as_the_held_one_would() {
    let mapping = Mapping::reference();
    let changes = mixed_changes();
    let lsn = Lsn(0x1975EF8);
    let held = crate::assembler::PosTransaction {
        commit_lsn: lsn,
        end_lsn: Lsn(0x1975F50),
        commit_time: 0,
        events: mapping.events_of("east", lsn, &changes),
        changes: Vec::new(),
        spilled: None,
    };
    let txn = spill_of(&changes);
    let error = crate::pgerr::ServerError {
        sqlstate: "22003".into(),
        message: "value out of range".into(),
        detail: Some("injected".into()),
        hint: None,
    };
    for as_text in [false, true] {
        let expected = crate::source::rejected_form("east", &held, &error, as_text, None);
        let rejection = Rejection::new("east", lsn, &error, as_text, None);
        let got = rejected_of(&mapping, lsn, &txn, &rejection);
        assert_eq!(got.len(), expected.len(), "one record per event");
        assert_eq!(
            got.len(),
            9,
            "sales A, B and R, the fulfillment, the receipt, four rows left over"
        );
        for (g, e) in got.iter().zip(&expected) {
            for field in [
                "event_id",
                "kind",
                "reason",
                "erp_error",
                "commit_lsn",
                "original_event_id",
            ] {
                assert_eq!(g[field], e[field], "{field} of {g}");
            }
            let original = |r: &Value| -> Value {
                match r.get("original_text").and_then(Value::as_str) {
                    Some(t) => serde_json::from_str(t).unwrap_or_else(|err| panic!("{err}: {t}")),
                    None => r["original"].clone(),
                }
            };
            let (go, eo) = (original(g), original(e));
            assert!(go.is_object(), "the original is kept: {g}");
            assert_eq!(g.get("original_text").is_some(), as_text);
            if eo["kind"] == "unmapped" {
                assert_eq!(go["event_id"], eo["event_id"]);
                assert_eq!(go["raw"], eo["raw"]);
            } else {
                assert_eq!(go, eo);
            }
        }
    }
    // one large sale carried as text is cut to what a record keeps, its full length noted
    let mut big = vec![sale("BIG")];
    for no in 1..=2000 {
        big.push(line("BIG", no));
    }
    let txn = spill_of(&big);
    let rejection = Rejection::new("east", lsn, &error, true, None);
    let got = rejected_of(&mapping, lsn, &txn, &rejection);
    assert_eq!(got.len(), 1);
    let text = got[0]["original_text"].as_str().unwrap_or_default();
    assert_eq!(text.chars().count(), crate::source::ORIGINAL_TEXT_MAX_CHARS);
    assert!(
        text.ends_with("characters in all]"),
        "{}",
        &text[text.len() - 80..]
    );
    assert_eq!(got[0]["original_event_id"], "BIG");
    // a line nested deeper than a record may carry as JSON makes its event go as text
    let mut deep = json!("leaf");
    for _ in 0..possync_events::domain::MAX_DEPTH {
        deep = json!({ "k": deep });
    }
    let mut nested = line("N", 1);
    nested.row.insert("sku".into(), deep);
    let txn = spill_of(&[sale("N"), nested]);
    let rejection = Rejection::new("east", lsn, &error, false, None);
    let got = rejected_of(&mapping, lsn, &txn, &rejection);
    assert!(
        got[0].get("original").is_none() && got[0]["original_text"].is_string(),
        "{}",
        got[0]
    );
    assert!(possync_events::depth(&got[0]) <= possync_events::domain::MAX_DEPTH);
    // a transaction without events: one record of why, as in memory
    let txn = spill_of(&[]);
    let got = rejected_of(&mapping, lsn, &txn, &rejection);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event_id"], "east:erp_error:0/1975EF8:0");
}

#[test]
fn copy_fields_escape_what_copy_text_format_reads_specially() {
    let mut out = String::new();
    copy_field(&mut out, "a\\b\tc\nd\re\"f");
    assert_eq!(out, "a\\\\b\\tc\\nd\\re\"f");
}

/// A directory of its own under the system's temporary one, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("possync-test-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_spill_file_is_new_private_and_never_written_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("create");
    let spill = Spill::start(&dir.0, "east", vec![sale("A")]).unwrap_or_else(|e| panic!("{e}"));
    let mode = std::fs::metadata(&spill.file.path)
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "readable by the bridge's user only");
    // a link planted where a spill file goes is not followed, and what it points at is not truncated
    let target = dir.0.join("target.txt");
    std::fs::write(&target, "keep me").unwrap_or_else(|e| panic!("{e}"));
    let planted = dir.0.join("possync-spill-east-1-1.jsonl");
    std::os::unix::fs::symlink(&target, &planted).unwrap_or_else(|e| panic!("{e}"));
    let refused = create(&planted).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::AlreadyExists));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap_or_default(),
        "keep me"
    );
    drop(spill);
}

#[test]
fn a_session_removes_only_its_sources_spill_files_that_nothing_holds() {
    let dir = TempDir::new("leftovers");
    let file = |name: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, "{}\n").unwrap_or_else(|e| panic!("{e}"));
        p
    };
    // left by a bridge that was killed: east's, of two processes
    let dead = [
        file("possync-spill-east-4242-0.jsonl"),
        file("possync-spill-east-77-12.jsonl"),
    ];
    // another source's, names that only look alike, and a link to something else
    let kept = [
        file("possync-spill-west-4242-0.jsonl"),
        file("possync-spill-east_2-4242-0.jsonl"),
        file("possync-spill-east-notes.txt"),
    ];
    let target = file("elsewhere.jsonl");
    let link = dir.0.join("possync-spill-east-4242-9.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|e| panic!("{e}"));
    // one in use: being written, then committed and waiting to be posted
    let writing = Spill::start(&dir.0, "east", vec![sale("A")]).unwrap_or_else(|e| panic!("{e}"));
    let committed = Spill::start(&dir.0, "east", vec![sale("B")])
        .and_then(Spill::finish)
        .unwrap_or_else(|e| panic!("{e}"));
    let removed = remove_leftovers(&dir.0, "east").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(removed, 2);
    for p in &dead {
        assert!(!p.exists(), "{p:?} is left over");
    }
    for p in kept.iter().chain([&target, &link]) {
        assert!(p.exists(), "{p:?} is not east's leftover");
    }
    assert!(
        writing.file.path.exists() && committed.file.path.exists(),
        "in use"
    );
    // once posted (dropped), a file is gone as before; nothing is left for the next session
    drop(writing);
    drop(committed);
    assert_eq!(
        remove_leftovers(&dir.0, "east").unwrap_or_else(|e| panic!("{e}")),
        0
    );
}

#[test]
fn a_spilled_transaction_the_erp_cannot_take_is_kept_in_a_file_of_its_own() {
    let dir = TempDir::new("kept");
    let spilled = Spill::start(&dir.0, "pos-east", vec![sale("A"), line("A", 1)])
        .and_then(Spill::finish)
        .unwrap_or_else(|e| panic!("{e}"));
    let original = std::fs::read_to_string(&spilled.file.path).unwrap_or_else(|e| panic!("{e}"));
    let lsn = Lsn(0x1975EF8);
    let kept = keep(&spilled, "pos-east", lsn).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kept.file_name().and_then(|n| n.to_str()),
        Some("possync-kept-pos_east-0-1975EF8.jsonl")
    );
    // kept again (a retry after a crash): the same file
    assert_eq!(
        keep(&spilled, "pos-east", lsn).unwrap_or_else(|e| panic!("{e}")),
        kept
    );
    // the spill file goes once the transaction is settled; what was kept stays, whole, and no session's
    // clean-up takes it for a leftover
    let spill_path = spilled.file.path.clone();
    drop(spilled);
    assert!(!spill_path.exists());
    assert_eq!(
        remove_leftovers(&dir.0, "pos-east").unwrap_or_else(|e| panic!("{e}")),
        0
    );
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap_or_else(|e| panic!("{e}")),
        original
    );
}
