//! The ERP's copy of a POS's mirrored tables, and posting documents from it (see [`crate::document`]).
//!
//! Each source has a schema in the ERP, `possync_pos_<source>`, holding one table per mirrored POS table with
//! the POS's columns and key. A group of POS transactions is applied in one ERP transaction: the mirror takes
//! the rows' last images, the headers the rows touch are evaluated, final ones become events, cancelled ones
//! `void` events, and `possync.apply_batch` posts them and advances the checkpoint. So a row waiting for its
//! header to become final is as durable as the checkpoint, and a crash anywhere redoes the whole group or none.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::apply::{outcome_of, BatchOutcome, Erp, ErpError, ErpWal};
use crate::assembler::PosTransaction;
use crate::document::{
    compile, header_key, ident, literal, rows_from_arrays, text_of, touched_by_sql, Document, Json,
    Target,
};
use crate::lsn::Lsn;
use crate::mapping::{Change, ChangeOp, Mapping};
use crate::pgerr::{classify, ErrorClass};

/// The ERP schema holding a source's mirror.
pub fn schema_of(source: &str) -> String {
    format!("possync_pos_{}", crate::source::sanitize(source))
}

/// A mirrored table's columns and key, as the POS defines them.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    /// The name without schema.
    pub name: String,
    /// `schema.table` in the POS.
    pub pos_table: String,
    /// (column, SQL type in the ERP), in the POS's order.
    pub columns: Vec<(String, String)>,
    /// The key columns (replica identity index, else primary key).
    pub key: Vec<String>,
    /// The POS table's replica identity: d(efault), i(ndex), f(ull), n(othing).
    pub replica_identity: char,
    /// Columns to index besides the key.
    pub index: Vec<String>,
    /// Whether the first start copies the table's rows (see [`MirrorTable::copy`]).
    pub copy: bool,
}

/// Why the mirror could not be set up or written.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("POS: {context}: {}", crate::pgerr::describe(.source))]
    Pos {
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("ERP: {context}: {}", crate::pgerr::describe(.source))]
    Erp {
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn pos_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> MirrorError {
    let context = context.into();
    move |source| MirrorError::Pos { context, source }
}

fn erp_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> MirrorError {
    let context = context.into();
    move |source| MirrorError::Erp { context, source }
}

/// Columns of a POS table with their types as the ERP can hold them: built-in types as they are, a domain over
/// a built-in type as that type, anything else (enums, the POS's own types) as text. Generated columns are left
/// out: logical replication does not send them (PostgreSQL 15), so a row would never look complete.
const COLUMNS: &str = "SELECT a.attname::text, \
    CASE WHEN tn.nspname = 'pg_catalog' THEN format_type(a.atttypid, a.atttypmod) \
         WHEN t.typtype = 'd' AND bn.nspname = 'pg_catalog' THEN format_type(t.typbasetype, t.typtypmod) \
         ELSE 'text' END \
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace \
    LEFT JOIN pg_type bt ON bt.oid = t.typbasetype LEFT JOIN pg_namespace bn ON bn.oid = bt.typnamespace \
    WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum";

/// The key columns: the replica identity index when there is one, else the primary key.
const KEY: &str = "SELECT c.relreplident::text, coalesce((SELECT array_agg(a.attname::text ORDER BY k.n) \
    FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
    WHERE i.indexrelid = coalesce((SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = c.oid AND x.indisreplident), \
                                  (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary))), '{}') \
    FROM pg_class c WHERE c.oid = $1::text::regclass";

/// Reads the shapes of the mapping's mirrored tables from the POS.
pub async fn describe(pos: &Client, mapping: &Mapping) -> Result<Vec<TableShape>, MirrorError> {
    let mut shapes = Vec::new();
    for m in mapping.mirrors() {
        let qualified = format!("{}.{}", ident(m.schema()), ident(m.name()));
        let exists: bool = pos
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(pos_err(format!("looking for table {}", m.table)))?
            .get(0);
        if !exists {
            return Err(MirrorError::Invalid(format!(
                "the mapping mirrors table {}, which the POS does not have",
                m.table
            )));
        }
        let columns: Vec<(String, String)> = pos
            .query(COLUMNS, &[&qualified])
            .await
            .map_err(pos_err(format!("reading the columns of {}", m.table)))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let row = pos
            .query_one(KEY, &[&qualified])
            .await
            .map_err(pos_err(format!("reading the key of {}", m.table)))?;
        let ident_kind: String = row.get(0);
        let key: Vec<String> = row.get(1);
        if key.is_empty() {
            return Err(MirrorError::Invalid(format!(
                "table {} has neither a primary key nor a replica identity index: the bridge cannot tell its rows apart to keep a copy (ALTER TABLE {} ADD PRIMARY KEY (...))",
                m.table, m.table
            )));
        }
        for c in &m.index {
            if !columns.iter().any(|(n, _)| n == c) {
                return Err(MirrorError::Invalid(format!(
                    "the mapping indexes column {c} of {}, which has no such column",
                    m.table
                )));
            }
        }
        shapes.push(TableShape {
            name: m.name().to_string(),
            pos_table: m.table.clone(),
            columns,
            key,
            replica_identity: ident_kind.chars().next().unwrap_or('d'),
            index: m.index.clone(),
            copy: m.copy,
        });
    }
    // a child is found by its parent column: index it
    for d in mapping.documents() {
        for c in &d.children {
            if let Some(s) = shapes.iter_mut().find(|s| s.name == c.table) {
                if !s.index.contains(&c.parent) && s.key.first() != Some(&c.parent) {
                    s.index.push(c.parent.clone());
                }
            }
        }
    }
    Ok(shapes)
}

/// The DDL that makes (or completes) a source's mirror in the ERP; safe to run again.
pub fn ddl(schema: &str, shapes: &[TableShape]) -> String {
    let s = ident(schema);
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {s};\n");
    // the headers whose mapping failed and were kept as a rejected event: met again, they are not kept twice
    sql.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.{FAILED} (document text, doc_key text, PRIMARY KEY (document, doc_key));\n"
    ));
    for t in shapes {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| format!("{} {ty}", ident(c)))
            .collect();
        let key: Vec<String> = t.key.iter().map(|k| ident(k)).collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {s}.{} ({}, PRIMARY KEY ({}));\n",
            ident(&t.name),
            cols.join(", "),
            key.join(", ")
        ));
        for (c, ty) in &t.columns {
            sql.push_str(&format!(
                "ALTER TABLE {s}.{} ADD COLUMN IF NOT EXISTS {} {ty};\n",
                ident(&t.name),
                ident(c)
            ));
        }
        for c in &t.index {
            sql.push_str(&format!(
                "CREATE INDEX IF NOT EXISTS {} ON {s}.{} ({});\n",
                ident(&format!("{}_{}_idx", t.name, c)),
                ident(&t.name),
                ident(c)
            ));
        }
    }
    sql
}

/// Whether the ERP has `possync.json_object_present` (0.6.0) and the bridge's role may execute it: one row, a
/// boolean.
pub const JSON_OBJECT_PRESENT: &str = "SELECT coalesce(has_function_privilege(\
     to_regprocedure('possync.json_object_present(\"any\")'), 'EXECUTE'), false)";

/// The bridge's own table in the mirror schema: headers kept as rejected because their mapping failed.
pub const FAILED: &str = "_possync_failed";

/// A row's key as text, to collapse the changes of a group per row.
fn key_text(shape: &TableShape, row: &Map<String, Value>) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::with_capacity(24);
    for k in &shape.key {
        let v = row.get(k)?;
        if v.is_null() {
            return None;
        }
        // as JSON: a string's own U+001F stays escaped
        write!(out, "{v}\u{1f}").ok()?;
    }
    Some(out)
}

/// What a group of POS transactions leaves in one mirrored table.
#[derive(Debug, Default)]
struct TableWrites<'a> {
    /// Everything before was emptied (TRUNCATE).
    emptied: bool,
    /// Per row key: the last image, or None for a deleted row.
    rows: BTreeMap<String, RowWrite<'a>>,
}

