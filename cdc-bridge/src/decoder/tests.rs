//! Decoding of pgoutput messages captured from a PostgreSQL 15 server with
//! `pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1', 'publication_names', 'p')`
//! (tests/fixtures/pgoutput_v1.txt: lsn|xid|hex, one message a line).

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/pgoutput_v1.txt");

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture is hex"))
        .collect()
}

fn messages() -> Vec<(u32, Message)> {
    FIXTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split('|');
            let _lsn = parts.next().expect("lsn");
            let xid: u32 = parts.next().expect("xid").parse().expect("xid number");
            let bytes = unhex(parts.next().expect("hex"));
            (xid, decode(&bytes).expect("captured message decodes"))
        })
        .collect()
}

fn text(s: &str) -> Datum {
    Datum::Text(s.to_string())
}

#[test]
fn a_sale_transaction_decodes_to_begin_relations_inserts_commit() {
    let all = messages();
    let txn: Vec<&Message> = all
        .iter()
        .filter(|(x, _)| *x == 736)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(txn.len(), 8);
    let Message::Begin { final_lsn, xid, .. } = txn[0] else {
        panic!("first message is {:?}", txn[0]);
    };
    assert_eq!(*xid, 736);
    let Message::Relation(sale) = txn[1] else {
        panic!("second message is {:?}", txn[1]);
    };
    assert_eq!(sale.qualified_name(), "pos.sale");
    assert_eq!(sale.replica_identity, b'd');
    let names: Vec<&str> = sale.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "txn_id",
            "store_id",
            "register_id",
            "seq",
            "kind",
            "business_date",
            "occurred_at",
            "currency",
            "original_txn_id"
        ]
    );
    assert!(sale.columns[0].key && !sale.columns[1].key);
    assert_eq!(sale.columns[0].type_oid, 25);
    assert_eq!(sale.columns[3].type_oid, 20);
    let Message::Insert { relation, new } = txn[2] else {
        panic!("third message is {:?}", txn[2]);
    };
    assert_eq!(*relation, sale.oid);
    assert_eq!(new[0], text("T1"));
    assert_eq!(new[3], text("123"));
    assert_eq!(new[6], text("2026-11-26 14:03:07.12+00"));
    assert_eq!(new[8], Datum::Null, "original_txn_id was NULL");
    let Message::Insert { new: line, .. } = txn[4] else {
        panic!("fifth message is {:?}", txn[4]);
    };
    assert_eq!(line[2], text("TSHIRT-M"));
    assert_eq!(line[4], text("19.99"));
    assert_eq!(line[8], text("f"));
    let Message::Commit {
        commit_lsn,
        end_lsn,
        flags,
        ..
    } = txn[7]
    else {
        panic!("last message is {:?}", txn[7]);
    };
    assert_eq!(*flags, 0);
    assert_eq!(commit_lsn, final_lsn, "Begin announces the commit LSN");
    assert!(end_lsn > commit_lsn);
    assert_eq!(commit_lsn.to_string(), "0/1975EF8");
}

#[test]
fn unchanged_toast_values_are_marked_not_resent() {
    let all = messages();
    let update = all
        .iter()
        .find_map(|(x, m)| match m {
            Message::Update { old, new, .. } if *x == 738 => Some((old, new)),
            _ => None,
        })
        .expect("the toasty update");
    assert_eq!(update.0, &None, "default replica identity, key unchanged");
    assert_eq!(update.1[0], text("1"));
    assert_eq!(update.1[1], Datum::UnchangedToast);
    assert_eq!(update.1[2], text("b"));
    // the insert before carried the whole 5000-byte value
    let inserted = all
        .iter()
        .find_map(|(x, m)| match m {
            Message::Insert { new, .. } if *x == 737 => Some(new),
            _ => None,
        })
        .expect("the toasty insert");
    assert_eq!(inserted[1], Datum::Text("x".repeat(5000)));
}

#[test]
fn delete_carries_the_key_and_update_under_replica_identity_full_the_old_row() {
    let all = messages();
    let delete = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Delete { old, .. } => Some(old),
            _ => None,
        })
        .expect("a delete");
    assert_eq!(delete.0, OldImage::Key);
    assert_eq!(
        delete.1,
        vec![text("T1"), text("1"), Datum::Null, Datum::Null]
    );
    let full = all
        .iter()
        .find_map(|(x, m)| match m {
            Message::Update {
                old: Some(old),
                new,
                ..
            } if *x == 745 => Some((old, new)),
            _ => None,
        })
        .expect("the replica identity full update");
    assert_eq!(full.0 .0, OldImage::Full);
    assert_eq!(full.0 .1, vec![text("1"), text("ok")]);
    assert_eq!(full.1, &vec![text("1"), text("bad")]);
}

#[test]
fn truncate_type_and_origin_messages_decode() {
    let all = messages();
    let (options, relations) = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Truncate { options, relations } => Some((*options, relations.clone())),
            _ => None,
        })
        .expect("a truncate");
    assert_eq!(options, 0);
    assert_eq!(relations.len(), 1);
    let outbox = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Relation(r) if r.name == "outbox" => Some(r.oid),
            _ => None,
        })
        .expect("outbox relation");
    assert_eq!(relations[0], outbox);

    let (type_oid, type_name) = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Type { oid, name, .. } => Some((*oid, name.clone())),
            _ => None,
        })
        .expect("a type message for the enum");
    assert_eq!(type_name, "mood");
    let typed = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Relation(r) if r.name == "typed" => Some(r.clone()),
            _ => None,
        })
        .expect("typed relation");
    assert_eq!(typed.columns[1].type_oid, type_oid);

    let origin = all
        .iter()
        .find_map(|(_, m)| match m {
            Message::Origin { commit_lsn, name } => Some((*commit_lsn, name.clone())),
            _ => None,
        })
        .expect("an origin message");
    assert_eq!(origin, (Lsn(0xAB), "erp_origin".to_string()));
}

#[test]
fn relation_cache_is_refreshed_by_relation_messages() {
    let mut cache = RelationCache::default();
    let mut seen = 0;
    for (_, m) in messages() {
        match m {
            Message::Relation(r) => {
                cache.update(r);
                seen += 1;
            }
            Message::Insert { relation, new } => {
                assert_eq!(
                    cache.get(relation).expect("described").columns.len(),
                    new.len()
                );
            }
            _ => {}
        }
    }
    assert!(seen >= 5);
    assert!(matches!(cache.get(1), Err(DecodeError::UnknownRelation(1))));
}

#[test]
fn truncated_and_unknown_messages_are_errors_not_panics() {
    let all: Vec<Vec<u8>> = FIXTURE
        .lines()
        .filter_map(|l| l.rsplit('|').next().map(unhex))
        .collect();
    for bytes in &all {
        for cut in 0..bytes.len() {
            // every strict prefix fails cleanly (a tuple-less prefix may still be a whole message only
            // if the cut is at the end)
            let _ = decode(&bytes[..cut]);
        }
    }
    let insert = all.iter().find(|b| b[0] == b'I').expect("an insert");
    assert!(matches!(
        decode(&insert[..insert.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode(b"Z"),
        Err(DecodeError::UnknownMessage('Z'))
    ));
    assert!(matches!(decode(b""), Err(DecodeError::Truncated { .. })));
}
