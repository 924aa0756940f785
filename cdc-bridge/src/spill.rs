//! A POS transaction too large to hold in memory (D3): its changes go to a file as they arrive, and its events are
//! written from that file straight into the ERP, so the bridge's memory is bounded by configuration, not by what
//! a till writes.
//!
//! Past `spill_after` changes, the assembler appends each change of the open transaction to a file, one JSON line
//! each. At commit the applier reads the file twice: first to index it (where each header, child and other row
//! is; a few bytes per row), then to write the events, header by header with their lines and tenders row by row,
//! as text into `COPY pg_temp.possync_payload FROM STDIN` in the ERP. One `apply_batch` then posts the whole
//! transaction from that table, with its commit LSN, in the same ERP transaction: exactly once as any other.
//! Rows of mirrored tables in such a transaction are kept as rejected records (documents are not spilled).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::lsn::Lsn;
use crate::mapping::{child_item, child_order, header_base, unmapped, Change, ChangeOp, Mapping};
use crate::source::Rejection;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A transaction being written to disk.
#[derive(Debug)]
pub struct Spill {
    file: SpillFile,
    out: BufWriter<File>,
    changes: u64,
}

/// The file of a spilled transaction; removed when the last holder drops it. While it lives, it holds an
/// exclusive lock (`flock`) on the file, which tells [`remove_leftovers`] that the file is in use.
#[derive(Debug)]
pub struct SpillFile {
    pub path: PathBuf,
    _lock: File,
}

impl PartialEq for SpillFile {
    fn eq(&self, other: &SpillFile) -> bool {
        self.path == other.path
    }
}

impl Eq for SpillFile {}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The start of the names of a source's spill files: `possync-spill-<source>-<pid>-<n>.jsonl`.
fn name_prefix(source: &str) -> String {
    format!("possync-spill-{}-", crate::source::sanitize(source))
}

/// Keeps a spilled transaction's file beside it as `possync-kept-<source>-<commit LSN>.jsonl` (a hard link, or a
/// copy where linking fails), for when the ERP can take neither its events nor its rejected form: the file then
/// is where its rows are kept. Returns the kept file's path.
pub fn keep(txn: &SpilledTxn, source: &str, commit_lsn: Lsn) -> std::io::Result<PathBuf> {
    let name = format!(
        "possync-kept-{}-{}.jsonl",
        crate::source::sanitize(source),
        commit_lsn.to_string().replace('/', "-")
    );
    let kept = txn.file.path.with_file_name(name);
    if kept.exists() {
        return Ok(kept);
    }
    if std::fs::hard_link(&txn.file.path, &kept).is_err() {
        std::fs::copy(&txn.file.path, &kept)?;
    }
    Ok(kept)
}

/// Creates a spill file: a new file only (never one that exists, nor through a symbolic link someone put in its
/// place in a shared directory), readable by the bridge's user alone (it holds sales), locked as in use.
fn create(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Err(e) = file.try_lock() {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    // between its creation and its lock another session's clean-up may have taken it for a leftover (sources
    // whose names differ only in case or punctuation share a prefix) and removed it: the path must still be this
    // file
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => Ok(file),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} was removed or replaced as it was created",
                path.display()
            ),
        )),
    }
}

