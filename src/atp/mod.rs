//! Available-to-Promise and reservations: one answer for the web shop, the ERP and the call centre, current to
//! the last posted POS event, and holds that can never oversell.
//!
//! atp = on_hand − active reservations − safety stock + open supply expected by `at`. Reservations are counted
//! on `stock_balance.reserved` (kept by reserve, release, fulfillment and expire_reservations) less any that
//! have passed their expiry but were not yet expired, so an expired hold never blocks a sale.

use std::collections::BTreeSet;
use std::str::FromStr;

use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{AnyNumeric, JsonB};
use rust_decimal::Decimal;
use serde_json::json;

mod probe;

use crate::errors::{misuse, null_argument};
use crate::statements::{get_bool, get_decimal, get_text, internal, read, run, text};
use crate::stock::Balances;

/// The parts of ATP at one location.
#[derive(Debug, Clone, PartialEq)]
pub struct AtpParts {
    pub location: String,
    pub active: bool,
    pub on_hand: Decimal,
    pub reserved: Decimal,
    pub safety_stock: Decimal,
    pub incoming: Decimal,
}

impl AtpParts {
    pub fn atp(&self) -> Decimal {
        self.on_hand - self.reserved - self.safety_stock + self.incoming
    }
}

const ONE: &str = "SELECT EXISTS (SELECT 1 FROM possync.item WHERE sku = $1), \
        EXISTS (SELECT 1 FROM possync.location WHERE location_id = $2), \
        coalesce((SELECT active FROM possync.location WHERE location_id = $2), false), \
        coalesce(b.on_hand, 0)::text, \
        (coalesce(b.reserved, 0) - coalesce((SELECT sum(r.qty) FROM possync.reservation r \
            WHERE r.sku = $1 AND r.location_id = $2 AND r.status = 'active' AND r.expires_at <= now()), 0))::text, \
        coalesce((SELECT s.qty FROM possync.safety_stock s WHERE s.sku = $1 AND s.location_id = $2), 0)::text, \
        coalesce((SELECT sum(p.qty_open) FROM possync.supply p \
            WHERE p.sku = $1 AND p.location_id = $2 AND p.qty_open > 0 AND p.expected_at <= $3), 0)::text \
     FROM (SELECT 1) one LEFT JOIN possync.stock_balance b ON b.sku = $1 AND b.location_id = $2";

const NETWORK: &str = "WITH k AS ( \
        SELECT location_id FROM possync.stock_balance WHERE sku = $1 \
        UNION SELECT location_id FROM possync.safety_stock WHERE sku = $1 \
        UNION SELECT location_id FROM possync.supply WHERE sku = $1 AND qty_open > 0 AND expected_at <= $2) \
     SELECT k.location_id, l.active, coalesce(b.on_hand, 0)::text, \
        (coalesce(b.reserved, 0) - coalesce((SELECT sum(r.qty) FROM possync.reservation r \
            WHERE r.sku = $1 AND r.location_id = k.location_id AND r.status = 'active' AND r.expires_at <= now()), 0))::text, \
        coalesce((SELECT s.qty FROM possync.safety_stock s WHERE s.sku = $1 AND s.location_id = k.location_id), 0)::text, \
        coalesce((SELECT sum(p.qty_open) FROM possync.supply p \
            WHERE p.sku = $1 AND p.location_id = k.location_id AND p.qty_open > 0 AND p.expected_at <= $2), 0)::text \
     FROM k JOIN possync.location l USING (location_id) \
     LEFT JOIN possync.stock_balance b ON b.sku = $1 AND b.location_id = k.location_id \
     ORDER BY k.location_id";

const SKU_KNOWN: &str = "SELECT EXISTS (SELECT 1 FROM possync.item WHERE sku = $1)";

fn unknown(function: &str, argument: &str, value: &str, table: &str) -> ! {
    misuse(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{function}: argument {argument} {value:?} is not in possync.{table}"),
        format!("add it to possync.{table} first, or check the spelling"),
    )
}

