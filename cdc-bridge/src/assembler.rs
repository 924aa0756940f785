//! Collecting a POS transaction's changes between Begin and Commit and mapping them at Commit.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::decoder::{DecodeError, Message, RelationCache};
use crate::lsn::Lsn;
use crate::mapping::{row_of, Change, ChangeOp, Mapping};

/// A committed POS transaction, mapped to events.
#[derive(Debug, Clone, PartialEq)]
pub struct PosTransaction {
    /// The commit record's LSN: what `apply_batch` stores as the source checkpoint.
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    pub events: Vec<Value>,
    /// The transaction's changes to mirrored tables, in order (see [`crate::mirror`]).
    pub changes: Vec<Change>,
    /// A transaction too large to hold: its changes are in this file, and `events` and `changes` are empty.
    pub spilled: Option<std::sync::Arc<crate::spill::SpilledTxn>>,
}

/// Turns the pgoutput message stream into mapped transactions.
#[derive(Debug)]
pub struct Assembler {
    source: String,
    mapping: Arc<Mapping>,
    relations: RelationCache,
    open: Option<(Lsn, Vec<Change>)>,
    /// The open transaction's file once it passed `spill_after` changes.
    spill: Option<crate::spill::Spill>,
    spill_after: usize,
    spill_dir: std::path::PathBuf,
}

impl Assembler {
    pub fn new(source: &str, mapping: Arc<Mapping>) -> Assembler {
        Assembler {
            source: source.to_string(),
            mapping,
            relations: RelationCache::default(),
            open: None,
            spill: None,
            spill_after: usize::MAX,
            spill_dir: std::env::temp_dir(),
        }
    }

    /// Past `after` changes, a transaction's changes go to a file in `dir` (see [`crate::spill`]).
    pub fn spilling(mut self, after: usize, dir: std::path::PathBuf) -> Assembler {
        self.spill_after = after.max(1);
        self.spill_dir = dir;
        self
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one message; returns the transaction when the message is its Commit.
    pub fn push(&mut self, message: Message) -> Result<Option<PosTransaction>, DecodeError> {
        match message {
            Message::Begin { final_lsn, .. } => {
                self.open = Some((final_lsn, Vec::new()));
                self.spill = None;
            }
            Message::Relation(r) => self.relations.update(r),
            Message::Type { .. } | Message::Origin { .. } => {}
            Message::Insert { relation, new } => {
                let rel = self.relations.get(relation)?;
                let change = Change {
                    table: rel.qualified_name(),
                    op: ChangeOp::Insert,
                    row: row_of(rel, &new),
                    old: None,
                };
                self.record(change)?;
            }
            Message::Update { relation, old, new } => {
                let rel = self.relations.get(relation)?;
                let change = Change {
                    table: rel.qualified_name(),
                    op: ChangeOp::Update,
                    row: row_of(rel, &new),
                    old: old.map(|(_, t)| row_of(rel, &t)),
                };
                self.record(change)?;
            }
            Message::Delete { relation, old } => {
                let rel = self.relations.get(relation)?;
                let change = Change {
                    table: rel.qualified_name(),
                    op: ChangeOp::Delete,
                    row: row_of(rel, &old.1),
                    old: None,
                };
                self.record(change)?;
            }
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    let rel = self.relations.get(oid)?;
                    let change = Change {
                        table: rel.qualified_name(),
                        op: ChangeOp::Truncate,
                        row: Map::new(),
                        old: None,
                    };
                    self.record(change)?;
                }
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let changes = self.open.take().map(|(_, c)| c).unwrap_or_default();
                if let Some(spill) = self.spill.take() {
                    let spilled = spill
                        .finish()
                        .map_err(|e| DecodeError::Spill(e.to_string()))?;
                    tracing::info!(source = %self.source, commit_lsn = %commit_lsn, changes = spilled.changes,
                        "a large POS transaction was spilled to disk; it is posted from there");
                    return Ok(Some(PosTransaction {
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        events: Vec::new(),
                        changes: Vec::new(),
                        spilled: Some(std::sync::Arc::new(spilled)),
                    }));
                }
                let events = self.mapping.events_of(&self.source, commit_lsn, &changes);
                let changes = if self.mapping.mirrors().is_empty() {
                    Vec::new()
                } else {
                    changes
                        .into_iter()
                        .filter(|c| self.mapping.is_mirrored(&c.table))
                        .collect()
                };
                return Ok(Some(PosTransaction {
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    events,
                    changes,
                    spilled: None,
                }));
            }
        }
        Ok(None)
    }

    fn record(&mut self, change: Change) -> Result<(), DecodeError> {
        let spill_err = |e: std::io::Error| DecodeError::Spill(e.to_string());
        if let Some(spill) = &mut self.spill {
            return spill.push(&change).map_err(spill_err);
        }
        match &mut self.open {
            Some((_, changes)) => {
                changes.push(change);
                if changes.len() > self.spill_after {
                    let held = std::mem::take(changes);
                    self.spill = Some(
                        crate::spill::Spill::start(&self.spill_dir, &self.source, held)
                            .map_err(spill_err)?,
                    );
                }
            }
            // pgoutput always wraps changes in Begin/Commit; a change outside one is kept as its own transaction
            None => self.open = Some((Lsn::ZERO, vec![change])),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