/// Removes the spill files of `source` in `dir` that a bridge left behind (it was killed or crashed while it held
/// a large transaction): regular files named as this source's, which no process holds (their lock is free).
/// Files of other sources, files in use (by this process or another bridge that still streams this source) and
/// anything that is not a regular file are left alone. Returns how many were removed.
pub fn remove_leftovers(dir: &Path, source: &str) -> std::io::Result<usize> {
    let prefix = name_prefix(source);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // <pid>-<n>.jsonl: the source's name has no '-' (sanitized), so another source's files never match
        let ours = rest.strip_suffix(".jsonl").is_some_and(|r| {
            r.split_once('-').is_some_and(|(pid, n)| {
                [pid, n]
                    .iter()
                    .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
        });
        // not through a link: file_type does not follow one
        if !ours || !entry.file_type()?.is_file() {
            continue;
        }
        let path = entry.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// A committed transaction on disk.
#[derive(Debug, PartialEq, Eq)]
pub struct SpilledTxn {
    pub file: SpillFile,
    pub changes: u64,
}

fn line_of(c: &Change) -> String {
    let mut m = Map::new();
    m.insert("t".into(), Value::from(c.table.clone()));
    m.insert("o".into(), Value::from(c.op.as_str()));
    m.insert("r".into(), Value::Object(c.row.clone()));
    if let Some(old) = &c.old {
        m.insert("x".into(), Value::Object(old.clone()));
    }
    Value::Object(m).to_string()
}

/// A spilled line back as the change it was.
pub fn change_of(line: &str) -> Option<Change> {
    let v: Value = serde_json::from_str(line).ok()?;
    let op = match v.get("o")?.as_str()? {
        "insert" => ChangeOp::Insert,
        "update" => ChangeOp::Update,
        "delete" => ChangeOp::Delete,
        _ => ChangeOp::Truncate,
    };
    let obj = |k: &str| match v.get(k) {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    Some(Change {
        table: v.get("t")?.as_str()?.to_string(),
        op,
        row: obj("r").unwrap_or_default(),
        old: obj("x"),
    })
}

impl Spill {
    /// Starts a spill file in `dir` with the changes held so far.
    pub fn start(dir: &Path, source: &str, held: Vec<Change>) -> std::io::Result<Spill> {
        // a name taken meanwhile (see `create`) is tried again under the next number
        let mut attempt = 0;
        let (path, file) = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "{}{}-{n}.jsonl",
                name_prefix(source),
                std::process::id()
            ));
            match create(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 3 => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        };
        // the lock goes with the open file, shared by both handles: held until the transaction is dropped
        let lock = match file.try_clone() {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let mut s = Spill {
            file: SpillFile { path, _lock: lock },
            out: BufWriter::new(file),
            changes: 0,
        };
        for c in &held {
            s.push(c)?;
        }
        Ok(s)
    }

    pub fn push(&mut self, c: &Change) -> std::io::Result<()> {
        self.out.write_all(line_of(c).as_bytes())?;
        self.out.write_all(b"\n")?;
        self.changes += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<SpilledTxn> {
        self.out.flush()?;
        Ok(SpilledTxn {
            file: self.file,
            changes: self.changes,
        })
    }
}

/// Where a line is in the file.
type At = (u64, u32);

enum Entry {
    /// An outbox row: its JSON column is the event.
    Outbox(At, usize),
    /// A header row of event mapping `usize`.
    Header(At, usize),
}

fn read_at(file: &File, at: At) -> std::io::Result<String> {
    let mut buf = vec![0u8; at.1 as usize];
    file.read_exact_at(&mut buf, at.0)?;
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn change_at(file: &File, at: At) -> std::io::Result<Change> {
    let line = read_at(file, at)?;
    change_of(&line).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a spilled line is not a change",
        )
    })
}

/// Calls `f` with each change of a spilled file and where its line is, in file order.
fn each_change(file: &File, mut f: impl FnMut(At, Change)) -> std::io::Result<()> {
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let at: At = (offset, (n - 1) as u32);
        offset += n as u64;
        if let Some(c) = change_of(line.trim_end()) {
            f(at, c);
        }
    }
}

/// Writes the events of a spilled transaction, as the text of one JSON array, in pieces to `emit`, in the order
/// [`Mapping::events_of`] gives them. Memory: a few bytes per row for the index, one row at a time otherwise.
/// `documents`: the mirrored rows were posted as documents (see [`crate::mirror::DocumentPoster::spilled`]),
/// whose events are `extra`, written last; otherwise mirrored rows are kept as rejected records.
#[allow(clippy::too_many_arguments)]
pub fn write_events(
    mapping: &Mapping,
    source: &str,
    commit_lsn: Lsn,
    txn: &SpilledTxn,
    documents: bool,
    extra: &[Value],
    emit: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    write(
        mapping, source, commit_lsn, txn, documents, extra, None, emit,
    )
}

/// Writes the rejected form of a spilled transaction the ERP refused (see [`crate::source::rejected_form`]):
/// each of the events [`write_events`] writes (mirrored rows kept as rejected records, no documents), wrapped in
/// a record that says why, streamed from the file the same way, so that every event and row is kept.
pub fn write_rejected(
    mapping: &Mapping,
    source: &str,
    commit_lsn: Lsn,
    txn: &SpilledTxn,
    rejection: &Rejection,
    emit: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    write(
        mapping,
        source,
        commit_lsn,
        txn,
        false,
        &[],
        Some(rejection),
        emit,
    )
}

/// The array of events (or of their rejected records) being written, one event or piece at a time.
struct Out<'a> {
    emit: &'a mut dyn FnMut(String) -> std::io::Result<()>,
    first: bool,
    /// Events written (opened, for one in pieces).
    written: u64,
    wrap: Option<&'a Rejection>,
    /// The event written in pieces, when carried as text: its first characters (at most as many as a record
    /// keeps) and how many it has.
    text: Option<(String, usize)>,
}

