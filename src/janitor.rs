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
//!
//! After a lost slot, rows of the *lost range* recorded by `init` are never
//! marked: the new slot's position says nothing about them (see
//! [`crate::recovery`]). With `cleanup.archive-table`, every delete here is
//! a move into the archive ([`crate::archive`]).
//!
//! With several outbox tables (`outbox.tables`) one pass covers them all:
//! S and P belong to the slot, so every table is marked under the same S
//! before the next S is taken; pruning and archiving run per table with its
//! own columns and archive. `archived` counts marked-and-moved rows
//! (`delete-after-publish`) only with one table.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use tokio_postgres::types::ToSql;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::recovery;
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
    /// Of the rows above, how many were moved into `cleanup.archive-table`
    /// (all of them when archiving is on).
    pub archived: u64,
    /// Archived rows deleted after `cleanup.archive-retention-days`.
    pub pruned_archive: u64,
    /// PENDING rows of a lost slot's range the janitor leaves alone until
    /// they are replayed (`None`: no recovery open).
    pub lost_range_rows: Option<i64>,
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
    prune_archive: Option<String>,
}

/// Test-only fault injection: lets a test stop a pass part-way as a crash
/// would, to show that a rerun loses and duplicates nothing.
#[doc(hidden)]
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// After this many committed batch statements, run the next one inside a
    /// transaction that is rolled back (as a crash before its commit would),
    /// and fail the pass.
    pub abort_after_batches: Option<u64>,
}

/// `archive_cols`: the outbox columns when archiving is on.
fn sql(cfg: &Config, archive_cols: Option<&[String]>) -> Sql {
    let t = &cfg.outbox.table;
    let c = &cfg.outbox.columns;
    let ck = &cfg.outbox.checkpoint_table;
    let select_batch = |cond: &str| {
        format!(
            "SELECT {id} FROM {t} WHERE {cond} ORDER BY {id} LIMIT $2 FOR UPDATE SKIP LOCKED",
            id = c.id
        )
    };
    // $3/$4: the lost range of a slot recovery (NULL when none is open).
    let pending_in_snapshot = format!(
        "{st} = 'PENDING' AND pg_visible_in_snapshot({tx}, $1::text::pg_snapshot) \
         AND ($3::text IS NULL OR NOT {lost})",
        st = c.status,
        tx = c.txid,
        lost = recovery::in_lost_range(&c.txid, "$3::text", "$4::text"),
    );
    let mark = if cfg.cleanup.delete_after_publish {
        crate::archive::remove_sql(
            cfg,
            &select_batch(&pending_in_snapshot),
            archive_cols,
            &[
                (c.status.as_str(), "'PROCESSED'"),
                (c.processed_at.as_str(), "now()"),
            ],
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
        crate::archive::remove_sql(
            cfg,
            &select_batch(&format!(
                "{st} = '{status}' AND {ts} < now() - make_interval(days => $1::int)",
                st = c.status
            )),
            archive_cols,
            &[],
        )
    };
    Sql {
        load: format!(
            "SELECT GREATEST(k.lsn, s.confirmed_flush_lsn)::text, k.janitor_snapshot::text, k.janitor_lsn::text, \
                    k.recovery_started_at IS NOT NULL, k.recovery_snapshot::text, k.recovery_base::text \
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
        prune_archive: crate::archive::retention_sql(cfg),
    }
}

/// Runs batch statements ($2 = batch size) until one touches fewer rows than
/// a batch, counting them against the pass's fault budget.
struct Batches<'a> {
    client: &'a Client,
    faults: &'a Faults,
    done: u64,
}

impl Batches<'_> {
    async fn run(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)], batch: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            if self.faults.abort_after_batches == Some(self.done) {
                self.client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(|e| RelayError::postgres("janitor fault hook", e))?;
                let ran = self.client.execute(sql, params).await;
                self.client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| RelayError::postgres("janitor fault hook", e))?;
                ran.map_err(|e| RelayError::postgres("janitor statement", e))?;
                return Err(RelayError::Environment(format!(
                    "janitor pass aborted by the test fault hook after {} batches",
                    self.done
                )));
            }
            let n = self
                .client
                .execute(sql, params)
                .await
                .map_err(|e| RelayError::postgres("janitor statement", e))?;
            self.done += 1;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }
}

