//! Strict parsing of event JSON into [`Event`], with reasons a person can act on.

use std::fmt;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::{DayTotals, Event, EventKind, Line, Tender};

/// Why a payload is not a well-formed event. `field` is a path such as `lines[1].qty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for Malformed {}

/// The kind the bridge gives a POS row it could not map, so that the row is kept as a rejected event.
pub const UNMAPPED: &str = "unmapped";

/// The domain of the event contract: what a well-formed event may hold. Anything outside it is rejected (and
/// kept) with a reason naming the field, so that no value inside it can overflow the posting arithmetic, lose a
/// digit in a sum, unbalance a journal or fail a database write.
pub mod domain {
    /// Characters in an id or code (event_id, location, sku, register, tender type, ...): short enough for any
    /// index entry.
    pub const ID_MAX_CHARS: usize = 200;
    /// Characters in free text (an adjustment's reason).
    pub const TEXT_MAX_CHARS: usize = 1000;
    /// Decimal places of any number.
    pub const MAX_DECIMALS: u32 = 6;
    /// Quantities (qty, counted_qty) and unit prices and costs are below this in magnitude, so that
    /// qty × price is exact (28 significant digits).
    pub const QTY_PRICE_LIMIT: i64 = 100_000_000;
    /// Amounts (discount, tax, tender amount, day totals) are below this in magnitude.
    pub const AMOUNT_LIMIT: i64 = 1_000_000_000_000;
    /// Whole numbers (sequence, transaction_count, last_sequence, line) lie in 0 ..= this (2^53 − 1, exact in
    /// every JSON reader).
    pub const WHOLE_MAX: i64 = 9_007_199_254_740_991;
    /// Nesting of objects and arrays in one event.
    pub const MAX_DEPTH: usize = 16;
    /// Years of dates and timestamps.
    pub const YEARS: std::ops::RangeInclusive<u32> = 1..=9999;
    /// Hours of a timestamp's UTC offset (PostgreSQL's limit).
    pub const MAX_OFFSET_HOURS: u32 = 15;
}

