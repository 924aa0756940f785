//! Turning the rows of one committed POS transaction into possync events.
//!
//! A mapping (TOML, see `mappings/reference.toml`) names header tables (one event per inserted row), child tables
//! joined by key (the event's lines and tenders) and outbox tables (a JSON column is the event). Anything the
//! mapping cannot turn into a well-formed event is still sent, as an `unmapped` payload carrying the raw rows, so the
//! extension keeps it as a rejected event and the stream moves on.

use std::collections::{BTreeMap, HashMap, HashSet};

use possync_events::Event;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::decoder::{Datum, Relation, Tuple};
use crate::document::{Document, MirrorTable};
use crate::lsn::Lsn;

/// The mapping of the reference POS schema, used when no mapping file is given.
pub const REFERENCE_MAPPING: &str = include_str!("../mappings/reference.toml");

/// A mapping file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping file is not valid TOML for a mapping: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("mapping for table {table}: {reason}")]
    Invalid { table: String, reason: String },
}

/// Where an event's `kind` comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSource {
    pub column: Option<String>,
    pub constant: Option<String>,
}

/// A column feeding an event field, optionally only for some event kinds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSource {
    Column(String),
    ForKinds { column: String, kinds: Vec<String> },
}

impl FieldSource {
    /// The column, whatever the kinds it is limited to.
    pub fn column(&self) -> &str {
        match self {
            FieldSource::Column(c) => c,
            FieldSource::ForKinds { column, .. } => column,
        }
    }

    fn column_for(&self, kind: &str) -> Option<&str> {
        match self {
            FieldSource::Column(c) => Some(c),
            FieldSource::ForKinds { column, kinds } => {
                kinds.iter().any(|k| k == kind).then_some(column.as_str())
            }
        }
    }
}

/// Rows of a child table that become an array of the event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildMapping {
    pub table: String,
    /// The child's column holding the header's key.
    pub key: String,
    /// `lines` or `tenders`.
    pub into: String,
    pub order_by: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSource>,
}

/// A header table: one event per inserted row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMapping {
    pub table: String,
    /// The header's column that child rows refer to.
    pub key: Option<String>,
    /// A column name, or a template with `{column}` placeholders.
    pub event_id: String,
    pub kind: KindSource,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSource>,
    #[serde(default)]
    pub children: Vec<ChildMapping>,
}

/// A table whose JSON column is passed through as the event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxMapping {
    pub table: String,
    pub column: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    event: Vec<EventMapping>,
    #[serde(default)]
    outbox: Vec<OutboxMapping>,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
    #[serde(default)]
    document: Vec<Document>,
}

/// A validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    events: Vec<EventMapping>,
    outboxes: Vec<OutboxMapping>,
    mirrors: Vec<MirrorTable>,
    documents: Vec<Document>,
}

/// One decoded row change of a POS transaction, with columns by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `schema.table`.
    pub table: String,
    pub op: ChangeOp,
    /// The new row for inserts and updates, the old key or row for deletes; empty for truncates.
    pub row: Map<String, Value>,
    /// The old image an update carried, if any.
    pub old: Option<Map<String, Value>>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Truncate => "truncate",
        }
    }
}

impl Mapping {
    /// The reference POS schema's mapping.
    pub fn reference() -> Mapping {
        match Mapping::from_toml(REFERENCE_MAPPING) {
            Ok(m) => m,
            // the file is part of the binary and covered by a unit test
            Err(e) => panic!("the built-in reference mapping is invalid: {e}"),
        }
    }

