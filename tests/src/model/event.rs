//! The model's own reading of the event contract (DESIGN.md, "The event contract"): just what the posting rules
//! need, and the checks that make an event malformed. It does not share code with the extension or the
//! `possync-events` crate, so that a misreading there cannot hide here.

use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// The event kinds of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Sale,
    Return,
    Exchange,
    Fulfillment,
    Receipt,
    TransferOut,
    TransferIn,
    Adjustment,
    Count,
    DayClose,
    /// A cancelled till transaction that used up a register sequence number (DESIGN.md, "Clarified rules").
    Void,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "sale" => Kind::Sale,
            "return" => Kind::Return,
            "exchange" => Kind::Exchange,
            "fulfillment" => Kind::Fulfillment,
            "receipt" => Kind::Receipt,
            "transfer_out" => Kind::TransferOut,
            "transfer_in" => Kind::TransferIn,
            "adjustment" => Kind::Adjustment,
            "count" => Kind::Count,
            "day_close" => Kind::DayClose,
            "void" => Kind::Void,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sale => "sale",
            Kind::Return => "return",
            Kind::Exchange => "exchange",
            Kind::Fulfillment => "fulfillment",
            Kind::Receipt => "receipt",
            Kind::TransferOut => "transfer_out",
            Kind::TransferIn => "transfer_in",
            Kind::Adjustment => "adjustment",
            Kind::Count => "count",
            Kind::DayClose => "day_close",
            Kind::Void => "void",
        }
    }

    /// Kinds paid or refunded at a till: they carry tenders.
    pub fn at_till(self) -> bool {
        matches!(self, Kind::Sale | Kind::Return | Kind::Exchange)
    }

    /// Kinds whose register sequence number the sales audit counts: the till transactions and a void, which
    /// used its number up (DESIGN.md: "the sequence audit counts it").
    pub fn uses_a_register_number(self) -> bool {
        self.at_till() || self == Kind::Void
    }
}

/// One line, with the fields its kind uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Line {
    pub sku: String,
    pub qty: Decimal,
    pub unit_price: Decimal,
    pub discount: Decimal,
    pub tax: Decimal,
    /// goods coming back (every line of a return; flagged lines of an exchange)
    pub returned: bool,
    pub unit_cost: Option<Decimal>,
    pub counted_qty: Option<Decimal>,
    pub original_event_id: Option<String>,
}

/// A well-formed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub kind: Kind,
    pub location: String,
    pub lines: Vec<Line>,
    pub tenders: Vec<(String, Decimal)>,
    pub transfer_id: Option<String>,
    pub to_location: Option<String>,
    pub from_location: Option<String>,
    pub original_event_id: Option<String>,
    pub register: Option<String>,
    pub sequence: Option<i64>,
}

impl Event {
    /// The sale a returned line comes back against: the line's own `original_event_id`, else the event's.
    pub fn original_of<'a>(&'a self, line: &'a Line) -> Option<&'a str> {
        line.original_event_id
            .as_deref()
            .or(self.original_event_id.as_deref())
    }
}

/// Why a payload is not a well-formed event (the field at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

fn bad<T>(field: &str) -> Result<T, Malformed> {
    Err(Malformed(field.to_string()))
}

fn present<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn text(o: &Map<String, Value>, key: &str) -> Result<Option<String>, Malformed> {
    match present(o, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => bad(key),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => bad(key),
    }
}

fn required_text(o: &Map<String, Value>, key: &str) -> Result<String, Malformed> {
    text(o, key)?.ok_or_else(|| Malformed(key.to_string()))
}

/// A JSON number or a string holding one, read exactly (plain or scientific notation).
pub fn number(v: &Value) -> Option<Decimal> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    Decimal::from_str_exact(&s)
        .ok()
        .or_else(|| Decimal::from_scientific(&s).ok())
}

fn decimal(o: &Map<String, Value>, key: &str) -> Result<Option<Decimal>, Malformed> {
    match present(o, key) {
        None => Ok(None),
        Some(v) => number(v)
            .map(Some)
            .ok_or_else(|| Malformed(key.to_string())),
    }
}

fn required_decimal(o: &Map<String, Value>, key: &str) -> Result<Decimal, Malformed> {
    decimal(o, key)?.ok_or_else(|| Malformed(key.to_string()))
}