/// How deep objects and arrays nest in a value (a scalar is 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Malformed {
    Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A short rendering of a JSON value for messages (long strings are cut).
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(37).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// "a number", "an array", ...: what a JSON value is, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn text(&self, key: &str) -> Result<Option<String>, Malformed> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(bad(
                self.at(key),
                "is empty; give a value or leave the field out",
            )),
            Some(Value::String(s)) => self.within_text_domain(key, s).map(|()| Some(s.clone())),
            // ids written as numbers by some POS systems are accepted as their decimal text
            Some(Value::Number(n)) => {
                let s = n.to_string();
                self.within_text_domain(key, &s).map(|()| Some(s))
            }
            Some(v) => Err(bad(
                self.at(key),
                format!("expected text, got {} {}", type_name(v), show(v)),
            )),
        }
    }

    fn within_text_domain(&self, key: &str, s: &str) -> Result<(), Malformed> {
        let max = if key == "reason" {
            domain::TEXT_MAX_CHARS
        } else {
            domain::ID_MAX_CHARS
        };
        let n = s.chars().count();
        if n > max {
            return Err(bad(
                self.at(key),
                format!("is {n} characters long; at most {max} are allowed"),
            ));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(bad(
                self.at(key),
                format!("contains the control character U+{:04X}", c as u32),
            ));
        }
        Ok(())
    }

    fn required_text(&self, key: &str) -> Result<String, Malformed> {
        self.text(key)?
            .ok_or_else(|| bad(self.at(key), "is required"))
    }

    /// The text of a number field (a JSON number or a string), or Err naming what it is instead.
    fn number_text(&self, key: &str, v: &Value, what: &str) -> Result<String, Malformed> {
        match v {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(
                self.at(key),
                format!("expected {what}, got {} {}", type_name(other), show(other)),
            )),
        }
    }

    fn decimal(&self, key: &str) -> Result<Option<Decimal>, Malformed> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let text = self.number_text(key, v, "a number")?;
        let parsed = parse_decimal(&text).ok_or_else(|| {
            let numeric = text
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'));
            if numeric && text.bytes().any(|c| c.is_ascii_digit()) {
                bad(
                    self.at(key),
                    format!("{text} has more than 28 significant digits or is too large"),
                )
            } else {
                bad(self.at(key), format!("{} is not a number", show(v)))
            }
        })?;
        self.within_number_domain(key, parsed).map(Some)
    }

    fn within_number_domain(&self, key: &str, d: Decimal) -> Result<Decimal, Malformed> {
        if d.scale() > domain::MAX_DECIMALS {
            return Err(bad(
                self.at(key),
                format!(
                    "{d} has {} decimal places; at most {} are allowed",
                    d.scale(),
                    domain::MAX_DECIMALS
                ),
            ));
        }
        let limit = match key {
            "qty" | "counted_qty" | "unit_price" | "unit_cost" => domain::QTY_PRICE_LIMIT,
            _ => domain::AMOUNT_LIMIT,
        };
        if d.abs() >= Decimal::from(limit) {
            return Err(bad(
                self.at(key),
                format!("{d} is too large; it must be below {limit} in magnitude"),
            ));
        }
        Ok(d)
    }

    fn required_decimal(&self, key: &str) -> Result<Decimal, Malformed> {
        self.decimal(key)?
            .ok_or_else(|| bad(self.at(key), "is required"))
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, Malformed> {
        let whole = match self.get(key) {
            None => None,
            Some(v) => {
                let text = self.number_text(key, v, "a whole number")?;
                Some(parse_decimal(&text).ok_or_else(|| {
                    bad(self.at(key), format!("{} is not a whole number", show(v)))
                })?)
            }
        };
        match whole {
            None => Ok(None),
            Some(d) if d.fract().is_zero() => match i64::try_from(d) {
                Ok(n) if (0..=domain::WHOLE_MAX).contains(&n) => Ok(Some(n)),
                _ => Err(bad(
                    self.at(key),
                    format!("{d} is out of range 0 to {}", domain::WHOLE_MAX),
                )),
            },
            Some(d) => Err(bad(
                self.at(key),
                format!("expected a whole number, got {d}"),
            )),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, Malformed> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "t" => Ok(true),
            Some(Value::String(s)) if s == "false" || s == "f" => Ok(false),
            Some(v) => Err(bad(
                self.at(key),
                format!("expected true or false, got {}", show(v)),
            )),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, Malformed> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(bad(
                self.at(key),
                format!("expected an array, got {} {}", type_name(v), show(v)),
            )),
        }
    }
}

/// Exact decimal from text: plain (`19.99`) or scientific (`1.5e2`) notation.
pub(crate) fn parse_decimal(text: &str) -> Option<Decimal> {
    if !numeric_syntax(text) {
        return None;
    }
    Decimal::from_str_exact(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
        .map(|d| d.normalize())
}

/// `[+-]digits[.digits][e[+-]digits]` (or `.digits`): what both JSON and PostgreSQL's numeric read the same
/// way. No spaces, underscores, `NaN` or `Infinity`.
fn numeric_syntax(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let whole = digits(&mut i);
    let mut frac = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        frac = digits(&mut i);
    }
    if whole + frac == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn object<'a>(v: &'a Value, path: &str) -> Result<Fields<'a>, Malformed> {
    match v {
        Value::Object(obj) => Ok(Fields {
            obj,
            path: path.to_string(),
        }),
        other => Err(bad(
            path,
            format!(
                "expected a JSON object, got {} {}",
                type_name(other),
                show(other)
            ),
        )),
    }
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    domain::YEARS.contains(&y) && (1..=days).contains(&d)
}

