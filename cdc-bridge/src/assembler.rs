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
}

/// Turns the pgoutput message stream into mapped transactions.
#[derive(Debug)]
pub struct Assembler {
    source: String,
    mapping: Arc<Mapping>,
    relations: RelationCache,
    open: Option<(Lsn, Vec<Change>)>,
}

impl Assembler {
    pub fn new(source: &str, mapping: Arc<Mapping>) -> Assembler {
        Assembler {
            source: source.to_string(),
            mapping,
            relations: RelationCache::default(),
            open: None,
        }
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
                self.record(change);
            }
            Message::Update { relation, old, new } => {
                let rel = self.relations.get(relation)?;
                let change = Change {
                    table: rel.qualified_name(),
                    op: ChangeOp::Update,
                    row: row_of(rel, &new),
                    old: old.map(|(_, t)| row_of(rel, &t)),
                };
                self.record(change);
            }
            Message::Delete { relation, old } => {
                let rel = self.relations.get(relation)?;
                let change = Change {
                    table: rel.qualified_name(),
                    op: ChangeOp::Delete,
                    row: row_of(rel, &old.1),
                    old: None,
                };
                self.record(change);
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
                    self.record(change);
                }
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let changes = self.open.take().map(|(_, c)| c).unwrap_or_default();
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
                }));
            }
        }
        Ok(None)
    }

    fn record(&mut self, change: Change) {
        match &mut self.open {
            Some((_, changes)) => changes.push(change),
            // pgoutput always wraps changes in Begin/Commit; a change outside one is kept as its own transaction
            None => self.open = Some((Lsn::ZERO, vec![change])),
        }
    }
}

#[cfg(test)]
mod tests;
