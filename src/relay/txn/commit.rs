//! Committing a Kafka transaction and what may follow only after it:
//! invariant 9's order, each step a fault point for the tests
//! ([`crate::fault`]).
//!
//! 1. enqueue the progress record, the transaction's last message;
//! 2. `commit_transaction` — from here the messages and the position are
//!    visible to `read_committed` consumers, together (the stream is read
//!    ahead meanwhile, [`super::ahead`]);
//! 3. mark the transaction's dead-lettered rows FAILED (idempotent; until
//!    it succeeded they ride in every progress record, so a crash before it
//!    leaves them to the next session, and the janitor never sees them
//!    PENDING below the table's checkpoint — the table is written after);
//! 4. write the checkpoint table (throttled by `relay.checkpoint-interval`);
//! 5. tell the slot.

use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{pg, TxnSession};
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::fault::{self, point};
use crate::metrics as m;
use crate::ports::{Bookkeeping, EventStream, PgBookkeeping};
use crate::sink::message::format_lsn;
use crate::sink::progress_topic::ProgressRecord;
use crate::sink::{Delivery, MsgTag};

impl TxnSession<'_> {
    /// Commit the open transaction at the last PostgreSQL commit inside it.
    pub(super) async fn commit_at_boundary<S: EventStream>(
        &mut self,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        let Some((commit, inserts, end)) = self.open.as_ref().and_then(|o| o.boundary) else {
            return Ok(());
        };
        let rec = ProgressRecord::new(commit, inserts, Some(end), self.epoch);
        self.commit_with(rec, false, stream, book, reports).await
    }

    /// Commit the open transaction inside the current PostgreSQL
    /// transaction, after its current insert.
    pub(super) async fn commit_split<S: EventStream>(
        &mut self,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        match self.split_record(false) {
            Some(rec) => self.commit_with(rec, true, stream, book, reports).await,
            None => self.commit_at_boundary(stream, book, reports).await,
        }
    }

    /// Commit the open transaction inside the current PostgreSQL
    /// transaction, before its current insert (which goes alone next).
    pub(super) async fn commit_split_before_current<S: EventStream>(
        &mut self,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        match self.split_record(true) {
            Some(rec) => self.commit_with(rec, true, stream, book, reports).await,
            None => self.commit_at_boundary(stream, book, reports).await,
        }
    }

    async fn commit_with<S: EventStream>(
        &mut self,
        mut rec: ProgressRecord,
        split: bool,
        stream: &mut S,
        book: &PgBookkeeping,
        reports: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        rec.failed = self.failed_rows.clone();
        rec.failed.extend_from_slice(&open.failed);
        self.sink.send_progress(&rec, MsgTag::first(0, 0, 0))?;
        fault::hit(point::BEFORE_KAFKA_COMMIT);
        if let Err(e) = self.commit_reading_ahead(stream).await {
            // Refusals behind the failure are in the reports: note them
            // (their Err only restates `e`), then the caller aborts.
            while let Ok(d) = reports.try_recv() {
                let _ = self.on_report(d);
            }
            return Err(e);
        }
        fault::hit(point::AFTER_KAFKA_COMMIT);
        if split {
            fault::hit(point::MID_SPLIT);
        }
        let o = self.open.take().expect("checked above");
        // Every report of the committed transaction is an acknowledgement.
        while let Ok(d) = reports.try_recv() {
            if d.tag.row_id != 0 && !d.tag.is_dlq {
                metrics::histogram!(m::PRODUCE_LATENCY)
                    .record(d.tag.sent_at.elapsed().as_secs_f64());
            }
        }
        for (topic, n) in o.per_topic {
            metrics::counter!(m::EVENTS_PUBLISHED, "topic" => topic).increment(n);
        }
        metrics::counter!(m::DLQ_TOTAL).increment(o.failed.len() as u64);
        self.stats.acked += o.msgs as u64;
        self.health.set_broker_ok(true);
        self.pos.kafka_committed();
        self.failed_rows.extend(o.failed);
        self.committed = rec.clone();
        tracing::debug!(messages = o.msgs, progress = ?rec, "Kafka transaction committed");
        self.checkpoint(stream, book, false).await
    }

    /// `commit_transaction`, reading the stream ahead meanwhile
    /// ([`super::ahead`]). Nothing is sent until it returned.
    async fn commit_reading_ahead<S: EventStream>(&mut self, stream: &mut S) -> Result<()> {
        let commit = self.sink.commit();
        tokio::pin!(commit);
        loop {
            tokio::select! {
                biased;
                r = &mut commit => return r,
                ev = stream.recv(), if self.ahead.has_room() => self.ahead.push(ev),
            }
        }
    }

    /// Mark FAILED, write the table (when due or `force`), confirm.
    pub(super) async fn checkpoint<S: EventStream>(
        &mut self,
        stream: &S,
        book: &PgBookkeeping,
        force: bool,
    ) -> Result<()> {
        if !self.failed_rows.is_empty() {
            pg(
                self.cfg,
                "marking dead-lettered rows FAILED",
                book.mark_failed(&self.failed_rows),
            )
            .await?;
            for (id, _) in std::mem::take(&mut self.failed_rows) {
                self.stats.refusals.remove(&id);
            }
        }
        let due = force || self.last_persist.elapsed() >= self.cfg.relay.checkpoint_interval;
        if due {
            if let Some(lsn) = self.pos.to_persist() {
                pg(self.cfg, "writing the checkpoint", book.save(lsn)).await?;
                self.pos.persisted(lsn);
                self.last_persist = Instant::now();
                self.stats.persisted = self.stats.persisted.max(lsn);
                metrics::gauge!(m::CHECKPOINT_LSN).set(lsn as f64);
                metrics::gauge!(m::CHECKPOINT_TIMESTAMP)
                    .set(super::super::unix_millis(SystemTime::now()) as f64 / 1000.0);
                tracing::debug!(checkpoint = %format_lsn(lsn), "checkpoint persisted");
            }
        }
        if let Some(lsn) = self.pos.to_confirm() {
            fault::hit(point::BEFORE_SLOT_CONFIRM);
            stream.confirm(lsn);
            self.pos.confirmed(lsn);
        }
        Ok(())
    }

    pub(super) fn publish_gauges(&mut self) {
        let in_open = self.open.as_ref().map_or(0, |o| o.msgs);
        metrics::gauge!(m::IN_FLIGHT).set(in_open as f64);
        let lag = match (&self.open, &self.cur) {
            (Some(o), _) => o.began.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        metrics::gauge!(m::LAG_SECONDS).set(lag);
        metrics::gauge!(m::LAG_BYTES).set(self.pos.lag_bytes() as f64);
        metrics::gauge!(m::HEARTBEAT_AGE).set(self.last_activity.elapsed().as_secs_f64());
    }
}