/// RFC 3339 (`2026-11-26T14:03:07.120Z`, a space instead of `T`, offsets `+01:00`/`+0100`/`+01`).
fn valid_timestamp(s: &str) -> bool {
    if s.len() < 19 || !s.is_char_boundary(10) || !valid_date(&s[..10]) {
        return false;
    }
    let rest = &s[10..];
    let Some(rest) = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' ')) else {
        return false;
    };
    let b = rest.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let two = |i: usize| {
        rest.get(i..i + 2)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    match (two(0), two(3), two(6)) {
        (Some(h), Some(m), Some(sec)) if h < 24 && m < 60 && sec <= 60 => {}
        _ => return false,
    }
    let mut tail = &rest[8..];
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        tail = &frac[digits..];
    }
    match tail {
        "" | "Z" | "z" => true,
        t if t.starts_with('+') || t.starts_with('-') => {
            let o = t[1..].replace(':', "");
            if !((o.len() == 2 || o.len() == 4) && o.bytes().all(|c| c.is_ascii_digit())) {
                return false;
            }
            let hours = o[..2].parse::<u32>().unwrap_or(u32::MAX);
            let minutes = o.get(2..).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
            hours <= domain::MAX_OFFSET_HOURS && minutes < 60
        }
        _ => false,
    }
}

fn tenders_of(f: &Fields<'_>) -> Result<Vec<Tender>, Malformed> {
    let Some(items) = f.array("tenders")? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| tender(v, i))
        .collect()
}

fn line_of(v: &Value, i: usize, kind: EventKind) -> Result<Line, Malformed> {
    let f = object(v, &format!("lines[{i}]"))?;
    let mut line = Line {
        line: f.integer("line")?,
        sku: f.required_text("sku")?,
        ..Line::default()
    };
    match kind {
        EventKind::Sale | EventKind::Return | EventKind::Exchange | EventKind::Fulfillment => {
            line.qty = f.required_decimal("qty")?;
            line.unit_price = f.required_decimal("unit_price")?;
            line.discount = f.decimal("discount")?.unwrap_or_default();
            line.tax = f.decimal("tax")?.unwrap_or_default();
            line.tax_code = f.text("tax_code")?;
            line.returned = f.boolean("returned")? || kind == EventKind::Return;
            line.reservation_id = f.text("reservation_id")?;
            line.original_event_id = f.text("original_event_id")?;
            line.promotion = f.text("promotion")?;
            if line.qty <= Decimal::ZERO {
                let hint = if kind == EventKind::Return {
                    "give the returned quantity as a positive number"
                } else {
                    "a sold line needs a positive quantity; send goods coming back as a return or an exchange line with \"returned\": true"
                };
                return Err(bad(f.at("qty"), format!("is {}; {hint}", line.qty)));
            }
            if line.unit_price < Decimal::ZERO {
                return Err(bad(
                    f.at("unit_price"),
                    format!("is {}; prices cannot be negative", line.unit_price),
                ));
            }
        }
        EventKind::Receipt => {
            line.qty = positive(&f, "qty")?;
            let cost = f.required_decimal("unit_cost")?;
            if cost < Decimal::ZERO {
                return Err(bad(
                    f.at("unit_cost"),
                    format!("is {cost}; a cost cannot be negative"),
                ));
            }
            line.unit_cost = Some(cost);
            line.supply_id = f.text("supply_id")?;
        }
        EventKind::TransferOut | EventKind::TransferIn => {
            line.qty = positive(&f, "qty")?;
        }
        EventKind::Adjustment => {
            line.qty = f.required_decimal("qty")?;
            if line.qty.is_zero() {
                return Err(bad(f.at("qty"), "is 0; an adjustment line must move stock"));
            }
            line.unit_cost = f.decimal("unit_cost")?;
        }
        EventKind::Count => {
            let counted = f.required_decimal("counted_qty")?;
            if counted < Decimal::ZERO {
                return Err(bad(
                    f.at("counted_qty"),
                    format!("is {counted}; a count cannot be negative"),
                ));
            }
            line.counted_qty = Some(counted);
        }
        // neither reads lines: event() returns before them
        EventKind::DayClose | EventKind::Void => {}
    }
    Ok(line)
}

