//! `possync-bridge check` and `status`: what is wrong, said plainly.

use crate::lsn::Lsn;
use crate::mapping::Mapping;
use crate::pgerr::describe;
use crate::source::{Source, PUBLICATION};

/// One finding of `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
}

fn ok(what: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        what: what.into(),
    }
}

fn problem(what: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        what: what.into(),
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, crate::tls::ConnectError> {
    crate::tls::connect(url).await
}

/// Checks the ERP (extension and privileges) and each source (wal_level, privileges, mapped tables, slot).
pub async fn check(
    erp_url: &str,
    sources: &[Source],
    mapping: &Mapping,
    dry_run: u32,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut checkpoints = Vec::new();
    match connect(erp_url).await {
        Err(e) => out.push(problem(format!("ERP: cannot connect: {e}"))),
        Ok(erp) => {
            for s in sources {
                if let Ok(row) = erp
                    .query_one("SELECT possync.source_checkpoint($1)::text", &[&s.name])
                    .await
                {
                    let text: String = row.get(0);
                    if let Ok(lsn) = text.parse::<Lsn>() {
                        checkpoints.push((s.name.clone(), crate::source::last_commit_of(lsn)));
                    }
                }
            }
            let has = erp
                .query_opt(
                    "SELECT has_function_privilege('possync.apply_batch(text, pg_lsn, jsonb)', 'EXECUTE') \
                     AND has_function_privilege('possync.source_checkpoint(text)', 'EXECUTE')",
                    &[],
                )
                .await;
            match has {
                Ok(Some(row)) if row.get::<_, bool>(0) => {
                    out.push(ok("ERP: possync is installed and apply_batch may be called"))
                }
                Ok(_) => out.push(problem(
                    "ERP: this role may not execute possync.apply_batch; run SELECT possync.grant_bridge('<role>')",
                )),
                Err(e) => out.push(problem(format!(
                    "ERP: possync.apply_batch is missing ({}); run CREATE EXTENSION possync",
                    describe(&e)
                ))),
            }
            if !mapping.documents().is_empty() {
                // not a problem: without it the documents' events are built with PostgreSQL's own functions
                let fast = erp
                    .query_one(crate::mirror::JSON_OBJECT_PRESENT, &[])
                    .await
                    .is_ok_and(|r| r.get::<_, bool>(0));
                out.push(ok(if fast {
                    "ERP: documents' events are built with possync.json_object_present"
                } else {
                    "ERP: documents' events are built with json_build_object and json_strip_nulls, which is slower: \
                     possync 0.6.0 has possync.json_object_present, which SELECT possync.grant_bridge('<role>') \
                     lets this role execute"
                }));
            }
        }
    }
    for s in sources {
        let checkpoint = checkpoints
            .iter()
            .find(|(n, _)| *n == s.name)
            .map(|(_, c)| *c);
        out.extend(check_source(s, mapping, checkpoint).await);
        if !mapping.mirrors().is_empty() {
            out.extend(check_documents(erp_url, s, mapping, dry_run).await);
        }
    }
    out
}

/// The statement a table owner runs when the bridge's POS role may not create the publication itself.
pub fn create_publication_sql(mapping: &Mapping) -> String {
    format!(
        "CREATE PUBLICATION {PUBLICATION} FOR TABLE {};",
        mapping.tables_sql().join(", ")
    )
}

/// Documents: the mirrored tables have keys; the ERP role may create the mirror (else the DDL a DBA runs); each
/// document's SQL runs against the POS itself; and, with `dry_run` N, the events the N most recent settled
/// headers would become, each checked against the event contract.
async fn check_documents(
    erp_url: &str,
    source: &Source,
    mapping: &Mapping,
    dry_run: u32,
) -> Vec<Finding> {
    let name = &source.name;
    let mut out = Vec::new();
    let pos = match connect(&source.url).await {
        Ok(c) => c,
        Err(_) => return out,
    };
    let shapes = match crate::mirror::describe(&pos, mapping).await {
        Ok(s) => {
            out.push(ok(format!(
                "{name}: the {} mirrored tables exist and have keys",
                s.len()
            )));
            s
        }
        Err(e) => {
            out.push(problem(format!("{name}: {e}")));
            return out;
        }
    };
    let schema = crate::mirror::schema_of(name);
    if let Ok(erp) = connect(erp_url).await {
        let can = erp
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')                  OR coalesce((SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace WHERE nspname = $1), false)",
                &[&schema],
            )
            .await
            .map(|r| r.get::<_, bool>(0));
        match can {
            Ok(true) => out.push(ok(format!(
                "{name}: the ERP role may keep the mirror in schema {schema}"
            ))),
            Ok(false) => out.push(problem(format!(
                "{name}: the ERP role may not create schema {schema} for the mirror; grant CREATE on the ERP database, or have a DBA run this and make the role its owner:\n{}",
                crate::mirror::ddl(&schema, &shapes)
            ))),
            Err(e) => out.push(problem(format!(
                "{name}: cannot read the ERP role's privileges: {}",
                describe(&e)
            ))),
        }
        // a source that already streams copies nothing more: a table mirrored only since then lacks its old rows
        let streams = erp
            .query_one(
                "SELECT possync.source_checkpoint($1) > '0/0'::pg_lsn",
                &[&name.as_str()],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if streams {
            for t in &shapes {
                let qualified = format!(
                    "{}.{}",
                    crate::document::ident(&schema),
                    crate::document::ident(&t.name)
                );
                let present: bool = erp
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(false);
                if !present && t.copy {
                    out.push(problem(format!(
                        "{name}: table {} is mapped for the mirror but the source already streams: its existing rows will not be copied (only the first start copies), so lookups of rows older than now find nothing; start the source afresh or set copy = false to accept it",
                        t.pos_table
                    )));
                }
            }
        }
    }
    let mut schemas: Vec<String> = mapping
        .mirrors()
        .iter()
        .map(|m| crate::document::ident(m.schema()))
        .collect();
    schemas.dedup();
    for d in mapping.documents() {
        let limit = dry_run.max(1);
        let sql = crate::document::compile(d, crate::document::Target::PosDryRun { limit });
        let setup = format!(
            "BEGIN READ ONLY; SET LOCAL search_path TO {}",
            schemas.join(", ")
        );
        if let Err(e) = pos.batch_execute(&setup).await {
            out.push(problem(format!(
                "{name}: cannot start a read-only transaction: {}",
                describe(&e)
            )));
            continue;
        }
        let rows = pos.query(&sql, &[&name.as_str()]).await;
        let _ = pos.batch_execute("ROLLBACK").await;
        match rows {
            Err(e) => out.push(problem(format!(
                "{name}: document {} does not run against the POS tables: {}",
                d.name,
                describe(&e)
            ))),
            Ok(rows) => {
                out.push(ok(format!(
                    "{name}: document {} runs against the POS tables",
                    d.name
                )));
                if dry_run == 0 {
                    continue;
                }
                if rows.is_empty() {
                    out.push(ok(format!(
                        "{name}: dry run of {}: no final or void header in the POS yet",
                        d.name
                    )));
                }
                for r in rows {
                    let key: String = r.get(0);
                    let event: Option<String> = r.get(2);
                    let parsed = event
                        .as_deref()
                        .map(serde_json::from_str::<serde_json::Value>);
                    match parsed {
                        Some(Ok(v)) => match possync_events::Event::from_json(&v) {
                            Ok(_) => out.push(ok(format!(
                                "{name}: dry run: {} {key} becomes {v}",
                                d.name
                            ))),
                            Err(m) => out.push(problem(format!(
                                "{name}: dry run: {} {key} would be rejected: {m}; the event would be {v}",
                                d.name
                            ))),
                        },
                        Some(Err(e)) => out.push(problem(format!(
                            "{name}: dry run: {} {key}: not JSON: {e}",
                            d.name
                        ))),
                        None => out.push(problem(format!(
                            "{name}: dry run: {} {key} made no event",
                            d.name
                        ))),
                    }
                }
            }
        }
    }
    out
}

async fn check_source(source: &Source, mapping: &Mapping, checkpoint: Option<Lsn>) -> Vec<Finding> {
    let name = &source.name;
    let mut out = Vec::new();
    let pos = match connect(&source.url).await {
        Ok(c) => c,
        Err(e) => {
            out.push(problem(format!("{name}: cannot connect to the POS: {e}")));
            return out;
        }
    };
    match pos
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
    {
        Ok(row) => {
            let level: String = row.get(0);
            if level == "logical" {
                out.push(ok(format!("{name}: wal_level is logical")));
            } else {
                out.push(problem(format!(
                    "{name}: wal_level is {level}, it must be logical (ALTER SYSTEM SET wal_level = logical, then restart)"
                )));
            }
        }
        Err(e) => out.push(problem(format!(
            "{name}: cannot read wal_level: {}",
            describe(&e)
        ))),
    }
    match pos
        .query_one(
            "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => out.push(ok(format!("{name}: role may replicate"))),
        Ok(_) => out.push(problem(format!(
            "{name}: the role lacks the REPLICATION attribute (ALTER ROLE ... REPLICATION)"
        ))),
        Err(e) => out.push(problem(format!(
            "{name}: cannot read role attributes: {}",
            describe(&e)
        ))),
    }
    for (table, table_sql) in mapping.tables().into_iter().zip(mapping.tables_sql()) {
        let row = pos
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        has_table_privilege(c.oid, 'SELECT') \
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&table_sql],
            )
            .await;
        match row {
            Ok(None) => out.push(problem(format!(
                "{name}: mapped table {table} does not exist"
            ))),
            Ok(Some(r)) => {
                let ident: String = r.get(0);
                let has_pk: bool = r.get(1);
                let can_read: bool = r.get(2);
                let identified = match ident.as_str() {
                    "f" | "i" => true,
                    "d" => has_pk,
                    _ => false,
                };
                if !identified {
                    out.push(problem(format!(
                        "{name}: table {table} has no primary key or replica identity; add a primary key or ALTER TABLE {table} REPLICA IDENTITY FULL"
                    )));
                } else if !can_read {
                    out.push(problem(format!(
                        "{name}: the role may not SELECT from {table} (needed to publish it)"
                    )));
                } else {
                    out.push(ok(format!(
                        "{name}: table {table} is mapped and has a replica identity"
                    )));
                }
            }
            Err(e) => out.push(problem(format!(
                "{name}: cannot inspect {table}: {}",
                describe(&e)
            ))),
        }
    }
    let slot = source.slot();
    match pos
        .query_opt(
            "SELECT plugin, coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
    {
        Ok(Some(r)) if r.get::<_, String>(1) == "lost" => out.push(problem(format!(
            "{name}: slot {slot} has lost the WAL it needed (wal_status lost): the POS transactions after the ERP's checkpoint {} cannot be streamed; the bridge refuses the source until they are re-posted and the loss is accepted (see README, slot loss)",
            checkpoint.unwrap_or(Lsn::ZERO)
        ))),
        Ok(None) if checkpoint.is_some_and(|c| c > Lsn::ZERO) => out.push(problem(format!(
            "{name}: slot {slot} does not exist although the ERP's checkpoint is {}: the POS transactions after it cannot be streamed; the bridge refuses the source until they are re-posted and the loss is accepted (see README, slot loss)",
            checkpoint.unwrap_or(Lsn::ZERO)
        ))),
        Ok(Some(r)) if r.get::<_, Option<String>>(0).as_deref() == Some("pgoutput") => {
            out.push(ok(format!("{name}: slot {slot} exists")))
        }
        Ok(Some(_)) => out.push(problem(format!(
            "{name}: slot {slot} exists but does not use pgoutput; drop it"
        ))),
        Ok(None) => out.push(ok(format!(
            "{name}: slot {slot} will be created on first run"
        ))),
        Err(e) => out.push(problem(format!(
            "{name}: cannot read replication slots: {}",
            describe(&e)
        ))),
    }
    match pos
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&PUBLICATION],
        )
        .await
    {
        Ok(Some(_)) => out.push(ok(format!("{name}: publication {PUBLICATION} exists"))),
        Ok(None) if checkpoint.is_none_or(|c| c == Lsn::ZERO) => {
            // CREATE PUBLICATION ... FOR TABLE needs CREATE on the database and ownership of every table
            let may = pos
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE') \
                        AND coalesce(bool_and(pg_has_role(c.relowner, 'USAGE')), true) \
                     FROM pg_class c WHERE c.oid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)",
                    &[&mapping.tables_sql()],
                )
                .await
                .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false));
            match may {
                Ok(true) => out.push(ok(format!(
                    "{name}: publication {PUBLICATION} will be created on first run"
                ))),
                Ok(false) => out.push(problem(format!(
                    "{name}: publication {PUBLICATION} does not exist and this role may not create it (it needs CREATE on the database and to own the tables); have the tables' owner run: {}",
                    create_publication_sql(mapping)
                ))),
                Err(e) => out.push(problem(format!(
                    "{name}: cannot read the role's privileges: {}",
                    describe(&e)
                ))),
            }
        }
        // the bridge makes it only for a source that never streamed (D5): reported below
        Ok(None) => {}
        Err(e) => out.push(problem(format!(
            "{name}: cannot read publications: {}",
            describe(&e)
        ))),
    }
    // the publication must carry every inserted row of the mapped tables (D5)
    match crate::publication::problems_on(&pos, mapping).await {
        Ok(problems) => {
            for (what, fix) in problems {
                let never_streamed = checkpoint.is_none_or(|c| c == Lsn::ZERO);
                if never_streamed {
                    // made or completed by the bridge on its first run
                    continue;
                }
                out.push(problem(format!(
                    "{name}: {what}; the bridge refuses the source until it is whole (on the POS: {fix}) and the POS transactions committed meanwhile are re-posted (resync) or their loss accepted"
                )));
            }
        }
        Err(e) => out.push(problem(format!(
            "{name}: cannot read the publication: {}",
            describe(&e)
        ))),
    }
    out
}

