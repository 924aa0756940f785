//! `possync-bridge remap`: after a document mapping was corrected, post again what the old one got wrong, from
//! the rows the ERP's mirror kept, without re-reading the POS.
//!
//! Every settled header (final or cancelled) of each document is evaluated with the corrected mapping. A header
//! whose event the ERP holds as an open rejected event (`malformed`, by event id), or whose mapping failed in the
//! ERP (a rejected record naming the document and key), is resubmitted with `possync.resubmit`, which posts it
//! and resolves the exception, exactly once. Headers the ERP has posted are left alone; to correct those, reverse
//! them (`possync.reverse_event`) first.

use std::collections::HashMap;

use serde_json::Value;

use crate::document::{compile, ident, Target};
use crate::mapping::Mapping;
use crate::pgerr::describe;

/// What a remap did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemapReport {
    /// Settled headers evaluated.
    pub evaluated: u64,
    /// Rejected events the corrected mapping resubmitted.
    pub resubmitted: u64,
    /// Of those, posted (applied or held) and resolved.
    pub resolved: u64,
    /// Evaluations that still fail (error text per header).
    pub still_failing: Vec<String>,
}

/// Re-evaluates the documents of `source` and resubmits what the ERP rejected.
pub async fn remap(erp_url: &str, source: &str, mapping: &Mapping) -> Result<RemapReport, String> {
    let erp = crate::tls::connect(erp_url)
        .await
        .map_err(|e| format!("cannot connect to the ERP: {e}"))?;
    let schema = crate::mirror::schema_of(source);
    // the open rejections of this source: by event id, and mapping failures by (document, key)
    let rows = erp
        .query(
            "SELECT exception_id, coalesce(event_id, ''), payload::text FROM possync.exception \
              WHERE status = 'open' AND kind = 'malformed' AND source = $1",
            &[&source],
        )
        .await
        .map_err(|e| format!("cannot read the rejected events (the remap needs a role that may read possync.exception): {}", describe(&e)))?;
    let mut by_event: HashMap<String, i64> = HashMap::new();
    let mut by_key: HashMap<(String, String), i64> = HashMap::new();
    for r in rows {
        let id: i64 = r.get(0);
        let event_id: String = r.get(1);
        let payload: Option<String> = r.get(2);
        let payload: Value = payload
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or(Value::Null);
        if let (Some(d), Some(k)) = (
            payload.get("document").and_then(Value::as_str),
            payload.get("key").and_then(Value::as_str),
        ) {
            by_key.insert((d.to_string(), k.to_string()), id);
        }
        if !event_id.is_empty() {
            by_event.insert(event_id, id);
        }
    }
    let mut report = RemapReport::default();
    let failed = format!("{}.{}", ident(&schema), crate::mirror::FAILED);
    for d in mapping.documents() {
        let sql = compile(d, Target::ErpAll);
        erp.batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL search_path TO {}",
            ident(&schema)
        ))
        .await
        .map_err(|e| describe(&e))?;
        let evaluated = erp.query(&sql, &[&source]).await;
        let _ = erp.batch_execute("ROLLBACK").await;
        let rows = evaluated.map_err(|e| {
            format!(
                "document {} does not run against the mirror in schema {schema}: {}",
                d.name,
                describe(&e)
            )
        })?;
        for r in rows {
            report.evaluated += 1;
            let key: String = r.get(0);
            let Some(text) = r.get::<_, Option<String>>(2) else {
                continue;
            };
            let event: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let event_id = event
                .get("event_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let exception = by_event
                .get(&event_id)
                .or_else(|| by_key.get(&(d.name.clone(), key.clone())))
                .copied();
            let Some(exception) = exception else {
                continue;
            };
            report.resubmitted += 1;
            match erp
                .query_one(
                    "SELECT possync.resubmit($1, $2::text::jsonb)::text",
                    &[&exception, &text],
                )
                .await
            {
                Ok(row) => {
                    let answer: Value =
                        serde_json::from_str(&row.get::<_, String>(0)).unwrap_or(Value::Null);
                    let status = answer.get("status").and_then(Value::as_str).unwrap_or("");
                    if matches!(status, "applied" | "held") {
                        report.resolved += 1;
                        forget_failure(&erp, &failed, &d.name, &key).await;
                    } else if status == "duplicate" {
                        // a later change of the header posted it meanwhile: the rejection is settled
                        match erp
                            .query_one(
                                "SELECT possync.resolve_exception($1, $2)::text",
                                &[&exception, &format!("remap: event {event_id} was posted by a later change of {} {key}", d.name)],
                            )
                            .await
                        {
                            Ok(_) => {
                                report.resolved += 1;
                                forget_failure(&erp, &failed, &d.name, &key).await;
                            }
                            Err(e) => report
                                .still_failing
                                .push(format!("{} {key} ({event_id}): {}", d.name, describe(&e))),
                        }
                    } else {
                        report
                            .still_failing
                            .push(format!("{} {key} ({event_id}): {answer}", d.name));
                    }
                }
                Err(e) => report.still_failing.push(format!(
                    "{} {key} ({event_id}): {}",
                    d.name,
                    describe(&e)
                )),
            }
        }
    }
    Ok(report)
}

/// The header maps now: a later failure of it is news again.
async fn forget_failure(erp: &tokio_postgres::Client, table: &str, document: &str, key: &str) {
    if let Err(e) = erp
        .execute(
            &format!("DELETE FROM {table} WHERE document = $1 AND doc_key = $2"),
            &[&document, &key],
        )
        .await
    {
        tracing::warn!(document, key, error = %describe(&e), "cannot clear the header's recorded mapping failure");
    }
}
