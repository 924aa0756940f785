//! The pgoutput logical decoding protocol (version 1), as sent inside XLogData.
//!
//! Message layouts follow "Logical Replication Message Formats" in the PostgreSQL manual.

use std::collections::HashMap;

use crate::lsn::Lsn;

/// Why a pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message ends early: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("pgoutput message type {0:?} is not known")]
    UnknownMessage(char),
    #[error("pgoutput tuple column kind {0:?} is not known")]
    UnknownColumnKind(char),
    #[error("pgoutput {what} marker {found:?} is not one of {expected}")]
    BadMarker {
        what: &'static str,
        found: char,
        expected: &'static str,
    },
    #[error("pgoutput text is not UTF-8 in {0}")]
    NotUtf8(&'static str),
    #[error("a change refers to relation {0}, which no Relation message described")]
    UnknownRelation(u32),
    /// Writing a large transaction's changes to its spill file failed (see [`crate::spill`]).
    #[error("spilling a large POS transaction to disk: {0}")]
    Spill(String),
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the update did not change; the server does not resend it.
    UnchangedToast,
    Text(String),
    Binary(Vec<u8>),
}

/// A row image: one datum per column of the relation.
pub type Tuple = Vec<Datum>;

/// A column as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (usually the primary key).
    pub key: bool,
}

/// A published table as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<ColumnDef>,
}

impl Relation {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// Which old row image an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldImage {
    /// Only the replica identity columns (`K`).
    Key,
    /// The whole old row (`O`, replica identity full).
    Full,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// The commit record's LSN.
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        old: Option<(OldImage, Tuple)>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: (OldImage, Tuple),
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { what, needed: 1 })?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::NotUtf8(what))?;
        self.pos += end + 1;
        Ok(s.to_string())
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16("tuple column count")?;
        let mut t = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let datum = match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.i32("text column length")?.max(0) as usize;
                    let bytes = self.take(len, "text column value")?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| DecodeError::NotUtf8("a text column value"))?;
                    Datum::Text(s.to_string())
                }
                b'b' => {
                    let len = self.i32("binary column length")?.max(0) as usize;
                    Datum::Binary(self.take(len, "binary column value")?.to_vec())
                }
                other => return Err(DecodeError::UnknownColumnKind(other as char)),
            };
            t.push(datum);
        }
        Ok(t)
    }

    fn old_image(&mut self, marker: u8) -> Result<(OldImage, Tuple), DecodeError> {
        let kind = match marker {
            b'K' => OldImage::Key,
            b'O' => OldImage::Full,
            other => {
                return Err(DecodeError::BadMarker {
                    what: "old tuple",
                    found: other as char,
                    expected: "K or O",
                })
            }
        };
        Ok((kind, self.tuple()?))
    }
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message type")?;
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn("Begin final LSN")?,
            commit_time: r.i64("Begin commit time")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.lsn("Commit LSN")?,
            end_lsn: r.lsn("Commit end LSN")?,
            commit_time: r.i64("Commit time")?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn("Origin commit LSN")?,
            name: r.cstring("Origin name")?,
        },
        b'R' => {
            let oid = r.u32("Relation oid")?;
            let namespace = r.cstring("Relation namespace")?;
            let name = r.cstring("Relation name")?;
            let replica_identity = r.u8("Relation replica identity")?;
            let n = r.i16("Relation column count")?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(ColumnDef {
                    name: r.cstring("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32("Type oid")?,
            namespace: r.cstring("Type namespace")?,
            name: r.cstring("Type name")?,
        },
        b'I' => {
            let relation = r.u32("Insert relation")?;
            let marker = r.u8("Insert new tuple marker")?;
            if marker != b'N' {
                return Err(DecodeError::BadMarker {
                    what: "Insert tuple",
                    found: marker as char,
                    expected: "N",
                });
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32("Update relation")?;
            let mut marker = r.u8("Update tuple marker")?;
            let old = if marker == b'K' || marker == b'O' {
                let old = r.old_image(marker)?;
                marker = r.u8("Update new tuple marker")?;
                Some(old)
            } else {
                None
            };
            if marker != b'N' {
                return Err(DecodeError::BadMarker {
                    what: "Update new tuple",
                    found: marker as char,
                    expected: "N",
                });
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("Delete relation")?;
            let marker = r.u8("Delete tuple marker")?;
            Message::Delete {
                relation,
                old: r.old_image(marker)?,
            }
        }
        b'T' => {
            let n = r.u32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            let mut relations = Vec::with_capacity(n.min(65_536) as usize);
            for _ in 0..n {
                relations.push(r.u32("Truncate relation")?);
            }
            Message::Truncate { options, relations }
        }
        other => return Err(DecodeError::UnknownMessage(other as char)),
    };
    Ok(msg)
}

/// Relations seen on this stream, refreshed by every Relation message.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// Remembers (or replaces) a relation's description.
    pub fn update(&mut self, relation: Relation) {
        self.relations.insert(relation.oid, relation);
    }

    /// The relation a change refers to.
    pub fn get(&self, oid: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&oid)
            .ok_or(DecodeError::UnknownRelation(oid))
    }
}

#[cfg(test)]
mod tests;
