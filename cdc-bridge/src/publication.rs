//! The publication the bridge reads, checked on the POS (issue 13, D5).
//!
//! pgoutput decides which rows to send with the publication as it was when each POS transaction committed: a
//! mapped table dropped from the publication, `publish` without `insert`, a row filter or a column list, or a
//! dropped publication make the stream carry transactions without some of their rows, or without any. Such a
//! transaction must not be applied: a sale without its tenders would post a short journal.
//!
//! So every session holds a [`Guard`] with its own POS connection. It reads the publication's shape for the
//! mapped tables (the publication row with its `xmin`, each table's `pg_publication_rel` or
//! `pg_publication_namespace` row, row filters and column lists) right after reading the POS's WAL position, each
//! in its own snapshot. When the shape is whole and unchanged since the session started, every POS transaction
//! committed up to that position was decoded with a whole publication: the applier applies only such
//! transactions, asking for a new check when a batch goes past the verified position (one POS round trip,
//! pipelined), and checks every second while idle. Any change to the rows of the mapped tables (a table dropped
//! and added again, `ALTER PUBLICATION ... SET`, the publication dropped and created again) makes a new row or a
//! new `xmin`, so a change undone between two checks is seen too.
//!
//! When the publication is not whole or has changed, the bridge applies what was verified, records in the ERP that
//! the POS transactions after its checkpoint may have been streamed without some rows (a loss record, as for a
//! lost slot: the checkpoint's lowest bit says it is not accepted), says at ERROR what is wrong and what to do, and
//! refuses the source (`publication_broken`, `/healthz` 503, `possync_bridge_publication_broken 1`), looking again
//! every ten seconds. Once the publication is whole again the source stays refused as after a slot loss, until an
//! operator re-posts the transactions committed meanwhile from the POS tables (`possync-bridge resync`) or accepts
//! their loss (`--accept-slot-loss`); both go on streaming from the POS's position at that moment, past the
//! transactions that were streamed incomplete.
//!
//! A source that has never streamed (checkpoint 0/0) gets the publication made or completed by the bridge, as
//! before. Changes made and undone while no bridge runs are not seen; a change committed within microseconds of a
//! check may be seen only at the next check.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::apply::Erp;
use crate::assembler::PosTransaction;
use crate::lsn::Lsn;
use crate::mapping::Mapping;
use crate::metrics::SourceMetrics;
use crate::source::{last_commit_of, SessionError, Source, PUBLICATION};

/// How often an idle session checks the publication.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

const POSITION: &str = "SELECT pg_current_wal_lsn()::text";

/// One row per mapped table, in the mapping's order (PostgreSQL 15 and later: row filters, column lists and
/// `FOR TABLES IN SCHEMA`).
const SHAPE_15: &str = "SELECT t.name, to_regclass(t.name) IS NOT NULL, \
        p.oid::int8, p.xmin::text, p.pubinsert, p.puballtables, \
        r.oid::int8, coalesce(r.prqual IS NOT NULL, false), coalesce(r.prattrs IS NOT NULL, false), n.oid::int8 \
   FROM unnest($2::text[]) WITH ORDINALITY AS t(name, i) \
   LEFT JOIN pg_publication p ON p.pubname = $1 \
   LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid AND r.prrelid = to_regclass(t.name) \
   LEFT JOIN pg_class c ON c.oid = to_regclass(t.name) \
   LEFT JOIN pg_publication_namespace n ON n.pnpubid = p.oid AND n.pnnspid = c.relnamespace \
  ORDER BY t.i";
/// The same before PostgreSQL 15.
const SHAPE_OLD: &str = "SELECT t.name, to_regclass(t.name) IS NOT NULL, \
        p.oid::int8, p.xmin::text, p.pubinsert, p.puballtables, \
        r.oid::int8, false, false, NULL::int8 \
   FROM unnest($2::text[]) WITH ORDINALITY AS t(name, i) \
   LEFT JOIN pg_publication p ON p.pubname = $1 \
   LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid AND r.prrelid = to_regclass(t.name) \
  ORDER BY t.i";

/// The publication's own row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationRow {
    pub oid: i64,
    /// Changes with every `ALTER PUBLICATION ... SET`, `RENAME`, `OWNER TO`.
    pub xmin: String,
    pub insert: bool,
    pub all_tables: bool,
}

