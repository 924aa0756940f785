//! Apply lanes: one source's POS transactions applied in several ERP sessions at once, split by location.
//!
//! Every event goes to the lane its location hashes to, so each location's events are applied in commit order
//! by one session, and each lane keeps its own checkpoint in the ERP (`possync.start_lanes`,
//! `possync.apply_batch(source, commit_lsn, events, lane, lanes)`). A POS transaction whose events span
//! locations is applied in parts, one per lane, each at the transaction's commit LSN. The split is a pure
//! function of the event's location and the number of lanes, so after a restart each lane is sent exactly the
//! events it was sent before and skips those at or below its checkpoint.
//!
//! A group of transactions is applied lane by lane in parallel, and the next group starts when every lane has
//! committed. Inside a group, an event that needs another one posted first in a different lane (a transfer_in
//! and its transfer_out, a return and the sale it names) would race it: the group is cut before such an event
//! into segments applied one after the other, so it finds the other committed, as it would in a single session.
//! A POS transaction that cannot be split without changing an order one session keeps is applied whole, by
//! lane 0, in a segment of its own: one whose events need each other across lanes, one with a transfer_out to
//! a store of another lane (posting it may post the transfer_in held there, into that store's stock, which must
//! fall between that store's events before and after it), and a spilled transaction (its events are in a file,
//! and which of them need which is not known before it is read). Such transactions are rare in a POS stream
//! (most touch one store), and this keeps every store's stock moving in the order one session gives it.

use std::collections::HashMap;

use serde_json::Value;

use crate::assembler::PosTransaction;

/// The most lanes a source may be applied in (the extension's limit).
pub const MAX_LANES: usize = possync_events::MAX_APPLY_LANES;