impl Out<'_> {
    fn sep(&mut self) -> &'static str {
        if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        }
    }

    /// One whole event.
    fn event(&mut self, ev: &Value) -> std::io::Result<()> {
        let text = match self.wrap {
            None => ev.to_string(),
            Some(r) => r.wrap(self.written as usize, Some(ev)).to_string(),
        };
        let sep = self.sep();
        (self.emit)(format!("{sep}{text}"))?;
        self.written += 1;
        Ok(())
    }

    /// Starts an event written in pieces: `head` its fields before the arrays, `text` their JSON text without
    /// the closing brace, `depth` how deep the whole event nests.
    fn open(&mut self, head: &Value, text: String, depth: usize) -> std::io::Result<()> {
        let sep = self.sep();
        let Some(r) = self.wrap else {
            self.written += 1;
            return (self.emit)(format!("{sep}{text}"));
        };
        let mut record = r.record(&self.written.to_string());
        if let Some(id) = head.get("event_id") {
            record.insert("original_event_id".into(), id.clone());
        }
        self.written += 1;
        let mut wrapper = Value::Object(record).to_string();
        wrapper.pop();
        if r.carries_text(depth) {
            self.text = Some((String::new(), 0));
            (self.emit)(format!("{sep}{wrapper},\"original_text\":"))?;
            self.piece(text)
        } else {
            (self.emit)(format!("{sep}{wrapper},\"original\":{text}"))
        }
    }

    /// The next piece of the event opened.
    fn piece(&mut self, text: String) -> std::io::Result<()> {
        match &mut self.text {
            None => (self.emit)(text),
            Some((head, chars)) => {
                let room = crate::source::ORIGINAL_TEXT_MAX_CHARS.saturating_sub(*chars);
                if room > 0 {
                    head.extend(text.chars().take(room));
                }
                *chars += text.chars().count();
                Ok(())
            }
        }
    }

    /// Ends the event opened.
    fn close(&mut self) -> std::io::Result<()> {
        self.piece("}".into())?;
        match self.text.take() {
            Some((head, chars)) => {
                (self.emit)(format!("{}}}", Rejection::text_value(&head, chars)))
            }
            None if self.wrap.is_some() => (self.emit)("}".into()),
            None => Ok(()),
        }
    }
}

/// A child mapping and the rows it claimed for a header (where each is, and its index among the changes).
type ChildRows<'a> = (&'a crate::mapping::ChildMapping, &'a Vec<(At, usize)>);

