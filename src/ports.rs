//! The relay loop's three collaborators as traits, so the loop in
//! [`crate::relay`] runs against the real stream, producer and database, or
//! against the in-memory fakes in its tests (no servers needed to check the
//! ack bookkeeping, the DLQ path or the window).
//!
//! Contracts:
//! * [`EventStream`]: events in WAL order; `confirm` reports a position as
//!   durable to the slot and is only called after the checkpoint covering it
//!   was persisted.
//! * [`MessageSink`]: `send*` only enqueue; every enqueued message yields
//!   exactly one delivery report on the session's channel.
//! * [`Bookkeeping`]: durable (see [`CheckpointStore`]); `mark_failed` is
//!   called after the DLQ acks and before the checkpoint that covers the rows.

use std::future::Future;

use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationEvent};

use crate::checkpoint::{CheckpointStore, PgCheckpointStore};
use crate::config::Config;
use crate::decode::OutboxRecord;
use crate::error::Result;
use crate::sink::message::TxnMeta;
use crate::sink::{MsgTag, Publisher, SendError};

/// Result of enqueueing: the tag comes back when the message was not taken.
pub type Enqueued = std::result::Result<(), (SendError, Box<MsgTag>)>;

/// The replication stream.
pub trait EventStream: Send {
    /// Next event; `Ok(None)` when the stream ended.
    fn recv(
        &mut self,
    ) -> impl Future<Output = std::result::Result<Option<ReplicationEvent>, PgWireError>> + Send;
    /// Report `lsn` as durable to the slot.
    fn confirm(&self, lsn: u64);
    /// End the stream: gracefully (stop, flush feedback) or at once.
    fn close(&mut self, graceful: bool) -> impl Future<Output = ()> + Send;
}

/// The producer.
pub trait MessageSink: Send {
    /// Enqueue a decoded record.
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued;
    /// Enqueue a prepared message (a retry or a DLQ copy).
    fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: i64,
        tag: Box<MsgTag>,
    ) -> Enqueued;
    /// Make sure `topic` exists (when configured to create topics).
    fn ensure_topic(&mut self, topic: &str) -> impl Future<Output = Result<()>> + Send;
    /// Drop everything not yet acknowledged.
    fn purge(&self);
    /// The error that stopped the producer for good, if one did: then no
    /// message will ever be acknowledged again, whatever the delivery reports
    /// say (librdkafka purges them as "purged in queue").
    fn fatal_error(&self) -> Option<crate::error::RelayError> {
        None
    }
}

/// The checkpoint plus the row bookkeeping of failed and blocked rows.
pub trait Bookkeeping: CheckpointStore {
    /// Mark dead-lettered rows FAILED with their attempt counts.
    fn mark_failed(
        &self,
        cfg: &Config,
        rows: &[(i64, i32)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Record (or clear) the row blocking the stream.
    fn record_blocked(
        &self,
        cfg: &Config,
        blocked: Option<(i64, &str)>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Whether the row still exists.
    fn row_exists(&self, cfg: &Config, id: i64) -> impl Future<Output = Result<bool>> + Send;
}

impl EventStream for ReplicationClient {
    async fn recv(&mut self) -> std::result::Result<Option<ReplicationEvent>, PgWireError> {
        ReplicationClient::recv(self).await
    }

    fn confirm(&self, lsn: u64) {
        self.update_applied_lsn(Lsn::from_u64(lsn));
    }

    async fn close(&mut self, graceful: bool) {
        if graceful {
            self.stop();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.shutdown()).await;
        } else {
            self.abort();
        }
    }
}

impl MessageSink for Publisher {
    fn send_record(
        &self,
        rec: &OutboxRecord,
        meta: &TxnMeta,
        topic: &str,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        self.send(rec, meta, topic, tag)
    }

    fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: i64,
        tag: Box<MsgTag>,
    ) -> Enqueued {
        Publisher::send_raw(self, topic, key, payload, headers, timestamp_ms, tag)
    }

    async fn ensure_topic(&mut self, topic: &str) -> Result<()> {
        Publisher::ensure_topic(self, topic).await
    }

    fn purge(&self) {
        Publisher::purge(self)
    }

    fn fatal_error(&self) -> Option<crate::error::RelayError> {
        Publisher::fatal_error(self)
    }
}

impl Bookkeeping for PgCheckpointStore {
    async fn mark_failed(&self, cfg: &Config, rows: &[(i64, i32)]) -> Result<()> {
        crate::dead_letter::mark_failed(self.client(), cfg, rows).await
    }

    async fn record_blocked(&self, cfg: &Config, blocked: Option<(i64, &str)>) -> Result<()> {
        crate::dead_letter::record_blocked(self.client(), cfg, blocked).await
    }

    async fn row_exists(&self, cfg: &Config, id: i64) -> Result<bool> {
        crate::dead_letter::row_exists(self.client(), cfg, id).await
    }
}