fn positive(f: &Fields<'_>, key: &str) -> Result<Decimal, Malformed> {
    let q = f.required_decimal(key)?;
    if q <= Decimal::ZERO {
        return Err(bad(f.at(key), format!("is {q}; it must be positive")));
    }
    Ok(q)
}

fn totals_of(f: &Fields<'_>) -> Result<DayTotals, Malformed> {
    let Some(v) = f.get("totals") else {
        return Err(bad("totals", "is required for a day_close"));
    };
    let t = object(v, "totals")?;
    let tenders = match t.get("tenders") {
        None => Vec::new(),
        Some(Value::Object(m)) => {
            let tf = Fields {
                obj: m,
                path: "totals.tenders".into(),
            };
            m.keys()
                .map(|k| {
                    Ok(Tender {
                        tender_type: k.clone(),
                        amount: tf.required_decimal(k)?,
                    })
                })
                .collect::<Result<_, Malformed>>()?
        }
        Some(v) => {
            return Err(bad(
                "totals.tenders",
                format!(
                    "expected an object of tender type to amount, got {}",
                    show(v)
                ),
            ))
        }
    };
    Ok(DayTotals {
        net_sales: t.required_decimal("net_sales")?,
        tax: t.decimal("tax")?.unwrap_or_default(),
        tenders,
        transaction_count: t.integer("transaction_count")?.unwrap_or_default(),
        last_sequence: t.integer("last_sequence")?.unwrap_or_default(),
    })
}

/// An event's header: every field but its lines and tenders (a day close's totals included), validated as
/// [`event`] validates them. A day close or a void is complete here.
pub(crate) fn header(value: &Value) -> Result<Event, Malformed> {
    let f = object(value, "")?;
    let d = depth(value);
    if d > domain::MAX_DEPTH {
        return Err(bad(
            "",
            format!(
                "the event nests objects and arrays {d} levels deep; at most {} are allowed",
                domain::MAX_DEPTH
            ),
        ));
    }
    let event_id = f.required_text("event_id")?;
    let kind_text = f.required_text("kind")?;
    if kind_text == UNMAPPED {
        // a row the bridge kept because its mapping could not make an event of it: say why, in its words
        let why = f
            .text("reason")?
            .unwrap_or_else(|| "no reason given".into());
        return Err(bad(
            "",
            format!("the bridge could not map this POS row: {why}"),
        ));
    }
    let kind = EventKind::parse(&kind_text).ok_or_else(|| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        bad(
            "kind",
            format!(
                "\"{kind_text}\" is not an event kind (one of {})",
                known.join(", ")
            ),
        )
    })?;
    let location = f.required_text("location")?;
    let business_date = f.required_text("business_date")?;
    if !valid_date(&business_date) {
        return Err(bad(
            "business_date",
            format!("\"{business_date}\" is not a date in the form YYYY-MM-DD"),
        ));
    }
    let occurred_at = f.text("occurred_at")?;
    if let Some(ts) = &occurred_at {
        if !valid_timestamp(ts) {
            return Err(bad(
                "occurred_at",
                format!("\"{ts}\" is not an RFC 3339 timestamp such as 2026-11-26T14:03:07Z"),
            ));
        }
    }
    let mut ev = Event {
        event_id,
        kind,
        source: f.text("source")?,
        location,
        register: f.text("register")?,
        sequence: f.integer("sequence")?,
        business_date,
        occurred_at,
        currency: f.text("currency")?,
        order_id: f.text("order_id")?,
        transfer_id: f.text("transfer_id")?,
        to_location: f.text("to_location")?,
        from_location: f.text("from_location")?,
        reason: f.text("reason")?,
        supply_id: f.text("supply_id")?,
        original_event_id: f.text("original_event_id")?,
        ..Event::default()
    };
    if kind == EventKind::DayClose {
        if ev.register.is_none() {
            return Err(bad("register", "is required for a day_close"));
        }
        ev.totals = Some(totals_of(&f)?);
        return Ok(ev);
    }
    if kind == EventKind::Void {
        // a cancelled till transaction: only its place in the register's sequence matters; lines or tenders
        // it may carry stay in the kept payload and post nothing
        if ev.register.is_none() {
            return Err(bad("register", "is required for a void"));
        }
        if ev.sequence.is_none() {
            return Err(bad(
                "sequence",
                "is required for a void (the register sequence number it used up)",
            ));
        }
        return Ok(ev);
    }
    Ok(ev)
}