/// How one mapped table is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    pub name: String,
    pub exists: bool,
    /// Its `pg_publication_rel` row (a new one each time it is added).
    pub rel: Option<i64>,
    pub row_filter: bool,
    pub column_list: bool,
    /// The `pg_publication_namespace` row that publishes its schema.
    pub schema: Option<i64>,
}

/// The publication as far as the mapped tables are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    pub publication: Option<PublicationRow>,
    pub tables: Vec<TableRow>,
}

/// What is wrong with the publication, and the statements that make it whole again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub what: String,
    pub fix: Vec<String>,
    /// The POS's WAL position when it was seen.
    pub pos_now: Lsn,
}

impl Shape {
    /// What keeps the stream from carrying every inserted row of the mapped tables, with the fix for each.
    pub fn problems(&self) -> Vec<(String, String)> {
        let Some(p) = &self.publication else {
            let tables: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
            return vec![(
                format!("publication {PUBLICATION} does not exist"),
                format!(
                    "CREATE PUBLICATION {PUBLICATION} FOR TABLE {}",
                    tables.join(", ")
                ),
            )];
        };
        let mut out = Vec::new();
        if !p.insert {
            out.push((
                format!("publication {PUBLICATION} does not publish inserts"),
                format!(
                    "ALTER PUBLICATION {PUBLICATION} SET (publish = 'insert, update, delete, truncate')"
                ),
            ));
        }
        for t in &self.tables {
            let name = &t.name;
            if !t.exists {
                out.push((
                    format!("mapped table {name} does not exist on the POS"),
                    format!("restore table {name} (and then ALTER PUBLICATION {PUBLICATION} ADD TABLE {name})"),
                ));
            } else if !(p.all_tables || t.rel.is_some() || t.schema.is_some()) {
                out.push((
                    format!("mapped table {name} is not in publication {PUBLICATION}"),
                    format!("ALTER PUBLICATION {PUBLICATION} ADD TABLE {name}"),
                ));
            } else if t.row_filter || t.column_list {
                let which = match (t.row_filter, t.column_list) {
                    (true, true) => "a row filter and a column list",
                    (true, false) => "a row filter (WHERE)",
                    _ => "a column list",
                };
                out.push((
                    format!("publication {PUBLICATION} publishes mapped table {name} with {which}"),
                    format!("ALTER PUBLICATION {PUBLICATION} DROP TABLE {name}; ALTER PUBLICATION {PUBLICATION} ADD TABLE {name} (in one transaction)"),
                ));
            }
        }
        out
    }

    /// How `self` differs from `before` (empty when it does not).
    pub fn changes_since(&self, before: &Shape) -> Vec<String> {
        let mut out = Vec::new();
        match (&before.publication, &self.publication) {
            (Some(a), Some(b)) if a.oid != b.oid => {
                out.push(format!("publication {PUBLICATION} was dropped and created again"))
            }
            (Some(a), Some(b)) if a.xmin != b.xmin => out.push(format!(
                "publication {PUBLICATION} was altered (ALTER PUBLICATION ... SET, RENAME or OWNER TO)"
            )),
            (a, b) if a != b => out.push(format!("publication {PUBLICATION} changed")),
            _ => {}
        }
        for (a, b) in before.tables.iter().zip(&self.tables) {
            if a != b {
                out.push(format!(
                    "how mapped table {} is published changed (dropped from the publication and added again, or its table or schema replaced)",
                    b.name
                ));
            }
        }
        if before.tables.len() != self.tables.len() {
            out.push("the mapped tables changed".into());
        }
        out
    }
}

/// Reads the shape from rows of [`SHAPE_15`] / [`SHAPE_OLD`].
fn shape_of(rows: &[tokio_postgres::Row]) -> Result<Shape, tokio_postgres::Error> {
    let mut shape = Shape::default();
    for r in rows {
        let oid: Option<i64> = r.try_get(2)?;
        if shape.publication.is_none() {
            if let Some(oid) = oid {
                shape.publication = Some(PublicationRow {
                    oid,
                    xmin: r.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
                    insert: r.try_get::<_, Option<bool>>(4)?.unwrap_or(false),
                    all_tables: r.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
                });
            }
        }
        shape.tables.push(TableRow {
            name: r.try_get(0)?,
            exists: r.try_get(1)?,
            rel: r.try_get(6)?,
            row_filter: r.try_get(7)?,
            column_list: r.try_get(8)?,
            schema: r.try_get(9)?,
        });
    }
    Ok(shape)
}