#[derive(Debug, Clone)]
enum RowWrite<'a> {
    /// Every column. `fresh`: the group's first change of this key was an insert (or came after a truncate), so
    /// the mirror, which holds what the POS held at the checkpoint, cannot have the row yet.
    Full {
        row: Cow<'a, Map<String, Value>>,
        fresh: bool,
    },
    /// An update that left some columns out (unchanged TOAST values): those keep what the mirror holds.
    Partial(Cow<'a, Map<String, Value>>),
    /// The key columns of a deleted row.
    Delete(&'a Map<String, Value>),
}

/// The last image of every row a group of POS transactions wrote, per mirrored table (by its index among the
/// shapes; borrowed from the changes).
#[derive(Debug, Default)]
pub struct MirrorWrites<'a> {
    tables: BTreeMap<usize, TableWrites<'a>>,
}

impl<'a> TableWrites<'a> {
    /// A row deleted: one the group inserted never reaches the mirror, any other is deleted from it.
    fn delete(&mut self, key: String, image: &'a Map<String, Value>) {
        match self.rows.get(&key) {
            Some(RowWrite::Full { fresh: true, .. }) => {
                self.rows.remove(&key);
            }
            _ => {
                self.rows.insert(key, RowWrite::Delete(image));
            }
        }
    }
}

impl<'a> MirrorWrites<'a> {
    /// Collapses the changes, oldest first.
    pub fn collect(
        shapes: &[TableShape],
        changes: impl Iterator<Item = &'a Change>,
    ) -> MirrorWrites<'a> {
        let mut w = MirrorWrites::default();
        let by_table: HashMap<&str, usize> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.pos_table.as_str(), i))
            .collect();
        let names: Vec<Vec<usize>> = shapes.iter().map(|s| by_name(&s.columns)).collect();
        let mut values = Vec::new();
        for change in changes {
            let Some(&s_i) = by_table.get(change.table.as_str()) else {
                continue;
            };
            let shape = &shapes[s_i];
            let t = w.tables.entry(s_i).or_default();
            match change.op {
                ChangeOp::Truncate => {
                    t.emptied = true;
                    t.rows.clear();
                }
                ChangeOp::Delete => {
                    if let Some(k) = key_text(shape, &change.row) {
                        t.delete(k, &change.row);
                    }
                }
                ChangeOp::Insert | ChangeOp::Update => {
                    if let Some(old) = &change.old {
                        // the key changed (or the table's replica identity is FULL): the old row goes
                        if let (Some(ko), Some(kn)) =
                            (key_text(shape, old), key_text(shape, &change.row))
                        {
                            if ko != kn {
                                t.delete(ko, old);
                            }
                        }
                    }
                    let Some(k) = key_text(shape, &change.row) else {
                        continue;
                    };
                    let complete = change.row.len() >= shape.columns.len() && {
                        values_of(&change.row, &shape.columns, &names[s_i], &mut values);
                        values.iter().all(Option::is_some)
                    };
                    let before = t.rows.remove(&k);
                    let fresh = match &before {
                        None => change.op == ChangeOp::Insert,
                        Some(RowWrite::Full { fresh, .. }) => *fresh,
                        Some(RowWrite::Partial(_) | RowWrite::Delete(_)) => false,
                    };
                    let next = match (before, complete) {
                        (_, true) => RowWrite::Full {
                            row: Cow::Borrowed(&change.row),
                            fresh,
                        },
                        (Some(RowWrite::Full { mut row, fresh }), false) => {
                            row.to_mut().extend(change.row.clone());
                            RowWrite::Full { row, fresh }
                        }
                        (Some(RowWrite::Partial(mut before)), false) => {
                            before.to_mut().extend(change.row.clone());
                            RowWrite::Partial(before)
                        }
                        (_, false) => RowWrite::Partial(Cow::Borrowed(&change.row)),
                    };
                    t.rows.insert(k, next);
                }
            }
        }
        w
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Per (document, `touched_by` entry), the row images whose headers its SQL finds, each with the index of its
/// transaction in the group.
type Indirect<'c> = BTreeMap<(usize, usize), Vec<(usize, &'c Map<String, Value>)>>;

/// Per document, the keys of the headers touched and the last transaction (by index) that touched each.
struct Touched(Vec<BTreeMap<String, usize>>);

impl Touched {
    fn new(documents: usize) -> Touched {
        Touched(vec![BTreeMap::new(); documents])
    }

    fn mark(&mut self, document: usize, key: &str, at: usize) {
        let keys = &mut self.0[document];
        match keys.get_mut(key) {
            Some(slot) => *slot = (*slot).max(at),
            None => {
                keys.insert(key.to_string(), at);
            }
        }
    }
}

/// Posts groups of POS transactions that carry mirrored rows.
pub struct DocumentPoster {
    schema: String,
    shapes: Vec<TableShape>,
    documents: Vec<Document>,
    /// Per document, its evaluation query.
    queries: Vec<String>,
    /// Per document, the SQL type of its header's key.
    key_types: Vec<String>,
    statements: Mutex<HashMap<String, Statement>>,
    /// Whether the ERP has `possync.note_documents` (pending documents shown in open_exceptions).
    note_documents: bool,
    /// The statement that evaluates a group's headers, notes the waiting ones and posts the rest with
    /// `apply_batch` (see [`group_sql`]).
    group: String,
    /// Per document, per `touched_by` entry, the index of its table in `shapes`.
    touched_shapes: Vec<Vec<usize>>,
    /// Per document, per `touched_by` entry given with `through`: how the bridge finds the header of a row
    /// from the group's own row of the child table it hangs from.
    through: Vec<Vec<Option<Through>>>,
    /// When the last group was done (for the debug log: how long the ERP waited for the next one).
    last_done: Mutex<Option<std::time::Instant>>,
    /// A POS table (`schema.table`) to its index in `shapes`.
    shape_index: HashMap<String, usize>,
    /// Per shape, the headers its rows touch.
    routes: Vec<Route>,
}

/// The headers a mirrored table's rows touch.
#[derive(Debug, Default)]
struct Route {
    /// (document, column): the row holds the key of that document's header (its own key, or a child's parent
    /// column), as [`crate::document::direct_touches`] says.
    direct: Vec<(usize, String)>,
    /// (document, `touched_by` entry): a query finds the header.
    indirect: Vec<(usize, usize)>,
}

/// A `touched_by` table whose rows hang from the rows of a child table (`through` and `on`).
#[derive(Debug, Clone)]
struct Through {
    /// The child table (its `schema.table` in the POS), its key column and its column holding the header's key.
    child: String,
    key: String,
    parent: String,
    /// The `touched_by` table's column holding the child row's key.
    on: String,
}

/// Completes the `touched_by` entries given with `through` and `on`: their header SQL (what the group statement
/// asks the mirror for a row whose child row the group does not carry), and how the bridge finds the header
/// itself from the group's own rows of the child table.
fn resolve_through(
    documents: &mut [Document],
    shapes: &[TableShape],
) -> Result<Vec<Vec<Option<Through>>>, MirrorError> {
    let mut all = Vec::with_capacity(documents.len());
    for d in documents.iter_mut() {
        let mut per = Vec::with_capacity(d.touched_by.len());
        for t_i in 0..d.touched_by.len() {
            let t = &d.touched_by[t_i];
            let (Some(through), Some(on)) = (t.through.clone(), t.on.clone()) else {
                per.push(None);
                continue;
            };
            let shape = shapes.iter().find(|s| s.name == through).ok_or_else(|| {
                MirrorError::Invalid(format!(
                    "document {}: touched_by {}: table {through} is not mirrored",
                    d.name, t.table
                ))
            })?;
            let [key] = shape.key.as_slice() else {
                return Err(MirrorError::Invalid(format!(
                    "document {}: touched_by {} through {through}: its key has {} columns; through needs a one-column key (give header SQL instead)",
                    d.name,
                    t.table,
                    shape.key.len()
                )));
            };
            let parent = d
                .children
                .iter()
                .find(|c| c.table == through)
                .map(|c| c.parent.clone())
                .unwrap_or_default();
            let header = t.header_sql(d, key);
            d.touched_by[t_i].header = header;
            per.push(Some(Through {
                child: shape.pos_table.clone(),
                key: key.clone(),
                parent,
                on,
            }));
        }
        all.push(per);
    }
    Ok(all)
}