pub(crate) fn event(value: &Value) -> Result<Event, Malformed> {
    let mut ev = header(value)?;
    let kind = ev.kind;
    if matches!(kind, EventKind::DayClose | EventKind::Void) {
        return Ok(ev);
    }
    let f = object(value, "")?;
    let lines = f
        .array("lines")?
        .ok_or_else(|| bad("lines", format!("is required for a {kind}")))?;
    if lines.is_empty() {
        return Err(bad(
            "lines",
            format!("is empty; a {kind} needs at least one line"),
        ));
    }
    ev.lines = lines
        .iter()
        .enumerate()
        .map(|(i, v)| line_of(v, i, kind))
        .collect::<Result<_, _>>()?;
    if kind.has_tenders() {
        if f.get("tenders").is_none() {
            return Err(bad(
                "tenders",
                format!("is required for a {kind} (an empty array if nothing was paid)"),
            ));
        }
        ev.tenders = tenders_of(&f)?;
    }
    match kind {
        EventKind::Fulfillment if ev.order_id.is_none() => {
            return Err(bad("order_id", "is required for a fulfillment"))
        }
        EventKind::TransferOut | EventKind::TransferIn if ev.transfer_id.is_none() => {
            return Err(bad("transfer_id", format!("is required for a {kind}")))
        }
        EventKind::TransferOut if ev.to_location.is_none() => {
            return Err(bad("to_location", "is required for a transfer_out"))
        }
        EventKind::TransferIn if ev.from_location.is_none() => {
            return Err(bad("from_location", "is required for a transfer_in"))
        }
        EventKind::Adjustment if ev.reason.is_none() => {
            return Err(bad("reason", "is required for an adjustment"))
        }
        _ => {}
    }
    let (orig, supply) = (ev.original_event_id.take(), ev.supply_id.take());
    for l in ev.lines.iter_mut() {
        inherit(kind, orig.as_deref(), supply.as_deref(), l);
    }
    ev.original_event_id = orig;
    ev.supply_id = supply;
    Ok(ev)
}

/// What a line takes from its event's header: the original sale of a returned line (a line's own id wins), and
/// a receipt's supply.
fn inherit(kind: EventKind, original: Option<&str>, supply: Option<&str>, l: &mut Line) {
    if matches!(kind, EventKind::Return | EventKind::Exchange) && l.returned {
        if let Some(orig) = original {
            l.original_event_id.get_or_insert_with(|| orig.to_string());
        }
    }
    if kind == EventKind::Receipt {
        if let Some(supply) = supply {
            l.supply_id.get_or_insert_with(|| supply.to_string());
        }
    }
}

/// One line of an event with this header, parsed and completed as in a whole event (`i`: its index, for the
/// field named in an error).
pub(crate) fn line(header: &Event, v: &Value, i: usize) -> Result<Line, Malformed> {
    let mut l = line_of(v, i, header.kind)?;
    inherit(
        header.kind,
        header.original_event_id.as_deref(),
        header.supply_id.as_deref(),
        &mut l,
    );
    Ok(l)
}

/// One tender (`i`: its index).
pub(crate) fn tender(v: &Value, i: usize) -> Result<Tender, Malformed> {
    let t = object(v, &format!("tenders[{i}]"))?;
    Ok(Tender {
        tender_type: t.required_text("type")?,
        amount: t.required_decimal("amount")?,
    })
}
