//! Dead-lettering: building the DLQ copy of a row that cannot be published,
//! and marking it FAILED in the outbox once that copy was acknowledged.
//!
//! Ordering: a dead-lettered row leaves the ordered stream. Consumers of the
//! main topic never see it; rows after it are published in order. Teams that
//! cannot accept that set `relay.on-permanent-error = "block"`.
//!
//! DLQ message: same key, same value (empty when the value itself was the
//! problem, e.g. too large), the original headers, plus `dlq.error.class`,
//! `dlq.error.message`, `dlq.original.topic`, `dlq.attempts`,
//! `dlq.first.failure` (RFC 3339) — the `lsn` header is among the originals.

use std::time::SystemTime;

use tokio_postgres::Client;

use crate::config::Config;
use crate::decode::{OutboxRecord, RowError};
use crate::error::{RelayError, Result};
use crate::sink::message::{header_pairs, value, TxnMeta};

/// A message ready for the DLQ topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Outbox row id, when known (to mark it FAILED).
    pub row_id: Option<i64>,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value, or `None` when the value was the problem.
    pub value: Option<Vec<u8>>,
    /// Original headers followed by the `dlq.*` error headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Commit time, Unix ms.
    pub timestamp_ms: i64,
}

/// Why a row is being dead-lettered.
#[derive(Debug, Clone)]
pub struct Reason {
    /// `permanent` for every DLQ entry today; kept as a header so consumers
    /// can filter when more classes appear.
    pub class: &'static str,
    /// One line.
    pub message: String,
    /// Where it should have gone (may be empty if routing itself failed).
    pub original_topic: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failure: SystemTime,
    /// The value is the problem: do not copy it.
    pub drop_value: bool,
}

fn error_headers(mut h: Vec<(String, Vec<u8>)>, r: &Reason) -> Vec<(String, Vec<u8>)> {
    h.push(("dlq.error.class".into(), r.class.as_bytes().to_vec()));
    h.push(("dlq.error.message".into(), r.message.as_bytes().to_vec()));
    h.push((
        "dlq.original.topic".into(),
        r.original_topic.as_bytes().to_vec(),
    ));
    h.push(("dlq.attempts".into(), r.attempts.to_string().into_bytes()));
    h.push((
        "dlq.first.failure".into(),
        humantime::format_rfc3339_millis(r.first_failure)
            .to_string()
            .into_bytes(),
    ));
    h
}

/// DLQ copy of a decoded record that failed before or at the broker.
pub fn from_record(rec: &OutboxRecord, meta: &TxnMeta, r: &Reason) -> DeadLetter {
    let base = header_pairs(rec, meta);
    DeadLetter {
        row_id: Some(rec.id),
        key: Some(rec.aggregate_id.as_bytes().to_vec()),
        value: (!r.drop_value).then(|| value(rec, meta).into_owned()),
        headers: error_headers(base, r),
        timestamp_ms: meta.commit_unix_millis,
    }
}

/// DLQ copy of a message the broker refused, from the copy librdkafka
/// handed back.
pub fn from_failed(
    row_id: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    original_headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
    r: &Reason,
) -> DeadLetter {
    DeadLetter {
        row_id: Some(row_id),
        key,
        value: if r.drop_value { None } else { value },
        headers: error_headers(original_headers, r),
        timestamp_ms,
    }
}

/// DLQ entry for a row that could not even be decoded into a record.
pub fn from_row_error(err: &RowError, meta: &TxnMeta, r: &Reason) -> DeadLetter {
    let mut base = vec![("lsn".to_string(), meta.lsn_text.as_bytes().to_vec())];
    if let Some(id) = err.row_id {
        base.insert(0, ("id".to_string(), id.to_string().into_bytes()));
    }
    DeadLetter {
        row_id: err.row_id,
        key: None,
        value: None,
        headers: error_headers(base, r),
        timestamp_ms: meta.commit_unix_millis,
    }
}

/// Mark dead-lettered rows FAILED with their attempt counts, in one
/// statement. Called after their DLQ copies were acknowledged and before the
/// checkpoint that covers them is persisted (so the janitor, which only
/// marks PENDING rows at or below the checkpoint, never marks them
/// PROCESSED).
pub async fn mark_failed(client: &Client, cfg: &Config, rows: &[(i64, i32)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let rcs: Vec<i32> = rows.iter().map(|r| r.1).collect();
    // With several outbox tables the failure bookkeeping knows the id only:
    // each table is updated, and ids are unique across them (one sequence,
    // see `crate::schema::id_sequence`).
    for view in cfg.per_table() {
        let c = &view.outbox.columns;
        let sql = format!(
            "UPDATE {t} AS o SET {st} = 'FAILED', {rc} = v.rc \
             FROM unnest($1::bigint[], $2::int[]) AS v(id, rc) WHERE o.{id} = v.id",
            t = view.outbox.table,
            st = c.status,
            rc = c.retry_count,
            id = c.id,
        );
        client.execute(&sql, &[&ids, &rcs]).await.map_err(|e| {
            RelayError::postgres(
                format!("marking dead-lettered rows FAILED in {}", view.outbox.table),
                e,
            )
        })?;
    }
    Ok(())
}

/// Record (or clear, with `None`) the row blocking the stream, for `status`.
pub async fn record_blocked(
    client: &Client,
    cfg: &Config,
    blocked: Option<(i64, &str)>,
) -> Result<()> {
    // Upsert: the stream may block before its first checkpoint was written;
    // '0/0' never wins over a real position (the relay's save only raises).
    let sql = format!(
        "INSERT INTO {} AS c (slot_name, lsn, blocked_row_id, blocked_reason) VALUES ($1, '0/0', $2, $3) \
         ON CONFLICT (slot_name) DO UPDATE SET blocked_row_id = EXCLUDED.blocked_row_id, \
         blocked_reason = EXCLUDED.blocked_reason",
        cfg.outbox.checkpoint_table
    );
    let (id, reason) = match blocked {
        Some((id, r)) => (Some(id), Some(r.to_string())),
        None => (None, None),
    };
    client
        .execute(&sql, &[&cfg.postgres.slot, &id, &reason])
        .await
        .map_err(|e| RelayError::postgres("recording the blocked row", e))?;
    Ok(())
}

/// Whether the row still exists (an operator resolves a blocked row by
/// deleting it).
pub async fn row_exists(client: &Client, cfg: &Config, id: i64) -> Result<bool> {
    for view in cfg.per_table() {
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} = $1",
            view.outbox.table, view.outbox.columns.id
        );
        let row = client
            .query_opt(&sql, &[&id])
            .await
            .map_err(|e| RelayError::postgres("checking the blocked row", e))?;
        if row.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
