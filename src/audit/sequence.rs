//! Register sequence numbers: a jump names the missing transactions, a late arrival fills its gap (and the
//! exception resolves itself when the gap is closed), a number used twice by different events is flagged.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pgrx::datum::DatumWithOid;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::statements::{get_i64, get_text, run, text, texts};

/// One received event's place in its register's sequence.
#[derive(Debug, Clone)]
pub struct Seen {
    pub source: String,
    pub location: String,
    pub register: String,
    pub sequence: i64,
    pub event_id: String,
    pub business_date: String,
}

type Register = (String, String, String);

/// What the sequences of one call mean: new exceptions and gaps that late events filled.
#[derive(Debug, Default)]
pub struct Findings {
    /// (register, first missing, last missing, the event after the gap, its business date)
    pub missing: Vec<(Register, i64, i64, String, String)>,
    pub reused: Vec<(Register, i64, String, String)>,
    pub filled: BTreeMap<Register, BTreeSet<i64>>,
    pub last: BTreeMap<Register, i64>,
}

// a gap's detail lists at most this many of its numbers for people to read; `missing_ranges` holds every one,
// and the exception's amount is the exact count
const LISTED: usize = 1000;

/// Missing numbers as inclusive ranges, in order.
type Ranges = Vec<(i64, i64)>;

fn count(ranges: &Ranges) -> i64 {
    ranges.iter().map(|(a, b)| b - a + 1).sum()
}

fn listed(ranges: &Ranges) -> Vec<i64> {
    ranges
        .iter()
        .flat_map(|&(a, b)| a..=b)
        .take(LISTED)
        .collect()
}

/// The ranges without the numbers that arrived.
fn without(ranges: &Ranges, arrived: &BTreeSet<i64>) -> Ranges {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut from = a;
        for &n in arrived.range(a..=b) {
            if n > from {
                out.push((from, n - 1));
            }
            from = n + 1;
        }
        if from <= b {
            out.push((from, b));
        }
    }
    out
}

/// A gap's ranges from its detail: `missing_ranges`, or (for gaps recorded before ranges were kept) the listed
/// numbers.
fn ranges_of(detail: &Value) -> Option<Ranges> {
    if let Some(r) = detail.get("missing_ranges").and_then(Value::as_array) {
        return Some(
            r.iter()
                .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_i64()?)))
                .collect(),
        );
    }
    let listed = detail.get("missing").and_then(Value::as_array)?;
    Some(
        listed
            .iter()
            .filter_map(Value::as_i64)
            .map(|n| (n, n))
            .collect(),
    )
}

/// Works out gaps, reuse and fills from the registers' last numbers and the numbers already known.
/// `known` holds numbers used by events from earlier calls only (this call's own events are in `seen`).
pub fn analyse(
    seen: Vec<Seen>,
    last: &HashMap<Register, i64>,
    known: &HashMap<(Register, i64), String>,
) -> Findings {
    let mut f = Findings::default();
    let mut by_register: BTreeMap<Register, Vec<Seen>> = BTreeMap::new();
    for s in seen {
        let r = (s.source.clone(), s.location.clone(), s.register.clone());
        by_register.entry(r).or_default().push(s);
    }
    for (reg, mut list) in by_register {
        list.sort_by_key(|s| s.sequence);
        let mut top = last.get(&reg).copied();
        let mut here: HashMap<i64, String> = HashMap::new();
        for s in list {
            let used_by = known
                .get(&(reg.clone(), s.sequence))
                .or_else(|| here.get(&s.sequence));
            if let Some(other) = used_by {
                if *other != s.event_id {
                    f.reused
                        .push((reg.clone(), s.sequence, other.clone(), s.event_id.clone()));
                }
                continue;
            }
            here.insert(s.sequence, s.event_id.clone());
            match top {
                Some(t) if s.sequence > t + 1 => {
                    f.missing.push((
                        reg.clone(),
                        t + 1,
                        s.sequence - 1,
                        s.event_id.clone(),
                        s.business_date.clone(),
                    ));
                    top = Some(s.sequence);
                }
                Some(t) if s.sequence < t => {
                    f.filled.entry(reg.clone()).or_default().insert(s.sequence);
                }
                _ => top = Some(top.map_or(s.sequence, |t| t.max(s.sequence))),
            }
        }
        if let Some(t) = top {
            f.last.insert(reg, t);
        }
    }
    f
}

const LOCK_STATE: &str =
    "SELECT s.source, s.location_id, s.register, s.last_sequence FROM possync.register_state s \
     JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(src, loc, reg) \
       ON s.source = k.src AND s.location_id = k.loc AND s.register = k.reg \
     ORDER BY 1, 2, 3 FOR UPDATE OF s";

