//! Documents: events made from the rows of a normalized POS, in SQL, inside the ERP's posting transaction.
//!
//! A commercial POS does not write one row per event. An order is a header with surrogate keys (a till id, a
//! product id, a payment-method id), written as a draft and made final later by an UPDATE, its tax on child rows
//! and its discount as a percentage. Such tables are *mirrored*: the bridge keeps a copy of each in the ERP, in a
//! schema of its own per source (`possync_pos_<source>`), row by row in the same ERP transaction that advances
//! the source's checkpoint, after an initial copy taken with the replication slot's snapshot. A *document*
//! then says, in SQL over those tables, when a header is final (or void), and how its event is built: each event
//! field is a SQL expression, lookups are LEFT JOINs to master tables, lines and tenders are child tables.
//! PostgreSQL evaluates the expressions, with exact numerics, dates and time zones. The same SQL runs against the
//! POS itself for `possync-bridge check --dry-run`, so what a mapping would make can be seen before it runs.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

/// A POS table the bridge keeps a copy of in the ERP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorTable {
    /// `schema.table` in the POS.
    pub table: String,
    /// Columns rows are looked up by (a child's column holding its header's key is indexed without being named).
    #[serde(default)]
    pub index: Vec<String>,
    /// Whether the first start copies the rows the table already holds (default true). A table of years of
    /// closed orders may be left out (`copy = false`): only its rows written from then on are mirrored, so a
    /// draft older than the bridge is not posted when it is paid.
    #[serde(default = "yes")]
    pub copy: bool,
}

fn yes() -> bool {
    true
}

impl MirrorTable {
    /// The table's name without its schema: what the documents' SQL calls it.
    pub fn name(&self) -> &str {
        self.table
            .split_once('.')
            .map(|(_, n)| n)
            .unwrap_or(&self.table)
    }

    /// The POS schema.
    pub fn schema(&self) -> &str {
        self.table
            .split_once('.')
            .map(|(s, _)| s)
            .unwrap_or("public")
    }
}

/// A master row joined to the header or to a child row, in the order given (a lookup may use the aliases before
/// it): `{ alias, table, on }` is `LEFT JOIN <table> AS <alias> ON <on>`; `{ alias, sql }` is `LEFT JOIN LATERAL
/// (<sql>) AS <alias> ON true`, for a row computed over other rows (sums over child rows, say) once, whatever the
/// number of fields that use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    pub alias: String,
    pub table: Option<String>,
    pub on: Option<String>,
    pub sql: Option<String>,
}

/// Rows of a child table that become an array of the event (`lines` or `tenders`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentChild {
    pub into: String,
    pub table: String,
    #[serde(default = "default_child_alias")]
    pub alias: String,
    /// The child's column that holds the header's key.
    pub parent: String,
    /// A SQL condition on the child's rows; rows for which it is not true are left out.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// SQL sort order of the array.
    pub order_by: Option<String>,
    #[serde(default)]
    pub lookups: Vec<Lookup>,
    /// Field of each array element = SQL expression.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

fn default_child_alias() -> String {
    "c".into()
}

fn default_header_alias() -> String {
    "h".into()
}

/// A table whose changes touch documents other than through a child's parent column: either `header`, SQL that
/// finds the header, or `through` and `on`, for a table whose rows hang from a child's rows (a line's tax rows,
/// its modifiers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchedBy {
    pub table: String,
    /// SQL giving the header's key from a changed row, which is called by the table's name.
    pub header: Option<String>,
    /// The document's child table whose row a changed row belongs to (`[[document.children]]` table)...
    pub through: Option<String>,
    /// ... and the changed row's column holding that child row's key. The bridge then finds the header itself
    /// when the group carries the child row too (it was written with it, the usual case: its own change touched
    /// the header already), and asks the mirror only for the other rows.
    pub on: Option<String>,
}

impl TouchedBy {
    /// The SQL that finds the header of a changed row, which is called by the table's name: `header`, or for
    /// `through`, the child row's parent column (`key` is the child table's key column).
    pub fn header_sql(&self, d: &Document, key: &str) -> Option<String> {
        if let Some(h) = &self.header {
            return Some(h.clone());
        }
        let (through, on) = (self.through.as_deref()?, self.on.as_deref()?);
        let child = d.children.iter().find(|c| c.table == through)?;
        Some(format!(
            "(SELECT _possync_through.{parent} FROM {table} AS _possync_through WHERE _possync_through.{key} = {row}.{on})",
            parent = sql_name(&child.parent),
            table = sql_name(through),
            key = sql_name(key),
            row = sql_name(&self.table),
            on = sql_name(on),
        ))
    }
}