/// ATP parts at one location, or at every location that has stock, safety stock or supply for the sku.
fn parts(
    client: &mut SpiClient<'_>,
    function: &str,
    sku: &str,
    location: Option<&str>,
    at: TimestampWithTimeZone,
) -> Vec<AtpParts> {
    match location {
        Some(loc) => {
            let args = [text(sku), text(loc), DatumWithOid::from(at)];
            let Some(row) = read(client, ONE, &args).next() else {
                internal("the ATP query returned no row")
            };
            if !get_bool(&row, 1).unwrap_or(false) {
                unknown(function, "sku", sku, "item");
            }
            if !get_bool(&row, 2).unwrap_or(false) {
                unknown(function, "location", loc, "location");
            }
            vec![AtpParts {
                location: loc.to_string(),
                active: get_bool(&row, 3).unwrap_or(false),
                on_hand: get_decimal(&row, 4).unwrap_or_default(),
                reserved: get_decimal(&row, 5).unwrap_or_default(),
                safety_stock: get_decimal(&row, 6).unwrap_or_default(),
                incoming: get_decimal(&row, 7).unwrap_or_default(),
            }]
        }
        None => {
            let known = read(client, SKU_KNOWN, &[text(sku)])
                .next()
                .and_then(|r| get_bool(&r, 1))
                .unwrap_or(false);
            if !known {
                unknown(function, "sku", sku, "item");
            }
            read(client, NETWORK, &[text(sku), DatumWithOid::from(at)])
                .map(|row| AtpParts {
                    location: get_text(&row, 1).unwrap_or_default(),
                    active: get_bool(&row, 2).unwrap_or(false),
                    on_hand: get_decimal(&row, 3).unwrap_or_default(),
                    reserved: get_decimal(&row, 4).unwrap_or_default(),
                    safety_stock: get_decimal(&row, 5).unwrap_or_default(),
                    incoming: get_decimal(&row, 6).unwrap_or_default(),
                })
                .filter(|p| p.active)
                .collect()
        }
    }
}

/// Network ATP: each active location's ATP clipped at zero, summed.
pub fn network_atp(parts: &[AtpParts]) -> Decimal {
    parts
        .iter()
        .filter(|p| p.active)
        .map(|p| p.atp().max(Decimal::ZERO))
        .sum()
}

fn numeric(d: Decimal) -> AnyNumeric {
    AnyNumeric::from_str(&d.to_string())
        .unwrap_or_else(|_| internal(&format!("{d} is not a numeric")))
}

/// `at`, or now() (the transaction's start), read without a query.
fn now_or(at: Option<TimestampWithTimeZone>) -> TimestampWithTimeZone {
    at.unwrap_or_else(|| {
        // SAFETY: reads the current transaction's start timestamp, which every transaction has
        let start = unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() };
        TimestampWithTimeZone::try_from(start).unwrap_or_else(|_| internal("now() is out of range"))
    })
}