impl Route {
    fn of(shape: &TableShape, documents: &[Document]) -> Route {
        let mut r = Route::default();
        for (d_i, d) in documents.iter().enumerate() {
            if d.table == shape.name {
                r.direct.push((d_i, d.key.clone()));
            }
            for c in d.children.iter().filter(|c| c.table == shape.name) {
                r.direct.push((d_i, c.parent.clone()));
            }
            for (t_i, tb) in d.touched_by.iter().enumerate() {
                if tb.table == shape.name {
                    r.indirect.push((d_i, t_i));
                }
            }
        }
        r
    }
}

/// The planner settings of a document group's ERP transaction (`SET LOCAL`, so they end with it), like those
/// of possync's own statements (`src/statements.rs` in the extension). The mirror's tables grow from nothing
/// while the bridge runs, so their statistics often describe a far smaller table: with `enable_seqscan` on, a
/// group's evaluation was once planned as a sequential scan that took 600 ms instead of 20. Every statement
/// here finds rows by a key or a parent column, which are indexed; generic plans keep a prepared statement
/// from being planned again for every group; and a table without an index (a mapping's lookup on a column not
/// indexed) keeps its sequential scan without the cost that `enable_seqscan = off` adds starting JIT.
///
/// `possync_bridge.in_group` says that the statements run inside a group's transaction (see [`IN_GROUP`]).
const GROUP_SETTINGS: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
     SET LOCAL jit = off; SET LOCAL possync_bridge.in_group = 'on'";

/// The condition every statement that writes in a pipelined group carries. The group's `BEGIN` and `COMMIT` go
/// in the same pipeline as its statements. Should `BEGIN` fail, they would each run, and commit, on their own;
/// the `SET LOCAL` that follows `BEGIN` in the same message then never runs either, so outside the group's
/// transaction this is false and they write nothing. And the first statement ([`ARM`]) makes it false when the
/// checkpoint says the group is applied already, so that `COMMIT` then commits nothing.
const IN_GROUP: &str = "pg_catalog.current_setting('possync_bridge.in_group', true) = 'on'";

/// The checkpoint as the group's transaction sees it.
const CHECKPOINT: &str = "SELECT possync.source_checkpoint($1)::text";

/// The first statement of a pipelined group: the checkpoint, and [`IN_GROUP`] turned off when it is at or past
/// the group's commit LSN (`$2`), so that the rest of the pipeline, COMMIT included, changes nothing.
const ARM: &str = "SELECT c::text, pg_catalog.set_config('possync_bridge.in_group', \
       CASE WHEN c < $2::text::pg_lsn THEN 'on' ELSE 'skipped' END, true) \
     FROM (SELECT possync.source_checkpoint($1) AS c) AS s";

/// A statement of a group, with its arguments.
struct Planned {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Planned {
    fn args(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// A group's statements planned ahead, while the group before it is applied (see
/// [`DocumentPoster::plan_ahead`]); used when the same transactions come to be applied.
pub struct GroupPlan {
    first: Lsn,
    last: Lsn,
    txns: usize,
    planned: Vec<Planned>,
}

impl GroupPlan {
    fn is_for(&self, txns: &[PosTransaction]) -> bool {
        txns.len() == self.txns
            && txns.first().map(|t| t.commit_lsn) == Some(self.first)
            && txns.last().map(|t| t.commit_lsn) == Some(self.last)
    }
}

/// Why the pipelined way of applying a group gave up (see [`DocumentPoster::apply`]).
enum Pipelined {
    /// Not done, the transaction rolled back: the ERP refused something for its data (a header's evaluation
    /// failed, say), which the one-by-one way isolates.
    OneByOne(ErpError),
    Failed(ErpError),
}

impl From<ErpError> for Pipelined {
    fn from(e: ErpError) -> Pipelined {
        Pipelined::Failed(e)
    }
}

impl From<tokio_postgres::Error> for Pipelined {
    fn from(e: tokio_postgres::Error) -> Pipelined {
        Pipelined::Failed(e.into())
    }
}

/// What the ERP raised for one header's mapping: kept as a rejected event, the group goes on. Its id names the
/// document and key (not the transaction), so that the same failure met again, when a later change touches the
/// header, is a duplicate rather than another exception; `commit_lsn` goes to the log only.
fn mapping_failure(
    source: &str,
    document: &str,
    key: &str,
    error: &tokio_postgres::Error,
) -> Value {
    let why = crate::pgerr::describe(error);
    serde_json::json!({
        "event_id": format!("{source}:document:{document}:{key}"),
        "kind": possync_events::UNMAPPED,
        "source": source,
        "document": document,
        "key": key,
        "reason": crate::pgerr::truncate_noting_length(
            &crate::pgerr::single_line(&format!("the mapping of {document} {key} failed in the ERP: {why}; the POS rows are kept in the mirror, fix the mapping and run possync-bridge remap")),
            crate::pgerr::REASON_MAX_CHARS),
    })
}

/// The statement that settles a group's headers inside the ERP, so that their events never travel to the
/// bridge and back: per document, the touched keys (those the bridge found itself, and those its `touched_by`
/// queries find from the row images), its evaluation (as [`compile`] makes it for the ERP, the event left as
/// jsonb) over them, `possync.note_documents` for its waiting and settled headers (when the ERP has it); then one
/// `possync.apply_batch` of the group's own events and the settled headers' events, each after the events of
/// the transaction it goes with, as the one-by-one way orders them (a transaction's own events in their order,
/// then per document its headers by key, in byte order).
///
/// Parameters: `$1` source, `$2` the group's last commit LSN (text), `$3` the transactions' own events as a
/// JSON array of `[transaction index, event]`, `$4` the index of the last transaction (where a header no
/// transaction is named for goes); then per document, the keys the bridge found (text array) and the index of
/// the last transaction that touched each (int array), followed, per `touched_by` entry of the document, by
/// the row images of its table (one text array per column of `touched[d][j]`, see
/// [`crate::document::rows_from_arrays`]) and each image's transaction index. One row: apply_batch's answer as
/// text (and how many notes were taken).
pub fn group_sql(
    documents: &[Document],
    key_types: &[String],
    touched: &[Vec<Vec<(String, String)>>],
    note_documents: bool,
    json: crate::document::Json,
) -> String {
    let mut ctes = Vec::new();
    let mut parts = vec![
        "SELECT (o.p->>0)::int, 0, o.ord, NULL::text, o.p->1 FROM json_array_elements($3::text::json) WITH ORDINALITY AS o(p, ord)"
            .to_string(),
    ];
    let mut noted = Vec::new();
    let mut next = 5;
    for (i, (d, key_type)) in documents.iter().zip(key_types).enumerate() {
        let (keys, ats) = (next, next + 1);
        next += 2;
        let mut sources = vec![format!(
            "SELECT u.key, u.at FROM unnest(${keys}::text[], ${ats}::int[]) AS u(key, at)"
        )];
        for (t, columns) in d
            .touched_by
            .iter()
            .zip(touched.get(i).into_iter().flatten())
        {
            sources.push(crate::document::touched_by_rows_sql(t, columns, next));
            next += columns.len() + 1;
        }
        ctes.push(format!(
            "k{i} AS MATERIALIZED (SELECT key, max(at) AS at FROM ({}) AS touched(key, at) \
               WHERE key IS NOT NULL GROUP BY key)",
            sources.join(" UNION ALL ")
        ));
        ctes.push(format!(
            "d{i} AS MATERIALIZED (SELECT e.key, e.state, e.event, coalesce(k.at, $4) AS at \
               FROM ({eval}) AS e(key, state, event) LEFT JOIN k{i} AS k ON k.key = e.key)",
            eval = crate::document::compile_keys(
                d,
                key_type,
                &format!("ARRAY(SELECT key FROM k{i})"),
                1,
                json,
            ),
        ));
        if note_documents {
            ctes.push(format!(
                "n{i} AS MATERIALIZED (SELECT possync.note_documents($1, {name}, \
                   ARRAY(SELECT key FROM d{i} WHERE state = {pending} ORDER BY key), \
                   ARRAY(SELECT key FROM d{i} WHERE state <> {pending} ORDER BY key)) \
                 WHERE EXISTS (SELECT FROM k{i}) AND {IN_GROUP})",
                name = literal(&d.name),
                pending = literal(crate::document::PENDING),
            ));
            noted.push(format!("(SELECT count(*) FROM n{i})"));
        }
        parts.push(format!(
            "SELECT at, {grp}, NULL::bigint, key, event FROM d{i} WHERE state <> {pending} AND event IS NOT NULL",
            grp = i + 1,
            pending = literal(crate::document::PENDING),
        ));
    }
    let with = if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {} ", ctes.join(", "))
    };
    // the notes are taken before apply_batch runs: the FROM item is read before the target list; their count
    // is selected too, or the planner would drop the unused column and the notes with it
    let (from, count) = if noted.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!(" FROM (SELECT {} AS n) AS noted", noted.join(" + ")),
            ", noted.n".to_string(),
        )
    };
    format!(
        "{with}SELECT possync.apply_batch($1, $2::text::pg_lsn, \
           (SELECT coalesce(json_agg(x.ev ORDER BY x.at, x.grp, x.ord, x.key COLLATE \"C\"), '[]'::json) \
              FROM ({parts}) AS x(at, grp, ord, key, ev))::jsonb)::text{count}{from} WHERE {IN_GROUP}",
        parts = parts.join(" UNION ALL ")
    )
}