/// The lane of a location: FNV-1a of its bytes, modulo the number of lanes. Stable across builds and
/// platforms (a restart must route every event as before). Events without a location go to lane 0.
pub fn lane_of(location: Option<&str>, lanes: usize) -> usize {
    let Some(location) = location else { return 0 };
    if lanes <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in location.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

/// The lane of an event (by its `location`).
pub fn event_lane(event: &Value, lanes: usize) -> usize {
    lane_of(event.get("location").and_then(Value::as_str), lanes)
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

/// What posting this event makes available to later ones.
fn provides(event: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(id) = text(event, "event_id") {
        keys.push(format!("event:{id}"));
    }
    keys.extend(transfer_key(event));
    keys
}

/// Both halves of a transfer meet on its id: whichever comes second posts against the first (a transfer_in
/// finds its transfer_out, a transfer_out releases the transfer_in held for it), so it must find it committed.
fn transfer_key(event: &Value) -> Option<String> {
    match text(event, "kind") {
        Some("transfer_out" | "transfer_in") => {
            text(event, "transfer_id").map(|t| format!("transfer:{t}"))
        }
        _ => None,
    }
}

/// What this event needs posted before it to post as it would in a single session.
fn needs(event: &Value) -> Vec<String> {
    let mut keys: Vec<String> = transfer_key(event).into_iter().collect();
    if let Some(o) = text(event, "original_event_id") {
        keys.push(format!("event:{o}"));
    }
    if let Some(lines) = event.get("lines").and_then(Value::as_array) {
        for l in lines {
            if let Some(o) = text(l, "original_event_id") {
                keys.push(format!("event:{o}"));
            }
        }
    }
    keys
}

/// Within one POS transaction, whether an event needs what an event of another lane gave before it: then its
/// lanes' parts cannot run at once, and the transaction is applied whole by one lane.
struct Within {
    given: HashMap<String, usize>,
    lanes: usize,
    crosses: bool,
}

impl Within {
    fn new(lanes: usize) -> Within {
        Within {
            given: HashMap::new(),
            lanes: lanes.max(1),
            crosses: false,
        }
    }

    /// The next event of the transaction; returns its lane.
    fn add(&mut self, event: &Value) -> usize {
        let lane = event_lane(event, self.lanes);
        if needs(event)
            .iter()
            .any(|k| self.given.get(k).is_some_and(|l| *l != lane))
        {
            self.crosses = true;
        }
        for k in provides(event) {
            self.given.entry(k).or_insert(lane);
        }
        lane
    }

    /// Whether an event of the transaction needs one of another lane's before it.
    fn crosses(&self) -> bool {
        self.crosses
    }
}

/// Whether an event is a transfer_out to a store of another lane: posting it also posts a transfer_in held for
/// it there, in that store's stock.
fn releases_elsewhere(lanes: usize) -> impl Fn(&Value) -> bool {
    move |ev: &Value| {
        text(ev, "kind") == Some("transfer_out")
            && lane_of(text(ev, "to_location"), lanes) != event_lane(ev, lanes)
    }
}

/// One segment of a group: for each lane, the parts of consecutive POS transactions it applies, in commit order.
pub type Segment = Vec<Vec<PosTransaction>>;

/// A POS transaction with only some of its events.
fn part_of(txn: &PosTransaction, events: Vec<Value>) -> PosTransaction {
    PosTransaction {
        commit_lsn: txn.commit_lsn,
        end_lsn: txn.end_lsn,
        commit_time: txn.commit_time,
        events,
        changes: txn.changes.clone(),
        spilled: txn.spilled.clone(),
    }
}

/// A part that carries no events: it only moves a lane's checkpoint to the transaction's commit LSN.
fn marker(txn: &PosTransaction) -> PosTransaction {
    PosTransaction {
        commit_lsn: txn.commit_lsn,
        end_lsn: txn.end_lsn,
        commit_time: txn.commit_time,
        events: Vec::new(),
        changes: Vec::new(),
        spilled: None,
    }
}

/// Splits a group of consecutive POS transactions into segments of per-lane parts (see the module's words). In
/// the last segment every lane ends with the group's last transaction, with no events when it has none there,
/// so that every lane's checkpoint reaches the end of the group.
pub fn segments(group: &[PosTransaction], lanes: usize) -> Vec<Segment> {
    let lanes = lanes.max(1);
    let mut out: Vec<Segment> = Vec::new();
    let mut current: Segment = vec![Vec::new(); lanes];
    let mut provided: HashMap<String, usize> = HashMap::new();
    let mut filled = false;
    let close = |current: &mut Segment, out: &mut Vec<Segment>, filled: &mut bool| {
        if std::mem::take(filled) {
            out.push(std::mem::replace(current, vec![Vec::new(); lanes]));
        }
    };
    // a transaction applied whole by lane 0, in a segment of its own
    let alone =
        |txn: &PosTransaction, current: &mut Segment, out: &mut Vec<Segment>, filled: &mut bool| {
            close(current, out, filled);
            let mut segment: Segment = vec![Vec::new(); lanes];
            segment[0].push(part_of(txn, txn.events.clone()));
            out.push(segment);
        };
    for txn in group {
        if txn.spilled.is_some() {
            alone(txn, &mut current, &mut out, &mut filled);
            provided.clear();
            continue;
        }
        let mut parts: Vec<Vec<Value>> = vec![Vec::new(); lanes];
        let mut cut = false;
        let mut within = Within::new(lanes);
        for ev in &txn.events {
            let lane = within.add(ev);
            if needs(ev)
                .iter()
                .any(|k| provided.get(k).is_some_and(|l| *l != lane))
            {
                cut = true;
            }
            parts[lane].push(ev.clone());
        }
        if within.crosses() || txn.events.iter().any(releases_elsewhere(lanes)) {
            alone(txn, &mut current, &mut out, &mut filled);
            provided.clear();
            continue;
        }
        if cut {
            close(&mut current, &mut out, &mut filled);
            provided.clear();
        }
        for (lane, events) in parts.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            for ev in &events {
                for k in provides(ev) {
                    provided.insert(k, lane);
                }
            }
            current[lane].push(part_of(txn, events));
            filled = true;
        }
        // a transaction with no events at all (mirrored rows only, say) still moves lane 0's checkpoint
        if txn.events.is_empty() {
            current[0].push(part_of(txn, Vec::new()));
            filled = true;
        }
    }
    close(&mut current, &mut out, &mut filled);
    if let Some(last) = group.last() {
        if out.is_empty() {
            out.push(vec![Vec::new(); lanes]);
        }
        let reached: Vec<bool> = (0..lanes)
            .map(|lane| {
                out.iter()
                    .any(|seg| seg[lane].last().map(|p| p.commit_lsn) == Some(last.commit_lsn))
            })
            .collect();
        if let Some(tail) = out.last_mut() {
            for (parts, reached) in tail.iter_mut().zip(reached) {
                if !reached {
                    parts.push(marker(last));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::lsn::Lsn;

    fn txn(lsn: u64, events: Vec<Value>) -> PosTransaction {
        PosTransaction {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_time: 0,
            events,
            changes: Vec::new(),
            spilled: None,
        }
    }

    fn sale(id: &str, loc: &str) -> Value {
        json!({"event_id": id, "kind": "sale", "location": loc})
    }

    /// Two locations that land in different lanes of 2.
    fn two_apart() -> (String, String) {
        let a = "S1".to_string();
        let b = (2..100)
            .map(|i| format!("S{i}"))
            .find(|l| lane_of(Some(l), 2) != lane_of(Some(&a), 2))
            .expect("some location hashes to the other lane");
        (a, b)
    }

    fn ids(parts: &[PosTransaction]) -> Vec<(u64, Vec<String>)> {
        parts
            .iter()
            .map(|p| {
                (
                    p.commit_lsn.0,
                    p.events
                        .iter()
                        .filter_map(|e| text(e, "event_id").map(str::to_string))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn routing_is_fixed_by_location_and_spreads_locations() {
        // fixed values: a change here would send events to other lanes than before a restart
        assert_eq!(lane_of(Some("S042"), 4), lane_of(Some("S042"), 4));
        assert_eq!(lane_of(None, 4), 0);
        assert_eq!(lane_of(Some("anything"), 1), 0);
        let mut per_lane = [0usize; 4];
        for i in 0..400 {
            per_lane[lane_of(Some(&format!("S{i:03}")), 4)] += 1;
        }
        assert!(per_lane.iter().all(|n| *n > 60), "{per_lane:?}");
    }

    #[test]
    fn a_group_is_split_by_location_and_every_lane_reaches_its_end() {
        let (a, b) = two_apart();
        let (la, lb) = (lane_of(Some(&a), 2), lane_of(Some(&b), 2));
        let group = vec![
            txn(10, vec![sale("x1", &a)]),
            txn(20, vec![sale("x2", &a), sale("y2", &b)]),
            txn(30, vec![sale("x3", &a)]),
        ];
        let segs = segments(&group, 2);
        assert_eq!(segs.len(), 1);
        assert_eq!(
            ids(&segs[0][la]),
            vec![
                (10, vec!["x1".into()]),
                (20, vec!["x2".into()]),
                (30, vec!["x3".into()])
            ]
        );
        // lane b gets its part of 20 and an empty 30, so its checkpoint reaches the end of the group
        assert_eq!(
            ids(&segs[0][lb]),
            vec![(20, vec!["y2".into()]), (30, vec![])]
        );
    }

    #[test]
    fn an_event_needing_one_from_another_lane_starts_a_new_segment() {
        let (a, b) = two_apart();
        let (la, lb) = (lane_of(Some(&a), 2), lane_of(Some(&b), 2));
        let out = json!({"event_id": "t-out", "kind": "transfer_out", "location": b, "transfer_id": "T9",
                         "to_location": b});
        let inn =
            json!({"event_id": "t-in", "kind": "transfer_in", "location": a, "transfer_id": "T9"});
        let ret = json!({"event_id": "r1", "kind": "return", "location": b,
                         "lines": [{"sku": "A", "original_event_id": "s1"}]});
        let group = vec![
            txn(10, vec![out]),
            txn(20, vec![sale("s1", &a)]),
            txn(30, vec![inn]),
            txn(40, vec![ret]),
            txn(50, vec![sale("s5", &b)]),
        ];
        let segs = segments(&group, 2);
        // the transfer_in is cut from the segment of its transfer_out; the return then finds its sale committed
        // in the segment before
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!(ids(&segs[0][lb]), vec![(10, vec!["t-out".into()])]);
        assert_eq!(ids(&segs[0][la]), vec![(20, vec!["s1".into()])]);
        assert_eq!(
            ids(&segs[1][la]),
            vec![(30, vec!["t-in".into()]), (50, vec![])]
        );
        assert_eq!(
            ids(&segs[1][lb]),
            vec![(40, vec!["r1".into()]), (50, vec!["s5".into()])]
        );
        // a return in the segment of the sale it names, in another lane, is cut from it
        let group = vec![
            txn(10, vec![sale("s1", &b)]),
            txn(
                20,
                vec![json!({"event_id": "r", "kind": "return",
            "location": a, "original_event_id": "s1"})],
            ),
        ];
        assert_eq!(segments(&group, 2).len(), 2);
        // in the same lane nothing is cut
        let same = vec![
            txn(10, vec![sale("s1", &a)]),
            txn(
                20,
                vec![json!({"event_id": "r", "kind": "return",
            "location": a, "original_event_id": "s1"})],
            ),
        ];
        assert_eq!(segments(&same, 2).len(), 1);
    }

    #[test]
    fn a_transaction_whose_events_need_each_other_across_lanes_is_applied_whole_by_lane_zero() {
        let (a, b) = two_apart();
        let (la, lb) = (lane_of(Some(&a), 2), lane_of(Some(&b), 2));
        let group = vec![
            txn(5, vec![sale("before", &a)]),
            txn(
                10,
                vec![
                    json!({"event_id": "o", "kind": "transfer_out", "location": a, "transfer_id": "T1"}),
                    sale("s", &b),
                    json!({"event_id": "i", "kind": "transfer_in", "location": b, "transfer_id": "T1"}),
                ],
            ),
            txn(20, vec![sale("after", &b)]),
        ];
        let segs = segments(&group, 2);
        assert_eq!(segs.len(), 3, "{segs:?}");
        assert_eq!(ids(&segs[0][la]), vec![(5, vec!["before".into()])]);
        // alone, in its order, by lane 0; the other lane has nothing of it
        assert_eq!(
            ids(&segs[1][0]),
            vec![(10, vec!["o".into(), "s".into(), "i".into()])]
        );
        assert!(segs[1][1].is_empty());
        assert_eq!(ids(&segs[2][lb]), vec![(20, vec!["after".into()])]);
    }

    #[test]
    fn a_transfer_out_to_a_store_of_another_lane_goes_whole_by_lane_zero_between_its_neighbours() {
        let (a, b) = two_apart();
        let (la, lb) = (lane_of(Some(&a), 2), lane_of(Some(&b), 2));
        let out = json!({"event_id": "o", "kind": "transfer_out", "location": a, "transfer_id": "T1",
                         "to_location": b});
        // it may post the receipt held at b: b's events around it in its transaction keep their order, and
        // b's events of the transactions before and after it come before and after it
        let group = vec![
            txn(5, vec![sale("s0", &b)]),
            txn(
                10,
                vec![sale("s1", &b), out.clone(), sale("s2", &b), out.clone()],
            ),
            txn(20, vec![sale("s3", &b)]),
        ];
        let segs = segments(&group, 2);
        assert_eq!(segs.len(), 3, "{segs:?}");
        assert_eq!(ids(&segs[0][lb]), vec![(5, vec!["s0".into()])]);
        assert_eq!(
            ids(&segs[1][0]),
            vec![(10, vec!["s1".into(), "o".into(), "s2".into(), "o".into()])]
        );
        assert!(segs[1][1].is_empty());
        assert_eq!(ids(&segs[2][lb]), vec![(20, vec!["s3".into()])]);
        assert_eq!(ids(&segs[2][la]), vec![(20, vec![])]);
        // a transfer_out within one lane orders nothing
        let near = json!({"event_id": "o", "kind": "transfer_out", "location": a, "transfer_id": "T1",
                          "to_location": a});
        let group = vec![txn(10, vec![near, sale("s", &a)])];
        assert_eq!(segments(&group, 2).len(), 1);
    }

    #[test]
    fn a_spilled_transaction_is_applied_whole_by_lane_zero_and_the_others_only_move_their_checkpoints(
    ) {
        let (a, _) = two_apart();
        let dir = std::env::temp_dir();
        let spilled = crate::spill::Spill::start(&dir, "lanes-test", Vec::new())
            .and_then(crate::spill::Spill::finish)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut big = txn(20, vec![]);
        big.spilled = Some(std::sync::Arc::new(spilled));
        let group = vec![txn(10, vec![sale("x", &a)]), big];
        let segs = segments(&group, 2);
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert!(segs[1][0][0].spilled.is_some());
        // the other lane reaches the group's end with a part that carries neither events nor the file
        assert_eq!(segs[1][1].len(), 1);
        assert_eq!(segs[1][1][0].commit_lsn.0, 20);
        assert!(segs[1][1][0].spilled.is_none() && segs[1][1][0].events.is_empty());
    }

    #[test]
    fn a_transfer_out_after_its_held_transfer_in_follows_it() {
        let (a, b) = two_apart();
        let group = vec![
            txn(
                10,
                vec![
                    json!({"event_id": "i", "kind": "transfer_in", "location": b, "transfer_id": "T1"}),
                ],
            ),
            txn(
                20,
                vec![
                    json!({"event_id": "o", "kind": "transfer_out", "location": a, "transfer_id": "T1"}),
                ],
            ),
        ];
        assert_eq!(segments(&group, 2).len(), 2);
    }

    #[test]
    fn a_transaction_without_events_moves_lane_zero() {
        let (a, _) = two_apart();
        let group = vec![txn(10, vec![]), txn(20, vec![sale("x", &a)])];
        let segs = segments(&group, 2);
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0][0].first().map(|p| p.commit_lsn.0), Some(10));
        for lane in &segs[0] {
            assert_eq!(lane.last().map(|p| p.commit_lsn.0), Some(20));
        }
    }
}