/// The publication check of one session (see the module documentation).
pub struct Guard {
    client: Client,
    position: tokio_postgres::Statement,
    shape: tokio_postgres::Statement,
    tables: Vec<String>,
    /// The shape when the session started.
    baseline: Shape,
    /// Every POS transaction committed up to here was decoded with the baseline shape.
    verified: Lsn,
    checked_at: Instant,
}

impl Guard {
    async fn connect(url: &str, mapping: &Mapping) -> Result<Guard, SessionError> {
        let client = crate::tls::connect(url).await?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .try_get(0)?;
        // prepared once: a check is then one round trip
        let position = client.prepare(POSITION).await?;
        let shape = client
            .prepare(if version >= 150_000 {
                SHAPE_15
            } else {
                SHAPE_OLD
            })
            .await?;
        Ok(Guard {
            client,
            position,
            shape,
            tables: mapping.tables_sql(),
            baseline: Shape::default(),
            verified: Lsn::ZERO,
            checked_at: Instant::now(),
        })
    }

    /// The session's ordinary POS connection.
    pub fn pos(&self) -> &Client {
        &self.client
    }

    /// The POS's position, then the shape, in two snapshots and one round trip.
    async fn read(&mut self) -> Result<(Lsn, Shape), SessionError> {
        let (position, rows) = futures::future::join(
            self.client.query_one(&self.position, &[]),
            self.client
                .query(&self.shape, &[&PUBLICATION, &self.tables]),
        )
        .await;
        self.checked_at = Instant::now();
        let text: String = position?.try_get(0)?;
        let position = text
            .parse()
            .map_err(|_| SessionError::Unverified(format!("pg_current_wal_lsn() said {text}")))?;
        Ok((position, shape_of(&rows?)?))
    }

    /// Starts a session's guard: makes or completes the publication for a source that never streamed, and
    /// otherwise refuses the source (recording it in the ERP) when the publication is not whole.
    pub async fn start(
        source: &Source,
        mapping: &Mapping,
        erp: &Erp,
        checkpoint: Lsn,
        metrics: &SourceMetrics,
    ) -> Result<Guard, SessionError> {
        let mut guard = Guard::connect(&source.url, mapping).await?;
        if checkpoint == Lsn::ZERO {
            crate::source::ensure_publication(&source.url, mapping).await?;
        }
        let (position, shape) = guard.read().await?;
        let problems = shape.problems();
        if !problems.is_empty() {
            let broken = broken(&problems, position);
            // a source that never streamed has nothing streamed incomplete: refused until the publication is
            // whole, nothing to record
            let record = checkpoint != Lsn::ZERO;
            return Err(refuse(erp, source, metrics, checkpoint, broken, record).await);
        }
        guard.baseline = shape;
        guard.verified = position;
        Ok(guard)
    }

    /// One check: the new verified position, or what is broken.
    async fn check(&mut self) -> Result<Result<Lsn, Broken>, SessionError> {
        let (position, shape) = self.read().await?;
        let problems = shape.problems();
        if !problems.is_empty() {
            return Ok(Err(broken(&problems, position)));
        }
        let changes = shape.changes_since(&self.baseline);
        if !changes.is_empty() {
            return Ok(Err(Broken {
                what: format!(
                    "{} while the source streamed (it is whole now, but POS transactions committed in between may have been streamed with a publication that was not)",
                    changes.join("; ")
                ),
                fix: Vec::new(),
                pos_now: position,
            }));
        }
        self.verified = self.verified.max(position);
        Ok(Ok(self.verified))
    }

