//! The janitor: marks published rows PROCESSED (or deletes them with
//! `cleanup.delete-after-publish`), and prunes PROCESSED and FAILED rows
//! after their retention. Every statement touches at most `relay.batch-size`
//! rows, so none holds locks for long on a big table.
//!
//! Invariant 7 (the stream never sees its own housekeeping, and the janitor
//! marks a row only if its transaction is at or below the durable
//! checkpoint) is kept like this:
//!
//! * The publication carries inserts only; UPDATE/DELETE here never enter it.
//! * Each pass records a snapshot S (`pg_current_snapshot()`) and the WAL
//!   insert position P right after it, in the checkpoint table. A
//!   transaction visible in S had already inserted its commit record, so its
//!   commit LSN is below P.
//! * A later pass marks PENDING rows whose inserting transaction (the
//!   `txid` column, `DEFAULT pg_current_xact_id()`) is visible in S — only
//!   once the relay's durable position (the checkpoint, or the slot's
//!   confirmed position, which the relay only advances past what it
//!   persisted) is at or past P. Every such row was acknowledged by the
//!   broker, or dead-lettered and already marked FAILED (FAILED rows are not
//!   PENDING, so they are never overwritten).
//!
//! A crash anywhere leaves S and P in the table; the next pass continues.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::sink::message::{format_lsn, parse_lsn};
use crate::source::control;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    /// Rows marked PROCESSED (or deleted, with delete-after-publish).
    pub marked: u64,
    /// PROCESSED rows deleted after `cleanup.retention-days`.
    pub pruned_processed: u64,
    /// FAILED rows deleted after `cleanup.failed-retention-days`.
    pub pruned_failed: u64,
    /// The relay's durable position the pass worked against.
    pub durable_lsn: Option<String>,
    /// The WAL position the next marking waits for, if a snapshot is pending.
    pub waiting_for_lsn: Option<String>,
}

struct Sql {
    load: String,
    mark: String,
    snapshot: String,
    prune_processed: String,
    prune_failed: String,
}

fn sql(cfg: &Config) -> Sql {
    let t = &cfg.outbox.table;
    let c = &cfg.outbox.columns;
    let ck = &cfg.outbox.checkpoint_table;
    let select_batch = |cond: &str| {
        format!(
            "SELECT {id} FROM {t} WHERE {cond} ORDER BY {id} LIMIT $2 FOR UPDATE SKIP LOCKED",
            id = c.id
        )
    };
    let pending_in_snapshot = format!(
        "{st} = 'PENDING' AND pg_visible_in_snapshot({tx}, $1::text::pg_snapshot)",
        st = c.status,
        tx = c.txid
    );
    let mark = if cfg.cleanup.delete_after_publish {
        format!(
            "DELETE FROM {t} WHERE {id} IN ({})",
            select_batch(&pending_in_snapshot),
            id = c.id
        )
    } else {
        format!(
            "UPDATE {t} SET {st} = 'PROCESSED', {pa} = now() WHERE {id} IN ({})",
            select_batch(&pending_in_snapshot),
            st = c.status,
            pa = c.processed_at,
            id = c.id
        )
    };
    let prune = |status: &str, ts: &str| {
        format!(
            "DELETE FROM {t} WHERE {id} IN ({})",
            select_batch(&format!(
                "{st} = '{status}' AND {ts} < now() - make_interval(days => $1::int)",
                st = c.status
            )),
            id = c.id
        )
    };
    Sql {
        load: format!(
            "SELECT GREATEST(k.lsn, s.confirmed_flush_lsn)::text, k.janitor_snapshot::text, k.janitor_lsn::text \
             FROM {ck} k LEFT JOIN pg_replication_slots s ON s.slot_name = k.slot_name \
             WHERE k.slot_name = $1"
        ),
        mark,
        snapshot: format!(
            "UPDATE {ck} SET janitor_snapshot = pg_current_snapshot(), janitor_lsn = pg_current_wal_insert_lsn() \
             WHERE slot_name = $1 RETURNING janitor_lsn::text"
        ),
        prune_processed: prune("PROCESSED", &c.processed_at),
        prune_failed: prune("FAILED", &c.created_at),
    }
}

async fn batched(
    client: &Client,
    sql: &str,
    first: &(dyn tokio_postgres::types::ToSql + Sync),
    batch: i64,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = client
            .execute(sql, &[first, &batch])
            .await
            .map_err(|e| RelayError::postgres("janitor statement", e))?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// One janitor pass: mark what the durable position covers, take the next
/// snapshot, prune by retention.
pub async fn run_pass(client: &Client, cfg: &Config) -> Result<PassReport> {
    let q = sql(cfg);
    let batch = i64::from(cfg.relay.batch_size);
    let mut report = PassReport::default();
    let marking = !cfg.outbox.columns.txid.is_empty();
    // Two rounds: when the relay is caught up, the snapshot taken in the
    // first round is usually covered at once.
    for _ in 0..2 {
        let row = client
            .query_opt(&q.load, &[&cfg.postgres.slot])
            .await
            .map_err(|e| RelayError::postgres("janitor: reading the checkpoint", e))?;
        let Some(row) = row else {
            // The relay never persisted a checkpoint: nothing is published yet.
            break;
        };
        let durable = row
            .get::<_, Option<String>>(0)
            .as_deref()
            .and_then(parse_lsn);
        let snapshot: Option<String> = row.get(1);
        let snap_lsn = row
            .get::<_, Option<String>>(2)
            .as_deref()
            .and_then(parse_lsn);
        report.durable_lsn = durable.map(format_lsn);
        let covered = matches!((durable, snap_lsn), (Some(d), Some(p)) if d >= p);
        if marking {
            if let (true, Some(s)) = (covered, &snapshot) {
                report.marked += batched(client, &q.mark, s, batch).await?;
            }
        }
        if snapshot.is_none() || covered {
            let r = client
                .query_opt(&q.snapshot, &[&cfg.postgres.slot])
                .await
                .map_err(|e| RelayError::postgres("janitor: taking a snapshot", e))?;
            report.waiting_for_lsn = r.map(|r| r.get::<_, String>(0));
        } else {
            report.waiting_for_lsn = snap_lsn.map(format_lsn);
            break;
        }
        if !marking {
            break;
        }
    }
    let days = |d: u32| i32::try_from(d).unwrap_or(i32::MAX);
    report.pruned_processed = batched(
        client,
        &q.prune_processed,
        &days(cfg.cleanup.retention_days),
        batch,
    )
    .await?;
    report.pruned_failed = batched(
        client,
        &q.prune_failed,
        &days(cfg.cleanup.failed_retention_days),
        batch,
    )
    .await?;
    Ok(report)
}

/// The periodic janitor inside `run`: a pass every `cleanup.cleanup-interval`
/// until shutdown. Errors are logged and retried next interval; the janitor
/// never stops the relay.
pub async fn run_periodic(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.cleanup.cleanup_interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        // Standbys leave housekeeping to the leader.
        if !crate::leader::may_act() {
            continue;
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match control::connect(&cfg, "janitor").await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "janitor: cannot connect; next try in one interval");
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        match tokio::time::timeout(Duration::from_secs(600), run_pass(c, &cfg)).await {
            Ok(Ok(r)) => tracing::info!(
                marked = r.marked,
                pruned_processed = r.pruned_processed,
                pruned_failed = r.pruned_failed,
                "janitor pass"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "janitor pass failed");
                client = None;
            }
            Err(_) => {
                tracing::warn!("janitor pass took over 10 minutes; abandoned");
                client = None;
            }
        }
    }
}