/// A header table whose rows become events once final.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Names the document in logs, in `possync.pending_document` and in rejected events.
    pub name: String,
    pub table: String,
    #[serde(default = "default_header_alias")]
    pub alias: String,
    /// The header's key column (single-column primary key).
    pub key: String,
    /// SQL condition: the header is final and its event is posted.
    #[serde(rename = "final")]
    pub final_when: String,
    /// SQL condition: the header was cancelled; a `void` event records the sequence number it consumed.
    pub void: Option<String>,
    #[serde(default)]
    pub lookups: Vec<Lookup>,
    /// Event field (dotted paths make objects) = SQL expression; `event_id` and `kind` are required.
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub children: Vec<DocumentChild>,
    #[serde(default)]
    pub touched_by: Vec<TouchedBy>,
}

/// The fields a `void` event carries.
const VOID_FIELDS: [&str; 6] = [
    "event_id",
    "location",
    "register",
    "sequence",
    "business_date",
    "occurred_at",
];

/// A document mapping that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("document {document}: {reason}")]
pub struct DocumentError {
    pub document: String,
    pub reason: String,
}

/// How the compiled SQL builds an event's JSON objects. Both make the same JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    /// `json_strip_nulls(json_build_object(...))`: PostgreSQL's own functions, wherever the SQL runs (the POS,
    /// for a dry run; an ERP whose possync predates 0.6.0, or whose bridge role may not execute the other).
    Builtin,
    /// `possync.json_object_present(...)` (possync 0.6.0 on): the same objects, written in one pass, without
    /// looking up each argument's type on every call or parsing the event again to drop its null fields.
    Possync,
}

/// Where the compiled SQL runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// In the ERP over the mirror: `$1` is the text array of header keys, `$2` the source name. `key_type` is
    /// the key column's SQL type: the keys are cast to it, so that the header's key index finds them (a filter
    /// on the key cast to text would read the whole table).
    Erp { key_type: &'a str, json: Json },
    /// In the POS, for a dry run: the `limit` most recent final headers; `$1` is the source name.
    PosDryRun { limit: u32 },
    /// In the ERP over the mirror, every settled header (for `remap`); `$1` is the source name.
    ErpAll,
}

/// A double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A table or column name as the generated SQL writes it: as it is when PostgreSQL would read it unquoted,
/// double-quoted otherwise (`"OrderLine"`, `"order line"`); the mapping's own SQL quotes such names itself.
pub fn sql_name(s: &str) -> String {
    if is_simple_name(s) {
        s.to_string()
    } else {
        ident(s)
    }
}

/// A POS table named `schema.table` in the mapping, as SQL: each part quoted when it has to be.
pub fn qualified_sql(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", sql_name(schema), sql_name(name)),
        None => sql_name(table),
    }
}

fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Checks the documents against the mirrored tables.
pub fn validate(mirrors: &[MirrorTable], documents: &[Document]) -> Result<(), DocumentError> {
    let err = |document: &str, reason: String| DocumentError {
        document: document.to_string(),
        reason,
    };
    let mut names = HashSet::new();
    for m in mirrors {
        if !m.table.contains('.') {
            return Err(err(
                "(mirror)",
                format!("name the table {} as schema.table", m.table),
            ));
        }
        if m.name().is_empty() || m.name().contains('\0') {
            return Err(err("(mirror)", format!("table name {} is empty", m.table)));
        }
        if !names.insert(m.name().to_string()) {
            return Err(err("(mirror)", format!("two mirrored tables are called {}: the documents' SQL names tables without their schema", m.name())));
        }
        for c in &m.index {
            if c.is_empty() || c.contains('\0') {
                return Err(err(
                    "(mirror)",
                    format!("an index column of {} is empty", m.table),
                ));
            }
        }
    }
    let mirrored = |t: &str| names.contains(t);
    let mut doc_names = HashSet::new();
    for d in documents {
        if !is_simple_name(&d.name) || !doc_names.insert(d.name.clone()) {
            return Err(err(
                &d.name,
                "the name must be unique, in lower case letters, digits and underscores".into(),
            ));
        }
        let not_mirrored = |t: &str| {
            err(
                &d.name,
                format!("table {t} is not mirrored: add [[mirror]] table = \"<schema>.{t}\""),
            )
        };
        if !mirrored(&d.table) {
            return Err(not_mirrored(&d.table));
        }
        for f in ["event_id", "kind"] {
            if !d.fields.contains_key(f) {
                return Err(err(&d.name, format!("fields.{f} is required")));
            }
        }
        let mut aliases = HashSet::from([d.alias.clone()]);
        for l in &d.lookups {
            check_lookup(l, &mirrored).map_err(|r| err(&d.name, r))?;
            if !aliases.insert(l.alias.clone()) {
                return Err(err(&d.name, format!("alias {} is used twice", l.alias)));
            }
        }
        for c in &d.children {
            if c.into != "lines" && c.into != "tenders" {
                return Err(err(
                    &d.name,
                    format!("children into = \"{}\" must be lines or tenders", c.into),
                ));
            }
            if !mirrored(&c.table) {
                return Err(not_mirrored(&c.table));
            }
            if c.parent.is_empty() || c.parent.contains('\0') {
                return Err(err(
                    &d.name,
                    format!("parent = \"{}\" must be a column of {}", c.parent, c.table),
                ));
            }
            let mut child_aliases = aliases.clone();
            if !child_aliases.insert(c.alias.clone()) {
                return Err(err(&d.name, format!("alias {} is used twice", c.alias)));
            }
            for l in &c.lookups {
                check_lookup(l, &mirrored).map_err(|r| err(&d.name, r))?;
                if !child_aliases.insert(l.alias.clone()) {
                    return Err(err(&d.name, format!("alias {} is used twice", l.alias)));
                }
            }
        }
        for t in &d.touched_by {
            if !mirrored(&t.table) {
                return Err(not_mirrored(&t.table));
            }
            match (&t.header, &t.through, &t.on) {
                (Some(_), None, None) => {}
                (None, Some(through), Some(on)) => {
                    if !d.children.iter().any(|c| &c.table == through) {
                        return Err(err(
                            &d.name,
                            format!("touched_by {}: through = \"{through}\" must be a table of the document's children", t.table),
                        ));
                    }
                    if on.is_empty() || on.contains('\0') {
                        return Err(err(
                            &d.name,
                            format!(
                                "touched_by {}: on = \"{on}\" must be a column of {}",
                                t.table, t.table
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(err(
                        &d.name,
                        format!(
                            "touched_by {} needs either header, or through and on",
                            t.table
                        ),
                    ))
                }
            }
        }
        if d.key.is_empty() || d.key.contains('\0') {
            return Err(err(
                &d.name,
                format!("key = \"{}\" must be a column", d.key),
            ));
        }
    }
    Ok(())
}

/// Nested `json_build_object` for fields whose dotted paths make objects.
///
/// Events are built as `json` (text) rather than `jsonb`: `jsonb_build_object` and `jsonb_agg` build a tree
/// for every object, turn each number into text and back, sort each object's keys and copy every nested value
/// again at each level (a line into the lines, the lines into the event, the event into the group's array),
/// which a profile of the normalized drain found to be about half of a document's evaluation. The JSON they
/// make is the same (keys are unique here, nulls are stripped the same way), and `possync.apply_batch` reads
/// it as `jsonb` once, as it reads the reference mapping's events.
fn build_object(fields: &[(&str, String)], json: Json) -> String {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for (path, sql) in fields {
        insert_path(&mut tree, path, sql.clone());
    }
    render_tree(&tree, json)
}

enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

fn insert_path(tree: &mut BTreeMap<String, Node>, path: &str, sql: String) {
    match path.split_once('.') {
        None => {
            tree.insert(path.to_string(), Node::Leaf(sql));
        }
        Some((head, rest)) => {
            let entry = tree
                .entry(head.to_string())
                .or_insert_with(|| Node::Branch(BTreeMap::new()));
            if let Node::Leaf(_) = entry {
                *entry = Node::Branch(BTreeMap::new());
            }
            if let Node::Branch(inner) = entry {
                insert_path(inner, rest, sql);
            }
        }
    }
}

fn render_tree(tree: &BTreeMap<String, Node>, json: Json) -> String {
    let parts: Vec<String> = tree
        .iter()
        .map(|(k, v)| match v {
            // the key typed, as json_object_present takes "any" and an unknown literal has no type
            Node::Leaf(sql) => format!("{}::text, ({sql})", literal(k)),
            Node::Branch(inner) => format!("{}::text, {}", literal(k), render_tree(inner, json)),
        })
        .collect();
    match json {
        Json::Builtin => format!("json_build_object({})", parts.join(", ")),
        // json_object_present has no form without arguments
        Json::Possync if parts.is_empty() => "'{}'::json".to_string(),
        Json::Possync => format!("possync.json_object_present({})", parts.join(", ")),
    }
}

/// The event object made by `object` without its null fields (json_object_present leaves them out itself).
fn without_nulls(object: String, json: Json) -> String {
    match json {
        Json::Builtin => format!("json_strip_nulls({object})"),
        Json::Possync => object,
    }
}

fn lookups_sql(lookups: &[Lookup]) -> String {
    lookups
        .iter()
        .map(|l| match (&l.table, &l.on, &l.sql) {
            (Some(t), Some(on), _) => {
                format!(" LEFT JOIN {} AS {} ON ({on})", sql_name(t), l.alias)
            }
            (_, _, Some(sql)) => format!(" LEFT JOIN LATERAL ({sql}) AS {} ON true", l.alias),
            // refused by validate()
            _ => String::new(),
        })
        .collect()
}

/// A lookup names a mirrored table with its condition, or gives a SQL query; never both, never neither.
fn check_lookup(l: &Lookup, mirrored: &dyn Fn(&str) -> bool) -> Result<(), String> {
    match (&l.table, &l.on, &l.sql) {
        (Some(t), Some(_), None) if mirrored(t) => Ok(()),
        (Some(t), Some(_), None) => Err(format!(
            "table {t} is not mirrored: add [[mirror]] table = \"<schema>.{t}\""
        )),
        (None, None, Some(_)) => Ok(()),
        _ => Err(format!(
            "lookup {} needs either table and on, or sql",
            l.alias
        )),
    }
}

fn child_sql(d: &Document, c: &DocumentChild, json: Json) -> String {
    let fields: Vec<(&str, String)> = c
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let order = c
        .order_by
        .as_deref()
        .map(|o| format!(" ORDER BY {o}"))
        .unwrap_or_default();
    let filter = c
        .filter
        .as_deref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    format!(
        "(SELECT coalesce(json_agg({obj}{order}), '[]'::json) FROM {table} AS {alias}{joins} WHERE {alias}.{parent} = {h}.{key}{filter})",
        obj = build_object(&fields, json),
        table = sql_name(&c.table),
        alias = c.alias,
        joins = lookups_sql(&c.lookups),
        parent = sql_name(&c.parent),
        h = d.alias,
        key = sql_name(&d.key),
    )
}

/// The event of a final header, as SQL.
fn event_sql(d: &Document, source: &str, json: Json) -> String {
    let mut fields: Vec<(&str, String)> = d
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    fields.push(("source", source.to_string()));
    let mut arrays: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in &d.children {
        arrays
            .entry(&c.into)
            .or_default()
            .push(child_sql(d, c, json));
    }
    for (into, parts) in &arrays {
        // two children into the same array: json has no `||`, jsonb's concatenates the arrays
        let sql = match parts.as_slice() {
            [one] => one.clone(),
            _ => format!(
                "({})::json",
                parts
                    .iter()
                    .map(|p| format!("({p})::jsonb"))
                    .collect::<Vec<_>>()
                    .join(" || ")
            ),
        };
        fields.push((into, sql));
    }
    without_nulls(build_object(&fields, json), json)
}

/// The `void` event of a cancelled header, as SQL.
fn void_sql(d: &Document, source: &str, json: Json) -> String {
    let mut fields: Vec<(&str, String)> = d
        .fields
        .iter()
        .filter(|(k, _)| VOID_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    fields.push(("kind", literal("void")));
    fields.push(("source", source.to_string()));
    without_nulls(build_object(&fields, json), json)
}

/// What a header is.
pub const FINAL: &str = "final";
pub const VOID: &str = "void";
pub const PENDING: &str = "pending";

/// The query that evaluates headers: rows of (key text, state text, event text or NULL while pending).
pub fn compile(d: &Document, target: Target<'_>) -> String {
    let source = match target {
        Target::Erp { .. } => "$2::text",
        Target::PosDryRun { .. } | Target::ErpAll => "$1::text",
    };
    let json = match target {
        Target::Erp { json, .. } => json,
        Target::PosDryRun { .. } | Target::ErpAll => Json::Builtin,
    };
    let select = select_sql(d, source, true, json);
    match target {
        Target::Erp { key_type, .. } => {
            format!("{select} WHERE {}", key_filter(d, "$1", key_type))
        }
        Target::ErpAll => format!(
            "{select} WHERE s.state <> {PENDING_L} ORDER BY {h}.{k}",
            PENDING_L = literal(PENDING),
            h = d.alias,
            k = sql_name(&d.key)
        ),
        Target::PosDryRun { limit } => format!(
            "{select} WHERE s.state <> {PENDING_L} ORDER BY {h}.{k} DESC LIMIT {limit}",
            PENDING_L = literal(PENDING),
            h = d.alias,
            k = sql_name(&d.key)
        ),
    }
}

/// The evaluation of the headers whose keys the SQL expression `keys` (a text array) gives, for a statement that
/// posts what it finds without sending it to the bridge: rows of (key text, state text, event json or NULL
/// while pending), the source name being parameter `source`. The same SQL as [`compile`] for the ERP, but the
/// event stays json.
pub fn compile_keys(d: &Document, key_type: &str, keys: &str, source: usize, json: Json) -> String {
    let select = select_sql(d, &format!("${source}::text"), false, json);
    format!("{select} WHERE {}", key_filter(d, keys, key_type))
}

/// The keys are cast to the key column's type, so that the header's key index finds them (a filter on the key
/// cast to text would read the whole table).
fn key_filter(d: &Document, param: &str, key_type: &str) -> String {
    format!(
        "{h}.{k} = ANY({param}::text[]::{key_type}[])",
        h = d.alias,
        k = sql_name(&d.key)
    )
}

/// SELECT key, state, event FROM the header and its lookups, without a WHERE clause.
fn select_sql(d: &Document, source: &str, event_as_text: bool, json: Json) -> String {
    let void = d.void.as_deref().unwrap_or("false");
    let state = format!(
        "CASE WHEN ({final_when}) THEN {FINAL_L} WHEN ({void}) THEN {VOID_L} ELSE {PENDING_L} END",
        final_when = d.final_when,
        FINAL_L = literal(FINAL),
        VOID_L = literal(VOID),
        PENDING_L = literal(PENDING),
    );
    let from = format!(
        "{table} AS {h}{joins}",
        table = sql_name(&d.table),
        h = d.alias,
        joins = lookups_sql(&d.lookups)
    );
    let key = format!("({}.{})::text", d.alias, sql_name(&d.key));
    let event = format!(
        "(CASE s.state WHEN {FINAL_L} THEN {event} WHEN {VOID_L} THEN {void_event} END)",
        FINAL_L = literal(FINAL),
        VOID_L = literal(VOID),
        event = event_sql(d, source, json),
        void_event = void_sql(d, source, json),
    );
    let cast = if event_as_text { "::text" } else { "" };
    format!(
        "SELECT {key}, s.state, {event}{cast} FROM {from} CROSS JOIN LATERAL (SELECT {state} AS state) AS s"
    )
}

/// The query giving only the state of headers (`$1`: the keys), for a header whose event could not be built.
pub fn compile_state(d: &Document, key_type: &str) -> String {
    let void = d.void.as_deref().unwrap_or("false");
    format!(
        "SELECT ({h}.{k})::text, CASE WHEN ({f}) THEN {FINAL_L} WHEN ({void}) THEN {VOID_L} ELSE {PENDING_L} END \
         FROM {table} AS {h}{joins} WHERE {h}.{k} = ANY($1::text[]::{key_type}[])",
        h = d.alias,
        k = sql_name(&d.key),
        f = d.final_when,
        FINAL_L = literal(FINAL),
        VOID_L = literal(VOID),
        PENDING_L = literal(PENDING),
        table = sql_name(&d.table),
        joins = lookups_sql(&d.lookups),
    )
}

/// A JSON value of a key column as PostgreSQL's text output gives it (`::text`), for matching header keys.
pub fn header_key(v: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    match v {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        // the digits as written (serde_json's arbitrary_precision keeps them)
        serde_json::Value::Number(n) => Some(Cow::Borrowed(n.as_str())),
        serde_json::Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn key_text(v: &serde_json::Value) -> Option<String> {
    header_key(v).map(std::borrow::Cow::into_owned)
}

/// The keys of the headers a changed row of `table` touches directly: a header row its own key, a child row
/// its parent column. Worked out here, without a query.
pub fn direct_touches(
    d: &Document,
    table: &str,
    row: &serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    if d.table == table {
        out.extend(row.get(&d.key).and_then(key_text));
    }
    for c in d.children.iter().filter(|c| c.table == table) {
        out.extend(row.get(&c.parent).and_then(key_text));
    }
    out
}

/// The query giving the headers that changed rows of `t.table` touch through `touched_by`: the row images come
/// as one text array per column of the mirrored table (`columns`, `$1` to `$n`, see [`rows_from_arrays`]) and
/// `$n+1`, the index of each image's transaction in the group; rows of (key, the last transaction that touched
/// it).
pub fn touched_by_sql(t: &TouchedBy, columns: &[(String, String)]) -> String {
    touched_by_sql_from(t, columns, 1)
}

/// [`touched_by_sql`] with its parameters numbered from `first`.
pub fn touched_by_sql_from(t: &TouchedBy, columns: &[(String, String)], first: usize) -> String {
    format!(
        "SELECT k, max(i) FROM ({}) AS touched(k, i) WHERE k IS NOT NULL GROUP BY k",
        touched_by_rows_sql(t, columns, first)
    )
}

/// Per row image, the header key `touched_by` finds (maybe NULL) and the image's transaction index: rows of
/// (key text, int), not grouped. `OFFSET 0` keeps the query a subquery of its own, so that the caller's filter
/// on the key is not pushed into it, which would evaluate the `header` SQL twice per image (once to filter,
/// once to return it).
pub fn touched_by_rows_sql(t: &TouchedBy, columns: &[(String, String)], first: usize) -> String {
    format!(
        "SELECT k, i FROM (SELECT ({expr})::text AS k, {alias}._possync_txn AS i FROM {rows} AS {alias} OFFSET 0) AS tb",
        // completed for `through` when the poster is prepared; a header nothing finds touches nothing
        expr = t.header.as_deref().unwrap_or("NULL"),
        rows = rows_from_arrays(columns, first, true),
        alias = sql_name(&t.table),
    )
}

/// Rows of a mirrored table made from one text array per column (parameters `$first` on, in the order of
/// `columns`, each element the column's text or NULL), each cast to the column's type, as a derived table with
/// the table's column names. With `txn`, one more parameter (an int array) becomes column `_possync_txn`.
pub fn rows_from_arrays(columns: &[(String, String)], first: usize, txn: bool) -> String {
    let mut params = Vec::new();
    let mut names = Vec::new();
    let mut select = Vec::new();
    for (i, (name, ty)) in columns.iter().enumerate() {
        params.push(format!("${}::text[]", first + i));
        names.push(format!("c{i}"));
        let value = if ty == "text" {
            format!("u.c{i}")
        } else {
            format!("u.c{i}::{ty}")
        };
        select.push(format!("{value} AS {}", ident(name)));
    }
    if txn {
        params.push(format!("${}::int[]", first + columns.len()));
        names.push("i".into());
        select.push("u.i AS _possync_txn".into());
    }
    format!(
        "(SELECT {} FROM unnest({}) AS u({}))",
        select.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

/// A column's value in a row image as the text its type's input reads, as `json_populate_record` would pass it:
/// NULL for a missing or null value, a string as it is (JSON text for a json or jsonb column), a number or a
/// boolean as written, an object or array as JSON text.
pub fn text_of(
    value: Option<&serde_json::Value>,
    json_column: bool,
) -> Option<std::borrow::Cow<'_, str>> {
    use serde_json::Value;
    use std::borrow::Cow;
    match value? {
        Value::Null => None,
        Value::String(s) if !json_column => Some(Cow::Borrowed(s.as_str())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        // the digits as written (serde_json's arbitrary_precision keeps them)
        Value::Number(n) => Some(Cow::Borrowed(n.as_str())),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests;