/// Per-source checkpoint, lag (when the POS is given) and held / rejected counts, as printable lines.
pub async fn status(erp_url: &str, sources: &[Source]) -> Result<Vec<String>, String> {
    let erp = connect(erp_url)
        .await
        .map_err(|e| format!("cannot connect to the ERP: {e}"))?;
    // the view is what possync.grant_bridge lets the bridge's role read; rejected counts the source's rejected
    // events still open (kept as exceptions, never in possync.event)
    let rows = erp
        .query(
            // apply_lanes came with 0.4.0: read so that an older ERP still answers
            "SELECT source_id, checkpoint::text, coalesce(applied_at::text, '-'), events_applied, held, rejected, \
                    coalesce((to_jsonb(s) ->> 'apply_lanes')::int4, 1) \
             FROM possync.source_status s ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read possync.source_status: {}", describe(&e)))?;
    let mut lines = vec![format!(
        "{:<16} {:>14} {:>14} {:>10} {:>6} {:>8} {:>5}  applied_at",
        "source", "checkpoint", "lag_bytes", "events", "held", "rejected", "lanes"
    )];
    for r in rows {
        let name: String = r.get(0);
        let checkpoint: String = r.get(1);
        let lag = match sources.iter().find(|s| s.name == name) {
            Some(s) => match connect(&s.url).await {
                Ok(pos) => pos
                    .query_one(
                        "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::bigint",
                        &[&checkpoint],
                    )
                    .await
                    .map(|row| row.get::<_, i64>(0).to_string())
                    .unwrap_or_else(|e| {
                        tracing::warn!(source = %name, error = %describe(&e), "cannot read the POS WAL position");
                        "?".into()
                    }),
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "cannot connect to the POS");
                    "unreachable".into()
                }
            },
            None => "-".into(),
        };
        lines.push(format!(
            "{:<16} {:>14} {:>14} {:>10} {:>6} {:>8} {:>5}  {}",
            name,
            checkpoint,
            lag,
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i32>(6),
            r.get::<_, String>(2)
        ));
    }
    Ok(lines)
}