    /// Keeps in `batch` (consecutive POS transactions, oldest first) those decoded with a verified publication,
    /// checking it again when the batch goes past the verified position. Returns what is broken when the batch
    /// had to be cut.
    pub async fn admit(
        &mut self,
        batch: &mut Vec<PosTransaction>,
    ) -> Result<Option<Broken>, SessionError> {
        let Some(last) = batch.last().map(|t| t.commit_lsn) else {
            return Ok(None);
        };
        let mut tries = 0;
        while self.verified < last {
            match self.check().await? {
                Ok(_) => {}
                Err(b) => {
                    let verified = self.verified;
                    batch.retain(|t| t.commit_lsn <= verified);
                    return Ok(Some(b));
                }
            }
            // the walsender sends only WAL the POS has flushed, so one check is always enough; a POS that says
            // otherwise (a standby being promoted?) is asked again for a moment
            tries += 1;
            if self.verified < last {
                if tries > 100 {
                    return Err(SessionError::Unverified(format!(
                        "the POS's WAL position {} stays before a transaction it sent, {last}",
                        self.verified
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(None)
    }

    /// Checks the publication when the last check is [`CHECK_EVERY`] old (called while the applier is idle).
    pub async fn idle_tick(&mut self) -> Result<Option<Broken>, SessionError> {
        if self.checked_at.elapsed() < CHECK_EVERY {
            return Ok(None);
        }
        Ok(self.check().await?.err())
    }
}

/// For `possync-bridge check`: what keeps the publication from carrying every inserted row of the mapped tables,
/// each with its fix (empty when it is whole).
pub async fn problems_on(
    pos: &Client,
    mapping: &Mapping,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let version: i32 = pos
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .try_get(0)?;
    let sql = if version >= 150_000 {
        SHAPE_15
    } else {
        SHAPE_OLD
    };
    let rows = pos
        .query(sql, &[&PUBLICATION, &mapping.tables_sql()])
        .await?;
    Ok(shape_of(&rows)?.problems())
}

fn broken(problems: &[(String, String)], pos_now: Lsn) -> Broken {
    Broken {
        what: problems
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        fix: problems.iter().map(|(_, f)| f.clone()).collect(),
        pos_now,
    }
}

/// The message an operator reads: what is wrong, what was kept from the ERP, and what to do.
pub fn message(name: &str, last_commit: Lsn, broken: &Broken, streamed: bool) -> String {
    let fix = if broken.fix.is_empty() {
        String::new()
    } else {
        format!(
            " (on the POS: {})",
            broken
                .fix
                .iter()
                .map(|f| format!("{f};"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    if !streamed {
        return format!(
            "refusing to stream source {name}: {what} (the POS is at {pos}); nothing was streamed from it yet. Make the publication whole{fix}; the bridge looks again every few seconds and streams once it is",
            what = broken.what,
            pos = broken.pos_now,
        );
    }
    format!(
        "refusing to stream source {name}: {what} (the POS is at {pos}). POS transactions committed after {last_commit}, the last the ERP holds, may have been streamed without those rows or not at all, and none of them is applied. Make the publication whole again{fix}; the bridge looks again every few seconds. The source then stays refused until the POS transactions committed after {last_commit} are re-posted from the POS tables with possync-bridge resync --from DATE --to DATE (the business dates they may have), or their loss is accepted with possync-bridge run --accept-slot-loss {name}={last_commit}; either streams on from the POS's position at that moment (a POS transaction committed while the publication did not exist can never be decoded again by PostgreSQL 15's pgoutput, so that is the only way past it)",
        what = broken.what,
        pos = broken.pos_now,
    )
}

/// Refuses the source for a publication that is not whole: with `record`, records it in the ERP once (so that a
/// restarted bridge refuses it too, even after the publication is fixed), says so at ERROR, and returns the
/// session's end.
pub async fn refuse(
    erp: &Erp,
    source: &Source,
    metrics: &SourceMetrics,
    checkpoint: Lsn,
    broken: Broken,
    record: bool,
) -> SessionError {
    let name = &source.name;
    let last_commit = last_commit_of(checkpoint);
    let message = message(name, last_commit, &broken, record);
    tracing::error!(source = %name, checkpoint = %last_commit, pos_wal = %broken.pos_now, "{message}");
    metrics.set_state(crate::metrics::SourceState::PublicationBroken);
    let marks = checkpoint.0 - last_commit.0;
    if record && marks.is_multiple_of(2) && marks < crate::source::MARK_BITS {
        let at = Lsn(checkpoint.0 + 1);
        let reason = format!(
            "source {name}: {}; POS transactions committed after {last_commit}, up to at least {} (the POS's WAL position when this was found), may have been streamed without some rows and were not applied; the bridge refuses the source until an operator re-posts them (possync-bridge resync --from DATE --to DATE) or accepts the loss (possync-bridge run --accept-slot-loss {name}={last_commit})",
            broken.what, broken.pos_now
        );
        let record = crate::source::loss_record(
            name,
            "publication_changed",
            last_commit,
            at,
            &reason,
            broken.pos_now,
        );
        match erp.apply_batch(name, at, &[record]).await {
            Ok(_) => metrics
                .checkpoint
                .store(at.0, std::sync::atomic::Ordering::Release),
            // the next session checks again and records it then
            Err(e) => return SessionError::Erp(e),
        }
    }
    SessionError::PublicationBroken(message)
}

/// The current checkpoint for [`refuse`] from inside a session.
pub async fn refuse_now(
    erp: &Erp,
    source: &Source,
    metrics: &SourceMetrics,
    broken: Broken,
) -> SessionError {
    match erp.checkpoint(&source.name).await {
        Ok(checkpoint) => refuse(erp, source, metrics, checkpoint, broken, true).await,
        Err(e) => SessionError::Erp(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rel: Option<i64>) -> TableRow {
        TableRow {
            name: name.into(),
            exists: true,
            rel,
            row_filter: false,
            column_list: false,
            schema: None,
        }
    }

    fn whole() -> Shape {
        Shape {
            publication: Some(PublicationRow {
                oid: 16401,
                xmin: "724".into(),
                insert: true,
                all_tables: false,
            }),
            tables: vec![table("pos.sale", Some(1)), table("pos.tender", Some(2))],
        }
    }

    #[test]
    fn a_whole_publication_has_no_problem_and_each_break_names_its_fix() {
        assert!(whole().problems().is_empty());
        let mut s = whole();
        s.tables[1].rel = None;
        let p = s.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].0.contains("pos.tender is not in publication possync"));
        assert_eq!(p[0].1, "ALTER PUBLICATION possync ADD TABLE pos.tender");
        let mut s = whole();
        if let Some(p) = s.publication.as_mut() {
            p.insert = false;
        }
        assert!(s.problems()[0].1.contains("SET (publish = 'insert"));
        let mut s = whole();
        s.publication = None;
        assert_eq!(
            s.problems()[0].1,
            "CREATE PUBLICATION possync FOR TABLE pos.sale, pos.tender"
        );
        let mut s = whole();
        s.tables[0].row_filter = true;
        assert!(s.problems()[0].0.contains("row filter"));
        // FOR ALL TABLES and FOR TABLES IN SCHEMA publish a table without its own row
        let mut s = whole();
        s.tables[1].rel = None;
        s.tables[1].schema = Some(9);
        assert!(s.problems().is_empty());
    }

    #[test]
    fn a_change_undone_between_two_checks_is_still_a_change() {
        let before = whole();
        assert!(whole().changes_since(&before).is_empty());
        let mut readded = whole();
        readded.tables[1].rel = Some(3);
        assert!(readded.problems().is_empty());
        assert!(readded.changes_since(&before)[0].contains("pos.tender"));
        let mut altered = whole();
        if let Some(p) = altered.publication.as_mut() {
            p.xmin = "731".into();
        }
        assert!(altered.changes_since(&before)[0].contains("altered"));
        let mut recreated = whole();
        if let Some(p) = recreated.publication.as_mut() {
            p.oid = 16500;
        }
        assert!(recreated.changes_since(&before)[0].contains("created again"));
    }

    #[test]
    fn the_message_says_what_to_do() {
        let b = Broken {
            what: "mapped table pos.tender is not in publication possync".into(),
            fix: vec!["ALTER PUBLICATION possync ADD TABLE pos.tender".into()],
            pos_now: Lsn(0x2000),
        };
        let m = message("store42", Lsn(0x1000), &b, true);
        assert!(
            m.contains("ALTER PUBLICATION possync ADD TABLE pos.tender;"),
            "{m}"
        );
        assert!(
            m.contains("possync-bridge resync --from DATE --to DATE"),
            "{m}"
        );
        assert!(m.contains("--accept-slot-loss store42=0/1000"), "{m}");
    }
}
