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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::lsn::Lsn;
use crate::mapping::{child_item, child_order, header_base, unmapped, Change, ChangeOp, Mapping};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A transaction being written to disk.
#[derive(Debug)]
pub struct Spill {
    file: SpillFile,
    out: BufWriter<File>,
    changes: u64,
}

/// The file of a spilled transaction; removed when the last holder drops it.
#[derive(Debug, PartialEq, Eq)]
pub struct SpillFile {
    pub path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "possync-spill-{}-{}-{n}.jsonl",
            crate::source::sanitize(source),
            std::process::id()
        ));
        let out = BufWriter::new(File::create(&path)?);
        let mut s = Spill {
            file: SpillFile { path },
            out,
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

/// Which apply lanes' parts of a spilled transaction must wait for another lane's part (see
/// [`crate::lanes::Within`]), read from its file: the headers' events in order, without their lines (a
/// line-level `original_event_id` is not seen here; a transfer's halves and a header's original sale are).
pub fn later_lanes(
    mapping: &Mapping,
    source: &str,
    txn: &SpilledTxn,
    lanes: usize,
) -> std::io::Result<Vec<bool>> {
    let file = File::open(&txn.file.path)?;
    let mut reader = BufReader::new(&file);
    let mut line = String::new();
    let mut within = crate::lanes::Within::new(lanes);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let Some(c) = change_of(line.trim_end()) else {
            continue;
        };
        if c.op != ChangeOp::Insert {
            continue;
        }
        if let Some(o) = mapping
            .outbox_mappings()
            .iter()
            .find(|o| o.table == c.table)
        {
            if let Some(ev) = c.row.get(&o.column) {
                within.add(ev);
            }
        } else if let Some(em) = mapping.event_mappings().iter().find(|e| e.table == c.table) {
            within.add(&Value::Object(header_base(source, em, &c.row).0));
        }
    }
    Ok(within.later())
}