/// Is a mirror column's type one whose input reads JSON?
fn json_typed(ty: &str) -> bool {
    ty == "json" || ty == "jsonb"
}

/// One text array per column, for [`crate::document::rows_from_arrays`]: each row's value as its column's
/// input reads it.
fn column_arrays(
    columns: &[(String, String)],
    rows: &[&Map<String, Value>],
) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let by_name = by_name(columns);
    let json: Vec<bool> = columns.iter().map(|(_, ty)| json_typed(ty)).collect();
    let mut arrays: Vec<Vec<Option<String>>> = columns
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    let mut values = Vec::with_capacity(columns.len());
    for row in rows {
        values_of(row, columns, &by_name, &mut values);
        for ((array, value), json) in arrays.iter_mut().zip(&values).zip(&json) {
            array.push(text_of(*value, *json).map(Cow::into_owned));
        }
    }
    arrays
        .into_iter()
        .map(|a| Box::new(a) as Box<dyn ToSql + Sync + Send>)
        .collect()
}

/// The indexes of `columns` in the order of their names.
fn by_name(columns: &[(String, String)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by(|&a, &b| columns[a].0.cmp(&columns[b].0));
    order
}

/// Whether serde_json's `Map` iterates in the order of its keys, as a BTreeMap does (serde_json's
/// `preserve_order` feature would make it keep their insertion order instead).
fn maps_iterate_in_key_order() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut m = Map::new();
        m.insert("b".into(), Value::Null);
        m.insert("a".into(), Value::Null);
        m.keys().next().map(String::as_str) == Some("a")
    })
}