/// Calls `f` with the items of one array (`into`) of a header's event, from the child rows it claimed, in
/// `order_by` order: rows arrive in it as a rule, and are sorted (keys held, a few bytes each) only when they
/// did not.
fn each_item(
    file: &File,
    header: Option<&possync_events::Event>,
    kind: &str,
    into: &str,
    lists: &[ChildRows],
    f: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut index = 0usize;
    for (ch, rows) in lists {
        let mut sorted = true;
        if ch.order_by.is_some() {
            let mut last = None;
            for (at, _) in rows.iter() {
                let k = child_order(ch, &change_at(file, *at)?.row);
                if last.as_ref().is_some_and(|l| *l > k) {
                    sorted = false;
                    break;
                }
                last = Some(k);
            }
        }
        let order: Vec<At> = if sorted {
            Vec::new()
        } else {
            let mut keyed = Vec::with_capacity(rows.len());
            for (at, _) in rows.iter() {
                keyed.push((child_order(ch, &change_at(file, *at)?.row), *at));
            }
            keyed.sort();
            keyed.into_iter().map(|(_, at)| at).collect()
        };
        let in_order: Box<dyn Iterator<Item = At> + '_> = if sorted {
            Box::new(rows.iter().map(|(at, _)| *at))
        } else {
            Box::new(order.iter().copied())
        };
        for at in in_order {
            let row = change_at(file, at)?.row;
            let item = Value::Object(child_item(ch, kind, &row));
            let item = match (header, into) {
                (Some(h), "lines") => h.line_json(&item, index).unwrap_or(item),
                (Some(_), "tenders") => {
                    possync_events::Event::tender_json(&item, index).unwrap_or(item)
                }
                _ => item,
            };
            index += 1;
            f(item)?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write(
    mapping: &Mapping,
    source: &str,
    commit_lsn: Lsn,
    txn: &SpilledTxn,
    documents: bool,
    extra: &[Value],
    wrap: Option<&Rejection>,
    emit: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let file = File::open(&txn.file.path)?;
    // pass 1: the index
    let mut entries: Vec<Entry> = Vec::new();
    // child rows by (table, the header's key), each with its index among the transaction's changes (what
    // names it when no header claims it, as in Mapping::events_of)
    let mut children: HashMap<(String, String), Vec<(At, usize)>> = HashMap::new();
    let mut others: Vec<(At, usize)> = Vec::new();
    let mut index = 0usize;
    each_change(&file, |at, c| {
        let i = index;
        index += 1;
        if documents && mapping.is_mirrored(&c.table) {
            return;
        }
        if c.op != ChangeOp::Insert || mapping.is_mirrored(&c.table) {
            others.push((at, i));
            return;
        }
        if mapping.outbox_mappings().iter().any(|o| o.table == c.table) {
            entries.push(Entry::Outbox(at, i));
            return;
        }
        if let Some(e) = mapping
            .event_mappings()
            .iter()
            .position(|e| e.table == c.table)
        {
            entries.push(Entry::Header(at, e));
            return;
        }
        let mut child = false;
        for em in mapping.event_mappings() {
            for ch in em.children.iter().filter(|ch| ch.table == c.table) {
                if let Some(v) = c.row.get(&ch.key) {
                    children
                        .entry((ch.table.clone(), v.to_string()))
                        .or_default()
                        .push((at, i));
                    child = true;
                }
            }
        }
        if !child {
            others.push((at, i));
        }
    })?;
    // pass 2: the events
    emit("[".into())?;
    let mut out = Out {
        emit,
        first: true,
        written: 0,
        wrap,
        text: None,
    };
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    for entry in &entries {
        match entry {
            Entry::Outbox(at, i) => {
                let c = change_at(&file, *at)?;
                let o = mapping
                    .outbox_mappings()
                    .iter()
                    .find(|o| o.table == c.table);
                let ev = match o.and_then(|o| c.row.get(&o.column)) {
                    Some(p) if !p.is_null() => p.clone(),
                    _ => unmapped(
                        source,
                        commit_lsn,
                        *i,
                        &c,
                        format!(
                            "outbox column {} is missing or NULL",
                            o.map_or("", |o| o.column.as_str())
                        ),
                    ),
                };
                out.event(&ev)?;
            }
            Entry::Header(at, e) => {
                let em = &mapping.event_mappings()[*e];
                let c = change_at(&file, *at)?;
                let (base, kind) = header_base(source, em, &c.row);
                let base = Value::Object(base);
                // the contract form, piece by piece, equal to what the transaction held in memory makes
                // (Mapping::events_of): a POS transaction posted once from memory and once from its file (apply
                // lanes re-sending it after a restart, say) is then the same event, a duplicate
                let header = possync_events::Event::header_from_json(&base).ok();
                let shown = header
                    .as_ref()
                    .map_or_else(|| base.clone(), |h| Value::Object(h.header_json()));
                let key = em
                    .key
                    .as_ref()
                    .and_then(|k| c.row.get(k))
                    .map(Value::to_string);
                // the child rows each array takes
                let mut arrays: Vec<(&str, Vec<ChildRows>)> = Vec::new();
                for ch in &em.children {
                    if !arrays.iter().any(|(into, _)| *into == ch.into) {
                        arrays.push((&ch.into, Vec::new()));
                    }
                }
                for (into, lists) in &mut arrays {
                    for ch in em.children.iter().filter(|ch| ch.into == *into) {
                        let Some(key) = &key else { continue };
                        // a child row belongs to the first header with its key, as in memory
                        let list_key = (ch.table.clone(), key.clone());
                        if claimed.contains(&list_key) {
                            continue;
                        }
                        if let Some(rows) = children.get(&list_key) {
                            claimed.insert(list_key);
                            lists.push((ch, rows));
                        }
                    }
                }
                // an array the contract form writes when empty
                let written_empty = |into: &str| {
                    !header.as_ref().is_some_and(|h| {
                        into == "lines" || (into == "tenders" && !h.kind.has_tenders())
                    })
                };
                // how deep the event nests, for a record that carries it: read once more (refused transactions
                // only)
                let mut depth = possync_events::depth(&shown);
                if wrap.is_some_and(|r| !r.as_text) {
                    for (into, lists) in &arrays {
                        let mut items = 0usize;
                        let mut deepest = 0usize;
                        each_item(&file, header.as_ref(), &kind, into, lists, &mut |item| {
                            items += 1;
                            deepest = deepest.max(possync_events::depth(&item));
                            Ok(())
                        })?;
                        if items > 0 || written_empty(into) {
                            depth = depth.max(2 + deepest);
                        }
                    }
                }
                let mut text = shown.to_string();
                text.pop(); // the closing brace: the arrays follow
                out.open(&shown, text, depth)?;
                for (into, lists) in &arrays {
                    let opener = format!(",{}:[", Value::from(*into));
                    let mut first_item = true;
                    each_item(&file, header.as_ref(), &kind, into, lists, &mut |item| {
                        let lead = if std::mem::take(&mut first_item) {
                            opener.as_str()
                        } else {
                            ","
                        };
                        out.piece(format!("{lead}{item}"))
                    })?;
                    if !first_item {
                        out.piece("]".into())?;
                    } else if written_empty(into) {
                        // as the contract form writes an empty array
                        out.piece(format!("{opener}]"))?;
                    }
                }
                out.close()?;
            }
        }
    }
    // child rows no header claimed, updates, deletes, truncates and mirrored rows: kept as rejected records, in
    // the order of the transaction's changes and named by their index in it, as Mapping::events_of names them
    let mut left: Vec<(usize, At, bool)> = children
        .iter()
        .filter(|(k, _)| !claimed.contains(*k))
        .flat_map(|(_, v)| v.iter().map(|(at, i)| (*i, *at, true)))
        .chain(others.iter().map(|(at, i)| (*i, *at, false)))
        .collect();
    left.sort_unstable_by_key(|(i, _, _)| *i);
    left.dedup_by_key(|(i, _, _)| *i);
    for (i, at, child) in left {
        let c = change_at(&file, at)?;
        let reason = if child {
            format!(
                "a row of {} arrived without its header row in the same POS transaction",
                c.table
            )
        } else if mapping.is_mirrored(&c.table) {
            format!(
                "a row of mirrored table {} in a POS transaction too large to hold ({} changes): documents are not made from such transactions",
                c.table, txn.changes
            )
        } else {
            format!(
                "only inserts make events; got {} on {}",
                c.op.as_str(),
                c.table
            )
        };
        let ev = unmapped(source, commit_lsn, i, &c, reason);
        out.event(&ev)?;
    }
    for ev in extra {
        out.event(ev)?;
    }
    // a refused transaction without events is kept as one record of why, as in memory
    if let (Some(r), 0) = (wrap, out.written) {
        let record = r.wrap(0, None);
        (out.emit)(record.to_string())?;
        out.written += 1;
    }
    let written = out.written;
    (out.emit)("]".into())?;
    Ok(written)
}

#[cfg(test)]
mod tests;

/// An outcome from `{"status", "counts": {status: n}}`.
fn counted_outcome(answer: &Value) -> crate::apply::BatchOutcome {
    let n = |k: &str| {
        answer
            .get("counts")
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    crate::apply::BatchOutcome {
        applied: answer.get("status").and_then(Value::as_str) != Some("skipped"),
        applied_events: n("applied"),
        duplicate: n("duplicate"),
        conflict: n("conflict"),
        held: n("held"),
        rejected: n("rejected"),
    }
}

/// One COPY text-format field: backslash, tab, newline and carriage return escaped.
fn copy_field(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Most bytes of event text in one row of the payload table.
const PART_BYTES: usize = 64 * 1024;
/// Most bytes sent to the ERP in one COPY message.
const CHUNK_BYTES: usize = 256 * 1024;

/// Posts a spilled POS transaction: its events written from the file into a temporary table of the ERP session
/// with COPY, then one `apply_batch` over their concatenation, with the transaction's commit LSN, in one ERP
/// transaction. The bridge holds at most a few chunks of text at a time. With `rejection`, the ERP refused the
/// transaction: its rejected form is posted instead, written from the file as well (see [`write_rejected`]),
/// and the mirror is not touched.
///
/// The events go to apply_batch as one jsonb value, which PostgreSQL limits to 1 GB of text (SQLSTATE 54000):
/// a transaction whose events are larger is refused, and its rejected form, larger still, too.
pub async fn apply_spilled(
    erp: &crate::apply::Erp,
    mapping: &std::sync::Arc<Mapping>,
    poster: Option<&crate::mirror::DocumentPoster>,
    source: &str,
    commit_lsn: Lsn,
    spilled: &std::sync::Arc<SpilledTxn>,
    rejection: Option<&Rejection>,
) -> Result<(crate::apply::BatchOutcome, crate::apply::ErpWal), crate::apply::ErpError> {
    let poster = poster.filter(|_| rejection.is_none());
    use futures::SinkExt;
    let client = erp.client();
    let lane = erp.lane();
    let lane_arg = lane.map(|(l, n)| (l as i32, n as i32));
    client
        .batch_execute(
            "BEGIN; CREATE TEMP TABLE IF NOT EXISTS possync_payload (n bigint, part text) ON COMMIT DELETE ROWS",
        )
        .await?;
    let result = async {
        // mirrored rows first, so that the documents they settle are evaluated over all of them
        let doc_events = match poster {
            Some(p) => p.spilled(client, source, &spilled.file.path, commit_lsn).await?,
            None => Vec::new(),
        };
        let documents = poster.is_some();
        let sink = client
            .copy_in("COPY possync_payload (n, part) FROM STDIN")
            .await?;
        futures::pin_mut!(sink);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let (m, s, f) = (mapping.clone(), source.to_string(), spilled.clone());
        let wrap = rejection.cloned();
        let writer = tokio::task::spawn_blocking(move || {
            let mut part = String::new();
            let mut chunk = String::new();
            let mut n = 0u64;
            let flush_part = |part: &mut String, chunk: &mut String, n: &mut u64| {
                chunk.push_str(&n.to_string());
                chunk.push('\t');
                copy_field(chunk, part);
                chunk.push('\n');
                part.clear();
                *n += 1;
            };
            let mut emit = |piece: String| -> std::io::Result<()> {
                part.push_str(&piece);
                if part.len() >= PART_BYTES {
                    flush_part(&mut part, &mut chunk, &mut n);
                    if chunk.len() >= CHUNK_BYTES {
                        let full = std::mem::take(&mut chunk);
                        tx.blocking_send(bytes::Bytes::from(full)).map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::BrokenPipe,
                                "the ERP copy ended",
                            )
                        })?;
                    }
                }
                Ok(())
            };
            let written = match &wrap {
                None => write_events(
                    &m,
                    &s,
                    commit_lsn,
                    &f,
                    documents,
                    &doc_events,
                    &mut emit,
                )?,
                Some(r) => write_rejected(&m, &s, commit_lsn, &f, r, &mut emit)?,
            };
            if !part.is_empty() {
                flush_part(&mut part, &mut chunk, &mut n);
            }
            if !chunk.is_empty() {
                tx.blocking_send(bytes::Bytes::from(chunk)).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the ERP copy ended")
                })?;
            }
            Ok::<u64, std::io::Error>(written)
        });
        while let Some(chunk) = rx.recv().await {
            sink.as_mut().send(chunk).await?;
        }
        let events = writer
            .await
            .map_err(|e| crate::apply::ErpError::Spill(e.to_string()))?
            .map_err(|e| crate::apply::ErpError::Spill(e.to_string()))?;
        sink.as_mut().finish().await?;
        // the answer counted in the ERP: with one exception per line (negative on-hand, say) the whole answer
        // would be as large as the transaction
        let row = client
            .query_one(
                "SELECT jsonb_build_object('status', a->>'status', 'counts', \
                        (SELECT coalesce(jsonb_object_agg(s, n), '{}') FROM \
                           (SELECT r->>'status' AS s, count(*) AS n FROM jsonb_array_elements(a->'results') r \
                             GROUP BY 1) c))::text \
                   FROM (SELECT CASE WHEN $3::int4 IS NULL \
                                THEN possync.apply_batch($1, $2::text::pg_lsn, p) \
                                ELSE possync.apply_batch($1, $2::text::pg_lsn, p, $3::int4, $4::int4) END AS a \
                           FROM (SELECT (SELECT string_agg(part, '' ORDER BY n) FROM possync_payload)::jsonb AS p) q) x",
                &[&source, &commit_lsn.to_string(), &lane_arg.map(|l| l.0), &lane_arg.map(|l| l.1)],
            )
            .await?;
        if rejection.is_some() {
            tracing::info!(source, commit_lsn = %commit_lsn, records = events, changes = spilled.changes,
                "posted the rejected form of a spilled POS transaction");
        } else {
            tracing::info!(source, commit_lsn = %commit_lsn, events, changes = spilled.changes,
                "posted a spilled POS transaction");
        }
        Ok::<String, crate::apply::ErpError>(row.get(0))
    }
    .await;
    match result {
        Ok(text) => {
            client.batch_execute("COMMIT").await?;
            let wal = erp
                .wal()
                .await
                .map_err(|e| crate::apply::ErpError::AfterApply(Box::new(e)))?;
            Ok((counted_outcome(&serde_json::from_str(&text)?), wal))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