/// Writes the events of a spilled transaction, as the text of one JSON array, in pieces to `emit`, in the order
/// [`Mapping::events_of`] gives them. Memory: a few bytes per row for the index, one row at a time otherwise.
/// `documents`: the mirrored rows were posted as documents (see [`crate::mirror::DocumentPoster::spilled`]),
/// whose events are `extra`, written last; otherwise mirrored rows are kept as rejected records.
/// `lane`: (lane, lanes) writes only the events of that apply lane (see [`crate::lanes`]).
#[allow(clippy::too_many_arguments)]
pub fn write_events(
    mapping: &Mapping,
    source: &str,
    commit_lsn: Lsn,
    txn: &SpilledTxn,
    documents: bool,
    extra: &[Value],
    lane: Option<(usize, usize)>,
    emit: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let ours = |ev: &Value| lane.is_none_or(|(l, n)| crate::lanes::event_lane(ev, n) == l);
    let file = File::open(&txn.file.path)?;
    // pass 1: the index
    let mut entries: Vec<Entry> = Vec::new();
    let mut children: HashMap<(String, String), Vec<At>> = HashMap::new();
    let mut others: Vec<(At, usize)> = Vec::new();
    {
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        let mut offset = 0u64;
        let mut index = 0usize;
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            let at: At = (offset, (n - 1) as u32);
            offset += n as u64;
            let Some(c) = change_of(line.trim_end()) else {
                continue;
            };
            let i = index;
            index += 1;
            if documents && mapping.is_mirrored(&c.table) {
                continue;
            }
            if c.op != ChangeOp::Insert || mapping.is_mirrored(&c.table) {
                others.push((at, i));
                continue;
            }
            if mapping.outbox_mappings().iter().any(|o| o.table == c.table) {
                entries.push(Entry::Outbox(at, i));
                continue;
            }
            if let Some(e) = mapping
                .event_mappings()
                .iter()
                .position(|e| e.table == c.table)
            {
                entries.push(Entry::Header(at, e));
                continue;
            }
            let mut child = false;
            for em in mapping.event_mappings() {
                for ch in em.children.iter().filter(|ch| ch.table == c.table) {
                    if let Some(v) = c.row.get(&ch.key) {
                        children
                            .entry((ch.table.clone(), v.to_string()))
                            .or_default()
                            .push(at);
                        child = true;
                    }
                }
            }
            if !child {
                others.push((at, i));
            }
        }
    }
    // pass 2: the events
    let mut written = 0u64;
    let mut first = true;
    let sep = |first: &mut bool| -> &'static str {
        if std::mem::take(first) {
            ""
        } else {
            ","
        }
    };
    emit("[".into())?;
    let mut claimed: HashMap<(String, String), ()> = HashMap::new();
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
                        "outbox column is missing or NULL".into(),
                    ),
                };
                if !ours(&ev) {
                    continue;
                }
                emit(format!("{}{ev}", sep(&mut first)))?;
                written += 1;
            }
            Entry::Header(at, e) => {
                let em = &mapping.event_mappings()[*e];
                let c = change_at(&file, *at)?;
                let (base, kind) = header_base(source, em, &c.row);
                let base = Value::Object(base);
                if !ours(&base) {
                    // another lane's: its child rows are still its own, not left over
                    if let Some(key) = em.key.as_ref().and_then(|k| c.row.get(k)) {
                        for ch in &em.children {
                            let list_key = (ch.table.clone(), key.to_string());
                            if children.contains_key(&list_key) {
                                claimed.insert(list_key, ());
                            }
                        }
                    }
                    continue;
                }
                // the contract form, piece by piece, equal to what the transaction held in memory makes
                // (Mapping::events_of): a POS transaction posted once from memory and once from its file (apply
                // lanes re-sending it after a restart, say) is then the same event, a duplicate
                let header = possync_events::Event::header_from_json(&base).ok();
                let shown = header
                    .as_ref()
                    .map_or_else(|| base.clone(), |h| Value::Object(h.header_json()));
                let mut text = shown.to_string();
                text.pop(); // the closing brace: the arrays follow
                emit(format!("{}{text}", sep(&mut first)))?;
                let key = em
                    .key
                    .as_ref()
                    .and_then(|k| c.row.get(k))
                    .map(Value::to_string);
                let mut intos: Vec<&str> = Vec::new();
                for ch in &em.children {
                    if !intos.contains(&ch.into.as_str()) {
                        intos.push(&ch.into);
                    }
                }
                for into in intos {
                    let opener = format!(",{}:[", Value::from(into));
                    let mut first_item = true;
                    let mut index = 0usize;
                    for ch in em.children.iter().filter(|ch| ch.into == into) {
                        let Some(key) = &key else { continue };
                        let list_key = (ch.table.clone(), key.clone());
                        if claimed.contains_key(&list_key) {
                            continue;
                        }
                        let Some(rows) = children.get(&list_key) else {
                            continue;
                        };
                        claimed.insert(list_key, ());
                        // in `order_by` order: rows arrive in it as a rule, and are sorted (keys held, a few
                        // bytes each) only when they did not
                        let mut sorted = true;
                        if ch.order_by.is_some() {
                            let mut last = None;
                            for at in rows {
                                let k = child_order(ch, &change_at(&file, *at)?.row);
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
                            for at in rows {
                                keyed.push((child_order(ch, &change_at(&file, *at)?.row), *at));
                            }
                            keyed.sort();
                            keyed.into_iter().map(|(_, at)| at).collect()
                        };
                        let in_order: &[At] = if sorted { rows } else { &order };
                        for at in in_order {
                            let row = change_at(&file, *at)?.row;
                            let item = Value::Object(child_item(ch, &kind, &row));
                            let item = match (&header, into) {
                                (Some(h), "lines") => h.line_json(&item, index).unwrap_or(item),
                                (Some(_), "tenders") => {
                                    possync_events::Event::tender_json(&item, index).unwrap_or(item)
                                }
                                _ => item,
                            };
                            index += 1;
                            let lead = if std::mem::take(&mut first_item) {
                                opener.as_str()
                            } else {
                                ","
                            };
                            emit(format!("{lead}{item}"))?;
                        }
                    }
                    if !first_item {
                        emit("]".into())?;
                    } else if !header.as_ref().is_some_and(|h| {
                        into == "lines" || (into == "tenders" && !h.kind.has_tenders())
                    }) {
                        // as the contract form writes an empty array
                        emit(format!("{opener}]"))?;
                    }
                }
                emit("}".into())?;
                written += 1;
            }
        }
    }
    // child rows no header claimed, updates, deletes, truncates and mirrored rows: kept as rejected records
    let mut unclaimed: Vec<At> = children
        .iter()
        .filter(|(k, _)| !claimed.contains_key(*k))
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    unclaimed.sort();
    for at in unclaimed {
        let c = change_at(&file, at)?;
        let ev = unmapped(
            source,
            commit_lsn,
            at.0 as usize,
            &c,
            format!(
                "a row of {} arrived without its header row in the same POS transaction",
                c.table
            ),
        );
        if !ours(&ev) {
            continue;
        }
        emit(format!("{}{ev}", sep(&mut first)))?;
        written += 1;
    }
    for (at, i) in others {
        let c = change_at(&file, at)?;
        let reason = if mapping.is_mirrored(&c.table) {
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
        if !ours(&ev) {
            continue;
        }
        emit(format!("{}{ev}", sep(&mut first)))?;
        written += 1;
    }
    for ev in extra.iter().filter(|ev| ours(ev)) {
        emit(format!("{}{ev}", sep(&mut first)))?;
        written += 1;
    }
    emit("]".into())?;
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
/// transaction. The bridge holds at most a few chunks of text at a time.
pub async fn apply_spilled(
    erp: &crate::apply::Erp,
    mapping: &std::sync::Arc<Mapping>,
    poster: Option<&crate::mirror::DocumentPoster>,
    source: &str,
    commit_lsn: Lsn,
    spilled: &std::sync::Arc<SpilledTxn>,
) -> Result<(crate::apply::BatchOutcome, crate::apply::ErpWal), crate::apply::ErpError> {
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
            let written = write_events(
                &m,
                &s,
                commit_lsn,
                &f,
                documents,
                &doc_events,
                lane,
                &mut emit,
            )?;
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
        tracing::info!(source, commit_lsn = %commit_lsn, events, changes = spilled.changes,
            "posted a spilled POS transaction");
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
