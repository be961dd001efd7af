//! Invariant 2, persist then confirm: mark dead-lettered rows FAILED, write
//! the checkpoint table, record the blocked row — each with a deadline —
//! and only then tell the slot. Plus the periodic gauges.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use super::{bounded, unix_millis, Session};
use crate::error::Result;
use crate::metrics as m;
use crate::ports::{Bookkeeping, EventStream};
use crate::sink::message::format_lsn;

/// A checkpoint write running beside the loop: the position it writes and
/// the write. Until it finished, nothing is confirmed for it.
pub(super) struct Saving<'b> {
    lsn: u64,
    write: Pin<Box<dyn Future<Output = Result<()>> + Send + 'b>>,
}

impl Saving<'_> {
    /// Wait for the write; the position it wrote.
    pub(super) async fn done(&mut self) -> Result<u64> {
        (&mut self.write).await.map(|()| self.lsn)
    }
}

impl Session<'_> {
    // ---- checkpoint -------------------------------------------------------

    /// The periodic checkpoint, as [`Self::checkpoint`] — except that the
    /// common case, a position to write and nothing else, is returned as a
    /// write for the loop to run beside reading and acknowledging: the loop
    /// no longer stands still for a PostgreSQL round trip (a commit, so a
    /// WAL flush) per checkpoint. The loop finishes it with
    /// [`Self::checkpoint_written`]; it starts no other checkpoint meanwhile.
    pub(super) async fn start_checkpoint<'b, S: EventStream, B: Bookkeeping>(
        &mut self,
        book: &'b B,
        stream: &S,
    ) -> Result<Option<Saving<'b>>> {
        if self.policy.has_bookkeeping() {
            self.checkpoint(book, stream).await?;
            return Ok(None);
        }
        let Some(lsn) = self.progress.to_persist() else {
            self.confirm(stream);
            return Ok(None);
        };
        let t = self.cfg.postgres.connect_timeout;
        Ok(Some(Saving {
            lsn,
            write: Box::pin(bounded(t, "writing the checkpoint", book.save(lsn))),
        }))
    }

    /// A write from [`Self::start_checkpoint`] finished: the table holds
    /// `lsn`, which may now be confirmed (invariant 2).
    pub(super) fn checkpoint_written<S: EventStream>(&mut self, lsn: u64, stream: &S) {
        self.persisted(lsn);
        self.confirm(stream);
    }

    fn persisted(&mut self, lsn: u64) {
        self.progress.persisted(lsn);
        self.stats.persisted = self.stats.persisted.max(lsn);
        metrics::gauge!(m::CHECKPOINT_LSN).set(lsn as f64);
        metrics::gauge!(m::CHECKPOINT_TIMESTAMP)
            .set(unix_millis(SystemTime::now()) as f64 / 1000.0);
        tracing::debug!(checkpoint = %format_lsn(lsn), "checkpoint persisted");
    }

    fn confirm<S: EventStream>(&mut self, stream: &S) {
        if let Some(lsn) = self.progress.to_confirm() {
            stream.confirm(lsn);
            self.progress.confirmed(lsn);
        }
    }

    /// Mark dead-lettered rows FAILED, persist the durable position if rows
    /// were published since the last write, record the blocked row, then
    /// confirm to the slot what the progress rule allows.
    pub(super) async fn checkpoint<S: EventStream, B: Bookkeeping>(
        &mut self,
        book: &B,
        stream: &S,
    ) -> Result<()> {
        let t = self.cfg.postgres.connect_timeout;
        let failed = self.policy.take_failed_rows();
        if !failed.is_empty() {
            // Before the checkpoint that covers them: the janitor must never
            // see a dead-lettered row as PENDING below the checkpoint.
            bounded(
                t,
                "marking dead-lettered rows FAILED",
                book.mark_failed(&failed),
            )
            .await?;
            for (id, _) in &failed {
                self.stats.refusals.remove(id);
            }
        }
        if let Some(lsn) = self.progress.to_persist() {
            bounded(t, "writing the checkpoint", book.save(lsn)).await?;
            self.persisted(lsn);
        }
        if let Some(b) = self.policy.take_blocked_change() {
            let b = b.as_ref().map(|(id, reason)| (*id, reason.as_str()));
            bounded(t, "recording the blocked row", book.record_blocked(b)).await?;
        }
        self.confirm(stream);
        Ok(())
    }

    pub(super) fn publish_gauges(&mut self) {
        for (topic, n) in self.published.iter_mut().filter(|(_, n)| **n > 0) {
            metrics::counter!(m::EVENTS_PUBLISHED, "topic" => topic.to_string()).increment(*n);
            *n = 0;
        }
        metrics::gauge!(m::IN_FLIGHT).set(self.progress.in_flight() as f64);
        let lag_seconds = match self.progress.oldest_pending_commit_millis() {
            Some(ms) => (unix_millis(SystemTime::now()) - ms).max(0) as f64 / 1000.0,
            None => 0.0,
        };
        metrics::gauge!(m::LAG_SECONDS).set(lag_seconds);
        metrics::gauge!(m::LAG_BYTES).set(self.progress.lag_bytes() as f64);
        metrics::gauge!(m::HEARTBEAT_AGE).set(self.last_activity.elapsed().as_secs_f64());
    }
}