/// The values of `row` for `columns`, in their order (`None` for a column the row lacks), in `out`. With maps
/// that iterate in key order, the row is walked once beside the columns sorted by name (`by_name`); otherwise
/// each column is looked up.
fn values_of<'a>(
    row: &'a Map<String, Value>,
    columns: &[(String, String)],
    by_name: &[usize],
    out: &mut Vec<Option<&'a Value>>,
) {
    out.clear();
    out.resize(columns.len(), None);
    if !maps_iterate_in_key_order() {
        for (slot, (c, _)) in out.iter_mut().zip(columns) {
            *slot = row.get(c);
        }
        return;
    }
    let mut entries = row.iter().peekable();
    for &i in by_name {
        let name = columns[i].0.as_str();
        while let Some((k, v)) = entries.peek() {
            match k.as_str().cmp(name) {
                std::cmp::Ordering::Less => {
                    entries.next();
                }
                std::cmp::Ordering::Equal => {
                    out[i] = Some(*v);
                    entries.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
    }
}

impl DocumentPoster {
    /// Makes or completes the mirror in the ERP and checks that every document's SQL compiles against it.
    pub async fn prepare(
        erp: &Erp,
        source: &str,
        mapping: &Mapping,
        shapes: Vec<TableShape>,
    ) -> Result<DocumentPoster, MirrorError> {
        let schema = schema_of(source);
        let client = erp.client();
        client.batch_execute(&ddl(&schema, &shapes)).await.map_err(|e| {
            let denied = e.code().map(|c| c.code() == "42501").unwrap_or(false);
            let context = if denied {
                format!(
                    "creating the mirror schema {schema}: the bridge's ERP role needs CREATE on the ERP database (GRANT CREATE ON DATABASE <erp> TO <role>), or a DBA runs the DDL that `possync-bridge check` prints"
                )
            } else {
                format!("creating the mirror schema {schema}")
            };
            MirrorError::Erp { context, source: e }
        })?;
        let mut documents: Vec<Document> = mapping.documents().to_vec();
        let through = resolve_through(&mut documents, &shapes)?;
        let key_types: Vec<String> = documents
            .iter()
            .map(|d| {
                shapes
                    .iter()
                    .find(|s| s.name == d.table)
                    .and_then(|s| s.columns.iter().find(|(c, _)| *c == d.key))
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| {
                        MirrorError::Invalid(format!(
                            "document {}: table {} has no column {}",
                            d.name, d.table, d.key
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        // possync 0.6.0 builds the events' JSON in one pass, when the bridge's role may call it
        let json = if client
            .query_one(JSON_OBJECT_PRESENT, &[])
            .await
            .map_err(erp_err("looking for possync.json_object_present"))?
            .get(0)
        {
            Json::Possync
        } else {
            Json::Builtin
        };
        let queries: Vec<String> = documents
            .iter()
            .zip(&key_types)
            .map(|(d, key_type)| compile(d, Target::Erp { key_type, json }))
            .collect();
        let note_documents: bool = client
            .query_one(
                "SELECT to_regprocedure('possync.note_documents(text,text,text[],text[])') IS NOT NULL",
                &[],
            )
            .await
            .map_err(erp_err("looking for possync.note_documents"))?
            .get(0);
        // per document, per touched_by entry, the mirrored table it names
        let touched_shapes: Vec<Vec<usize>> = documents
            .iter()
            .map(|d| {
                d.touched_by
                    .iter()
                    .map(|t| {
                        shapes
                            .iter()
                            .position(|s| s.name == t.table)
                            .ok_or_else(|| {
                                MirrorError::Invalid(format!(
                                    "document {}: touched_by table {} is not mirrored",
                                    d.name, t.table
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let touched_columns: Vec<Vec<Vec<(String, String)>>> = touched_shapes
            .iter()
            .map(|ts| ts.iter().map(|&i| shapes[i].columns.clone()).collect())
            .collect();
        let group = group_sql(
            &documents,
            &key_types,
            &touched_columns,
            note_documents,
            json,
        );
        let set_path = format!("SET search_path TO {}", ident(&schema));
        client
            .batch_execute(&format!("BEGIN; {set_path}"))
            .await
            .map_err(erp_err("setting the search path"))?;
        let mut problem = None;
        'check: for ((d, q), columns_of) in documents.iter().zip(&queries).zip(&touched_columns) {
            if let Err(e) = client.prepare(q).await {
                problem = Some(MirrorError::Invalid(format!(
                    "document {} does not compile against the mirror of its tables: {}",
                    d.name,
                    crate::pgerr::describe(&e)
                )));
                break;
            }
            for (t, columns) in d.touched_by.iter().zip(columns_of) {
                if let Err(e) = client.prepare(&touched_by_sql(t, columns)).await {
                    problem = Some(MirrorError::Invalid(format!(
                        "document {}: touched_by of table {} does not compile: {}",
                        d.name,
                        t.table,
                        crate::pgerr::describe(&e)
                    )));
                    break 'check;
                }
            }
        }
        if problem.is_none() {
            if let Err(e) = client.prepare(&group).await {
                problem = Some(MirrorError::Invalid(format!(
                    "the documents' group statement does not compile against the mirror: {}",
                    crate::pgerr::describe(&e)
                )));
            }
        }
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(erp_err("ending the mapping check"))?;
        if let Some(p) = problem {
            return Err(p);
        }
        let shape_index = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.pos_table.clone(), i))
            .collect();
        let routes = shapes.iter().map(|s| Route::of(s, &documents)).collect();
        Ok(DocumentPoster {
            schema,
            shapes,
            documents,
            queries,
            key_types,
            statements: Mutex::new(HashMap::new()),
            note_documents,
            group,
            touched_shapes,
            through,
            last_done: Mutex::new(None),
            shape_index,
            routes,
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn shapes(&self) -> &[TableShape] {
        &self.shapes
    }

    /// Whether a POS table is mirrored.
    pub fn mirrors(&self, pos_table: &str) -> bool {
        self.shapes.iter().any(|s| s.pos_table == pos_table)
    }

    async fn statement(
        &self,
        client: &Client,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
        {
            return Ok(s);
        }
        let s = client.prepare(sql).await?;
        if let Ok(mut m) = self.statements.lock() {
            m.insert(sql.to_string(), s.clone());
        }
        Ok(s)
    }

    /// The statement for `sql` if this connection has prepared it.
    fn prepared(&self, sql: &str) -> Option<Statement> {
        self.statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
    }

    /// `BEGIN` with the group's search path and planner settings.
    fn begin(&self) -> String {
        format!(
            "BEGIN; SET LOCAL search_path TO {}; {GROUP_SETTINGS}",
            ident(&self.schema)
        )
    }

    /// Applies consecutive POS transactions, some with mirrored rows, in one ERP transaction that advances the
    /// checkpoint to the last one's commit LSN.
    ///
    /// Pipelined (four round trips): `BEGIN`; then the checkpoint, the mirror's writes and the `touched_by`
    /// queries, sent together; then one statement that evaluates the touched headers and posts their events
    /// with `apply_batch` ([`group_sql`]); then `COMMIT` and the WAL positions. Rows the group inserted are
    /// written with plain INSERTs. When the ERP refuses anything of this for its data (a header whose SQL
    /// fails, a row the mirror holds already although the group inserted it), the transaction rolls back and
    /// the group is applied one statement at a time, with upserts, each header's failure isolated and kept as
    /// a rejected event, as before.
    pub async fn apply(
        &self,
        erp: &Erp,
        source: &str,
        txns: &[PosTransaction],
        ahead: Option<GroupPlan>,
    ) -> Result<(BatchOutcome, ErpWal), ErpError> {
        let client = erp.client();
        let Some(last) = txns.last() else {
            return Ok((BatchOutcome::default(), erp.wal().await?));
        };
        let e = match self.apply_pipelined(erp, source, txns, ahead).await {
            Ok((Some(answer), wal)) => return Ok((outcome_of(&answer), wal)),
            Ok((None, wal)) => return Ok((BatchOutcome::default(), wal)),
            Err(Pipelined::Failed(e)) => {
                // nothing was committed; the connection may be gone, and a failed ROLLBACK changes nothing
                // about the error to report
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            Err(Pipelined::OneByOne(e)) => e,
        };
        tracing::debug!(source, commit_lsn = %last.commit_lsn, txns = txns.len(), error = %e,
            "the ERP refused part of a document group for its data; applying it one statement at a time");
        // the pipeline's transaction ended with its COMMIT (a rollback, after the error)
        let _ = client.batch_execute("ROLLBACK").await;
        client.batch_execute(&self.begin()).await?;
        let answer = match self
            .apply_in_transaction(client, source, txns, last.commit_lsn)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let Some(answer) = answer else {
            client.batch_execute("ROLLBACK").await?;
            return Ok((BatchOutcome::default(), erp.wal().await?));
        };
        // pipelined: the WAL positions are read once the commit is done
        let (committed, wal) =
            futures::future::join(client.batch_execute("COMMIT"), erp.wal()).await;
        committed?;
        let wal = wal.map_err(|e| ErpError::AfterApply(Box::new(e)))?;
        Ok((outcome_of(&answer), wal))
    }

    /// Plans the group `txns` will make, for [`DocumentPoster::apply`] to send without planning it then: the
    /// bridge plans the next group while the ERP applies the current one. None for a spilled transaction
    /// (applied on its own, from its file) or one the mapping cannot plan (it is then planned, and fails, when
    /// applied).
    pub fn plan_ahead(&self, source: &str, txns: &[PosTransaction]) -> Option<GroupPlan> {
        if txns.iter().any(|t| t.spilled.is_some()) {
            return None;
        }
        let (first, last) = (txns.first()?, txns.last()?);
        let writes =
            MirrorWrites::collect(&self.shapes, txns.iter().flat_map(|t| t.changes.iter()));
        let planned = self
            .plan(source, &last.commit_lsn.to_string(), txns, &writes)
            .ok()?;
        Some(GroupPlan {
            first: first.commit_lsn,
            last: last.commit_lsn,
            txns: txns.len(),
            planned,
        })
    }

    /// The statements of a pipelined group after its BEGIN: [`ARM`], the mirror's writes, the group statement,
    /// with their arguments (owned: a group may be planned while the one before it is applied).
    fn plan(
        &self,
        source: &str,
        lsn_text: &str,
        txns: &[PosTransaction],
        writes: &MirrorWrites<'_>,
    ) -> Result<Vec<Planned>, ErpError> {
        let mut changes: Vec<(usize, &Change)> =
            Vec::with_capacity(txns.iter().map(|t| t.changes.len()).sum());
        for (i, t) in txns.iter().enumerate() {
            changes.extend(t.changes.iter().map(|c| (i, c)));
        }
        let mut touched = Touched::new(self.documents.len());
        let mut indirect = self.direct_touches(&changes, &mut touched);
        let mut planned = vec![Planned {
            sql: ARM.to_string(),
            params: vec![Box::new(source.to_string()), Box::new(lsn_text.to_string())],
        }];
        planned.extend(self.mirror_statements(writes, true));
        // the group's own events (header/child mappings beside the documents), each with its transaction
        let own: Vec<Value> = txns
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.events.iter().map(move |e| serde_json::json!([i, e])))
            .collect();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(source.to_string()),
            Box::new(lsn_text.to_string()),
            Box::new(serde_json::to_string(&own)?),
            Box::new(i32::try_from(txns.len().saturating_sub(1)).unwrap_or(i32::MAX)),
        ];
        for (d_i, keys_at) in touched.0.into_iter().enumerate() {
            let (keys, ats): (Vec<String>, Vec<i32>) = keys_at
                .into_iter()
                .map(|(k, at)| (k, i32::try_from(at).unwrap_or(i32::MAX)))
                .unzip();
            params.push(Box::new(keys));
            params.push(Box::new(ats));
            // the images whose headers the touched_by SQL finds, inside the group statement
            for (t_i, &shape_i) in self.touched_shapes[d_i].iter().enumerate() {
                let images = indirect.remove(&(d_i, t_i)).unwrap_or_default();
                let rows: Vec<&Map<String, Value>> = images.iter().map(|(_, r)| *r).collect();
                params.extend(column_arrays(&self.shapes[shape_i].columns, &rows));
                let txn: Vec<i32> = images
                    .iter()
                    .map(|(i, _)| i32::try_from(*i).unwrap_or(i32::MAX))
                    .collect();
                params.push(Box::new(txn));
            }
        }
        planned.push(Planned {
            sql: self.group.clone(),
            params,
        });
        Ok(planned)
    }

    /// The pipelined way (see [`DocumentPoster::apply`]): BEGIN, [`ARM`], the mirror's writes, the group
    /// statement, COMMIT and the ERP's WAL positions, sent together (once the connection has prepared the
    /// statements; before, BEGIN is waited for and they are prepared). Returns apply_batch's answer (None: the
    /// checkpoint is at or past the group, and nothing was written), committed. When a statement failed, the
    /// COMMIT rolled everything back.
    async fn apply_pipelined(
        &self,
        erp: &Erp,
        source: &str,
        txns: &[PosTransaction],
        ahead: Option<GroupPlan>,
    ) -> Result<(Option<Value>, ErpWal), Pipelined> {
        let client = erp.client();
        let Some(last) = txns.last() else {
            return Ok((None, erp.wal().await?));
        };
        let commit_lsn = last.commit_lsn;
        let lsn_text = commit_lsn.to_string();
        let t0 = std::time::Instant::now();
        let planned_ahead = ahead.as_ref().is_some_and(|a| a.is_for(txns));
        let planned = match ahead {
            Some(a) if planned_ahead => a.planned,
            _ => {
                let writes =
                    MirrorWrites::collect(&self.shapes, txns.iter().flat_map(|t| t.changes.iter()));
                self.plan(source, &lsn_text, txns, &writes)?
            }
        };
        let t_plan = t0.elapsed();
        let begin = self.begin();
        // once every statement is prepared, BEGIN goes in the pipeline too (the statements that write carry
        // IN_GROUP); before, it is waited for, and they are prepared under the mirror's search path
        let prepared: Option<Vec<Statement>> =
            planned.iter().map(|p| self.prepared(&p.sql)).collect();
        let (statements, pipelined_begin) = match prepared {
            Some(statements) => (statements, true),
            None => {
                client.batch_execute(&begin).await?;
                let mut statements = Vec::with_capacity(planned.len());
                for p in &planned {
                    statements.push(self.statement(client, &p.sql).await?);
                }
                (statements, false)
            }
        };
        let args: Vec<Vec<&(dyn ToSql + Sync)>> = planned.iter().map(Planned::args).collect();
        let opened = async {
            if pipelined_begin {
                client.batch_execute(&begin).await
            } else {
                Ok(())
            }
        };
        // sent in this order on the first poll: BEGIN, the statements, COMMIT, the WAL positions
        let (began, results, committed, wal) = futures::future::join4(
            opened,
            futures::future::join_all(
                statements
                    .iter()
                    .zip(&args)
                    .map(|(st, a)| client.query(st, a)),
            ),
            client.batch_execute("COMMIT"),
            erp.wal(),
        )
        .await;
        // BEGIN failed: what followed ran outside any transaction and wrote nothing (IN_GROUP)
        began?;
        let mut rows = Vec::with_capacity(results.len());
        let mut failed = None;
        for r in results {
            match r {
                Ok(r) => rows.push(r),
                Err(e) => {
                    // the first error; those after it only say the transaction is aborted
                    failed = Some(e);
                    break;
                }
            }
        }
        // the COMMIT rolled back a transaction where a statement failed; it may itself fail (the connection)
        committed?;
        if let Some(e) = failed {
            return Err(if classify(&e) == ErrorClass::Data {
                Pipelined::OneByOne(e.into())
            } else {
                Pipelined::Failed(e.into())
            });
        }
        let wal = wal.map_err(|e| ErpError::AfterApply(Box::new(e)))?;
        let checkpoint: Lsn = match rows.first().and_then(|r| r.first()) {
            Some(row) => row.get::<_, String>(0).parse().map_err(ErpError::from)?,
            None => return Err(Pipelined::Failed(ErpError::NoAnswer("the checkpoint"))),
        };
        if commit_lsn <= checkpoint {
            // applied already: IN_GROUP was off, nothing was written
            return Ok((None, wal));
        }
        let answer: String = match rows.last().and_then(|r| r.first()) {
            Some(row) => row.get(0),
            None => return Err(Pipelined::Failed(ErpError::NoAnswer("a document group"))),
        };
        let t_pipeline = t0.elapsed();
        let answer = serde_json::from_str(&answer).map_err(ErpError::from)?;
        let done = std::time::Instant::now();
        let since_last = self
            .last_done
            .lock()
            .ok()
            .and_then(|mut last| last.replace(done))
            .map(|last| t0.saturating_duration_since(last).as_secs_f64() * 1e3);
        tracing::debug!(
            source,
            txns = txns.len(),
            plan_ms = t_plan.as_secs_f64() * 1e3,
            pipeline_ms = (t_pipeline - t_plan).as_secs_f64() * 1e3,
            answer_ms = (t0.elapsed() - t_pipeline).as_secs_f64() * 1e3,
            between_groups_ms = since_last.unwrap_or(0.0),
            planned_ahead,
            begin_waited = !pipelined_begin,
            "document group"
        );
        Ok((Some(answer), wal))
    }

    /// The one-by-one way, inside the caller's transaction: `None` when the checkpoint is at or past the group.
    async fn apply_in_transaction(
        &self,
        client: &Client,
        source: &str,
        txns: &[PosTransaction],
        commit_lsn: Lsn,
    ) -> Result<Option<Value>, ErpError> {
        // the mirror must not take rows the checkpoint says are applied
        let st = self.statement(client, CHECKPOINT).await?;
        let row = client.query_one(&st, &[&source]).await?;
        let checkpoint: Lsn = row.get::<_, String>(0).parse()?;
        if commit_lsn <= checkpoint {
            return Ok(None);
        }
        let t0 = std::time::Instant::now();
        let writes =
            MirrorWrites::collect(&self.shapes, txns.iter().flat_map(|t| t.changes.iter()));
        self.write_mirror(client, &writes).await?;
        let t_mirror = t0.elapsed();

        let mut changes: Vec<(usize, &Change)> = Vec::new();
        for (i, t) in txns.iter().enumerate() {
            changes.extend(t.changes.iter().map(|c| (i, c)));
        }
        let mut touched = Touched::new(self.documents.len());
        self.touches(client, &changes, &mut touched).await?;
        let t_touch = t0.elapsed();
        // per transaction: its own events, then the documents it settled
        let mut by_txn: Vec<Vec<Value>> = txns.iter().map(|t| t.events.clone()).collect();
        for (at, ev) in self
            .settle(client, source, &touched, commit_lsn, txns.len() - 1)
            .await?
        {
            by_txn[at].push(ev);
        }
        let t_eval = t0.elapsed();
        let events: Vec<Value> = by_txn.into_iter().flatten().collect();
        let payload = serde_json::to_string(&events)?;
        let st = self
            .statement(
                client,
                "SELECT possync.apply_batch($1, $2::text::pg_lsn, $3::text::jsonb)::text",
            )
            .await?;
        let row = client
            .query_one(&st, &[&source, &commit_lsn.to_string(), &payload])
            .await?;
        let text: String = row.get(0);
        tracing::debug!(
            source,
            txns = txns.len(),
            events = events.len(),
            mirror_ms = t_mirror.as_secs_f64() * 1e3,
            touches_ms = (t_touch - t_mirror).as_secs_f64() * 1e3,
            evaluate_ms = (t_eval - t_touch).as_secs_f64() * 1e3,
            apply_batch_ms = (t0.elapsed() - t_eval).as_secs_f64() * 1e3,
            "document group, one statement at a time"
        );
        Ok(Some(serde_json::from_str(&text)?))
    }

    /// Marks the headers that changes touch by themselves (a header's own row, a child's parent column) with
    /// the last transaction (by index) that touched each; returns, per (document, touched_by entry), the row
    /// images whose headers a query must find, each with its transaction.
    fn direct_touches<'c>(
        &self,
        changes: &[(usize, &'c Change)],
        touched: &mut Touched,
    ) -> Indirect<'c> {
        let mut indirect = Indirect::new();
        // per `through` entry, the header of each child row the group inserted or updated, from its new image
        // (whose own change touched that header already)
        let mut parents: HashMap<(usize, usize), HashMap<String, String>> = HashMap::new();
        for (d_i, per) in self.through.iter().enumerate() {
            for (t_i, th) in per.iter().enumerate() {
                let Some(th) = th else { continue };
                let mut found = HashMap::new();
                for &(_, c) in changes {
                    if c.table != th.child || !matches!(c.op, ChangeOp::Insert | ChangeOp::Update) {
                        continue;
                    }
                    if let (Some(k), Some(p)) = (
                        c.row.get(&th.key).and_then(header_key),
                        c.row.get(&th.parent).and_then(header_key),
                    ) {
                        found.insert(k.into_owned(), p.into_owned());
                    }
                }
                parents.insert((d_i, t_i), found);
            }
        }
        for &(i, c) in changes {
            let Some(route) = self
                .shape_index
                .get(c.table.as_str())
                .and_then(|&s_i| self.routes.get(s_i))
            else {
                continue;
            };
            let images = std::iter::once(&c.row).chain(c.old.as_ref());
            for image in images {
                for (d_i, column) in &route.direct {
                    if let Some(key) = image.get(column).and_then(header_key) {
                        touched.mark(*d_i, &key, i);
                    }
                }
                for &(d_i, t_i) in &route.indirect {
                    let through = self.through.get(d_i).and_then(|p| p.get(t_i));
                    let header = through.and_then(Option::as_ref).and_then(|th| {
                        let child = image.get(&th.on).and_then(header_key)?;
                        parents.get(&(d_i, t_i))?.get(child.as_ref())
                    });
                    match header {
                        Some(h) => touched.mark(d_i, h, i),
                        None => indirect.entry((d_i, t_i)).or_default().push((i, image)),
                    }
                }
            }
        }
        indirect
    }

    /// The `touched_by` queries for those images, one per (document, table), each with its document.
    fn touched_by_statements(&self, indirect: Indirect<'_>) -> Vec<(usize, Planned)> {
        let mut out = Vec::new();
        for ((d_i, t_i), images) in indirect {
            let tb = &self.documents[d_i].touched_by[t_i];
            // checked when the poster was prepared
            let Some(shape) = self.shapes.iter().find(|s| s.name == tb.table) else {
                continue;
            };
            let rows: Vec<&Map<String, Value>> = images.iter().map(|(_, r)| *r).collect();
            let mut params = column_arrays(&shape.columns, &rows);
            let txn: Vec<i32> = images
                .iter()
                .map(|(i, _)| i32::try_from(*i).unwrap_or(i32::MAX))
                .collect();
            params.push(Box::new(txn));
            out.push((
                d_i,
                Planned {
                    sql: touched_by_sql(tb, &shape.columns),
                    params,
                },
            ));
        }
        out
    }

    /// Finds the headers that changes touch, with the last transaction (by index) that touched each: header and
    /// child rows say so themselves; rows of `touched_by` tables are asked, one query per table.
    async fn touches(
        &self,
        client: &Client,
        changes: &[(usize, &Change)],
        touched: &mut Touched,
    ) -> Result<(), ErpError> {
        let indirect = self.direct_touches(changes, touched);
        for (d_i, p) in self.touched_by_statements(indirect) {
            let st = self.statement(client, &p.sql).await?;
            for r in client.query(&st, &p.args()).await? {
                let key: &str = r.get(0);
                let at: i32 = r.get(1);
                touched.mark(d_i, key, usize::try_from(at).unwrap_or(0));
            }
        }
        Ok(())
    }

    /// Evaluates the touched headers and notes which wait: the events of the settled ones, each with the index
    /// of the transaction it goes with (`last` for a header no transaction is named for).
    async fn settle(
        &self,
        client: &Client,
        source: &str,
        touched: &Touched,
        commit_lsn: Lsn,
        last: usize,
    ) -> Result<Vec<(usize, Value)>, ErpError> {
        let mut out = Vec::new();
        for (d_i, d) in self.documents.iter().enumerate() {
            let keys_at = &touched.0[d_i];
            if keys_at.is_empty() {
                continue;
            }
            let keys: Vec<String> = keys_at.keys().cloned().collect();
            let evaluated = self
                .evaluate(client, d_i, source, &keys, commit_lsn)
                .await?;
            let mut pending = Vec::new();
            let mut settled = Vec::new();
            for (key, state, event) in evaluated {
                let at = keys_at.get(&key).copied().unwrap_or(last);
                match (state.as_str(), event) {
                    (crate::document::PENDING, _) => pending.push(key),
                    (_, Some(ev)) => {
                        out.push((at, ev));
                        settled.push(key);
                    }
                    (_, None) => settled.push(key),
                }
            }
            if self.note_documents {
                let st = self
                    .statement(
                        client,
                        "SELECT possync.note_documents($1, $2, $3::text[], $4::text[])",
                    )
                    .await?;
                client
                    .execute(&st, &[&source, &d.name, &pending, &settled])
                    .await?;
            }
        }
        Ok(out)
    }

    /// For a spilled POS transaction (see [`crate::spill`]), inside the caller's ERP transaction: the mirrored
    /// changes from the file, written 5,000 at a time, then the events of the documents they settle.
    pub async fn spilled(
        &self,
        client: &Client,
        source: &str,
        file: &std::path::Path,
        commit_lsn: Lsn,
    ) -> Result<Vec<Value>, ErpError> {
        use std::io::BufRead;
        client
            .batch_execute(&format!(
                "SET LOCAL search_path TO {}; {GROUP_SETTINGS}",
                ident(&self.schema)
            ))
            .await?;
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| ErpError::Spill(e.to_string()))?,
        );
        let mut touched = Touched::new(self.documents.len());
        let mut chunk: Vec<Change> = Vec::new();
        let mut lines = reader.lines();
        loop {
            let line = lines
                .next()
                .transpose()
                .map_err(|e| ErpError::Spill(e.to_string()))?;
            if let Some(c) = line.as_deref().and_then(crate::spill::change_of) {
                if self.mirrors(&c.table) {
                    chunk.push(c);
                }
            }
            if chunk.len() >= 5000 || (line.is_none() && !chunk.is_empty()) {
                let writes = MirrorWrites::collect(&self.shapes, chunk.iter());
                self.write_mirror(client, &writes).await?;
                let indexed: Vec<(usize, &Change)> = chunk.iter().map(|c| (0, c)).collect();
                self.touches(client, &indexed, &mut touched).await?;
                chunk.clear();
            }
            if line.is_none() {
                break;
            }
        }
        Ok(self
            .settle(client, source, &touched, commit_lsn, 0)
            .await?
            .into_iter()
            .map(|(_, ev)| ev)
            .collect())
    }

    /// Evaluates headers; a header whose SQL fails with an error about the data becomes a rejected event.
    async fn evaluate(
        &self,
        client: &Client,
        d_i: usize,
        source: &str,
        keys: &[String],
        commit_lsn: Lsn,
    ) -> Result<Vec<(String, String, Option<Value>)>, ErpError> {
        let st = self.statement(client, &self.queries[d_i]).await?;
        let source_param = source.to_string();
        client.batch_execute("SAVEPOINT possync_document").await?;
        let rows = match client.query(&st, &[&keys, &source_param]).await {
            Ok(rows) => rows,
            Err(e) if classify(&e) == ErrorClass::Data => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT possync_document")
                    .await?;
                // one by one, to keep the good ones
                let mut out = Vec::new();
                for key in keys {
                    client.batch_execute("SAVEPOINT possync_one").await?;
                    match client
                        .query(&st, &[&vec![key.clone()], &source_param])
                        .await
                    {
                        Ok(rows) => {
                            client
                                .batch_execute("RELEASE SAVEPOINT possync_one")
                                .await?;
                            out.extend(rows_of(&rows)?);
                        }
                        Err(e) if classify(&e) == ErrorClass::Data => {
                            client
                                .batch_execute("ROLLBACK TO SAVEPOINT possync_one")
                                .await?;
                            // a header still waiting is not a failure yet: it is evaluated again once final
                            let state_sql = crate::document::compile_state(
                                &self.documents[d_i],
                                &self.key_types[d_i],
                            );
                            let state = client
                                .query_opt(&state_sql, &[&vec![key.clone()]])
                                .await
                                .ok()
                                .flatten()
                                .map(|r| r.get::<_, String>(1));
                            if state.as_deref() == Some(crate::document::PENDING) {
                                out.push((key.clone(), crate::document::PENDING.to_string(), None));
                                continue;
                            }
                            let name = &self.documents[d_i].name;
                            let first = client
                                .query_opt(
                                    &format!("INSERT INTO {FAILED} (document, doc_key) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1"),
                                    &[name, key],
                                )
                                .await?
                                .is_some();
                            if !first {
                                out.push((key.clone(), crate::document::FINAL.to_string(), None));
                                continue;
                            }
                            tracing::error!(source, document = %name, key = %key, commit_lsn = %commit_lsn,
                                error = %crate::pgerr::describe(&e),
                                "the mapping of a document failed in the ERP; keeping it as a rejected event");
                            out.push((
                                key.clone(),
                                crate::document::FINAL.to_string(),
                                Some(mapping_failure(source, name, key, &e)),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                return Ok(out);
            }
            Err(e) => return Err(e.into()),
        };
        client
            .batch_execute("RELEASE SAVEPOINT possync_document")
            .await?;
        rows_of(&rows)
    }

    /// The statements that bring the mirror to a group's last images, table by table: a truncate's DELETE,
    /// the deleted rows, the rows the group inserted (plain INSERTs when `fresh`, else with the rest), the
    /// other complete rows (upserts), the partial ones (UPDATEs of the columns they carry). Rows go as one text
    /// array per column.
    fn mirror_statements(&self, writes: &MirrorWrites<'_>, fresh: bool) -> Vec<Planned> {
        let mut out = Vec::new();
        for (&s_i, t) in &writes.tables {
            let Some(shape) = self.shapes.get(s_i) else {
                continue;
            };
            let table = format!("{}.{}", ident(&self.schema), ident(&shape.name));
            if t.emptied {
                out.push(Planned {
                    sql: format!("DELETE FROM {table} WHERE {IN_GROUP}"),
                    params: Vec::new(),
                });
            }
            let mut inserted: Vec<&Map<String, Value>> = Vec::new();
            let mut full: Vec<&Map<String, Value>> = Vec::new();
            let mut partial: Vec<&Map<String, Value>> = Vec::new();
            let mut deleted: Vec<&Map<String, Value>> = Vec::new();
            for w in t.rows.values() {
                match w {
                    RowWrite::Full { row, fresh: true } if fresh => inserted.push(row),
                    RowWrite::Full { row, .. } => full.push(row),
                    RowWrite::Partial(r) => partial.push(r),
                    RowWrite::Delete(r) => deleted.push(r),
                }
            }
            let key_columns: Vec<(String, String)> = shape
                .key
                .iter()
                .filter_map(|k| shape.columns.iter().find(|(c, _)| c == k).cloned())
                .collect();
            let non_key: Vec<&String> = shape
                .columns
                .iter()
                .map(|(c, _)| c)
                .filter(|c| !shape.key.contains(c))
                .collect();
            let names: Vec<String> = shape.columns.iter().map(|(c, _)| ident(c)).collect();
            let names = names.join(", ");
            if !deleted.is_empty() && key_columns.len() == shape.key.len() {
                let matching: Vec<String> = shape
                    .key
                    .iter()
                    .map(|k| format!("x.{k} = d.{k}", k = ident(k)))
                    .collect();
                out.push(Planned {
                    sql: format!(
                        "DELETE FROM {table} AS x USING {rows} AS d WHERE {} AND {IN_GROUP}",
                        matching.join(" AND "),
                        rows = rows_from_arrays(&key_columns, 1, false),
                    ),
                    params: column_arrays(&key_columns, &deleted),
                });
            }
            if !inserted.is_empty() {
                out.push(Planned {
                    sql: format!(
                        "INSERT INTO {table} ({names}) SELECT {names} FROM {rows} AS r WHERE {IN_GROUP}",
                        rows = rows_from_arrays(&shape.columns, 1, false),
                    ),
                    params: column_arrays(&shape.columns, &inserted),
                });
            }
            if !full.is_empty() {
                let key: Vec<String> = shape.key.iter().map(|k| ident(k)).collect();
                let sets: Vec<String> = non_key
                    .iter()
                    .map(|c| format!("{c} = EXCLUDED.{c}", c = ident(c)))
                    .collect();
                let on_conflict = if sets.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", sets.join(", "))
                };
                out.push(Planned {
                    sql: format!(
                        "INSERT INTO {table} ({names}) SELECT {names} FROM {rows} AS r WHERE {IN_GROUP} ON CONFLICT ({}) {on_conflict}",
                        key.join(", "),
                        rows = rows_from_arrays(&shape.columns, 1, false),
                    ),
                    params: column_arrays(&shape.columns, &full),
                });
            }
            if !partial.is_empty() {
                // rare (an update that left unchanged TOAST values out): the images go as JSON, each setting
                // only the columns it has
                let sets: Vec<String> = non_key
                    .iter()
                    .map(|c| format!("{c} = (json_populate_record(x, e.v)).{c}", c = ident(c)))
                    .collect();
                if !sets.is_empty() {
                    let cond: Vec<String> = shape
                        .key
                        .iter()
                        .map(|k| {
                            format!(
                                "x.{k} = (json_populate_record(NULL::{table}, e.v)).{k}",
                                k = ident(k)
                            )
                        })
                        .collect();
                    let images: Vec<Value> = partial
                        .iter()
                        .map(|r| Value::Object((*r).clone()))
                        .collect();
                    out.push(Planned {
                        sql: format!(
                            "UPDATE {table} AS x SET {} FROM json_array_elements($1::text::json) AS e(v) WHERE {} AND {IN_GROUP}",
                            sets.join(", "),
                            cond.join(" AND ")
                        ),
                        params: vec![Box::new(Value::Array(images).to_string())],
                    });
                }
            }
        }
        out
    }

    /// Brings the mirror to a group's last images one statement at a time, complete rows as upserts (the way
    /// that works whatever the mirror already holds).
    async fn write_mirror(
        &self,
        client: &Client,
        writes: &MirrorWrites<'_>,
    ) -> Result<(), ErpError> {
        for p in self.mirror_statements(writes, false) {
            let st = self.statement(client, &p.sql).await?;
            client.execute(&st, &p.args()).await?;
        }
        Ok(())
    }
}

fn rows_of(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, String, Option<Value>)>, ErpError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key: String = r.get(0);
        let state: String = r.get(1);
        let event: Option<String> = r.get(2);
        let event = match event {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        };
        out.push((key, state, event));
    }
    Ok(out)
}

/// Copies the mirrored tables as the exported snapshot shows them into the ERP's mirror, and sets the
/// source's checkpoint to the slot's consistent point, in one ERP transaction. Documents already final in the
/// copy are history: they are not posted.
pub async fn initial_copy(
    pos_url: &str,
    erp: &Erp,
    source: &str,
    poster: &DocumentPoster,
    snapshot: &str,
    consistent_point: Lsn,
) -> Result<u64, MirrorError> {
    let pos = crate::tls::connect(pos_url)
        .await
        .map_err(|e| MirrorError::Invalid(format!("POS: connecting for the initial copy: {e}")))?;
    pos.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        literal(snapshot)
    ))
    .await
    .map_err(pos_err("reading the replication slot's snapshot"))?;
    let client = erp.client();
    client
        .batch_execute("BEGIN")
        .await
        .map_err(erp_err("starting the initial copy"))?;
    let mut copied = 0u64;
    let result: Result<(), MirrorError> = async {
        for shape in poster.shapes().iter().filter(|s| s.copy) {
            let target = format!("{}.{}", ident(poster.schema()), ident(&shape.name));
            let (schema, name) = shape.pos_table.split_once('.').unwrap_or(("public", &shape.pos_table));
            let select = format!("SELECT to_jsonb(t)::text FROM {}.{} AS t", ident(schema), ident(name));
            let insert = format!(
                "INSERT INTO {target} SELECT * FROM json_populate_recordset(NULL::{target}, $1::text::json) ON CONFLICT DO NOTHING"
            );
            // rows stream from the POS and go to the ERP 5,000 at a time: memory stays bounded by the chunk
            let rows = pos
                .query_raw(&select, std::iter::empty::<&str>())
                .await
                .map_err(pos_err(format!("copying {}", shape.pos_table)))?;
            futures::pin_mut!(rows);
            let mut chunk = String::from("[");
            let mut in_chunk = 0usize;
            loop {
                let next = rows
                    .next()
                    .await
                    .transpose()
                    .map_err(pos_err(format!("copying {}", shape.pos_table)))?;
                if let Some(r) = &next {
                    if in_chunk > 0 {
                        chunk.push(',');
                    }
                    chunk.push_str(r.get::<_, &str>(0));
                    in_chunk += 1;
                }
                if in_chunk > 0 && (next.is_none() || in_chunk == 5000) {
                    chunk.push(']');
                    client.execute(&insert, &[&chunk]).await.map_err(erp_err(format!(
                        "copying {} into the mirror",
                        shape.pos_table
                    )))?;
                    copied += in_chunk as u64;
                    chunk = String::from("[");
                    in_chunk = 0;
                }
                if next.is_none() {
                    break;
                }
            }
        }
        client
            .query_one(
                "SELECT possync.apply_batch($1, $2::text::pg_lsn, '[]'::jsonb)::text",
                &[&source, &consistent_point.to_string()],
            )
            .await
            .map_err(erp_err("setting the checkpoint after the initial copy"))?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(erp_err("committing the initial copy"))?;
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    let _ = pos.batch_execute("COMMIT").await;
    drop(pos);
    Ok(copied)
}

#[cfg(test)]
mod tests;