    /// Parses and validates a mapping file's text.
    pub fn from_toml(text: &str) -> Result<Mapping, MappingError> {
        let file: MappingFile = toml::from_str(text)?;
        let invalid = |table: &str, reason: String| MappingError::Invalid {
            table: table.to_string(),
            reason,
        };
        for e in &file.event {
            match (&e.kind.column, &e.kind.constant) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        &e.table,
                        "kind needs exactly one of column or constant".into(),
                    ))
                }
            }
            if e.event_id.trim().is_empty() {
                return Err(invalid(&e.table, "event_id is empty".into()));
            }
            if !e.children.is_empty() && e.key.is_none() {
                return Err(invalid(
                    &e.table,
                    "child tables need the header's key column (key = \"...\")".into(),
                ));
            }
            for c in &e.children {
                if c.into != "lines" && c.into != "tenders" {
                    return Err(invalid(
                        &c.table,
                        format!("into = \"{}\" must be \"lines\" or \"tenders\"", c.into),
                    ));
                }
            }
        }
        crate::document::validate(&file.mirror, &file.document).map_err(|e| {
            MappingError::Invalid {
                table: e.document.clone(),
                reason: e.reason,
            }
        })?;
        let m = Mapping {
            events: file.event,
            outboxes: file.outbox,
            mirrors: file.mirror,
            documents: file.document,
        };
        let tables = m.tables();
        if tables.is_empty() {
            return Err(invalid("(none)", "the mapping names no table".into()));
        }
        let mut seen = HashSet::new();
        for t in &tables {
            if !t.contains('.') {
                return Err(invalid(t, "name the table as schema.table".into()));
            }
            if !seen.insert(t) {
                return Err(invalid(t, "the table is mapped twice".into()));
            }
        }
        Ok(m)
    }

    /// Every table the mapping reads (`schema.table`), for the publication.
    pub fn tables(&self) -> Vec<String> {
        let mut t = Vec::new();
        for e in &self.events {
            t.push(e.table.clone());
            t.extend(e.children.iter().map(|c| c.table.clone()));
        }
        t.extend(self.outboxes.iter().map(|o| o.table.clone()));
        t.extend(self.mirrors.iter().map(|m| m.table.clone()));
        t
    }

    /// [`Mapping::tables`] as SQL names them, each part quoted when PostgreSQL would fold it (`"Till"."Ticket"`):
    /// for the publication, `to_regclass` and the statements an operator is told to run.
    pub fn tables_sql(&self) -> Vec<String> {
        self.tables()
            .iter()
            .map(|t| crate::document::qualified_sql(t))
            .collect()
    }

    /// The tables kept in the ERP's mirror (see [`crate::mirror`]).
    pub fn mirrors(&self) -> &[MirrorTable] {
        &self.mirrors
    }

    /// Whether a POS table (`schema.table`) is mirrored.
    pub fn is_mirrored(&self, table: &str) -> bool {
        self.mirrors.iter().any(|m| m.table == table)
    }

    /// The documents made from mirrored tables.
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// The header tables.
    pub fn event_mappings(&self) -> &[EventMapping] {
        &self.events
    }

    /// The outbox tables.
    pub fn outbox_mappings(&self) -> &[OutboxMapping] {
        &self.outboxes
    }

    /// The events of one committed POS transaction, in the order their rows were written. Rows of mirrored
    /// tables are not events by themselves (see [`crate::mirror`]). Linear in the number of changes: child rows
    /// are found through an index by (table, key).
    pub fn events_of(&self, source: &str, commit_lsn: Lsn, changes: &[Change]) -> Vec<Value> {
        let mut claimed: Vec<bool> = changes.iter().map(|c| self.is_mirrored(&c.table)).collect();
        let mut children: HashMap<(&str, String), Vec<usize>> = HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            if change.op != ChangeOp::Insert || claimed[i] {
                continue;
            }
            for em in &self.events {
                for child in em.children.iter().filter(|c| c.table == change.table) {
                    if let Some(v) = change.row.get(&child.key) {
                        children
                            .entry((child.table.as_str(), v.to_string()))
                            .or_default()
                            .push(i);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            if change.op != ChangeOp::Insert || claimed[i] {
                continue;
            }
            if let Some(o) = self.outboxes.iter().find(|o| o.table == change.table) {
                claimed[i] = true;
                match change.row.get(&o.column) {
                    Some(payload) if !payload.is_null() => out.push(payload.clone()),
                    _ => out.push(unmapped(
                        source,
                        commit_lsn,
                        i,
                        change,
                        format!("outbox column {} is missing or NULL", o.column),
                    )),
                }
                continue;
            }
            let Some(em) = self.events.iter().find(|e| e.table == change.table) else {
                continue;
            };
            claimed[i] = true;
            out.push(self.header_event(
                source,
                commit_lsn,
                em,
                i,
                changes,
                &children,
                &mut claimed,
            ));
        }
        for (i, change) in changes.iter().enumerate() {
            if claimed[i] {
                continue;
            }
            let reason = match change.op {
                ChangeOp::Insert => format!(
                    "a row of {} arrived without its header row in the same POS transaction",
                    change.table
                ),
                op => format!(
                    "only inserts make events; got {} on {}",
                    op.as_str(),
                    change.table
                ),
            };
            out.push(unmapped(source, commit_lsn, i, change, reason));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn header_event(
        &self,
        source: &str,
        commit_lsn: Lsn,
        em: &EventMapping,
        index: usize,
        changes: &[Change],
        children: &HashMap<(&str, String), Vec<usize>>,
        claimed: &mut [bool],
    ) -> Value {
        let header = &changes[index];
        let row = &header.row;
        let (mut ev, kind) = header_base(source, em, row);

        let mut raw_children = Map::new();
        for child in &em.children {
            let key_value = em.key.as_ref().and_then(|k| row.get(k));
            let mut rows: Vec<(usize, &Map<String, Value>)> = Vec::new();
            if let Some(kv) = key_value {
                let candidates = children
                    .get(&(child.table.as_str(), kv.to_string()))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                for &j in candidates {
                    if !claimed[j] {
                        claimed[j] = true;
                        rows.push((j, &changes[j].row));
                    }
                }
            }
            if let Some(ob) = &child.order_by {
                rows.sort_by_key(|a| order_key(a.1.get(ob)));
            }
            let mut items = Vec::with_capacity(rows.len());
            for (_, r) in &rows {
                items.push(Value::Object(child_item(child, &kind, r)));
            }
            let existing = ev
                .entry(child.into.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = existing {
                a.extend(items);
            }
            raw_children.insert(
                child.table.clone(),
                Value::Array(
                    rows.iter()
                        .map(|(_, r)| Value::Object((*r).clone()))
                        .collect(),
                ),
            );
        }
        let built = Value::Object(ev);
        match Event::from_json(&built) {
            Ok(event) => event.to_json(),
            Err(malformed) => {
                let mut raw = Map::new();
                raw.insert(header.table.clone(), Value::Object(row.clone()));
                raw.extend(raw_children);
                let mut u = unmapped_base(source, &header.table, commit_lsn, index);
                u.insert("raw".into(), Value::Object(raw));
                u.insert("event".into(), built);
                u.insert(
                    "reason".into(),
                    Value::from(reason_text(&format!(
                        "the {} row does not make a well-formed event: {malformed}",
                        header.table
                    ))),
                );
                Value::Object(u)
            }
        }
    }
}

/// A header row's event without its child arrays, and its kind.
pub fn header_base(
    source: &str,
    em: &EventMapping,
    row: &Map<String, Value>,
) -> (Map<String, Value>, String) {
    let kind = match (&em.kind.constant, &em.kind.column) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => row.get(c).map(text_of).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let mut ev = Map::new();
    ev.insert("event_id".into(), Value::from(render_id(&em.event_id, row)));
    ev.insert("kind".into(), Value::from(kind.clone()));
    ev.insert("source".into(), Value::from(source));
    put_fields(&mut ev, &em.fields, &kind, row);
    (ev, kind)
}

/// One element of a child array (a line or a tender) from a child row.
pub fn child_item(
    child: &ChildMapping,
    kind: &str,
    row: &Map<String, Value>,
) -> Map<String, Value> {
    let mut item = Map::new();
    put_fields(&mut item, &child.fields, kind, row);
    item
}

/// Sort key of a child row by its `order_by` column: numbers numerically, everything else as text after them.
pub fn child_order(child: &ChildMapping, row: &Map<String, Value>) -> (u8, i64, String) {
    order_key(child.order_by.as_ref().and_then(|ob| row.get(ob)))
}

fn unmapped_base(source: &str, table: &str, commit_lsn: Lsn, index: usize) -> Map<String, Value> {
    let mut u = Map::new();
    u.insert(
        "event_id".into(),
        Value::from(format!("{source}:{table}:{commit_lsn}:{index}")),
    );
    u.insert("kind".into(), Value::from("unmapped"));
    u.insert("source".into(), Value::from(source));
    u
}

/// A payload the extension keeps as rejected, with the raw row and why it is not an event.
pub fn unmapped(
    source: &str,
    commit_lsn: Lsn,
    index: usize,
    change: &Change,
    reason: String,
) -> Value {
    let mut u = unmapped_base(source, &change.table, commit_lsn, index);
    u.insert("op".into(), Value::from(change.op.as_str()));
    u.insert("raw".into(), Value::Object(change.row.clone()));
    if let Some(old) = &change.old {
        u.insert("old".into(), Value::Object(old.clone()));
    }
    u.insert("reason".into(), Value::from(reason_text(&reason)));
    Value::Object(u)
}

/// A reason as the event contract takes it: one line of at most [`crate::pgerr::REASON_MAX_CHARS`] characters,
/// with the full length noted when a POS value (copied into an error message) made it longer.
fn reason_text(reason: &str) -> String {
    crate::pgerr::truncate_noting_length(
        &crate::pgerr::single_line(reason),
        crate::pgerr::REASON_MAX_CHARS,
    )
}

fn put_fields(
    target: &mut Map<String, Value>,
    fields: &BTreeMap<String, FieldSource>,
    kind: &str,
    row: &Map<String, Value>,
) {
    for (path, source) in fields {
        let Some(column) = source.column_for(kind) else {
            continue;
        };
        let Some(v) = row.get(column) else { continue };
        if v.is_null() {
            continue;
        }
        set_path(target, path, v.clone());
    }
}

fn set_path(target: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            target.insert(path.to_string(), v);
        }
        Some((head, rest)) => {
            let inner = target
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(m) = inner {
                set_path(m, rest, v);
            }
        }
    }
}

/// Sort key: numbers numerically, everything else as text after them.
fn order_key(v: Option<&Value>) -> (u8, i64, String) {
    match v {
        Some(Value::Number(n)) => (0, n.as_i64().unwrap_or(i64::MAX), String::new()),
        Some(other) => (1, 0, text_of(other)),
        None => (2, 0, String::new()),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A column name, or a template whose `{column}` parts are replaced by the row's values.
fn render_id(template: &str, row: &Map<String, Value>) -> String {
    if !template.contains('{') {
        return row.get(template).map(text_of).unwrap_or_default();
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let column = after[..end].trim();
                out.push_str(&row.get(column).map(text_of).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const TIMESTAMPTZ: u32 = 1184;

/// A row image as a JSON object by column name. Numerics stay text (exact); unchanged TOAST values are left out.
pub fn row_of(relation: &Relation, tuple: &Tuple) -> Map<String, Value> {
    let mut m = Map::new();
    for (col, datum) in relation.columns.iter().zip(tuple) {
        let v = match datum {
            Datum::UnchangedToast => continue,
            Datum::Null => Value::Null,
            Datum::Binary(b) => {
                Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            }
            Datum::Text(t) => json_of_text(col.type_oid, t),
        };
        m.insert(col.name.clone(), v);
    }
    m
}

/// A column's text output (as pgoutput and a text-format query give it) as the JSON the mapping works on.
pub fn json_of_text(type_oid: u32, t: &str) -> Value {
    match type_oid {
        BOOL => Value::Bool(t == "t"),
        INT2 | INT4 | INT8 | OID => t
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(t)),
        JSON | JSONB => serde_json::from_str(t).unwrap_or_else(|_| Value::from(t)),
        TIMESTAMPTZ => Value::from(rfc3339(t)),
        _ => Value::from(t),
    }
}

/// `2026-11-26 14:03:07.12+00` (ISO DateStyle) as RFC 3339: `2026-11-26T14:03:07.12+00:00`.
pub fn rfc3339(iso: &str) -> String {
    let mut s = iso.replacen(' ', "T", 1);
    let b = s.as_bytes();
    let n = b.len();
    if n >= 3
        && (b[n - 3] == b'+' || b[n - 3] == b'-')
        && b[n - 2].is_ascii_digit()
        && b[n - 1].is_ascii_digit()
    {
        s.push_str(":00");
    }
    s
}

#[cfg(test)]
mod tests;