// the inbox itself says which event used a number (index event_by_register_sequence)
const KNOWN: &str = "SELECT coalesce(e.source, ''), e.location_id, e.register, e.sequence, e.event_id \
     FROM possync.event e JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(src, loc, reg, seq) \
       ON e.location_id = k.loc AND e.register = k.reg AND e.sequence = k.seq::bigint \
          AND coalesce(e.source, '') = k.src";

const UPSERT_STATE: &str = "INSERT INTO possync.register_state AS s (source, location_id, register, last_sequence) \
     SELECT src, loc, reg, seq::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(src, loc, reg, seq) \
     ON CONFLICT (source, location_id, register) DO UPDATE SET last_sequence = greatest(s.last_sequence, EXCLUDED.last_sequence)";

const RAISE: &str = "INSERT INTO possync.exception (event_id, kind, reason, location_id, amount, detail, source) \
     SELECT e, k, r, l, a::numeric, d::jsonb, nullif(s, '') \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         AS x(e, k, r, l, a, d, s)";

const OPEN_GAPS: &str = "SELECT exception_id, detail::text FROM possync.exception \
     WHERE kind = 'missing_transaction' AND status = 'open' AND location_id = $2 \
       AND coalesce(source, '') = $1 AND detail ->> 'register' = $3 ORDER BY exception_id FOR UPDATE";

const UPDATE_GAP: &str = "UPDATE possync.exception SET detail = $2::jsonb, amount = $3::numeric, \
        status = CASE WHEN $3::numeric = 0 THEN 'resolved' ELSE status END, \
        resolved_at = CASE WHEN $3::numeric = 0 THEN now() ELSE resolved_at END, \
        resolution = CASE WHEN $3::numeric = 0 THEN 'every missing transaction arrived late' ELSE resolution END \
     WHERE exception_id = $1";

/// Records the sequences of the events a call accepted and raises or resolves exceptions accordingly.
pub fn check(client: &mut SpiClient<'_>, seen: Vec<Seen>) {
    if seen.is_empty() {
        return;
    }
    let registers: BTreeSet<Register> = seen
        .iter()
        .map(|s| (s.source.clone(), s.location.clone(), s.register.clone()))
        .collect();
    let last: HashMap<Register, i64> = run(
        client,
        LOCK_STATE,
        &[
            texts(registers.iter().map(|r| r.0.clone())),
            texts(registers.iter().map(|r| r.1.clone())),
            texts(registers.iter().map(|r| r.2.clone())),
        ],
    )
    .map(|row| {
        let reg = (
            get_text(&row, 1).unwrap_or_default(),
            get_text(&row, 2).unwrap_or_default(),
            get_text(&row, 3).unwrap_or_default(),
        );
        (reg, get_i64(&row, 4).unwrap_or_default())
    })
    .collect();
    // only numbers at or below a register's last can have been seen before
    let candidates: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            last.get(&(s.source.clone(), s.location.clone(), s.register.clone()))
                .is_some_and(|l| s.sequence <= *l)
        })
        .collect();
    let in_call: std::collections::HashSet<&str> =
        seen.iter().map(|s| s.event_id.as_str()).collect();
    let known: HashMap<(Register, i64), String> = if candidates.is_empty() {
        HashMap::new()
    } else {
        run(
            client,
            KNOWN,
            &[
                texts(candidates.iter().map(|s| s.source.clone())),
                texts(candidates.iter().map(|s| s.location.clone())),
                texts(candidates.iter().map(|s| s.register.clone())),
                texts(candidates.iter().map(|s| s.sequence.to_string())),
            ],
        )
        .map(|row| {
            let reg = (
                get_text(&row, 1).unwrap_or_default(),
                get_text(&row, 2).unwrap_or_default(),
                get_text(&row, 3).unwrap_or_default(),
            );
            (
                (reg, get_i64(&row, 4).unwrap_or_default()),
                get_text(&row, 5).unwrap_or_default(),
            )
        })
        // the events of this call are already in the inbox; they are judged among themselves
        .filter(|(_, id)| !in_call.contains(id.as_str()))
        .collect()
    };
    let f = analyse(seen, &last, &known);
    write(client, &f);
}