/// A whole number in the contract's domain (0 to 2^53 − 1; README, "What an event may hold"), as a JSON number or
/// a string.
fn whole(o: &Map<String, Value>, key: &str) -> Result<Option<i64>, Malformed> {
    match decimal(o, key)? {
        None => Ok(None),
        Some(d) if d.fract().is_zero() => match i64::try_from(d) {
            Ok(n) if (0..=9_007_199_254_740_991).contains(&n) => Ok(Some(n)),
            _ => bad(key),
        },
        Some(_) => bad(key),
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let part = |r: std::ops::Range<usize>| {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let (Some(y), Some(m), Some(d)) = (part(0..4), part(5..7), part(8..10)) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let last = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y > 0 && d >= 1 && d <= last
}

fn line(v: &Value, kind: Kind) -> Result<Line, Malformed> {
    let Value::Object(o) = v else {
        return bad("lines[]");
    };
    let mut l = Line {
        sku: required_text(o, "sku")?,
        ..Line::default()
    };
    match kind {
        Kind::Sale | Kind::Return | Kind::Exchange | Kind::Fulfillment => {
            l.qty = required_decimal(o, "qty")?;
            l.unit_price = required_decimal(o, "unit_price")?;
            l.discount = decimal(o, "discount")?.unwrap_or_default();
            l.tax = decimal(o, "tax")?.unwrap_or_default();
            l.returned = match present(o, "returned") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return bad("returned"),
            } || kind == Kind::Return;
            l.original_event_id = text(o, "original_event_id")?;
            if l.qty <= Decimal::ZERO {
                return bad("qty");
            }
            if l.unit_price < Decimal::ZERO {
                return bad("unit_price");
            }
        }
        Kind::Receipt => {
            l.qty = required_decimal(o, "qty")?;
            let c = required_decimal(o, "unit_cost")?;
            if l.qty <= Decimal::ZERO {
                return bad("qty");
            }
            if c < Decimal::ZERO {
                return bad("unit_cost");
            }
            l.unit_cost = Some(c);
        }
        Kind::TransferOut | Kind::TransferIn => {
            l.qty = required_decimal(o, "qty")?;
            if l.qty <= Decimal::ZERO {
                return bad("qty");
            }
        }
        Kind::Adjustment => {
            l.qty = required_decimal(o, "qty")?;
            if l.qty.is_zero() {
                return bad("qty");
            }
        }
        Kind::Count => {
            let c = required_decimal(o, "counted_qty")?;
            if c < Decimal::ZERO {
                return bad("counted_qty");
            }
            l.counted_qty = Some(c);
        }
        Kind::DayClose | Kind::Void => {}
    }
    Ok(l)
}

/// Reads one event payload, or says which field makes it malformed.
pub fn parse(v: &Value) -> Result<Event, Malformed> {
    let Value::Object(o) = v else {
        return bad("");
    };
    let event_id = required_text(o, "event_id")?;
    let kind = Kind::parse(&required_text(o, "kind")?).ok_or_else(|| Malformed("kind".into()))?;
    let location = required_text(o, "location")?;
    if !is_date(&required_text(o, "business_date")?) {
        return bad("business_date");
    }
    let mut ev = Event {
        event_id,
        kind,
        location,
        lines: Vec::new(),
        tenders: Vec::new(),
        transfer_id: text(o, "transfer_id")?,
        to_location: text(o, "to_location")?,
        from_location: text(o, "from_location")?,
        original_event_id: text(o, "original_event_id")?,
        register: text(o, "register")?,
        sequence: whole(o, "sequence")?,
    };
    if kind == Kind::DayClose {
        if text(o, "register")?.is_none() {
            return bad("register");
        }
        match present(o, "totals") {
            Some(Value::Object(t)) => {
                required_decimal(t, "net_sales")?;
            }
            _ => return bad("totals"),
        }
        return Ok(ev);
    }
    if kind == Kind::Void {
        // DESIGN.md: register, sequence, business_date, optional reason; it posts nothing, so whatever else it
        // carries (the cancelled basket) is not read
        if ev.register.is_none() {
            return bad("register");
        }
        if ev.sequence.is_none() {
            return bad("sequence");
        }
        return Ok(ev);
    }
    match present(o, "lines") {
        Some(Value::Array(ls)) if !ls.is_empty() => {
            ev.lines = ls.iter().map(|l| line(l, kind)).collect::<Result<_, _>>()?;
        }
        _ => return bad("lines"),
    }
    if kind.at_till() {
        match present(o, "tenders") {
            Some(Value::Array(ts)) => {
                for t in ts {
                    let Value::Object(t) = t else {
                        return bad("tenders[]");
                    };
                    ev.tenders
                        .push((required_text(t, "type")?, required_decimal(t, "amount")?));
                }
            }
            _ => return bad("tenders"),
        }
    }
    let needs = |field: &Option<String>, name: &str| match field {
        Some(_) => Ok(()),
        None => bad(name),
    };
    match kind {
        Kind::Fulfillment => needs(&text(o, "order_id")?, "order_id")?,
        Kind::TransferOut => {
            needs(&ev.transfer_id, "transfer_id")?;
            needs(&ev.to_location, "to_location")?;
        }
        Kind::TransferIn => {
            needs(&ev.transfer_id, "transfer_id")?;
            needs(&ev.from_location, "from_location")?;
        }
        Kind::Adjustment => needs(&text(o, "reason")?, "reason")?,
        _ => {}
    }
    Ok(ev)
}