/// Available-to-promise: on_hand − active reservations − safety stock + open supply due by `at`; with no
/// location, the network (each active location's ATP clipped at zero, summed). The questions a web shop asks,
/// one location with a balance row and the network of a known sku, are read straight from the indexes
/// (`probe`); everything else, and every misuse, goes through `atp_checked`.
#[pg_extern(stable, parallel_safe)]
fn atp(
    sku: Option<&str>,
    location: default!(Option<&str>, "NULL"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> AnyNumeric {
    if let (Some(s), Some(when)) = (sku, at) {
        let when = pgrx::pg_sys::Datum::from(i64::from(when));
        let answer = match location {
            Some(l) => probe::at_location(s, l, when),
            None => probe::network(s, when),
        };
        if let Some(value) = answer {
            return value;
        }
    }
    atp_checked(sku, location, at)
}

/// Available-to-promise with every check, through SQL: the network figure, and a location without a balance
/// row (an unknown sku or location raises an error naming it).
#[pg_extern(stable, parallel_safe)]
fn atp_checked(
    sku: Option<&str>,
    location: default!(Option<&str>, "NULL"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> AnyNumeric {
    let f = "possync.atp";
    let Some(sku) = sku else {
        null_argument(f, "sku")
    };
    let at = now_or(at);
    let parts = Spi::connect_mut(|client| parts(client, f, sku, location, at));
    let value = match location {
        Some(_) => parts.first().map(AtpParts::atp).unwrap_or_default(),
        None => network_atp(&parts),
    };
    numeric(value)
}

/// The parts of the ATP number per location: on hand, reserved, safety stock, incoming, atp.
#[pg_extern(stable, parallel_safe)]
fn atp_detail(
    sku: Option<&str>,
    location: default!(Option<&str>, "NULL"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> TableIterator<
    'static,
    (
        name!(location, String),
        name!(on_hand, AnyNumeric),
        name!(reserved, AnyNumeric),
        name!(safety_stock, AnyNumeric),
        name!(incoming, AnyNumeric),
        name!(atp, AnyNumeric),
    ),
> {
    let f = "possync.atp_detail";
    let Some(sku) = sku else {
        null_argument(f, "sku")
    };
    let at = now_or(at);
    let parts = Spi::connect_mut(|client| parts(client, f, sku, location, at));
    TableIterator::new(parts.into_iter().map(|p| {
        let atp = p.atp();
        (
            p.location,
            numeric(p.on_hand),
            numeric(p.reserved),
            numeric(p.safety_stock),
            numeric(p.incoming),
            numeric(atp),
        )
    }))
}

const EXISTING: &str =
    "SELECT sku, location_id, qty::text, status FROM possync.reservation WHERE reservation_id = $1";
const INSERT_RESERVATION: &str =
    "INSERT INTO possync.reservation (reservation_id, sku, location_id, qty, status, expires_at) \
     VALUES ($1, $2, $3, $4::numeric, $5, $6) ON CONFLICT (reservation_id) DO NOTHING RETURNING 1";
const LOCK_ACTIVE: &str =
    "SELECT status = 'active' FROM possync.reservation WHERE reservation_id = $1 FOR UPDATE";
const CLOSE: &str =
    "UPDATE possync.reservation SET status = $2, closed_at = now() WHERE reservation_id = $1";

struct Existing {
    sku: String,
    location: String,
    qty: Decimal,
    status: String,
}

fn existing(client: &mut SpiClient<'_>, reservation_id: &str) -> Option<Existing> {
    run(client, EXISTING, &[text(reservation_id)])
        .next()
        .map(|r| Existing {
            sku: get_text(&r, 1).unwrap_or_default(),
            location: get_text(&r, 2).unwrap_or_default(),
            qty: get_decimal(&r, 3).unwrap_or_default(),
            status: get_text(&r, 4).unwrap_or_default(),
        })
}

/// The answer reserve gives for a reservation that already exists.
fn answer(client: &mut SpiClient<'_>, id: &str, e: &Existing) -> serde_json::Value {
    let status = if e.status == "insufficient" {
        "insufficient"
    } else {
        "reserved"
    };
    let atp = atp_at(client, &e.sku, &e.location);
    json!({"reservation_id": id, "status": status, "atp": atp.to_string(), "reservation_status": e.status})
}

fn atp_at(client: &mut SpiClient<'_>, sku: &str, location: &str) -> Decimal {
    let now = now_or(None);
    parts(client, "possync.reserve", sku, Some(location), now)
        .first()
        .map(AtpParts::atp)
        .unwrap_or_default()
}

/// Holds `qty` of a sku at a location if ATP allows, atomically; idempotent by reservation_id.
#[pg_extern]
fn reserve(
    reservation_id: Option<&str>,
    sku: Option<&str>,
    location: Option<&str>,
    qty: Option<AnyNumeric>,
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> JsonB {
    let f = "possync.reserve";
    let Some(id) = reservation_id else {
        null_argument(f, "reservation_id")
    };
    let Some(sku) = sku else {
        null_argument(f, "sku")
    };
    let Some(location) = location else {
        null_argument(f, "location")
    };
    let Some(qty) = qty else {
        null_argument(f, "qty")
    };
    let qty = Decimal::from_str(&qty.to_string()).unwrap_or_else(|_| {
        misuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("{f}: argument qty {qty} is out of range"),
            "reserve a quantity with at most 28 significant digits",
        )
    });
    if qty <= Decimal::ZERO {
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{f}: argument qty must be positive, got {qty}"),
            "to give stock back, call possync.release(reservation_id)",
        );
    }
    let result = Spi::connect_mut(|client| {
        if let Some(e) = existing(client, id) {
            if e.sku != sku || e.location != location || e.qty != qty {
                misuse(
                    PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
                    format!(
                        "{f}: argument reservation_id {id:?} already holds {} of {} at {}",
                        e.qty, e.sku, e.location
                    ),
                    "use a new reservation_id for a different hold",
                );
            }
            return answer(client, id, &e);
        }
        // validates sku and location, and is the answer when nothing can be locked yet
        atp_at(client, sku, location);
        let key = (sku.to_string(), location.to_string());
        let mut balances = Balances::lock(client, &BTreeSet::from([key.clone()]));
        // with the balance row locked, nobody else can change what is available here
        let available = atp_at(client, sku, location);
        let status = if available >= qty {
            "active"
        } else {
            "insufficient"
        };
        let inserted = run(
            client,
            INSERT_RESERVATION,
            &[
                text(id),
                text(sku),
                text(location),
                text(&qty.to_string()),
                text(status),
                DatumWithOid::from(expires_at),
            ],
        )
        .next()
        .is_some();
        if !inserted {
            // the same id was reserved concurrently and committed first: give its answer
            let Some(e) = existing(client, id) else {
                internal("reservation vanished after a conflicting insert")
            };
            return answer(client, id, &e);
        }
        if status == "active" {
            balances.adjust_reserved(&key, qty);
            balances.write(client);
            json!({"reservation_id": id, "status": "reserved", "atp": (available - qty).to_string()})
        } else {
            json!({"reservation_id": id, "status": "insufficient", "atp": available.to_string()})
        }
    });
    JsonB(result)
}

/// Frees a reservation; says so when it is unknown or no longer active.
#[pg_extern]
fn release(reservation_id: Option<&str>) -> JsonB {
    let f = "possync.release";
    let Some(id) = reservation_id else {
        null_argument(f, "reservation_id")
    };
    let result = Spi::connect_mut(|client| {
        let Some(e) = existing(client, id) else {
            return json!({"reservation_id": id, "status": "unknown"});
        };
        if e.status != "active" {
            return json!({"reservation_id": id, "status": format!("already_{}", e.status)});
        }
        let key = (e.sku.clone(), e.location.clone());
        let mut balances = Balances::lock(client, &BTreeSet::from([key.clone()]));
        let still_active = run(client, LOCK_ACTIVE, &[text(id)])
            .next()
            .and_then(|r| get_bool(&r, 1))
            .unwrap_or(false);
        if !still_active {
            return json!({"reservation_id": id, "status": "already_released"});
        }
        run(client, CLOSE, &[text(id), text("released")]);
        balances.adjust_reserved(&key, -e.qty);
        balances.write(client);
        let atp = atp_at(client, &e.sku, &e.location);
        json!({"reservation_id": id, "status": "released", "atp": atp.to_string()})
    });
    JsonB(result)
}

const EXPIRED: &str =
    "SELECT reservation_id, sku, location_id, qty::text FROM possync.reservation \
     WHERE status = 'active' AND expires_at <= now() ORDER BY sku, location_id, reservation_id";
const EXPIRE_ONE: &str = "UPDATE possync.reservation SET status = 'expired', closed_at = now() \
     WHERE reservation_id = $1 AND status = 'active' RETURNING 1";

/// Frees every reservation past its expiry; returns how many.
#[pg_extern]
fn expire_reservations() -> i32 {
    Spi::connect_mut(|client| {
        let due: Vec<(String, (String, String), Decimal)> = run(client, EXPIRED, &[])
            .map(|r| {
                (
                    get_text(&r, 1).unwrap_or_default(),
                    (
                        get_text(&r, 2).unwrap_or_default(),
                        get_text(&r, 3).unwrap_or_default(),
                    ),
                    get_decimal(&r, 4).unwrap_or_default(),
                )
            })
            .collect();
        if due.is_empty() {
            return 0;
        }
        let keys: BTreeSet<(String, String)> = due.iter().map(|d| d.1.clone()).collect();
        let mut balances = Balances::lock(client, &keys);
        let mut n = 0;
        for (id, key, qty) in &due {
            // a concurrent release or fulfillment may have closed it meanwhile
            if run(client, EXPIRE_ONE, &[text(id)]).next().is_some() {
                balances.adjust_reserved(key, -*qty);
                n += 1;
            }
        }
        balances.write(client);
        n
    })
}