fn write(client: &mut SpiClient<'_>, f: &Findings) {
    if !f.last.is_empty() {
        let l: Vec<(&Register, &i64)> = f.last.iter().collect();
        run(
            client,
            UPSERT_STATE,
            &[
                texts(l.iter().map(|(r, _)| r.0.clone())),
                texts(l.iter().map(|(r, _)| r.1.clone())),
                texts(l.iter().map(|(r, _)| r.2.clone())),
                texts(l.iter().map(|(_, s)| s.to_string())),
            ],
        );
    }
    // (event_id, kind, reason, location, amount, detail, source)
    let mut raised: Vec<[String; 7]> = Vec::new();
    for ((src, loc, reg), first, last, event_id, day) in &f.missing {
        let (first, last) = (*first, *last);
        let ranges: Ranges = vec![(first, last)];
        let span = if first == last {
            format!("{first}")
        } else {
            format!("{first} to {last}")
        };
        raised.push([
            event_id.clone(),
            "missing_transaction".into(),
            format!("register {reg} at {loc}: transaction {span} not received before {event_id}"),
            loc.clone(),
            count(&ranges).to_string(),
            json!({"source": src, "register": reg, "business_date": day,
                   "missing": listed(&ranges), "missing_ranges": ranges})
            .to_string(),
            src.clone(),
        ]);
    }
    for ((src, loc, reg), seq, first, second) in &f.reused {
        raised.push([
            second.clone(),
            "duplicate_sequence".into(),
            format!(
                "register {reg} at {loc}: sequence {seq} was used by {first} and again by {second}"
            ),
            loc.clone(),
            "1".into(),
            json!({"source": src, "register": reg, "sequence": seq, "first_event_id": first})
                .to_string(),
            src.clone(),
        ]);
    }
    if !raised.is_empty() {
        let col = |i: usize| texts(raised.iter().map(move |r| r[i].clone()));
        run(
            client,
            RAISE,
            &[col(0), col(1), col(2), col(3), col(4), col(5), col(6)],
        );
    }
    for ((src, loc, reg), arrived) in &f.filled {
        let open: Vec<(i64, String)> = run(client, OPEN_GAPS, &[text(src), text(loc), text(reg)])
            .map(|r| {
                (
                    get_i64(&r, 1).unwrap_or_default(),
                    get_text(&r, 2).unwrap_or_default(),
                )
            })
            .collect();
        for (id, detail) in open {
            let mut detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
            let Some(ranges) = ranges_of(&detail) else {
                continue;
            };
            let still = without(&ranges, arrived);
            let left = count(&still);
            if left == count(&ranges) {
                continue;
            }
            detail["missing"] = json!(listed(&still));
            detail["missing_ranges"] = json!(still);
            run(
                client,
                UPDATE_GAP,
                &[
                    DatumWithOid::from(id),
                    text(&detail.to_string()),
                    text(&left.to_string()),
                ],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: i64, id: &str) -> Seen {
        Seen {
            source: "pos".into(),
            location: "S1".into(),
            register: "1".into(),
            sequence: seq,
            event_id: id.into(),
            business_date: "2026-11-26".into(),
        }
    }

    fn reg() -> Register {
        ("pos".into(), "S1".into(), "1".into())
    }

    #[test]
    fn a_jump_names_the_missing_numbers_and_late_ones_fill_it() {
        let f = analyse(
            vec![seen(1, "a"), seen(2, "b"), seen(5, "e")],
            &HashMap::new(),
            &HashMap::new(),
        );
        assert_eq!(f.missing.len(), 1);
        assert_eq!((f.missing[0].1, f.missing[0].2), (3, 4));
        assert_eq!(f.last[&reg()], 5);
        let last = HashMap::from([(reg(), 5)]);
        let f = analyse(vec![seen(4, "d")], &last, &HashMap::new());
        assert!(f.missing.is_empty());
        assert_eq!(f.filled[&reg()], BTreeSet::from([4]));
    }

    #[test]
    fn out_of_order_within_one_call_is_no_gap() {
        let f = analyse(
            vec![seen(3, "c"), seen(2, "b")],
            &HashMap::from([(reg(), 1)]),
            &HashMap::new(),
        );
        assert!(f.missing.is_empty() && f.filled.is_empty());
        assert_eq!(f.last[&reg()], 3);
    }

    #[test]
    fn a_number_used_by_another_event_is_flagged() {
        let known = HashMap::from([((reg(), 7), "first".to_string())]);
        let f = analyse(
            vec![seen(7, "second"), seen(8, "x"), seen(8, "y")],
            &HashMap::from([(reg(), 7)]),
            &known,
        );
        assert_eq!(f.reused.len(), 2);
        assert_eq!(f.reused[0].2, "first");
        assert_eq!(f.reused[1].3, "y");
    }

    #[test]
    fn a_gap_of_any_size_is_counted_exactly_and_closes_only_when_all_arrived() {
        let gap: Ranges = vec![(2, 5001)];
        assert_eq!(count(&gap), 5000);
        assert_eq!(listed(&gap).len(), LISTED);
        let first_thousand: BTreeSet<i64> = (2..1002).collect();
        let left = without(&gap, &first_thousand);
        assert_eq!(left, vec![(1002, 5001)]);
        assert_eq!(count(&left), 4000);
        let some: BTreeSet<i64> = [1002, 1500, 5001].into();
        assert_eq!(without(&left, &some), vec![(1003, 1499), (1501, 5000)]);
        let all: BTreeSet<i64> = (1002..=5001).collect();
        assert_eq!(count(&without(&left, &all)), 0);
        // gaps recorded before ranges were kept
        assert_eq!(
            ranges_of(&json!({"missing": [3, 4, 9]})),
            Some(vec![(3, 3), (4, 4), (9, 9)])
        );
    }
}