/// One janitor pass: mark what the durable position covers, take the next
/// snapshot, prune by retention (moving into the archive when configured).
pub async fn run_pass(client: &Client, cfg: &Config) -> Result<PassReport> {
    run_pass_with_faults(client, cfg, &Faults::default()).await
}

/// [`run_pass`] with test-only fault injection.
#[doc(hidden)]
pub async fn run_pass_with_faults(
    client: &Client,
    cfg: &Config,
    faults: &Faults,
) -> Result<PassReport> {
    // One set of statements per outbox table; the snapshot S and position
    // P are the slot's, so every table is marked under the same S in the
    // same round (a pass per table would take a new S for the next table
    // each time, and that table would wait for ever).
    let mut tables = Vec::new();
    for view in cfg.per_table() {
        let archive_cols = match view.archive_table() {
            Some(a) => Some(crate::archive::columns(client, &view.outbox_table(), &a).await?),
            None => None,
        };
        let q = sql(&view, archive_cols.as_deref());
        tables.push((view, q, archive_cols.is_some()));
    }
    let q0 = &tables[0].1;
    let batch = i64::from(cfg.relay.batch_size);
    let mut batches = Batches {
        client,
        faults,
        done: 0,
    };
    let mut report = PassReport::default();
    let marking = tables
        .iter()
        .any(|(v, _, _)| !v.outbox.columns.txid.is_empty());
    // Two rounds: when the relay is caught up, the snapshot taken in the
    // first round is usually covered at once.
    for _ in 0..2 {
        let row = client
            .query_opt(&q0.load, &[&cfg.postgres.slot])
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
        let rec = recovery::RecoveryState {
            started: row.get(3),
            snapshot: row.get(4),
            base: row.get(5),
        };
        report.durable_lsn = durable.map(format_lsn);
        let covered = matches!((durable, snap_lsn), (Some(d), Some(p)) if d >= p);
        if rec.incomplete() {
            // `init` is between creating a slot and recording its lost
            // range: the new slot's position proves nothing yet.
            tracing::warn!("janitor: a slot recovery is being recorded by `init`; marking nothing");
        } else if marking {
            if let (true, Some(s)) = (covered, &snapshot) {
                for (view, q, _) in &tables {
                    if view.outbox.columns.txid.is_empty() {
                        continue;
                    }
                    report.marked += batches
                        .run(&q.mark, &[s, &batch, &rec.snapshot, &rec.base], batch)
                        .await?;
                }
            }
        }
        if snapshot.is_none() || covered {
            let r = client
                .query_opt(&q0.snapshot, &[&cfg.postgres.slot])
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
    let (kept, failed_kept) = (
        days(cfg.cleanup.retention_days),
        days(cfg.cleanup.failed_retention_days),
    );
    let marked = report.marked;
    for (view, q, archiving) in &tables {
        let processed = batches
            .run(&q.prune_processed, &[&kept, &batch], batch)
            .await?;
        let failed = batches
            .run(&q.prune_failed, &[&failed_kept, &batch], batch)
            .await?;
        report.pruned_processed += processed;
        report.pruned_failed += failed;
        if *archiving {
            report.archived += processed + failed;
            if cfg.cleanup.delete_after_publish && tables.len() == 1 {
                report.archived += marked;
            }
        }
        if let (Some(sql), d @ 1..) = (&q.prune_archive, view.cleanup.archive_retention_days) {
            report.pruned_archive += batches.run(sql, &[&days(d), &batch], batch).await?;
        }
    }
    let rec = recovery::load(client, cfg).await?;
    if rec.started {
        let mut rows = 0;
        for (view, _, _) in &tables {
            rows += recovery::lost_range(client, view, &rec).await?.rows;
        }
        report.lost_range_rows = Some(rows);
    }
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
                archived = r.archived,
                pruned_archive = r.pruned_archive,
                lost_range_rows = r.lost_range_rows,
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
